"""Per-client bookkeeping for the SMTP listener, like Postfix's anvil: open connections and
connection rate per address, AUTH failures and lockouts per address (not per session, so a
new session does not start afresh), and whether the listener is under stress.

Pure state with an injectable clock: the listener asks and tells, this module decides.
Entries of addresses that have gone quiet are swept, so a scan from many addresses does not
grow the tables without bound.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.core.config import Smtp

MINUTE = 60.0
STRESS_ON = 0.8  # stress begins when untrusted connections pass this share of the limit...
STRESS_OFF = 0.6  # ...and ends when they fall to this share (no flapping at the threshold)
TARPIT_STEPS = 10  # the longest tarpit is this many times smtp.auth.failure_delay

# reasons for a refused connection, as written in the connection-refused event
PER_CLIENT = "per-client-connections"
PER_CLIENT_RATE = "per-client-rate"
GLOBAL = "max-connections"

# the calls a receiver makes to a shared Anvil over its link
CALLS = {"admit", "release", "locked_for", "auth_failed", "tarpit", "reconfigure"}
# what the supervisor sends: ("answer", result, stressed, untrusted_open) to a call, and
# ("stress", stressed, untrusted_open) unasked when the stress state changes
ANSWER, STRESS = "answer", "stress"


@dataclass
class Client:
    """What is known of one address."""

    open: int = 0
    connects: deque[float] = field(default_factory=deque)  # admitted, within the last minute
    failures: deque[float] = field(default_factory=deque)  # failed AUTHs within the window
    locked_until: float = 0.0

    def idle(self, now: float) -> bool:
        return not (self.open or self.connects or self.failures or self.locked_until > now)


class Anvil:
    """Limits per client address and the stress state of one listener (all its sockets)."""

    def __init__(self, smtp: Smtp, clock: Callable[[], float] = time.monotonic) -> None:
        self.smtp = smtp
        self.clock = clock
        self.clients: dict[str, Client] = {}
        self.untrusted_open = 0
        self.stressed = False
        self._swept = clock()

    def reconfigure(self, smtp: Smtp) -> None:
        self.smtp = smtp

    def _client(self, ip: str) -> Client:
        client = self.clients.get(ip)
        if client is None:
            client = self.clients[ip] = Client()
        return client

    @staticmethod
    def _expire(stamps: deque[float], before: float) -> None:
        while stamps and stamps[0] <= before:
            stamps.popleft()

    def sweep(self) -> None:
        """Forget addresses with nothing open, counted or locked (at most once a minute)."""
        now = self.clock()
        if now - self._swept < MINUTE:
            return
        self._swept = now
        for ip, client in list(self.clients.items()):
            self._expire(client.connects, now - MINUTE)
            self._expire(client.failures, now - self.smtp.auth.failure_window)
            if client.idle(now):
                del self.clients[ip]

    # --- connections ---

    def admit(self, ip: str, trusted: bool) -> str | None:
        """Count a new connection from `ip`, or say why it is refused (nothing counted then).

        Clients in smtp.relay.allow have their own per-address limit and no rate limit, and do
        not count against smtp.max_connections: an application's burst is never refused
        because strangers fill the listener.
        """
        self.sweep()
        now = self.clock()
        limits = self.smtp.limits
        client = self.clients.get(ip)
        open_now = client.open if client else 0
        if trusted:
            if limits.trusted_connections and open_now >= limits.trusted_connections:
                return PER_CLIENT
        else:
            if self.untrusted_open >= self.smtp.max_connections:
                return GLOBAL
            if limits.per_client_connections and open_now >= limits.per_client_connections:
                return PER_CLIENT
            if limits.per_client_rate and client:
                self._expire(client.connects, now - MINUTE)
                if len(client.connects) >= limits.per_client_rate:
                    return PER_CLIENT_RATE
        client = self._client(ip)
        client.open += 1
        if not trusted:
            self.untrusted_open += 1
            if limits.per_client_rate:
                client.connects.append(now)
        return None

    def release(self, ip: str, trusted: bool) -> None:
        """A connection admitted by admit() has closed."""
        client = self.clients.get(ip)
        if client and client.open:
            client.open -= 1
        if not trusted and self.untrusted_open:
            self.untrusted_open -= 1

    def stress_changed(self) -> bool:
        """Update the stress state from the open connections; True if it just changed."""
        share = self.untrusted_open / max(1, self.smtp.max_connections)
        stressed = share > STRESS_ON if not self.stressed else share > STRESS_OFF
        changed, self.stressed = stressed != self.stressed, stressed
        return changed

    # --- AUTH ---

    def locked_for(self, ip: str) -> float:
        """Seconds left of `ip`'s AUTH lockout (0: not locked out)."""
        client = self.clients.get(ip)
        return max(0.0, client.locked_until - self.clock()) if client else 0.0

    def auth_failed(self, ip: str) -> tuple[int, bool]:
        """Count a failed AUTH from `ip`: (failures within the window, True if this one
        locks the address out)."""
        auth = self.smtp.auth
        now = self.clock()
        client = self._client(ip)
        self._expire(client.failures, now - auth.failure_window)
        client.failures.append(now)
        count = len(client.failures)
        if auth.max_failures and count >= auth.max_failures and client.locked_until <= now:
            client.locked_until = now + auth.lockout
            client.failures.clear()  # after the lockout the address starts afresh
            return count, True
        return count, False

    def tarpit(self, failures: int) -> float:
        """How long to wait before answering an address's `failures`-th failed AUTH."""
        return self.smtp.auth.failure_delay * min(failures, TARPIT_STEPS)
