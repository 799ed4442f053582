"""A receiver's Anvil when the relay runs as processes: each call is answered by the
supervisor's shared Anvil (relay/supervisor/anvil_server.py), so per-client limits, AUTH
lockouts and stress mode count every receiver's connections.

A client in smtp.relay.allow (an application) is admitted by the receiver alone, without the
round trip: each receiver holds at most its share of `smtp.limits.trusted_connections` (the
limit divided by the number of receivers) from one such address. Only a limit smaller than
the number of receivers is counted by the supervisor.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from relay.core.config import Smtp
from relay.core.process import Link
from relay.receiver.anvil import ANSWER, PER_CLIENT


class AnvilClient:
    """Anvil's calls, answered by the supervisor's Anvil; `stressed` and `untrusted_open`
    are as of the last word from it."""

    def __init__(self, fd: int, smtp: Smtp, receivers: int = 1) -> None:
        self.conn = Link(fd)
        self.smtp = smtp
        self.receivers = max(1, receivers)
        self.trusted_here: Counter[str] = Counter()  # admitted without asking, by address
        self.stressed = False  # as this receiver last acted on it
        self.remote_stressed = False
        self.untrusted_open = 0
        self.on_change: Callable[[], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _call(self, name: str, *args: Any) -> Any:
        self.conn.send((name, args))
        while True:
            message = self.conn.recv()
            if message[0] != ANSWER:  # a stress change, sent before the answer
                self._told(message)
                continue
            _, result, self.remote_stressed, self.untrusted_open = message
            return result

    def _told(self, message: tuple) -> None:
        _, self.remote_stressed, self.untrusted_open = message
        if self.on_change is not None and self.loop is not None:
            self.loop.call_soon(self.on_change)

    def listen(self, on_change: Callable[[], None]) -> None:
        """Call on_change (on the running loop) whenever the supervisor says the stress
        state changed."""
        self.on_change, self.loop = on_change, asyncio.get_running_loop()
        self.loop.add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():  # a call may have read it already
                self._told(self.conn.recv())
        except (EOFError, OSError):  # the supervisor is gone (this process follows it)
            self.close()

    def close(self) -> None:
        if self.loop is not None and not self.conn.closed:
            self.loop.remove_reader(self.conn.fileno())
            self.loop = None

    def admit(self, ip: str, trusted: bool) -> str | None:
        limit = self.smtp.limits.trusted_connections
        share = limit // self.receivers
        if not trusted or (limit and not share):
            return self._call("admit", ip, trusted)
        if limit and self.trusted_here[ip] >= share:
            return PER_CLIENT
        self.trusted_here[ip] += 1
        return None

    def release(self, ip: str, trusted: bool) -> None:
        """Told, not asked: nothing waits on the answer, so a closing connection never holds
        up this receiver's other sessions (the supervisor answers no release)."""
        if trusted and self.trusted_here[ip]:
            self.trusted_here[ip] -= 1
            if not self.trusted_here[ip]:
                del self.trusted_here[ip]
            return
        self.conn.send(("release", (ip, trusted)))

    def locked_for(self, ip: str) -> float:
        return self._call("locked_for", ip)

    def auth_failed(self, ip: str) -> tuple[int, bool]:
        return self._call("auth_failed", ip)

    def tarpit(self, failures: int) -> float:
        return self._call("tarpit", failures)

    def reconfigure(self, smtp: Smtp) -> None:
        self.smtp = smtp
        self._call("reconfigure", smtp)

    def stress_changed(self) -> bool:
        """True once per change of the shared stress state (this receiver then sets its own
        sessions' timeouts)."""
        changed, self.stressed = self.remote_stressed != self.stressed, self.remote_stressed
        return changed
