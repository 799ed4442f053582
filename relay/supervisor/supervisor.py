"""`mailroot serve`: a supervisor and its child processes, split where the folders already
split the work (as Postfix splits its daemons), so the relay uses every core.

    supervisor (this module)   the mailroot lock, tmp/ cleared at start, the listening
                               sockets, /metrics, systemd; starts, restarts, stops children
    receiver-N  relay.receiver SMTP sessions on the shared sockets -> Drop/, Queue/
    pickup      relay.pickup   Pickup/ -> Drop/, Queue/
    queue       relay.queue    Queue/ (inotify) -> next hops, Badmail/, reports; the
                               recovery pass beside it at each of its starts

A child that dies is started again after a back-off (0.5 s, doubling to 30 s while it keeps
dying young); SIGTERM stops them all within 5 s. The supervisor watches the config file and
hands each valid change to every child.
`smtp.workers: 1` (or `--workers 1`) runs the whole relay in one process instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from relay.core.config import Config, ConfigError
from relay.core.dkim import load_keys
from relay.core.events import LogFollower
from relay.core.logrotate import Rotation
from relay.core.process import ChildSpec
from relay.receiver.connection import LISTEN_BACKLOG, ListenError, stress_event
from relay.supervisor.anvil_server import AnvilServer
from relay.supervisor.config_watch import ConfigWatcher
from relay.supervisor.host import MailrootHost

RESTART_FIRST = 0.5  # seconds before a dead child is started again; doubled per quick death
RESTART_MAX = 30.0
STEADY = 10.0  # a child that ran this long died of something new: the back-off starts over
START_TIMEOUT = 30.0
STOP_GRACE = 4.0  # then SIGKILL: all are gone within 5 s of SIGTERM


async def send(pipe: asyncio.StreamWriter, thing: object) -> None:
    """One pickled object, framed as multiprocessing's Connection reads it."""
    data = pickle.dumps(thing)
    pipe.write(struct.pack("!i", len(data)) + data)
    await pipe.drain()


class ChildFailed(ListenError):
    """A child process could not start (a certificate, a socket, the disk)."""


def bind_listeners(config: Config, receivers: int) -> list[list[socket.socket]]:
    """Each receiver's listening sockets, one per smtp.listen address, all on the same port
    (SO_REUSEPORT): the kernel spreads connections over the receivers, where one shared socket
    would let the first receiver to wake accept a whole burst."""
    per_receiver: list[list[socket.socket]] = [[] for _ in range(receivers)]
    for listen in config.smtp.listen:
        host, port = listen.with_default(25)
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            for family, kind, proto, _, address in dict.fromkeys(infos):
                for sockets in per_receiver:
                    sock = socket.socket(family, kind, proto)
                    sockets.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(address)
                    sock.listen(LISTEN_BACKLOG)
                    sock.setblocking(False)
                    address = sock.getsockname()  # port 0: the others share the one bound
        except OSError as exc:
            for sock in (s for sockets in per_receiver for s in sockets):
                sock.close()
            raise ListenError(f"cannot listen on {listen} (smtp.listen): "
                              f"{exc.strerror or exc}") from None
    return per_receiver


