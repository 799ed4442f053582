"""Watch Pickup: take each finished file once, parse it, hand it to intake.

A file is taken only when no one has it open for writing (a read lease says so at once; where
a lease can't be had, its size and mtime must stay unchanged for `pickup.settle`).  Taking it
is a rename into `tmp/pickup/`, so the name in Pickup is free again at once and a crash leaves
the file where start-up finds it.  Links, FIFOs, sockets, directories and hard-linked files are
never opened: they are moved aside into Badmail with a report.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import watchfiles

from relay.core.bounce import bad_report, badmail_ops
from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.inotify import DirectoryWatch
from relay.core.intake import Intake, Rejected, Submission
from relay.core.message import MessageError
from relay.core.pickup_file import parse_pickup, writer_busy
from relay.core.store import BADMAIL, PICKUP, Link, Mailroot, Unlink, Write, did, is_id, new_id


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]


class PickupWatcher:
    """Takes files from Pickup and feeds them to intake, each exactly once."""

    def __init__(self, config: Config, store: Mailroot, intake: Intake, events: EventLog,
                 workers: int = 8) -> None:
        self.config = config
        self.store = store
        self.intake = intake
        self.events = events
        self.folder = store.folder(PICKUP)
        self.claimed = store.tmp / "pickup"
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pickup")
        self.workers = workers
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.inflight: set[str] = set()
        self.busy: set[str] = set()
        self.stop_event = asyncio.Event()
        self.claimed_inflight: set[str] = set()
        self.unreadable: dict[str, int] = {}  # name -> errno, said once while it lasts
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self.claimed.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.pool, self._retry_claimed)  # taken before a crash
        self.tasks = [asyncio.create_task(self._watch(), name="pickup-watch"),
                      asyncio.create_task(self._rescan_loop(), name="pickup-rescan")]
        self.tasks += [asyncio.create_task(self._worker(), name=f"pickup-{i}")
                       for i in range(self.workers)]
        await asyncio.sleep(0)  # the watch task registers its watch before the scan below
        self.scan()

    async def stop(self) -> None:
        self.stop_event.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.pool.shutdown(wait=True)

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def scan(self) -> None:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return
        for name in sorted(names):
            self.offer(name)

    def offer(self, name: str) -> None:
        if name.startswith(".") or name in self.inflight:
            return
        self.inflight.add(name)
        self.queue.put_nowait(name)

    async def _watch(self) -> None:
        """inotify where the kernel gives it; watchfiles (polling) otherwise."""
        try:
            watch = DirectoryWatch(self.folder, self.offer, self.scan)
        except OSError as exc:
            self.events.emit("pickup-watch", mode="watchfiles", reason=str(exc))
        else:
            try:
                await self.stop_event.wait()
            finally:
                watch.close()
            return
        async for changes in watchfiles.awatch(self.folder, watch_filter=None, debounce=200,
                                               step=10, stop_event=self.stop_event,
                                               recursive=False):
            for change, path in changes:
                if change != watchfiles.Change.deleted and Path(path).parent == self.folder:
                    self.offer(Path(path).name)

    async def _rescan_loop(self) -> None:
        tick = 0.2
        elapsed = 0.0
        while True:
            await asyncio.sleep(tick)
            elapsed += tick
            for name in list(self.busy):  # files still being written: look again soon
                self.busy.discard(name)
                self.offer(name)
            if elapsed >= self.config.pickup.rescan:
                elapsed = 0.0
                self.scan()
                await asyncio.get_running_loop().run_in_executor(self.pool,
                                                                 self._retry_claimed)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            name = await self.queue.get()
            try:
                result = await loop.run_in_executor(self.pool, self._take, name)
            except Exception as exc:  # never let one file stop the relay
                self.events.emit("pickup-error", file=f"Pickup/{name}", error=repr(exc))
                result = "busy"
            finally:
                self.inflight.discard(name)
            if result == "busy":
                self.busy.add(name)

    # --- in worker threads ---

    def _take(self, name: str) -> str:
        """Claim one Pickup entry and process it; returns 'done', 'gone' or 'busy'."""
        path = self.folder / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "gone"
        if not stat.S_ISREG(st.st_mode):
            return self._set_aside(name, st)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return "gone"
        except OSError as exc:  # a link swapped in, or no permission
            if exc.errno == errno.ELOOP:
                return self._set_aside(name, os.lstat(path))
            if self.unreadable.get(name) != exc.errno:  # once, not at every look
                self.unreadable[name] = exc.errno
                self.events.emit("pickup-error", file=f"Pickup/{name}", error=exc.strerror)
            return "busy"
        self.unreadable.pop(name, None)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return self._set_aside(name, st)
            if writer_busy(fd, st, self.config.pickup.settle):
                return "busy"
            claimed = self.claimed / f"{new_id()}.{_safe_name(name)}"
            os.rename(path, claimed)
            did("rename", claimed)
            if os.stat(claimed).st_ino != st.st_ino:  # swapped between open and rename
                os.rename(claimed, path)
                return "busy"
        finally:
            os.close(fd)
        self._process(claimed.name)
        return "done"

    def _retry_claimed(self) -> None:
        """Files taken but not committed (a disk error, or a crash): try them again."""
        for claimed_name in sorted(os.listdir(self.claimed)):
            if claimed_name not in self.claimed_inflight:
                self._process(claimed_name)

    def _process(self, claimed_name: str) -> None:
        """Intake one taken file; on a disk error it stays in tmp/pickup for a later try."""
        claimed = self.claimed / claimed_name
        taken_id, _, name = claimed_name.partition(".")
        source = f"Pickup/{name or taken_id}"
        # The id given when the file was taken: a retry after a crash rewrites the same entries
        # instead of adding a second copy.
        mid = taken_id if is_id(taken_id) else new_id()
        self.claimed_inflight.add(claimed_name)
        try:
            size = claimed.stat().st_size
            limit = self.config.smtp.max_message_size
            if size > limit:
                reason = (f"the file is {size} bytes, over the size limit of {int(limit)} "
                          "bytes (smtp.max_message_size)")
                self._reject_unread(claimed, mid, reason, source)
                return
            raw = claimed.read_bytes()
            try:
                parsed = parse_pickup(raw)
                outcome = self.intake.accept(Submission(
                    parsed.message, parsed.sender, parsed.recipients, source,
                    done_ops=[Unlink(claimed, durable=False)], message_id=mid))
            except (MessageError, Rejected) as exc:
                reason = exc.reason if isinstance(exc, Rejected) else str(exc)
                self.store.commit(badmail_ops(self.store, mid, reason, raw, source=source)
                                  + [Unlink(claimed, durable=False)])
                self.events.emit("intake", id=mid, source=source, outcome="badmail",
                                 reason=reason)
                return
        except FileNotFoundError:
            return
        except OSError as exc:
            self.events.emit("intake-error", source=source, error=exc.strerror or str(exc),
                             detail=f"kept as tmp/pickup/{claimed_name}; tried again later")
            return
        finally:
            self.claimed_inflight.discard(claimed_name)
        dest = "+".join(d for d, rcpts in (("drop", outcome.local), ("queue", outcome.remote))
                        if rcpts)
        self.events.emit("intake", id=mid, source=source, outcome=dest, **{
            "from": parsed.sender, "to": outcome.local + outcome.remote})

    def _reject_unread(self, claimed: Path, mid: str, reason: str, source: str) -> None:
        """Badmail for a file too large to copy: the file itself becomes <id>.eml, linked in
        under its lock (as a move under its claim), and leaves tmp/pickup once the report,
        the marker, is in place."""
        kept = self.store.path(BADMAIL, mid, ".eml")
        head = bad_report(reason, message_id=mid, source=source)
        head += f"\nThe original is {kept.name} beside this report (too large to copy here).\n"
        with self.store.holding(claimed):
            self.store.commit([Link(claimed, kept),
                               Write(self.store.path(BADMAIL, mid, ".BAD"), head.encode()),
                               Unlink(claimed, durable=False)])
        self.events.emit("intake", id=mid, source=source, outcome="badmail", reason=reason)

    def _set_aside(self, name: str, st: os.stat_result) -> str:
        """Move a non-file (or hard-linked file) out of Pickup unopened, with a report."""
        kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else
                "a directory" if stat.S_ISDIR(st.st_mode) else
                "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                f"a file with {st.st_nlink} hard links" if stat.S_ISREG(st.st_mode) else
                "not a regular file")
        mid = new_id()
        reason = f"Pickup/{name} is {kind}; it was not opened or followed, and was moved aside"
        aside = self.store.path(BADMAIL, mid, ".entry")
        head = (f"This entry in Pickup was not a message file and was put in Badmail.\n\n"
                f"Reason:    {reason}\nSource:    Pickup/{name}\nId:        {mid}\n"
                f"Kept as:   Badmail/{aside.name} (not opened)\n")
        # the report first: an entry can't be locked unopened, so it is never in Badmail
        # without its marker (a crash between the two leaves it in Pickup, and a report
        # more)
        bad = self.store.path(BADMAIL, mid, ".BAD")
        self.store.commit([Write(bad, head.encode())])
        try:
            os.rename(self.folder / name, aside)
            did("rename", aside)
        except FileNotFoundError:
            self.store.commit([Unlink(bad)])
            return "gone"
        self.events.emit("intake", id=mid, source=f"Pickup/{name}", outcome="set-aside",
                         reason=reason)
        return "done"
