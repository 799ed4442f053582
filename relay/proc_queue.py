"""The queue manager process: the schedule of Queue/ and every delivery, retry, delay
notice and bounce.

The receivers and the Pickup taker are other processes: a new Queue entry reaches the
schedule through inotify on Queue/ the moment its `.env` is renamed in, not by a poll.
"""

from __future__ import annotations

import asyncio
import time

from relay.config import Config
from relay.inotify import DirectoryWatch
from relay.proc_child import ChildSpec, Role
from relay.recovery import Recovery
from relay.scheduler import Scheduler
from relay.store import QUEUE, is_id


class QueueManager(Scheduler):
    """The scheduler, told of Queue entries by inotify: an id it does not know is due now
    (the attempt reads its envelope anyway and reschedules one that is not); for one it knows
    (requeue, retry-now, its own write-back) the envelope's due time is read."""

    async def _watch(self) -> None:
        self.changed: set[str] = set()
        self.reading: asyncio.Task | None = None
        # events the kernel dropped (an overflow) are found by the scheduler's periodic rescan
        watch = DirectoryWatch(self.store.folder(QUEUE), self._seen, lambda: None)
        try:
            await self.stop_event.wait()
        finally:
            watch.close()

    def _seen(self, name: str) -> None:
        mid = name[:-4]
        if not name.endswith(".env") or not is_id(mid) or mid in self.inflight:
            return
        if mid not in self.due:
            self.schedule(mid, time.time())
            return
        self.changed.add(mid)
        if self.reading is None or self.reading.done():
            self.reading = asyncio.create_task(self._read_changed())

    async def _read_changed(self) -> None:
        while self.changed:
            mids, self.changed = sorted(self.changed), set()
            present = dict(await asyncio.to_thread(self._due_times, mids))
            for mid in mids:
                if mid in present:
                    self.schedule(mid, present[mid])
                else:
                    self.due.pop(mid, None)


class Queue(Role):
    def __init__(self, spec: ChildSpec) -> None:
        super().__init__(spec)
        self.scheduler = QueueManager(self.config, self.store, self.intake, self.events)
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
