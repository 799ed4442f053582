"""The queue manager's schedule: when each queued message is tried next, and the workers
that take it when it is due (the attempt and its outcome: relay/queue/delivery.py).

Due times live in each message's envelope and, for an active window of the earliest due
(`queue.active_limit` messages, like Postfix's active queue), in a heap in memory, so a
restart keeps the schedule and memory does not grow with the queue.  The window is filled by
incremental scans of `Queue/` (streamed, in batches, beside delivery: a message due now is
tried as soon as the scan reaches it); a scan runs at start, when the earliest entry left
outside the window comes due and there is room, and now and then as a safety net.  Other
processes change the Queue (retry-now, requeue, hold, delete): the folder is watched, and
every delivery claims the message and re-reads its envelope first.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import watchfiles

from relay.core.bounce import quarantine
from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.inotify import DirectoryWatch
from relay.core.intake import Intake
from relay.core.store import QUEUE, Mailroot, Write, is_id
from relay.queue.delivery import Delivery
from relay.queue.resolver import Resolver
from relay.queue.smtp_client import Client

BUSY_RETRY = 0.5  # a message claimed by someone else is looked at again this soon
WATCH_DEBOUNCE_MS = 100
RESCAN_SECONDS = 30.0  # the shortest time between safety-net scans...
RESCAN_COST_SHARE = 0.01  # ...which may take at most this share of the time
SCAN_BATCH = 2000  # envelopes read per hop to the scan thread
SAVED_WINDOW = "queue.window"  # the window as the last scan left it: the next start's first guess


class Scheduler:
    """The window of the earliest-due Queue entries, the scans that fill it, and the workers
    that take each entry from it when it is due."""

    def __init__(self, config: Config, store: Mailroot, intake: Intake, events: EventLog,
                 workers: int = 50) -> None:
        self.config = config
        self.store = store
        self.events = events
        self.client = Client(config, Resolver(config))
        self.workers = max(1, min(workers, config.delivery.max_connections))
        self.heap: list[tuple[float, str]] = []
        self.due: dict[str, float] = {}  # the active window: id -> next attempt
        self.horizon = math.inf  # every Queue entry outside the window is due at or after this
        self.window_last = math.inf  # no entry in the window is due after this (set by _trim)
        self.scan_horizon = math.inf  # the same, as the scan in progress has seen it so far
        self.halt = threading.Event()  # stops a scan's directory walk in its thread
        self.scanned = asyncio.Event()  # set when the first scan is done
        # set once the window the last scan saved is back in memory (at once when there is
        # none): the messages due soonest are known, though the scan of the rest goes on
        self.window_loaded = asyncio.Event()
        self.inflight: set[str] = set()
        self.ready: asyncio.Queue[str] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        # the claims and reads of delivery: few threads, so that they do not contend for the
        # interpreter with the loop more than the disk needs
        self.disk = ThreadPoolExecutor(max_workers=2, thread_name_prefix="queue-disk")
        self.delivery = Delivery(config, store, intake, events, self.client, self.disk)

    def reconfigure(self, config: Config) -> None:
        """Live settings: schedule, routes, limits per step (not DNS or pool sizes)."""
        self.config = config
        self.delivery.config = config
        self.client.config = config
        self.client.timeout = float(config.delivery.timeout)

    # --- the schedule ---

    @property
    def limit(self) -> int:
        return self.config.queue.active_limit

    async def start(self) -> None:
        """Start the services at once; the first scan fills the window beside delivery."""
        self.loop = asyncio.get_running_loop()
        self.tasks = [asyncio.create_task(self._watch(), name="queue-watch")]
        await asyncio.sleep(0)  # the watch is registered before the scan: nothing slips between
        self.scanning = asyncio.create_task(self._scanner(), name="queue-scan")
        self.tasks += [self.scanning,
                       asyncio.create_task(self._dispatch(), name="queue-dispatch")]
        self.tasks += [asyncio.create_task(self._worker(), name=f"deliver-{i}")
                       for i in range(self.workers)]

    async def loaded(self) -> None:
        """Wait until the saved window is back in memory (a few tenths of a second at the
        default queue.active_limit), or the scan has ended without it: a start never hangs
        on it. The rest of Queue is still being scanned."""
        waiting = asyncio.create_task(self.window_loaded.wait())
        try:
            await asyncio.wait([waiting, self.scanning], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()

    async def stop(self) -> None:
        self.stop_event.set()
        self.halt.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()
        self.disk.shutdown(wait=True)

    def notify(self, message_id: str) -> None:
        """A new Queue entry (callable from any thread): try it now."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.schedule, message_id, time.time())

    def schedule(self, message_id: str, due: float) -> None:
        if message_id in self.inflight or self.due.get(message_id) == due:
            return
        self.due[message_id] = due
        self.window_last = max(self.window_last, due)  # still no entry due after it
        heapq.heappush(self.heap, (due, message_id))
        if self.heap[0][1] == message_id:
            self.wake.set()
        if len(self.due) + len(self.inflight) > self.limit + self.limit // 4:
            self._trim()

    def _trim(self) -> None:
        """Keep the earliest due in the window (with those in flight, `limit` in all); the
        others wait on disk, and the earliest of them sets the horizon for the next scan."""
        ordered = sorted(self.due.items(), key=lambda item: item[1])
        room = max(1, self.limit - len(self.inflight))
        self.due = dict(ordered[:room])
        self.heap = [(due, mid) for mid, due in ordered[:room]]
        heapq.heapify(self.heap)
        self.window_last = ordered[room - 1][1] if len(ordered) >= room else math.inf
        if len(ordered) > room:
            self._left_out(ordered[room][1])
        self.wake.set()

    def _left_out(self, due: float) -> None:
        """An entry stays on disk, outside the window: the next scan is due by its time."""
        self.horizon = min(self.horizon, due)
        self.scan_horizon = min(self.scan_horizon, due)

    def _offer(self, message_id: str, due: float) -> None:
        """A scanned entry: into the window, unless the window is full of entries all due
        before it (then a trim would only cut it again: most of a large deferred queue)."""
        if due >= self.window_last and len(self.due) + len(self.inflight) >= self.limit:
            self._left_out(due)
        else:
            self.schedule(message_id, due)

    def window_has_room(self) -> bool:
        return len(self.due) + len(self.inflight) <= self.limit // 2

    def _due_times(self, ids: list[str]) -> list[tuple[str, float]]:
        """(id, next attempt) for the ids whose envelope is in Queue (runs in a thread): from
        the stat where it notes a time to come, else from the envelope; entries read and
        found not fit to deliver (damaged, unreadable) go to Badmail instead (a noted one's
        damage is found when it comes due, by attempt())."""
        found = []
        for mid, noted in self.store.noted_dues(QUEUE, ids):
            due = noted or self.store.due_at(QUEUE, mid)  # noted: not read until it is due
            if due is not None:
                found.append((mid, due))
                continue
            try:
                raw, problem = self.store.inspect(QUEUE, mid)
            except OSError:
                continue
            if problem:
                if reason := quarantine(self.store, QUEUE, mid):
                    self.events.emit("quarantined", id=mid, folder=QUEUE, reason=reason)
                else:  # sound under its claim after all, or busy: looked at again soon
                    found.append((mid, time.time() + BUSY_RETRY))
                continue
            found.append((mid, raw.get("next_attempt", 0.0)))
        return found

    async def _dispatch(self) -> None:
        while True:
            now = time.time()
            while self.heap and self.heap[0][0] <= now:
                due, mid = heapq.heappop(self.heap)
                if self.due.get(mid) != due:
                    continue  # superseded by a later schedule() or dropped
                del self.due[mid]
                self.inflight.add(mid)
                self.ready.put_nowait(mid)
            self.wake.clear()
            wait = self.heap[0][0] - now if self.heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)

    async def _watch(self) -> None:
        """Follow Queue changes made by other processes (intake, requeue, retry-now): each
        envelope named in Queue is told by inotify the moment it is renamed in. An id the
        window does not know is due now (the attempt reads its envelope anyway and
        reschedules one that is not); for one it knows, the envelope's due time is read.
        Where inotify can't be had, watchfiles polls instead. Events the kernel dropped (an
        overflow) are found by the periodic rescan."""
        self.changed: set[str] = set()
        self.reading: asyncio.Task | None = None
        folder = self.store.folder(QUEUE)
        try:
            watch = DirectoryWatch(folder, self._seen, lambda: None)
        except OSError as exc:
            self.events.emit("queue-watch", mode="watchfiles", reason=str(exc))
            async for changes in watchfiles.awatch(folder, watch_filter=None, recursive=False,
                                                   debounce=WATCH_DEBOUNCE_MS, step=20,
                                                   stop_event=self.stop_event):
                for _, path in changes:
                    self._seen(Path(path).name)
            return
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

    # --- scanning the Queue ---

    async def _scanner(self) -> None:
        """Scan at start, then whenever an entry outside the window comes due and the window
        has room, and at least every RESCAN_SECONDS (more seldom when a scan is costly)."""
        while True:
            took = await self.scan()
            safety = time.monotonic() + max(RESCAN_SECONDS, took / RESCAN_COST_SHARE)
            while time.monotonic() < safety:
                if self.horizon <= time.time() and self.window_has_room():
                    break
                await asyncio.sleep(min(1.0, max(0.0, safety - time.monotonic())))

    async def scan(self) -> float:
        """One pass over Queue: every entry the window does not hold is read (envelope fields
        and a stat, never bodies) and scheduled, the window keeping the earliest due.
        Returns the seconds it took."""
        began = time.monotonic()
        if not self.scanned.is_set():  # a restart: what was due soonest comes first
            saved = await asyncio.to_thread(self._saved_window)
            for start in range(0, len(saved), SCAN_BATCH):
                for mid, due in await asyncio.to_thread(self._due_times,
                                                        saved[start:start + SCAN_BATCH]):
                    self.schedule(mid, due)
            if saved:
                self.events.emit("queue-window-restored", entries=len(self.due),
                                 seconds=round(time.monotonic() - began, 3))
            self.window_loaded.set()
        self.scan_horizon = math.inf
        names = self.store.iter_ids(QUEUE, self.halt)
        seen = 0
        while True:
            batch = await asyncio.to_thread(lambda: list(itertools.islice(names, SCAN_BATCH)))
            if not batch:
                break
            seen += len(batch)
            unknown = [m for m in batch if m not in self.due and m not in self.inflight]
            for mid, due in await asyncio.to_thread(self._due_times, unknown):
                self._offer(mid, due)
        self.horizon = self.scan_horizon  # this pass saw every entry outside the window
        self.scanned.set()
        await asyncio.to_thread(self._save_window, sorted(self.due.items(), key=lambda i: i[1]))
        took = time.monotonic() - began
        self.events.emit("queue-scanned", entries=seen, window=len(self.due) + len(self.inflight),
                         seconds=round(took, 3))
        return took

    def _save_window(self, window: list[tuple[str, float]]) -> None:
        """Note the window's ids by due time: only a hint (each envelope is read again when
        it is used), so a stale or missing file costs a restart time, never a message."""
        text = "".join(f"{due!r} {mid}\n" for mid, due in window)
        self.store.commit([Write(self.store.root / SAVED_WINDOW, text.encode())])

    def _saved_window(self) -> list[str]:
        try:
            lines = (self.store.root / SAVED_WINDOW).read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        return [mid for mid in (line.partition(" ")[2] for line in lines) if is_id(mid)]

    async def _worker(self) -> None:
        while True:
            mid = await self.ready.get()
            try:
                await self.attempt(mid)
            except Exception as exc:  # one message must not stop delivery
                self.events.emit("delivery-error", id=mid, error=repr(exc))
                self.inflight.discard(mid)
                self.schedule(mid, time.time() + self.config.delivery.retry[0])
            finally:
                self.inflight.discard(mid)

    async def attempt(self, mid: str) -> None:
        """Claim the message and deliver it (relay/queue/delivery.py); one still queued goes
        back into the window at its next attempt, one claimed by someone else soon."""
        claim, loaded = await asyncio.get_running_loop().run_in_executor(
            self.disk, self.delivery.claim, mid)
        if claim is None:
            if self.store.has(QUEUE, mid):
                self.inflight.discard(mid)
                if self.store.path(QUEUE, mid, ".eml").exists():
                    self.schedule(mid, time.time() + BUSY_RETRY)
                else:  # its message file vanished under it: never retry it blindly
                    await asyncio.to_thread(self._due_times, [mid])
            return
        due = await self.delivery.attempt(mid, claim, loaded)
        if due is not None:
            self.inflight.discard(mid)
            self.schedule(mid, due)
