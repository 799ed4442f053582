"""The whole relay in one process (`smtp.workers: 1`): the services each child of the
supervisor runs alone, on one store and intake."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from relay.core.config import Config
from relay.core.process import Services
from relay.pickup.watcher import PickupWatcher
from relay.queue.process import QueueManager
from relay.receiver.process import Receiver
from relay.supervisor.config_watch import ConfigWatcher
from relay.supervisor.host import MailrootHost


class Relay(MailrootHost):
    """The whole relay in one process (`smtp.workers: 1`): the services each child of the
    supervisor runs alone (listener, Pickup, queue manager), on one store and intake."""

    def __init__(self, config: Config, stream: TextIO | None = sys.stderr) -> None:
        super().__init__(config, stream)
        self.services = Services(config, self.store, self.events)
        self.intake = self.services.intake
        self.receiver = Receiver(self.services)
        self.queue = QueueManager(self.services)
        self.pickup = PickupWatcher(config, self.store, self.intake, self.events)
        self.services.running += [self.receiver, self.queue, self.pickup]
        self.intake.on_queued = self.queue.scheduler.notify
        self.config_watcher = ConfigWatcher(config.source, self.apply_config, self.events) \
            if config.source else None
        if self.metrics:
            self.events.listeners.append(self.metrics.observe)

    def apply_config(self, config: Config) -> None:
        """Swap in a changed config while running, as each child of the supervisor does.

        Raises ConfigError for a change that needs a restart; nothing is applied then.
        """
        self.services.apply_config(config)
        self.config = config

    async def start(self) -> None:
        """Intake first: SMTP and Pickup run within moments at any queue size; the relay is
        announced once the queue manager has its saved window back; its scan and the
        recovery pass go on beside them."""
        self.open_mailroot()
        self.store.top_up()
        try:
            self.serve_metrics()
            await self.receiver.start()
        except Exception:
            if self.metrics:
                self.metrics.stop()
            self.release_lock()
            raise
        await self.queue.start()
        await self.pickup.start()
        if self.config_watcher:
            self.config_watcher.start()
        await self.queue.loaded()
        await self.announce()

    def addresses(self) -> list[tuple]:
        """Where the listener listens (port 0 in the config gives the port bound)."""
        return [sock.getsockname() for server in self.receiver.smtpd.servers
                for sock in server.sockets]

    def processes(self) -> str:
        """Which processes run the relay, for people."""
        return f"pid {os.getpid()}"

    async def stop_services(self) -> None:
        if self.config_watcher:
            await self.config_watcher.stop()
        await self.queue.recovery.stop()
        await self.receiver.stop()
        await self.pickup.stop()
        await self.queue.scheduler.stop()
