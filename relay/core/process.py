"""What a process of the relay is: the services it runs on one store, event log and intake
(Services: a changed config reaches them all one way, in a child of the supervisor or in the
single-process relay), and a child's life under the supervisor.

A child is `python -m relay.receiver`, `relay.pickup` or `relay.queue` (each package's
`__main__` hands its Role to `main`). Its spec (role, config, inherited sockets) comes
pickled on stdin over a Link, and one line on stdout answers: `ready`, or `error KIND
MESSAGE`. Later configs come the same way (the supervisor watches the file), each answered
`applied` or `error config MESSAGE`. It dies with its supervisor (PR_SET_PDEATHSIG), so no
child outlives the relay lock it inherited.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Protocol

import uvloop

from relay.core.config import Config, ConfigError
from relay.core.events import EventLog
from relay.core.intake import Intake
from relay.core.logrotate import Rotation
from relay.core.store import READY_FILES, Mailroot

PR_SET_PDEATHSIG = 1
FAULTS = "MAILROOT_FAULTS"  # names a file of faults to inject (relay/core/faults.py)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def reconfigure(self, config: Config) -> None:
        """Take a changed config (it has been checked; the intake has it already)."""


class Services:
    """One process's store, event log and intake, and the services that run on them."""

    def __init__(self, config: Config, store: Mailroot, events: EventLog) -> None:
        self.config, self.store, self.events = config, store, events
        self.intake = Intake(config, store)
        self.running: list[Service] = []

    def apply_config(self, config: Config) -> None:
        """A changed config file, applied to the intake and every service. A change that
        needs a restart raises ConfigError, and nothing is applied."""
        if config.root.absolute() != self.config.root.absolute():
            raise ConfigError("mailroot cannot change while the relay runs: restart it",
                              file=config.source, key="mailroot")
        self.intake.reconfigure(config)  # first: a bad DKIM key raises with nothing changed
        self.config = config
        self.events.rotation = Rotation.of(config.log)  # metrics.listen needs a restart
        for service in self.running:
            service.reconfigure(config)


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


@dataclass
class ChildSpec:
    role: str
    config: Config
    parent: int  # the supervisor's pid: a child whose parent is already gone stops at once
    name: str = ""  # receiver-1, pickup, queue
    sockets: list[int] = field(default_factory=list)  # inherited listening sockets (receivers)
    anvil: int | None = None  # a receiver's link to the supervisor's shared Anvil
    receivers: int = 1  # how many receivers share that Anvil
    stderr_lines: bool = True  # False under the console: the events go to the log only


class Role:
    """One child process: the one service it runs, built by `build` on its Services."""

    def __init__(self, spec: ChildSpec) -> None:
        config = spec.config
        self.spec, self.name = spec, spec.name
        self.store = Mailroot(config.root, READY_FILES)
        stream = sys.stderr if spec.stderr_lines else None
        self.events = EventLog(self.store.log_dir, stream, Rotation.of(config.log))
        self.services = Services(config, self.store, self.events)
        self.service = self.build(spec)
        self.services.running.append(self.service)

    def build(self, spec: ChildSpec) -> Service:
        raise NotImplementedError

    async def start_service(self) -> None:
        await self.service.start()

    def apply_config(self, config: Config) -> None:
        """A changed config file, as the single-process relay applies it (a change that needs
        a restart raises ConfigError, and nothing is applied)."""
        self.services.apply_config(config)
        self.events.emit("config-applied", process=self.name, pid=os.getpid())

    async def start(self) -> None:
        self.store.top_up()
        await self.start_service()
        self.events.emit("process-started", process=self.name, pid=os.getpid())

    def follow_supervisor(self, link: Link) -> None:
        """Apply each config the supervisor sends, and answer for it."""
        def receive() -> None:
            try:
                config = link.recv()
            except (EOFError, OSError):  # the supervisor is gone: PR_SET_PDEATHSIG follows
                asyncio.get_running_loop().remove_reader(link.fileno())
                return
            try:
                self.apply_config(config)
            except ConfigError as exc:
                answer(f"error config {exc}")
            else:
                answer("applied")
        asyncio.get_running_loop().add_reader(link.fileno(), receive)

    async def stop(self) -> None:
        await self.service.stop()
        self.store.discard_ready()
        self.events.emit("process-stopped", process=self.name, pid=os.getpid())
        self.events.close()


def die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before the line above took effect
        os._exit(1)


ANSWERS = [1]  # the descriptor for answers to the supervisor (a copy of the first stdout)


def answer(line: str) -> None:
    os.write(ANSWERS[0], (line.replace("\n", " ") + "\n").encode())


async def run(spec: ChildSpec, link: Link, role_class: type[Role]) -> int:
    if faults_file := os.environ.get(FAULTS):  # the crash bench's, if asked for
        from relay.core import faults

        faults.install(faults_file, spec.config.root.absolute(), spec.name)
    try:
        role = role_class(spec)
        await role.start()
    except Exception as exc:  # a socket, a certificate (ListenError), a DKIM key, the disk
        answer(f"error start {exc}")
        return 2
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    role.follow_supervisor(link)
    answer("ready")
    await stopping.wait()
    await role.stop()
    return 0


def main(role_class: type[Role]) -> int:
    """A child process's life: its spec from stdin, `role_class` run until SIGTERM."""
    link = Link(0, writable=False)
    spec: ChildSpec = link.recv()
    die_with_parent(spec.parent)
    # answers go where stdout went; a stray print can't mix into them
    ANSWERS[0] = os.dup(1)
    os.dup2(2, 1)
    return uvloop.run(run(spec, link, role_class))

