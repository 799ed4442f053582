"""The mailroot on disk: the commit engine (atomic writes and moves), paths and reads,
listing. Its other jobs are modules of their own, mixed into Mailroot: ids and envelopes
(envelope.py), the low-level operations (fileops.py), files made ahead and spares
(spares.py), claims (claims.py), and what a crash leaves and its clearing (leftovers.py).
What is left in Mailroot itself (some 300 lines) is one job: naming a message's files and
changing them only by commits, whose reads must check what the commits wrote.

A message in a folder is *committed* when its marker file exists: `<id>.env` in Queue and
Hold, `<id>.BAD` in Badmail, `<id>.eml` in Drop.  Every new file is written to `tmp/`, fsynced
and renamed into place; a move links the message file into the destination, commits the
destination's marker and only then removes the source.  So a crash at any point leaves either
the old state, the new state, or both (a duplicate the start-up recovery clears), never neither.

The message file (`<id>.eml`) is never rewritten, so its inode follows the message from folder
to folder; an exclusive `flock` on it is the claim that serialises the relay's delivery and an
operator's requeue/hold/delete, across processes, and dies with a killed process.  A commit
holds that lock on every file it writes from before the file has its name until it has
given its last name, so a message file without its marker is a crash's leftover exactly
when its lock can be had: no clock decides it.

Every sequence of file operations, what a crash between two of them leaves and what a
concurrent reader sees: docs/store-protocol.md.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import math
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from relay.core.claims import Claims
from relay.core.envelope import (
    WAITING,
    Attempt,
    Envelope,
    Recipient,
    checksum,
    damage,
    envelope_or_none,
    id_time,
    is_id,
    json_bytes,
    json_fields,
    new_id,
)
from relay.core.fileops import (
    PROBES,
    DirSync,
    Link,
    Op,
    Unlink,
    Write,
    _close_all,
    _lock,
    _read,
    did,
)
from relay.core.layout import (
    BADMAIL,
    DELIVERED,
    DROP,
    FOLDERS,
    HOLD,
    MARKER,
    MOVE_FOLDERS,
    PICKUP,
    QUEUE,
    READY,
    SPARE,
    SPENT,
    TRASH,
    WORK_DIRS,
)
from relay.core.leftovers import Leftovers
from relay.core.spares import READY_FILES, ReadyFiles

__all__ = [  # the store's names, as every process imports them
    "BADMAIL", "DELIVERED", "DROP", "FOLDERS", "HOLD", "MARKER", "MOVE_FOLDERS", "PICKUP",
    "PROBES", "QUEUE", "READY", "READY_FILES", "SPARE", "SPENT", "TRASH", "WAITING",
    "WORK_DIRS", "Attempt", "Envelope", "Link", "Listing", "Mailroot", "Op", "Recipient",
    "Unlink", "Write", "checksum", "damage", "did", "envelope_or_none", "id_time", "is_id",
    "json_bytes", "json_fields", "new_id"]

LISTING_SORTED_UP_TO = 20_000  # a listing of more waits no longer: directory order (postqueue)
PARALLEL_WRITES = 256 * 1024  # below this, while other commits are under way, two fsyncs in
# a row beat a thread hand-off each (the other commits keep the disk and the threads busy)


class Listing(NamedTuple):
    ids: Iterator[str]
    oldest_first: bool  # else in directory order


class Mailroot(Claims, Leftovers, ReadyFiles):
    """One mailroot folder tree.

    `ready_files`: how many files a long-running process keeps made in tmp/ for its
    commits to write into (made off the commit's path, by a pool thread). Creating a file
    costs 30 to 350 µs here, depending on how many the filesystem freed lately (ext4 without
    a journal looks at each recently freed inode); a commit creates two before its message
    can be delivered. So the files of a delivered message are zeroed out and kept as spares
    (`recycle`), and ready files are made from spares first: while mail flows, files and
    their blocks are reused rather than freed and created. 0 (a one-shot command): each
    commit creates its own, nothing is kept or left.
    """

    def __init__(self, root: str | Path, ready_files: int = 0) -> None:
        self.root = Path(root).absolute()
        self.tmp = self.root / "tmp"
        self.log_dir = self.root / "log"
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fsync")
        self._dir_sync = DirSync()
        self.ready_files = ready_files
        self._ready: deque[Path] = deque()
        self._filling = threading.Lock()  # held while a pool thread makes ready files
        self._slots = itertools.count()
        self._slots_full_until = 0.0  # monotonic time: no spare is kept before it
        self._counting = threading.Lock()
        self._committing = 0  # commits under way in this process (their writes overlap if 1)

    def folder(self, name: str) -> Path:
        return self.root / name

    def ensure(self) -> None:
        for name in (*FOLDERS, *WORK_DIRS):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        return all((self.root / name).is_dir() for name in (QUEUE, BADMAIL))

    # --- transactions ---

    def _write_tmp(self, op: Write) -> tuple[int, Path]:
        """op's data in a file in tmp/, fsynced; returned open and locked (see _new_tmp)."""
        fd, tmp = self._new_tmp()
        try:
            view = memoryview(op.data)
            while view:
                view = view[os.write(fd, view):]
            if os.fstat(fd).st_size > len(op.data):  # a spare, zeroed at its old size
                os.ftruncate(fd, len(op.data))
            if op.mtime is not None:
                os.utime(fd, (time.time(), op.mtime))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        did("write", tmp)
        return fd, tmp

    def _write_tmps(self, writes: list[Write], tmps: dict[int, Path], held: list[int],
                    overlap: bool) -> None:
        """Each Write's data into its own tmp file (in `tmps`, by id of the op, its locked
        descriptor in `held`), fsynced. `overlap`: all but the first are written by pool
        threads meanwhile, so their fsyncs overlap (one hand-off each); else one after the
        other, in this thread."""
        later = {id(op): self._pool.submit(self._write_tmp, op) for op in writes[1:]
                 } if overlap else {}
        failed: BaseException | None = None
        try:
            for op in writes:
                if id(op) not in later:
                    fd, tmps[id(op)] = self._write_tmp(op)
                    held.append(fd)
        finally:  # every tmp file made is in `tmps` for the caller to remove on failure
            for key, future in later.items():
                try:
                    fd, tmps[key] = future.result()
                    held.append(fd)
                except BaseException as exc:
                    failed = failed or exc
        if failed is not None:
            raise failed

    def commit(self, ops: list[Op]) -> None:
        """Apply ops in order, durably: file data is fsynced before any rename, and every
        directory touched is fsynced before returning.  Raises OSError with nothing of the
        destination half-written (tmp files are removed).

        Ownership (docs/store-protocol.md): every file written is locked from before it has
        its name until the last name is given, and so is a message file (`.eml`) that a
        name given here replaces; a Link's source is the caller's to hold (a move is made
        under the message's claim). The removals that follow (a source's) need no lock, and
        the queue manager, told of a new marker at once, finds the claim free."""
        writes = [op for op in ops if isinstance(op, Write)]
        last_name = max((n for n, op in enumerate(ops) if not isinstance(op, Unlink)),
                        default=-1)
        tmps: dict[int, Path] = {}
        held: list[int] = []  # locked descriptors, closed once every name is given
        with self._counting:
            self._committing += 1
            alone = self._committing == 1
        try:
            overlap = len(writes) > 1 and (
                alone or sum(len(op.data) for op in writes) > PARALLEL_WRITES)
            self._write_tmps(writes, tmps, held, overlap)
            dirs: dict[Path, None] = {}
            for number, op in enumerate(ops):
                if isinstance(op, Write):
                    self._hold_replaced(op.path, held)
                    os.replace(tmps[id(op)], op.path)
                    del tmps[id(op)]  # only once it is in place: a failed rename leaves no tmp
                    did("rename", op.path)
                    dirs[op.path.parent] = None
                elif isinstance(op, Link):
                    if not self._hold_replaced(op.dst, held, source=op.src):
                        tmps[id(op)] = self.tmp / f"{new_id()}.lnk"
                        os.link(op.src, tmps[id(op)])
                        os.replace(tmps[id(op)], op.dst)
                        del tmps[id(op)]
                    did("link", op.dst)
                    dirs[op.dst.parent] = None
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(op.path)
                    did("unlink", op.path)
                    if op.durable:
                        dirs[op.path.parent] = None
                if number == last_name:
                    _close_all(held)
            self.top_up()  # beside the directory fsyncs' wait
            for directory in dirs:
                self._dir_sync.sync(directory)
            did("synced", "")
        finally:
            with self._counting:
                self._committing -= 1
            _close_all(held)
            for tmp in tmps.values():
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                except OSError:  # tmp/ can't be written: at least no copy of the data stays
                    with contextlib.suppress(OSError):
                        os.truncate(tmp, 0)

    @staticmethod
    def _hold_replaced(path: Path, held: list[int], source: Path | None = None) -> bool:
        """Before a message file's name is given to another file, lock the file it names now
        (a crash's leftover, or a copy being retried), so the recovery pass, which removes
        leftovers under the same lock, never removes the name once it is ours. Raises
        BlockingIOError if another process holds it. True if the name is the source's own
        file already (a move repeated over its interrupted first try, under the claim the
        caller holds): there is nothing to link."""
        if not path.name.endswith(".eml"):
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        if source is not None and os.fstat(fd).st_ino == os.stat(source).st_ino:
            os.close(fd)
            return True
        held.append(fd)
        if not _lock(fd):
            raise BlockingIOError(errno.EBUSY, f"{path} is being changed by another process")
        return False

    # --- messages in folders ---

    def path(self, folder: str, message_id: str, ext: str) -> Path:
        return self.root / folder / f"{message_id}{ext}"

    def ids(self, folder: str) -> list[str]:
        """Committed message ids in a folder, oldest first (ids sort by time)."""
        marker = MARKER[folder]
        try:
            names = os.listdir(self.root / folder)
        except FileNotFoundError:
            return []
        return sorted(n[:-len(marker)] for n in names
                      if n.endswith(marker) and is_id(n[:-len(marker)]))

    def has(self, folder: str, message_id: str) -> bool:
        return self.path(folder, message_id, MARKER[folder]).exists()

    def read_envelope(self, folder: str, message_id: str) -> Envelope:
        return Envelope.from_json(self.path(folder, message_id, ".env").read_bytes())

    def read_claimed(self, folder: str, message_id: str) -> bytes:
        """A message's bytes as stored, for the holder of its claim (no one can deliver it
        and recycle its file meanwhile); others: read_message."""
        return self.path(folder, message_id, ".eml").read_bytes()

    def read_message(self, folder: str, message_id: str) -> bytes:
        """A message's bytes as stored, for a reader that does not hold its claim: one that
        opened the file just before its message was delivered may read the zeros of a spare
        (recycle). So in a folder with envelopes the bytes must match the envelope's size
        and checksum, read after them; if they don't and the entry is gone (or went and came
        back), FileNotFoundError; if it is still there, the file is damaged: its bytes."""
        path = self.path(folder, message_id, ".eml")
        with open(path, "rb") as handle:
            did("open", path)
            data = handle.read()
        if folder == DROP:
            return data
        try:
            fields = json_fields(_read(self.path(folder, message_id, ".env")))
            size, crc = fields.get("size"), fields.get("crc32")
        except FileNotFoundError:
            if folder == BADMAIL and self.has(BADMAIL, message_id):
                return data  # refused at intake: no envelope to check against
            raise
        except (OSError, ValueError, AttributeError):
            return data  # an unreadable envelope: the queue manager quarantines it
        if not size or not crc or (len(data) == size and zlib.crc32(data) == crc):
            return data
        again = path.read_bytes()  # raises FileNotFoundError if it has gone
        return again if len(again) == size and zlib.crc32(again) == crc else data

    def locate(self, message_id: str) -> str | None:
        """The folder a message is committed in (Queue, Hold, Badmail, Drop), if any."""
        for folder in (QUEUE, HOLD, BADMAIL, DROP, TRASH):
            if self.has(folder, message_id):
                return folder
        return None

    def envelope_write(self, folder: str, envelope: Envelope) -> Write:
        """An envelope's Write. A next attempt still to come is also its file's mtime, so a
        scan of a million entries learns when each is due from a stat (noted_dues), without
        reading it; an mtime not in the future says nothing (the envelope is read)."""
        due = envelope.next_attempt
        return Write(self.path(folder, envelope.id, ".env"), envelope.to_json(),
                     mtime=due if due > time.time() else None)

    def noted_dues(self, folder: str, ids: Iterable[str]) -> Iterator[tuple[str, float | None]]:
        """(id, next attempt as its envelope_write noted it, if still to come, else None: the
        envelope says) for each id whose entry is there; one stat each, relative to the
        folder (a scan of a million pays for no more)."""
        now = time.time()
        where = os.open(self.folder(folder), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for mid in ids:
                try:
                    mtime = os.stat(f"{mid}.env", dir_fd=where).st_mtime
                except FileNotFoundError:
                    continue
                yield mid, mtime if mtime > now else None
        finally:
            os.close(where)

    def enqueue_ops(self, folder: str, envelope: Envelope, message: bytes) -> list[Op]:
        """Ops that commit a new message with its envelope into Queue or Hold."""
        return [Write(self.path(folder, envelope.id, ".eml"), message),
                self.envelope_write(folder, envelope)]

    def update_envelope(self, folder: str, envelope: Envelope) -> None:
        self.commit([self.envelope_write(folder, envelope)])

    def move_ops(self, src: str, dst: str, envelope: Envelope,
                 extra: list[Op] | None = None) -> list[Op]:
        """Ops that move a message between Queue, Hold, Badmail and Trash.

        The destination is committed (its marker written last, its envelope counting one
        move more) before the source's marker, then its other files and last its message
        file are removed. The caller holds the message's claim.
        """
        mid = envelope.id
        envelope.moves += 1
        ops: list[Op] = [Link(self.path(src, mid, ".eml"), self.path(dst, mid, ".eml")),
                         self.envelope_write(dst, envelope)]
        ops += extra or []
        return ops + self.remove_ops(src, mid)

    def remove_ops(self, folder: str, message_id: str) -> list[Op]:
        """Ops removing an entry from a folder: its marker first, its message file last (a
        partial entry always has its message file: Mailroot._remove_partial)."""
        return [Unlink(self.path(folder, message_id, ext))
                for ext in dict.fromkeys((MARKER[folder], ".env", ".BAD", ".eml"))]

    def iter_names(self, folder: str, stop: threading.Event | None = None) -> Iterator[str]:
        """The names in a folder in directory order, streamed: a million entries are never
        held in memory at once."""
        try:
            entries = os.scandir(self.root / folder)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                if stop is not None and stop.is_set():
                    return
                yield entry.name

    def iter_ids(self, folder: str, stop: threading.Event | None = None) -> Iterator[str]:
        """Committed ids in a folder in directory order (not by time), streamed."""
        marker = MARKER[folder]
        for name in self.iter_names(folder, stop):
            if name.endswith(marker) and is_id(name[:-len(marker)]):
                yield name[:-len(marker)]

    def listing(self, folder: str, sort_up_to: float = math.inf) -> Listing:
        """A folder's ids for a listing: oldest first if it holds at most `sort_up_to`
        (sorting waits for every name), else in directory order from the first one read on,
        as `postqueue -p` lists a queue of any size at once."""
        if sort_up_to == math.inf:
            return Listing(iter(self.ids(folder)), oldest_first=True)
        names = self.iter_ids(folder)
        head = list(itertools.islice(names, int(sort_up_to) + 1))
        if len(head) <= sort_up_to:
            return Listing(iter(sorted(head)), oldest_first=True)
        return Listing(itertools.chain(head, names), oldest_first=False)
