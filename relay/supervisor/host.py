"""What every form of the relay does around its services (the supervisor, or the whole relay
in one process): the mailroot lock, clearing tmp/, the metrics, telling systemd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import TextIO

from relay.core.address import domain_of
from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.logrotate import Rotation
from relay.core.relay_lock import take_lock
from relay.core.store import QUEUE, READY_FILES, Mailroot
from relay.receiver.connection import ListenError
from relay.supervisor.metrics import RelayMetrics
from relay.supervisor.sdnotify import Notifier, supervise


class MailrootHost:
    """What every form of the relay does around its services: the mailroot lock, recovery at
    start, the metrics, telling systemd; start() and stop() from a running event loop."""

    def __init__(self, config: Config, stream: TextIO | None = sys.stderr) -> None:
        self.config = config
        self.store = Mailroot(config.root, READY_FILES)
        self.store.ensure()
        self.stream = stream
        self.events = EventLog(self.store.log_dir, stream, Rotation.of(config.log))
        self.metrics = RelayMetrics(self.store) if config.metrics.listen else None
        self._lock_fd: int | None = None
        self.notifier = Notifier()
        self._supervise: asyncio.Task | None = None
        self.running = False

    def open_mailroot(self) -> None:
        """Take the lock and clear tmp/; the services may start (the recovery pass runs
        beside them, in the queue manager)."""
        self._lock_fd = take_lock(self.store)
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
        for mid in self.store.iter_ids(QUEUE):
            try:
                envelope = self.store.read_envelope(QUEUE, mid)
            except (OSError, ValueError):
                continue  # delivered or moved while we looked
            queued += 1
            domains.update(domain_of(r.address).lower() for r in envelope.recipients
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