@dataclass
class Child:
    name: str  # receiver-1, pickup, queue
    role: str
    sockets: list[int] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    state: str = "starting"  # starting, up, restarting, stopped
    failures: int = 0  # quick deaths in a row
    since: float = 0.0  # monotonic time it was last started

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor(MailrootHost):
    """The relay as processes; start() and stop() from a running event loop (`mailroot
    serve`, or the console's embedded relay)."""

    def __init__(self, config: Config, stream: TextIO | None = sys.stderr,
                 workers: int = 2) -> None:
        super().__init__(config, stream)
        load_keys(config)  # a bad DKIM key fails the start here, not in every child
        self.workers = workers
        self.sockets: list[socket.socket] = []
        self.children: list[Child] = []
        self.tasks: list[asyncio.Task] = []
        self.stopping = False
        self.anvil = AnvilServer(config.smtp, announce=self.stress_event)
        self.config_watcher = ConfigWatcher(config.source, self.apply_config, self.events,
                                            announce=False) if config.source else None
        self.handing_out = asyncio.Lock()  # one change at a time: answers come in order

    async def start(self) -> None:
        self.open_mailroot()
        follower = LogFollower.at_end(self.events.path) if self.metrics else None
        try:
            self.serve_metrics()
            per_receiver = bind_listeners(self.config, self.workers)
            self.sockets = [sock for sockets in per_receiver for sock in sockets]
            smtp = self.config.smtp
            for host, port, *_ in self.addresses():
                self.events.emit("smtp-listening", host=host, port=port,
                                 tls=bool(smtp.tls.cert), auth=bool(smtp.auth.users_file))
            self.children = [Child(f"receiver-{i + 1}", "receiver",
                                   [sock.fileno() for sock in sockets])
                             for i, sockets in enumerate(per_receiver)]
            self.children += [Child("pickup", "pickup"), Child("queue", "queue")]
            results = await asyncio.gather(*(self.spawn(c) for c in self.children),
                                           return_exceptions=True)
            if error := next((r for r in results if isinstance(r, BaseException)), None):
                raise error
        except BaseException:
            await self.stop_children()
            self.close_sockets()
            self.anvil.close()
            if self.metrics:
                self.metrics.stop()
            self.release_lock()
            raise
        self.tasks = [asyncio.create_task(self.keep_running(c), name=f"watch-{c.name}")
                      for c in self.children]
        if follower is not None:
            self.follow_children(follower)
        if self.config_watcher:
            self.config_watcher.start()
        await self.announce()

    def stress_event(self, stressed: bool, open_now: int) -> None:
        """The relay's stress mode began or ended (all receivers' connections counted)."""
        stress_event(self.events, self.config, stressed, open_now)

    async def spawn(self, child: Child) -> None:
        """Start the child and wait until it says it is ready (its services run)."""
        link = self.anvil.link() if child.role == "receiver" else None
        spec = ChildSpec(child.role, self.config, os.getpid(), child.name, child.sockets,
                         anvil=link.fileno() if link else None, receivers=self.workers,
                         stderr_lines=self.stream is not None)
        child.state, child.since = "starting", time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"relay.{child.role}", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None if self.stream is not None else asyncio.subprocess.DEVNULL,
                # the lock is held while any child lives
                pass_fds=[*child.sockets, self._lock_fd, *([link.fileno()] if link else [])])
        finally:
            if link:
                link.close()
        child.proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            await send(proc.stdin, spec)
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        except TimeoutError:
            line = "error timeout did not say it was ready within 30 s"
        except OSError:  # it died before it read its spec
            line = ""
        if line.strip() == "ready":
            child.state = "up"
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        code = await proc.wait()
        _, _, reason = line.strip().removeprefix("error ").partition(" ")
        raise ChildFailed(f"{child.name}: {reason or f'exited ({code}) before it was ready'}")

    async def keep_running(self, child: Child) -> None:
        """Start the child again whenever it dies, after a back-off."""
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self.stopping:
                return
            quick = time.monotonic() - child.since < STEADY
            child.failures = child.failures + 1 if quick else 0
            delay = min(RESTART_MAX, RESTART_FIRST * 2 ** child.failures)
            child.state = "restarting"
            self.events.emit("process-exited", process=child.name, pid=child.proc.pid,
                             code=code, restart_in=delay)
            await asyncio.sleep(delay)
            try:
                await self.spawn(child)
            except ChildFailed as exc:
                self.events.emit("process-error", process=child.name, error=str(exc))
            else:
                self.events.emit("process-restarted", process=child.name, pid=child.proc.pid)

    def apply_config(self, config: Config) -> None:
        """A changed config file: checked here (ConfigError: nothing applied), then handed
        to every child; config-reloaded once all of them applied it."""
        if config.root.absolute() != self.config.root.absolute():
            raise ConfigError("mailroot cannot change while the relay runs: restart it",
                              file=config.source, key="mailroot")
        load_keys(config)  # a bad DKIM key: the children keep the config they have
        self.config = config  # what a child started from now on gets
        self.events.rotation = Rotation.of(config.log)
        self.anvil.anvil.reconfigure(config.smtp)
        self.tasks.append(asyncio.create_task(self.hand_out(config)))

    async def hand_out(self, config: Config) -> None:
        async with self.handing_out:
            refusals = await asyncio.gather(*(self.send_config(c, config)
                                              for c in self.children if c.state == "up"))
        if any(refusals):
            self.events.emit("config-error", file=config.source,
                             error="; ".join(r for r in refusals if r),
                             detail="not every process applied it")
        else:
            self.events.emit("config-reloaded", file=config.source)

    async def send_config(self, child: Child, config: Config) -> str:
        """'' once the child applied it, else why not."""
        proc = child.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            await send(proc.stdin, config)
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        except (OSError, TimeoutError):
            return f"{child.name} did not answer"
        if line.strip() == "applied":
            return ""
        return f"{child.name}: {line.strip().removeprefix('error config ') or 'exited'}"

    def follow_children(self, follower: LogFollower) -> None:
        """/metrics counts what every process did: at each scrape, the events logged since
        the last one are fed to the counters."""
        assert self.metrics is not None
        lock = threading.Lock()  # scrapes run in the metrics server's threads

        def catch_up() -> None:
            with lock:
                for record in follower.read():
                    self.metrics.observe(record)  # type: ignore[union-attr]

        self.metrics.registry.before_collect = catch_up

    def addresses(self) -> list[tuple]:
        """Where the receivers listen (port 0 in the config gives the port bound)."""
        return [sock.getsockname() for sock in self.sockets[:len(self.sockets) // self.workers]]

    def processes(self) -> str:
        """'pid 10: 2 receivers, pickup, queue up', or which are not up."""
        down = [f"{c.name} {c.state}" for c in self.children if c.state != "up"]
        return (f"pid {os.getpid()}: {self.workers} receivers, pickup, queue"
                + (f" ({', '.join(down)})" if down else " up"))

    async def stop_children(self) -> None:
        """SIGTERM to every child; SIGKILL to any still there after STOP_GRACE."""
        self.stopping = True
        live = [c for c in self.children if c.alive]
        for child in live:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        waits = [asyncio.ensure_future(c.proc.wait()) for c in live]  # type: ignore[union-attr]
        if waits:
            await asyncio.wait(waits, timeout=STOP_GRACE)
        for child in live:
            if child.alive:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()  # type: ignore[union-attr]
                await child.proc.wait()  # type: ignore[union-attr]
            child.state = "stopped"

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    async def stop_services(self) -> None:
        self.stopping = True
        if self.config_watcher:
            await self.config_watcher.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.stop_children()
        self.close_sockets()
        self.anvil.close()


def workers_for(config: Config, workers: int | None = None) -> int:
    """Receiver processes: --workers, else smtp.workers, else one per core."""
    return workers or config.smtp.workers or os.cpu_count() or 1


def make_relay(config: Config, stream: TextIO | None = sys.stderr,
               workers: int | None = None) -> MailrootHost:
    """The relay as configured: one process when workers is 1, else the supervisor."""
    count = workers_for(config, workers)
    if count == 1:  # the services run in this process: only then are they loaded here
        from relay.supervisor.single import Relay

        return Relay(config, stream)
    return Supervisor(config, stream, count)


async def serve(config: Config, workers: int | None = None) -> None:
    """Run the relay until SIGTERM or SIGINT; stop cleanly (within 5 s)."""
    relay = make_relay(config, workers=workers)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a SIGTERM while starting stops it after
        loop.add_signal_handler(sig, stopping.set)
    await relay.start()
    try:
        await stopping.wait()
    finally:
        await asyncio.wait_for(relay.stop(), timeout=4.8)
