"""One Anvil for all receiver processes, as Postfix's smtpd processes share its anvil server:
per-client limits, AUTH lockouts and stress mode count every receiver's connections.

The supervisor holds the Anvil (AnvilServer) and answers each receiver on its own socket
pair; a receiver's SmtpServer uses an AnvilClient in place of its own Anvil. The calls are
synchronous (a connection is admitted before its greeting; a loopback round trip), except a
release, which the supervisor is told and does not answer; the connections a receiver had
open are released when its socket closes (it died).

A client in smtp.relay.allow (an application) is admitted by the receiver alone, without the
round trip: each receiver holds at most its share of `smtp.limits.trusted_connections` (the
limit divided by the number of receivers) from one such address. Only a limit smaller than
the number of receivers is counted by the supervisor.

Stress mode is the relay's, not a receiver's: the supervisor decides when it begins and
ends, logs the `stress` event once, and tells every receiver at once (unasked), so each sets
its idle sessions' timeouts even if it admits no new connection meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from relay.anvil import PER_CLIENT, Anvil
from relay.config import Smtp

CALLS = {"admit", "release", "locked_for", "auth_failed", "tarpit", "reconfigure"}
# what the supervisor sends: ("answer", result, stressed, untrusted_open) to a call, and
# ("stress", stressed, untrusted_open) unasked when the stress state changes
ANSWER, STRESS = "answer", "stress"


@contextlib.contextmanager
def _blocking(fd: int) -> Iterator[None]:
    was = os.get_blocking(fd)
    os.set_blocking(fd, True)
    try:
        yield
    finally:
        os.set_blocking(fd, was)


class Link(Connection):
    """A Connection whose send and recv move a whole message even while an event loop
    watches its descriptor: uvloop makes a watched descriptor non-blocking, and a plain
    Connection would then stop halfway through a message with BlockingIOError."""

    def send(self, obj: Any) -> None:
        with _blocking(self.fileno()):
            super().send(obj)

    def recv(self) -> Any:
        with _blocking(self.fileno()):
            return super().recv()


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


class AnvilServer:
    """The shared Anvil, answering receivers on the running event loop. `announce(stressed,
    untrusted_open)` is called once per change of the stress state."""

    def __init__(self, smtp: Smtp,
                 announce: Callable[[bool, int], None] | None = None) -> None:
        self.anvil = Anvil(smtp)
        self.announce = announce
        self.links: dict[int, tuple[Link, Counter]] = {}

    def link(self) -> socket.socket:
        """A new receiver's end of a socket pair (pass it to the child, then close it)."""
        mine, theirs = socket.socketpair()
        conn = Link(mine.detach())
        self.links[conn.fileno()] = (conn, Counter())
        asyncio.get_running_loop().add_reader(conn.fileno(), self._answer, conn.fileno())
        return theirs

    def _answer(self, fd: int) -> None:
        conn, admitted = self.links[fd]
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            self._unlink(fd)
            return
        result = getattr(self.anvil, name)(*args) if name in CALLS else None
        if name == "admit" and result is None:
            admitted[tuple(args)] += 1
        elif name == "release" and admitted[tuple(args)]:
            admitted[tuple(args)] -= 1
        if name == "release":  # told, not asked: every receiver hears of a stress change
            self._follow_stress()
            return
        if name == "admit":
            self._follow_stress(asking=fd)
        try:
            conn.send((ANSWER, result, self.anvil.stressed, self.anvil.untrusted_open))
        except OSError:
            self._unlink(fd)

    def _follow_stress(self, asking: int | None = None) -> None:
        """After a connection was counted or released: if that began or ended stress mode,
        say so once, and tell every other receiver (the asking one reads it in its answer)."""
        if not self.anvil.stress_changed():
            return
        stressed, open_now = self.anvil.stressed, self.anvil.untrusted_open
        if self.announce is not None:
            self.announce(stressed, open_now)
        for fd, (conn, _) in self.links.items():
            if fd != asking:
                # a receiver that died: its end of the link reads as closed next
                with contextlib.suppress(OSError):
                    conn.send((STRESS, stressed, open_now))

    def _unlink(self, fd: int) -> None:
        """A receiver is gone: its connections are closed with it."""
        conn, admitted = self.links.pop(fd)
        asyncio.get_running_loop().remove_reader(fd)
        conn.close()
        for (ip, trusted), count in admitted.items():
            for _ in range(count):
                self.anvil.release(ip, trusted)
        self._follow_stress()

    def close(self) -> None:
        for fd in list(self.links):
            conn, _ = self.links.pop(fd)
            asyncio.get_running_loop().remove_reader(fd)
            conn.close()
