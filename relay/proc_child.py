"""What every child process of the supervisor shares: how it is started, tells it is ready,
follows config changes, and stops.

A child is `python -m relay.proc_child`. Its spec (role, config, inherited sockets) comes
pickled on stdin, and one line on stdout answers: `ready`, or `error KIND MESSAGE`. Later
configs come the same way (the supervisor watches the file), each answered `applied` or
`error config MESSAGE`. It dies with its supervisor (PR_SET_PDEATHSIG), so no child outlives
the relay lock it inherited.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import importlib
import os
import signal
import sys
from dataclasses import dataclass, field

import uvloop

from relay import faults, journal
from relay.anvil_link import Link
from relay.config import Config, ConfigError
from relay.events import EventLog
from relay.intake import Intake
from relay.logrotate import Rotation
from relay.store import READY_FILES, Mailroot

PR_SET_PDEATHSIG = 1
# the module that runs each role: a newcomer finds a process's code by its name
ROLE_MODULES = {"receiver": "relay.proc_receiver", "pickup": "relay.proc_pickup",
                "queue": "relay.proc_queue"}


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
    """One child's job; a subclass builds its services on `intake` and runs them."""

    def __init__(self, spec: ChildSpec) -> None:
        config = spec.config
        self.spec, self.config, self.name = spec, config, spec.name
        self.store = Mailroot(config.root, READY_FILES)
        stream = sys.stderr if spec.stderr_lines else None
        self.events = EventLog(self.store.log_dir, stream, Rotation.of(config.log))
        if stream is not None and journal.attached(stream):
            self.events.format = journal.journal_line
        self.intake = Intake(config, self.store)

    async def start_services(self) -> None:
        raise NotImplementedError

    async def stop_services(self) -> None:
        raise NotImplementedError

    def reconfigure(self, config: Config) -> None:
        """The role's own part of a config change."""

    def apply_config(self, config: Config) -> None:
        """A changed config file, as the single-process relay applies it (a change that needs
        a restart raises ConfigError, and nothing is applied)."""
        if config.root.absolute() != self.config.root.absolute():
            raise ConfigError("mailroot cannot change while the relay runs: restart it",
                              file=config.source, key="mailroot")
        self.intake.reconfigure(config)  # first: a bad DKIM key raises with nothing changed
        self.config = config
        self.events.rotation = Rotation.of(config.log)
        self.reconfigure(config)
        self.events.emit("config-applied", process=self.name, pid=os.getpid())

    async def start(self) -> None:
        self.store.top_up()
        await self.start_services()
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
        await self.stop_services()
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


async def run(spec: ChildSpec, link: Link) -> int:
    module = importlib.import_module(ROLE_MODULES[spec.role])
    faults.install(spec.config.root.absolute(), spec.name)  # the crash bench's, if asked for
    try:
        role: Role = module.ROLE(spec)
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


def main() -> int:
    link = Link(0, writable=False)
    spec: ChildSpec = link.recv()
    die_with_parent(spec.parent)
    # answers go where stdout went; a stray print can't mix into them
    ANSWERS[0] = os.dup(1)
    os.dup2(2, 1)
    return uvloop.run(run(spec, link))


if __name__ == "__main__":
    # the roles import relay.proc_child: run that module's main, not this __main__ copy's
    from relay.proc_child import main as child_main

    sys.exit(child_main())
