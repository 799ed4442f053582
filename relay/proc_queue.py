"""The queue manager process: the schedule of Queue/ and every delivery, retry, delay
notice and bounce.

The receivers and the Pickup taker are other processes: a new Queue entry reaches the
schedule through inotify on Queue/ the moment its `.env` is renamed in, not by a poll.
"""

from __future__ import annotations

from relay.config import Config
from relay.proc_child import ChildSpec, Role
from relay.recovery import Recovery
from relay.scheduler import Scheduler


class Queue(Role):
    def __init__(self, spec: ChildSpec) -> None:
        super().__init__(spec)
        self.scheduler = Scheduler(self.config, self.store, self.intake, self.events)
        # at every start, the relay's or its own after a kill: a commit in progress in
        # another process holds its files' locks, so the pass never takes it for a leftover
        self.recovery = Recovery(self.config, self.store, self.events)

    async def start_services(self) -> None:
        """Ready (to the supervisor, and so to systemd) once the saved window is loaded."""
        await self.scheduler.start()
        self.recovery.start(after=self.scheduler.scanned)
        await self.scheduler.loaded()

    async def stop_services(self) -> None:
        await self.recovery.stop()
        await self.scheduler.stop()

    def reconfigure(self, config: Config) -> None:
        self.scheduler.reconfigure(config)


ROLE = Queue
