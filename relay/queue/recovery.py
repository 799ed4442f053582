"""The start-up recovery pass, run beside a live relay instead of before it.

A million queued messages take tens of seconds to walk, and intake must not wait for that:
new messages get new ids, so nothing a crash left half-done concerns them.  What it does
concern is resolved per id before first use (`Mailroot.settle()` under the claim, by the
queue manager and the operator API); this pass clears the rest: uncommitted partial entries,
interrupted moves, damaged entries in Hold, then expired Trash (`purge_expired`, which the
operator API also calls after each delete).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

from relay.core.bounce import quarantine
from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.store import HOLD, TRASH, Mailroot, json_fields

STEP = 500  # actions taken per hop to the worker thread


class Recovery:
    """One background pass; `stop()` ends it between two entries."""

    def __init__(self, config: Config, store: Mailroot, events: EventLog) -> None:
        self.config, self.store, self.events = config, store, events
        self.halt = threading.Event()
        self.task: asyncio.Task | None = None

    def start(self, after: asyncio.Event) -> None:
        """Begin once `after` is set (the queue manager's first scan: finding due mail
        first, the lazy per-id recovery covering what this pass has not reached)."""
        self.task = asyncio.create_task(self.run(after), name="recovery")

    async def stop(self) -> None:
        self.halt.set()  # a walk in its thread ends at the next entry
        if self.task is not None:
            self.task.cancel()  # it may still be waiting for the first scan
            await asyncio.gather(self.task, return_exceptions=True)

    async def run(self, after: asyncio.Event) -> None:
        await after.wait()
        began = time.monotonic()
        actions = self.store.recover(self.halt)
        done = 0
        while step := await asyncio.to_thread(lambda: list(itertools.islice(actions, STEP))):
            for folder, mid, what in step:
                self.events.emit("recovered", id=mid, folder=folder, action=what)
            done += len(step)
        if self.halt.is_set():
            return
        quarantined = await asyncio.to_thread(self.quarantine_held)
        if not self.halt.is_set():
            await asyncio.to_thread(purge_expired, self.store, self.config.admin.trash_retention,
                                    self.events)
            self.events.emit("recovery-finished", recovered=done, quarantined=quarantined,
                             seconds=round(time.monotonic() - began, 3))

    def quarantine_held(self) -> int:
        """Damaged entries in Hold go to Badmail (the queue manager checks Queue's as it
        scans), so they are never released and delivered blindly."""
        count = 0
        for mid, _, _ in self.store.damaged(HOLD):
            if self.halt.is_set():
                break
            if reason := quarantine(self.store, HOLD, mid):
                self.events.emit("quarantined", id=mid, folder=HOLD, reason=reason)
                count += 1
        return count


def purge_expired(store: Mailroot, retention: float, events: EventLog) -> list[str]:
    """Remove trash deleted more than `retention` seconds ago, each under its claim (an
    undelete under way keeps it), marker first; returns the ids removed."""
    cutoff = time.time() - retention
    purged = []
    for mid in store.ids(TRASH):
        try:
            deleted_at = json_fields(store.path(TRASH, mid, ".env").read_bytes()
                                     ).get("deleted_at")
        except (OSError, ValueError, AttributeError):
            continue
        if deleted_at is None or deleted_at >= cutoff:
            continue
        with store.claim(TRASH, mid) as held:
            if held:
                store.commit(store.remove_ops(TRASH, mid))
                purged.append(mid)
    if purged:
        events.emit("trash-purged", ids=purged)
    return purged
