"""One Anvil for all receiver processes, as Postfix's smtpd processes share its anvil server:
per-client limits, AUTH lockouts and stress mode count every receiver's connections.

The supervisor holds the Anvil (AnvilServer) and answers each receiver on its own socket
pair; a receiver's SmtpServer uses an AnvilClient in place of its own Anvil. The calls are
synchronous (a connection is admitted before its greeting; a loopback round trip), and the
connections a receiver had open are released when its socket closes (it died).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from relay.anvil import Anvil
from relay.config import Smtp

CALLS = {"admit", "release", "locked_for", "auth_failed", "tarpit", "reconfigure"}


class AnvilClient:
    """Anvil's calls, answered by the supervisor's Anvil; `stressed` and `untrusted_open`
    are as of the last answer."""

    def __init__(self, fd: int, smtp: Smtp) -> None:
        self.conn = Connection(fd)
        self.smtp = smtp
        self.stressed = False  # as this receiver last acted on it
        self.remote_stressed = False
        self.untrusted_open = 0

    def _call(self, name: str, *args: Any) -> Any:
        self.conn.send((name, args))
        result, self.remote_stressed, self.untrusted_open = self.conn.recv()
        return result

    def admit(self, ip: str, trusted: bool) -> str | None:
        return self._call("admit", ip, trusted)

    def release(self, ip: str, trusted: bool) -> None:
        self._call("release", ip, trusted)

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
    """The shared Anvil, answering receivers on the running event loop."""

    def __init__(self, smtp: Smtp) -> None:
        self.anvil = Anvil(smtp)
        self.links: dict[int, tuple[Connection, Counter]] = {}

    def link(self) -> socket.socket:
        """A new receiver's end of a socket pair (pass it to the child, then close it)."""
        mine, theirs = socket.socketpair()
        conn = Connection(mine.detach())
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
        if name in ("admit", "release"):
            self.anvil.stress_changed()
        try:
            conn.send((result, self.anvil.stressed, self.anvil.untrusted_open))
        except OSError:
            self._unlink(fd)

    def _unlink(self, fd: int) -> None:
        """A receiver is gone: its connections are closed with it."""
        conn, admitted = self.links.pop(fd)
        asyncio.get_running_loop().remove_reader(fd)
        conn.close()
        for (ip, trusted), count in admitted.items():
            for _ in range(count):
                self.anvil.release(ip, trusted)
        self.anvil.stress_changed()

    def close(self) -> None:
        for fd in list(self.links):
            conn, _ = self.links.pop(fd)
            asyncio.get_running_loop().remove_reader(fd)
            conn.close()
