"""Helpers for the SMTP receive tests: an in-process listener on a real mailroot, a raw socket
client that sees every reply byte, and canned messages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvloop

from relay.core import config_loader
from relay.core.events import EventLog
from relay.core.intake import Intake
from relay.core.store import Mailroot
from relay.receiver.smtpd import SmtpServer
from tests.conftest import wait_for

LOCAL = "yourdomain.com"  # the default local domain of the tests' write_config


def message(subject: str = "test", body: str = "hello\r\n", sender: str = f"app@{LOCAL}",
            to: str = f"user@{LOCAL}", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\n{body}").encode()


class LiveSmtp:
    """SmtpServer + Intake on a mailroot, run by an event loop in a thread."""

    def __init__(self, config_path: Path) -> None:
        self.config = config_loader.load(config_path)
        self.store = Mailroot(self.config.root)
        self.store.ensure()
        self.events: list[dict[str, Any]] = []
        log = EventLog(self.store.log_dir, stream=None)
        log.listeners.append(self.events.append)
        self.server = SmtpServer(self.config, Intake(self.config, self.store), log)
        self.loop = uvloop.new_event_loop()  # as in the receiver processes
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LiveSmtp:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def files(self, folder: str, pattern: str = "*") -> list[Path]:
        return sorted(p for p in (self.store.root / folder).glob(pattern)
                      if not p.name.startswith("."))


@contextlib.contextmanager
def live_smtp(write_config: Any, extra: dict | None = None) -> Iterator[LiveSmtp]:
    with LiveSmtp(write_config(extra)) as server:
        yield server


class RawClient:
    """A plain socket: send exact bytes, read exact replies."""

    def __init__(self, port: int, timeout: float = 10.0, source: str | None = None) -> None:
        """`source`: the loopback address to connect from (127.0.0.2 ...), to be another
        client address."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; unread: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def reply(self) -> str:
        """One whole (possibly multi-line) reply, lines joined with newlines."""
        lines = [self._line()]
        while lines[-1][3:4] == b"-":
            lines.append(self._line())
        return "\n".join(line.decode() for line in lines)

    def command(self, line: str) -> str:
        self.send(line + "\r\n")
        return self.reply()

    def replies_until_closed(self, limit: float = 10.0) -> list[str]:
        """Every reply until the server closes the connection (or `limit` seconds pass)."""
        replies = []
        deadline = time.monotonic() + limit
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            while time.monotonic() < deadline:
                replies.append(self.reply())
        return replies

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (after any unread replies)."""
        self.sock.settimeout(timeout)
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
        except ConnectionResetError:
            return True
        except (TimeoutError, OSError):
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def code(reply: str) -> int:
    return int(reply[:3])


def wait_files(server: Any, folder: str, count: int, pattern: str = "*",
               timeout: float = 10.0) -> list[Path]:
    return wait_for(lambda: len(server.files(folder, pattern)) == count
                    and server.files(folder, pattern), timeout)


# --- a supervised relay's processes, as the kernel sees them ---

def receiver_pids(relay: Any) -> dict[str, int]:
    """Each receiver process of a real `mailroot serve` (a RelayProcess) by name, as it
    announced itself in the events."""
    return {e["process"]: e["pid"] for e in relay.events()
            if e["event"] == "process-started" and e["process"].startswith("receiver")}


def clients_of(pid: int, port: int) -> set[tuple[str, int]]:
    """The (address, port) of each client whose TCP connection to local `port` the process
    `pid` holds established: the SMTP sessions it serves (from /proc/net/tcp, matched to the
    process's sockets by inode)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    clients = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.rsplit(":", 1)[1], 16) == port and state == "01" and inode in inodes:
            address, remote_port = remote.split(":")  # 01: ESTABLISHED
            ip = socket.inet_ntoa(int(address, 16).to_bytes(4, "little"))
            clients.add((ip, int(remote_port, 16)))
    return clients


def sessions_in(pid: int, port: int) -> int:
    """How many SMTP sessions on local `port` the process `pid` serves."""
    return len(clients_of(pid, port))


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    pids = [pid]
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                    pids += process_tree(int(child))
    return pids


def pss_kib(pids: list[int]) -> int:
    """The processes' proportional set size summed: each private page counted once, and each
    page they share (the interpreter, libraries, what a fork left in common) split among the
    processes sharing it, so no page is counted twice."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(next(line.split()[1] for line in rollup.splitlines()
                              if line.startswith("Pss:")))
    return total
