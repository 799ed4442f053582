"""One Anvil for all receiver processes, as Postfix's smtpd processes share its anvil server:
per-client limits, AUTH lockouts and stress mode count every receiver's connections.

The supervisor holds the Anvil (AnvilServer) and answers each receiver on its own socket
pair; a receiver's SmtpServer uses an AnvilClient in place of its own Anvil. The calls are
synchronous (a connection is admitted before its greeting; a loopback round trip), except a
release, which the supervisor is told and does not answer; the connections a receiver had
open are released when its socket closes (it died).

Stress mode is the relay's, not a receiver's: the supervisor decides when it begins and
ends, logs the `stress` event once, and tells every receiver at once (unasked), so each sets
its idle sessions' timeouts even if it admits no new connection meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Callable

from relay.core.config import Smtp
from relay.core.process import Link
from relay.receiver.anvil import ANSWER, CALLS, STRESS, Anvil


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
