"""The queue manager: when each queued message is tried next, delivery workers, retries,
the delay notice, expiry, Badmail and reports to senders.

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
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import watchfiles

from relay.core.address import domain_of
from relay.core.bounce import failed_delivery_ops, quarantine, quarantine_ops
from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.inotify import DirectoryWatch
from relay.core.intake import Intake, Rejected, Submission
from relay.core.router import Router
from relay.core.store import (
    QUEUE,
    Attempt,
    Envelope,
    Mailroot,
    Op,
    Recipient,
    Write,
    damage,
    is_id,
)
from relay.queue.dsn import delivery_report
from relay.queue.resolver import Resolver
from relay.queue.smtp_client import Client, Result
from relay.queue.smtp_transaction import Outgoing, Reply, masquerade

BUSY_RETRY = 0.5  # a message claimed by someone else is looked at again this soon
CLAIM_WAIT = 0.02  # a new entry's writer may still hold its lock some µs after its marker
WATCH_DEBOUNCE_MS = 100
RESCAN_SECONDS = 30.0  # the shortest time between safety-net scans...
RESCAN_COST_SHARE = 0.01  # ...which may take at most this share of the time
SCAN_BATCH = 2000  # envelopes read per hop to the scan thread
SAVED_WINDOW = "queue.window"  # the window as the last scan left it: the next start's first guess


def rounds(envelope: Envelope) -> int:
    """Delivery rounds since the message was queued or last requeued (the attempts of one
    round, one per domain, share a time); a requeued message keeps its earlier attempts."""
    return len({a.time for a in envelope.attempts if a.time >= envelope.queued_at})


def summary(replies: dict[str, Reply]) -> str:
    texts = {str(reply) for reply in replies.values()}
    if len(texts) == 1:
        return texts.pop()
    return "; ".join(f"<{rcpt}> {reply}" for rcpt, reply in replies.items())


class Scheduler:
    def __init__(self, config: Config, store: Mailroot, intake: Intake, events: EventLog,
                 workers: int = 50) -> None:
        self.config = config
        self.store = store
        self.intake = intake
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
        self.releasing: list[tuple[int, str | None]] = []  # claims to close (, retired id)
        self.retired: set[str] = set()  # delivered, out of Queue, their claims not yet closed

    @property
    def router(self) -> Router:
        return self.intake.router  # follows live config changes

    def reconfigure(self, config: Config) -> None:
        """Live settings: schedule, routes, limits per step (not DNS or pool sizes)."""
        self.config = config
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

    # --- one message ---

    async def attempt(self, mid: str) -> None:
        """Claim the message, try its pending recipients, record the outcome."""
        claim, loaded = await asyncio.get_running_loop().run_in_executor(
            self.disk, self._claim, mid)
        if claim is None:
            if self.store.has(QUEUE, mid):
                self.inflight.discard(mid)
                if self.store.path(QUEUE, mid, ".eml").exists():
                    self.schedule(mid, time.time() + BUSY_RETRY)
                else:  # its message file vanished under it: never retry it blindly
                    await asyncio.to_thread(self._due_times, [mid])
            return
        try:
            if isinstance(loaded, FileNotFoundError):
                return
            if isinstance(loaded, Exception):  # the scan only skimmed it
                await asyncio.to_thread(self._quarantine_claimed, mid, loaded)
                return
            envelope, data = loaded
            now = time.time()
            if envelope.next_attempt > now + 0.05:  # rescheduled by someone meanwhile
                self.inflight.discard(mid)
                self.schedule(mid, envelope.next_attempt)
                return
            problem = damage(envelope, data)
            notes: list[dict] = []
            if problem:
                notes.append({"event": "quarantined", "id": mid, "reason": problem})
                for rcpt in envelope.pending:
                    rcpt.state, rcpt.status, rcpt.reply = "failed", "5.3.0", problem
            else:
                notes = await self.deliver(envelope, data, now)
            await self.finish(envelope, data, now, notes)
        finally:
            self._release(claim, mid)

    def _claim(self, mid: str) -> tuple[int | None, tuple[Envelope, bytes] | Exception | None]:
        """The message's claim and, under it, its envelope and bytes (or why they could not
        be read): one hop to a disk thread for both."""
        claim = self.store.acquire(QUEUE, mid, wait=CLAIM_WAIT)
        if claim is None:
            return None, None
        try:
            return claim, self._load(mid)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
            return claim, exc
        except BaseException:
            os.close(claim)
            raise

    def _release(self, claim: int, mid: str) -> None:
        """Close a claim off the loop, and then recycle the files of a delivered message
        (more than the loop should pay). Claims released meanwhile wait for the same hop
        to a disk thread."""
        retired = mid in self.retired
        self.retired.discard(mid)
        self.releasing.append((claim, mid if retired else None))
        if len(self.releasing) == 1:
            self.disk.submit(self._close_released)

    def _close_released(self) -> None:
        claims, self.releasing = self.releasing, []  # claims released from now on: a new hop
        for claim, _ in claims:
            os.close(claim)
        retired = [mid for _, mid in claims if mid]
        if retired:
            self.store.dispose_retired(retired)

    def _quarantine_claimed(self, mid: str, exc: Exception) -> None:
        reason = f"the envelope {QUEUE}/{mid}.env cannot be read: {exc!r}"
        self.store.commit(quarantine_ops(self.store, QUEUE, mid, None, reason))
        self.events.emit("quarantined", id=mid, folder=QUEUE, reason=reason)

    def _load(self, mid: str) -> tuple[Envelope, bytes]:
        """The claimed message's envelope and bytes; FileNotFoundError if an interrupted move
        had left this Queue copy behind (the start-up recovery may not have reached it yet:
        it is resolved here, before any delivery)."""
        stale = self.store.settle(mid)
        for folder in stale:
            self.events.emit("recovered", id=mid, folder=folder,
                             action="removed the source of an interrupted move")
        if QUEUE in stale:
            raise FileNotFoundError(f"{QUEUE}/{mid}.env")
        return self.store.read_envelope(QUEUE, mid), self.store.read_claimed(QUEUE, mid)

    async def deliver(self, envelope: Envelope, data: bytes, now: float) -> list[dict]:
        """One round: the pending recipients, by domain, in parallel; returns the events."""
        sender, data = masquerade(envelope.sender, data, self.config.delivery.masquerade_domain)
        outgoing = Outgoing(sender, data)
        groups: dict[str, list[str]] = defaultdict(list)
        for rcpt in envelope.pending:
            groups[domain_of(rcpt.address).lower()].append(rcpt.address)
        sends = [self.client.deliver(self.router.route(domain), outgoing, rcpts)
                 for domain, rcpts in groups.items()]
        # one domain (most mail): awaited here, not in a task of its own, so the reply is
        # recorded two turns of the loop sooner (what a kill finds delivered but not recorded)
        results = [await sends[0]] if len(sends) == 1 else await asyncio.gather(*sends)
        notes: list[dict] = []
        for rcpts, result in zip(groups.values(), results, strict=True):
            notes += self.record(envelope, now, rcpts, result)
        return notes

    def record(self, envelope: Envelope, now: float, rcpts: list[str],
               result: Result) -> list[dict]:
        """Put one domain's replies into the envelope; the events to emit once it is saved."""
        by_address = {r.address: r for r in envelope.recipients}
        outcomes: dict[str, list[str]] = defaultdict(list)
        for address, reply in result.replies.items():
            rcpt = by_address[address]
            rcpt.state = "delivered" if reply.ok else "failed" if reply.permanent else "deferred"
            rcpt.status, rcpt.reply, rcpt.host = reply.status, str(reply), result.host
            outcomes[rcpt.state].append(address)
        envelope.attempts.append(Attempt(now, result.host, summary(result.replies), result.tls,
                                         rcpts))
        return [{"event": state, "id": envelope.id, "to": addresses, "host": result.host,
                 "reply": summary({a: result.replies[a] for a in addresses}), "tls": result.tls}
                for state, addresses in outcomes.items()]

    async def finish(self, envelope: Envelope, data: bytes, now: float,
                     notes: list[dict]) -> None:
        """Write back the outcome (retry later, done, or Badmail and an NDR), then tell:
        an event never runs ahead of what is on disk."""
        delivery = self.config.delivery
        expires = envelope.clock_start + delivery.expiration
        if envelope.pending and now >= expires:
            for rcpt in envelope.pending:
                rcpt.state, rcpt.status = "failed", "4.4.7"
            notes.append({"event": "expired", "id": envelope.id,
                          "after": str(delivery.expiration)})
        if envelope.pending:
            interval = delivery.retry[min(rounds(envelope), len(delivery.retry)) - 1]
            notice_at = envelope.clock_start + delivery.delay_notification
            envelope.next_attempt = min(now + interval, expires)
            if not envelope.delay_notified and envelope.sender and notice_at > now:
                # one more try when the delay notice is due, so it is not late by a whole
                # retry interval (up to hours with the IIS defaults)
                envelope.next_attempt = min(envelope.next_attempt, notice_at)
            for note in notes:
                if note["event"] == "deferred":
                    note["next_attempt"] = round(envelope.next_attempt, 3)
            notify = (not envelope.delay_notified and bool(envelope.sender)
                      and now >= envelope.clock_start + delivery.delay_notification)
            envelope.delay_notified |= notify
            update: list[Op] = [self.store.envelope_write(QUEUE, envelope)]
            if notify:
                report = delivery_report(envelope, data, envelope.pending,
                                         hostname=self.config.fqdn, action="delayed",
                                         will_retry_until=expires)
                notice = await self.report(envelope, report, "delay", update)
                notes.append({"event": "delay-notice", "id": envelope.id, "notice": notice,
                              "to": [r.address for r in envelope.pending]})
            else:
                await asyncio.to_thread(self.store.commit, update)
            self.tell(notes)
            self.inflight.discard(envelope.id)
            self.schedule(envelope.id, envelope.next_attempt)
            return
        failed = [r for r in envelope.recipients if r.state == "failed"]
        if not failed:
            # out of Queue at once, on the loop, as the last reply arrives (two renames
            # into tmp/): a kill from then on cannot deliver it again
            self.store.retire_delivered(envelope.id)
            self.retired.add(envelope.id)
            self.tell(notes)
            return
        reason = self.failure_reason(failed, expired=now >= expires)
        moves = failed_delivery_ops(self.store, envelope, data, reason)
        bounced = {"event": "bounced", "id": envelope.id, "reason": reason, "ndr": None,
                   "to": [r.address for r in failed]}
        if envelope.sender:
            report = delivery_report(envelope, data, failed, hostname=self.config.fqdn,
                                     action="failed")
            bounced["ndr"] = await self.report(envelope, report, "ndr", moves)
        else:
            await asyncio.to_thread(self.store.commit, moves)
            bounced["detail"] = "null sender: no report is sent"
        self.tell([*notes, bounced])

    def tell(self, notes: list[dict]) -> None:
        for note in notes:
            self.events.emit(note.pop("event"), **note)

    def failure_reason(self, failed: list[Recipient], expired: bool) -> str:
        first = failed[0]
        what = (f"delivery time expired ({self.config.delivery.expiration}); last reply"
                if expired else "delivery failed")
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return (f"{what} for <{first.address}>{others}: {first.reply or first.status}")

    async def report(self, envelope: Envelope, report: bytes, kind: str,
                     with_ops: list[Op]) -> str | None:
        """Send a report to the sender (and the NDR copy address), committed together with
        `with_ops`; returns its id, or None if intake refused it (the ops are still done)."""
        recipients = [envelope.sender]
        if kind == "ndr" and self.config.delivery.ndr_copy_to:
            recipients.append(self.config.delivery.ndr_copy_to)
        sub = Submission(report, "", recipients, f"{kind} for {envelope.id}",
                         done_ops=with_ops, kind=kind)
        try:
            outcome = await asyncio.to_thread(self.intake.accept, sub)
        except Rejected as exc:
            self.events.emit("report-error", id=envelope.id, kind=kind, reason=exc.reason)
            await asyncio.to_thread(self.store.commit, with_ops)
            return None
        return outcome.id
