"""The queue manager: the schedule of Queue/ and every delivery, retry, delay notice and
bounce, and the recovery pass.

The receivers and the Pickup taker are other processes (or other services of the same one):
a new Queue entry reaches the schedule through inotify on Queue/ the moment its `.env` is
renamed in, not by a poll.
"""

from __future__ import annotations

from relay.core.config import Config
from relay.core.process import ChildSpec, Role, Services
from relay.queue.recovery import Recovery
from relay.queue.scheduler import Scheduler


class QueueManager:
    """The scheduler and the recovery pass as one service."""

    def __init__(self, services: Services) -> None:
        self.scheduler = Scheduler(services.config, services.store, services.intake,
                                   services.events)
        # at every start, the relay's or its own after a kill: a commit in progress in
        # another process holds its files' locks, so the pass never takes it for a leftover
        self.recovery = Recovery(services.config, services.store, services.events)

    async def start(self) -> None:
        """The schedule runs; the scan of Queue and then the recovery pass go on beside it."""
        await self.scheduler.start()
        self.recovery.start(after=self.scheduler.scanned)

    async def loaded(self) -> None:
        """Once the window the last scan saved is loaded (the messages due soonest)."""
        await self.scheduler.loaded()

    async def stop(self) -> None:
        await self.recovery.stop()
        await self.scheduler.stop()

    def reconfigure(self, config: Config) -> None:
        self.scheduler.reconfigure(config)


class QueueProcess(Role):
    def build(self, spec: ChildSpec) -> QueueManager:
        return QueueManager(self.services)

    async def start_service(self) -> None:
        """Ready (to the supervisor, and so to systemd) once the saved window is loaded."""
        await self.service.start()
        await self.service.loaded()
