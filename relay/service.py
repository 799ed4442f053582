"""Wires the relay together: folders, the mailroot lock, intake, the services, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import sys
from typing import TextIO

from relay import journal
from relay.address import domain_of
from relay.admin import Admin
from relay.config import Config, ConfigError
from relay.config_watch import ConfigWatcher
from relay.events import EventLog
from relay.intake import Intake
from relay.logrotate import Rotation
from relay.metrics import RelayMetrics
from relay.pickup import PickupWatcher
from relay.recovery import Recovery
from relay.scheduler import Scheduler
from relay.sdnotify import Notifier, supervise
from relay.smtpd import ListenError, SmtpServer
from relay.store import QUEUE, READY_FILES, Mailroot

LOCK_NAME = "relay.lock"


class AlreadyRunning(Exception):
    """Another relay holds this mailroot."""


def lock_holder(store: Mailroot) -> str | None:
    """Who holds the mailroot's relay lock ('pid 123 on host'), or None if no relay runs."""
    path = store.root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)
    return None


class MailrootHost:
    """What every form of the relay does around its services: the mailroot lock, recovery at
    start, the metrics, telling systemd; start() and stop() from a running event loop."""

    def __init__(self, config: Config, stream: TextIO | None = sys.stderr) -> None:
        self.config = config
        self.store = Mailroot(config.root, READY_FILES)
        self.store.ensure()
        self.stream = stream
        self.events = EventLog(self.store.log_dir, stream, Rotation.of(config.log))
        if stream is not None and journal.attached(stream):
            self.events.format = journal.journal_line  # the journal stamps lines itself
        self.metrics = RelayMetrics(self.store) if config.metrics.listen else None
        self._lock_fd: int | None = None
        self.notifier = Notifier()
        self._supervise: asyncio.Task | None = None
        self.running = False

    def _take_lock(self) -> None:
        fd = os.open(self.store.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(f"another relay is already running on {self.store.root} "
                                 f"({holder or 'unknown process'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    def open_mailroot(self) -> None:
        """Take the lock and clear tmp/; the services may start (the recovery pass runs
        beside them, in the queue manager)."""
        self._take_lock()
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGIO, signal.SIG_IGN)  # Pickup's read-lease probe
        self.store.clear_tmp()

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def announce(self) -> None:
        """The service is ready: it listens, watches Pickup, and the queue manager runs with
        the window its last scan saved loaded (the messages due soonest); the scan of the rest
        of Queue and the recovery pass go on beside it. READY=1 goes at once; the first
        STATUS= (which reads Queue's envelopes) follows from supervise()."""
        self.running = True
        self.events.emit("relay-started", mailroot=str(self.store.root), pid=os.getpid())
        self.notifier.send(ready=1, mainpid=os.getpid())
        self._supervise = asyncio.create_task(supervise(self.notifier, self.status_line))

    def serve_metrics(self) -> None:
        listen = self.config.metrics.listen
        if self.metrics is None or listen is None or listen.port is None:
            return  # (config checks say a port is given)
        try:
            host, port = self.metrics.serve(listen.host, listen.port)
        except OSError as exc:
            raise ListenError(f"cannot listen on {listen} (metrics.listen): "
                              f"{exc.strerror or exc}") from None
        self.events.emit("metrics-listening", host=host, port=port)

    def status_line(self) -> str:
        """For systemd's STATUS=: '312 queued, 4 deferred domains' (reads Queue's envelopes
        one at a time, in directory order: a million queued never sit in memory at once)."""
        queued, domains = 0, set()
        for row in Admin(self.config).iter_folder(QUEUE, ordered=False):
            queued += 1
            domains.update(domain_of(r.address).lower() for r in row.recipients
                           if r.state == "deferred")
        return f"{queued} queued, {len(domains)} deferred domain{'s' * (len(domains) != 1)}"

    async def stop_services(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self.notifier.send(stopping=1, status="stopping")
        if self._supervise:
            self._supervise.cancel()
            await asyncio.gather(self._supervise, return_exceptions=True)
        await self.stop_services()
        self.store.discard_ready()
        if self.metrics:
            self.metrics.stop()
        self.events.emit("relay-stopped", pid=os.getpid())
        self.events.close()
        self.release_lock()


class Relay(MailrootHost):
    """The whole relay in one process (`smtp.workers: 1`): listener, Pickup, queue manager."""

    def __init__(self, config: Config, stream: TextIO | None = sys.stderr) -> None:
        super().__init__(config, stream)
        self.intake = Intake(config, self.store)
        self.pickup = PickupWatcher(config, self.store, self.intake, self.events)
        self.scheduler = Scheduler(config, self.store, self.intake, self.events)
        self.intake.on_queued = self.scheduler.notify
        self.smtpd = SmtpServer(config, self.intake, self.events)
        self.recovery = Recovery(config, self.store, self.events)
        self.config_watcher = ConfigWatcher(config.source, self.apply_config, self.events) \
            if config.source else None
        if self.metrics:
            self.events.listeners.append(self.metrics.observe)

    def apply_config(self, config: Config) -> None:
        """Swap in a changed config while running (each part extends this with its own).

        Raises ConfigError for a change that needs a restart; nothing is applied then.
        """
        if config.root.absolute() != self.config.root.absolute():
            raise ConfigError("mailroot cannot change while the relay runs: restart it",
                              file=config.source, key="mailroot")
        self.intake.reconfigure(config)  # first: a bad DKIM key raises with nothing changed
        self.config = config
        self.events.rotation = Rotation.of(config.log)  # metrics.listen needs a restart
        self.pickup.config = config
        self.scheduler.reconfigure(config)
        self.smtpd.reconfigure(config)

    async def start(self) -> None:
        """Intake first: SMTP and Pickup run within moments at any queue size; the relay is
        announced once the queue manager has its saved window back; its scan and the
        recovery pass go on beside them."""
        self.open_mailroot()
        self.store.top_up()
        try:
            self.serve_metrics()
            await self.smtpd.start()
        except Exception:
            if self.metrics:
                self.metrics.stop()
            self.release_lock()
            raise
        await self.scheduler.start()
        await self.pickup.start()
        if self.config_watcher:
            self.config_watcher.start()
        self.recovery.start(after=self.scheduler.scanned)
        await self.scheduler.loaded()
        await self.announce()

    def addresses(self) -> list[tuple]:
        """Where the listener listens (port 0 in the config gives the port bound)."""
        return [sock.getsockname() for server in self.smtpd.servers for sock in server.sockets]

    def processes(self) -> str:
        """Which processes run the relay, for people."""
        return f"pid {os.getpid()}"

    async def stop_services(self) -> None:
        if self.config_watcher:
            await self.config_watcher.stop()
        await self.recovery.stop()
        await self.smtpd.stop()
        await self.pickup.stop()
        await self.scheduler.stop()
