"""The mailroot on disk: ids, envelopes, atomic writes and moves, listing, claims.

A message in a folder is *committed* when its marker file exists: `<id>.env` in Queue and
Hold, `<id>.BAD` in Badmail, `<id>.eml` in Drop.  Every new file is written to `tmp/`, fsynced
and renamed into place; a move links the message file into the destination, commits the
destination's marker and only then removes the source.  So a crash at any point leaves either
the old state, the new state, or both (a duplicate the start-up recovery clears), never neither.

The message file (`<id>.eml`) is never rewritten, so its inode follows the message from folder
to folder; an exclusive `flock` on it is the claim that serialises the relay's delivery and an
operator's requeue/hold/delete, across processes, and dies with a killed process.  A commit
holds that lock on every file it writes from before the file has its name until it has
given its last name, so a message file without its marker is a crash's leftover exactly when its
lock can be had: no clock decides it.

Every sequence of file operations, what a crash between two of them leaves and what a
concurrent reader sees: docs/store-protocol.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import itertools
import json
import math
import os
import re
import secrets
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

PICKUP, QUEUE, DROP, BADMAIL, HOLD = "Pickup", "Queue", "Drop", "Badmail", "Hold"
TRASH = "Trash"
FOLDERS = (PICKUP, QUEUE, DROP, BADMAIL, HOLD)
WORK_DIRS = ("tmp", "log", TRASH)
MARKER = {QUEUE: ".env", HOLD: ".env", BADMAIL: ".BAD", DROP: ".eml", TRASH: ".env"}
MOVE_FOLDERS = (QUEUE, HOLD, BADMAIL, TRASH)  # a message moves between these (Drop is final)

LISTING_SORTED_UP_TO = 20_000  # a listing of more waits no longer: directory order (postqueue)
DELIVERED = ".delivered"  # in Queue/: a delivered message's envelope, until its files are gone
SPENT = ".spent"  # in tmp/: a delivered message's file, until its claim is closed
SPARE = "spare-"  # in tmp/, spare-NN: a zeroed-out file kept for a commit to write into again
SPARE_SLOTS = 256
SLOTS_FULL_PAUSE = 0.5  # seconds no spare is kept after the slots tried were all taken
READY = ".ready"  # in tmp/: a file made ahead (new, or a spare) for a commit to write into
READY_FILES = 16  # kept by each process of a running relay: 2 per commit, 8 commits at once
PARALLEL_WRITES = 256 * 1024  # below this, while other commits are under way, two fsyncs in
# a row beat a thread hand-off each (the other commits keep the disk and the threads busy)
FALLOC_FL_ZERO_RANGE = 0x10  # linux/falloc.h
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_micros = 0


# --- probes: each file operation of the store's protocol, by name ------------------------------

Probe = Callable[[str, str], None]  # (operation, path)
PROBES: list[Probe] = []  # tests and the crash bench add theirs; empty in a relay


def did(operation: str, path: str | Path) -> None:
    """A file operation of a protocol step is done (docs/store-protocol.md names them): a
    probe may pause the step here, to run a concurrent pass in between, or end the process
    here, a crash at exactly this point."""
    for probe in PROBES:
        probe(operation, str(path))


def _lock(fd: int) -> bool:
    """Take the exclusive flock on an open file at once, or say it is held elsewhere."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the open file `fd` (nothing removed or replaced it)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


def _b32(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def new_id() -> str:
    """A 16-character id that sorts by creation time and is unique across processes."""
    global _last_micros
    with _id_lock:
        micros = max(time.time_ns() // 1000, _last_micros + 1)
        _last_micros = micros
    return _b32(micros, 11) + _b32(secrets.randbits(25), 5)


def id_time(message_id: str) -> float:
    """The creation time encoded in an id (seconds since the epoch)."""
    micros = 0
    for char in message_id[:11]:
        micros = micros * 32 + _CROCKFORD.index(char)
    return micros / 1e6


_ID = re.compile(f"[{_CROCKFORD}]{{16}}")


def is_id(name: str) -> bool:
    return _ID.fullmatch(name) is not None  # a regex: listing 100,000 names calls this a lot


# --- the envelope -----------------------------------------------------------------------------

WAITING = ("pending", "deferred")  # recipient states still to be delivered


@dataclass
class Recipient:
    address: str
    state: str = "pending"  # pending | deferred | delivered | failed
    status: str | None = None  # enhanced status code of the last answer, e.g. 5.1.1
    reply: str | None = None  # the last reply text (or local reason)
    host: str | None = None  # the host that gave it


@dataclass
class Attempt:
    time: float
    host: str | None
    reply: str
    tls: bool | None = None
    recipients: list[str] = field(default_factory=list)


def json_bytes(value: Any) -> bytes:
    """Compact JSON by orjson (a tenth of json's time), or by json, which escapes what orjson
    refuses: a lone surrogate (undecodable octets kept from a file name that is not UTF-8, or
    from a next hop's reply as aiosmtplib decodes it). A dataclass is written field by field."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return json.dumps(plain, separators=(",", ":")).encode()


def json_fields(data: bytes) -> Any:
    """JSON decoded by orjson (3x json's pace), or by json where orjson refuses what json
    wrote: an escaped lone surrogate (a file name that is not UTF-8, in an envelope's origin).
    Raises ValueError for what is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


@dataclass
class Envelope:
    """Everything about a message but its bytes; small, so 100,000 of them list quickly."""

    id: str
    sender: str  # "" is the null sender <>
    recipients: list[Recipient]
    received: float
    origin: str = ""
    size: int = 0
    crc32: int = 0
    subject: str = ""
    header_from: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt: float = 0.0
    delay_notified: bool = False
    kind: str = "message"  # message | ndr | delay
    reason: str = ""  # why it is in Badmail
    queued_at: float = 0.0  # start of the delivery clock (arrival, or the last requeue)
    held_at: float | None = None  # when put on hold (None: not held)
    held_total: float = 0.0  # seconds spent on hold: the expiry clock stops while held
    moves: int = 0  # moves between folders so far: of two copies an interrupted move left,
    # the one with more is the later state (Mailroot.later_copy)

    @property
    def clock_start(self) -> float:
        """Delay notice and expiry count from here; time on hold does not count."""
        return (self.queued_at or self.received) + self.held_total

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state in WAITING]

    def to_json(self) -> bytes:
        return json_bytes(self)  # 1 µs where dataclasses.asdict and json took 50

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        return cls.from_dict(json_fields(data))

    @classmethod
    def from_dict(cls, raw: dict) -> Envelope:
        raw = dict(raw)
        raw["recipients"] = [Recipient(**r) for r in raw.get("recipients", [])]
        raw["attempts"] = [Attempt(**a) for a in raw.get("attempts", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# --- low-level durable file operations ------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def zero_out(fd: int, size: int) -> None:
    """Make a file's first `size` bytes read as zeros and keep its blocks (on ext4 and XFS
    a change of the extent map, some µs), else truncate it. Freeing a block costs about
    0.1 ms on a filesystem mounted with `discard` and no journal: it is trimmed at once."""
    if size and _libc.fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, size) != 0:
        os.ftruncate(fd, 0)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSync:
    """Group commit for directory fsyncs: concurrent commits to one directory share one fsync
    that started after their renames, instead of queueing one each behind the journal."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requested: dict[Path, int] = {}
        self._done: dict[Path, int] = {}
        self._running: set[Path] = set()

    def sync(self, directory: Path) -> None:
        """Return once an fsync of `directory` begun after this call has finished."""
        with self._cond:
            mine = self._requested[directory] = self._requested.get(directory, 0) + 1
            while self._done.get(directory, 0) < mine:
                if directory in self._running:
                    self._cond.wait()
                    continue
                self._running.add(directory)
                covers = self._requested[directory]  # every rename made before this point
                self._cond.release()
                try:
                    fsync_dir(directory)
                finally:
                    self._cond.acquire()
                    self._running.discard(directory)
                    self._cond.notify_all()
                self._done[directory] = max(self._done.get(directory, 0), covers)


@dataclass
class Write:
    """Create or replace `path` with `data` (via tmp + fsync + rename); `mtime`, if given,
    becomes the file's modification time (an envelope's next attempt: envelope_write)."""

    path: Path
    data: bytes
    mtime: float | None = None


@dataclass
class Link:
    """Give the file at `src` the name `dst` too (atomic, replaces `dst`)."""

    src: Path
    dst: Path


@dataclass
class Unlink:
    """Remove `path`. `durable=False`: its directory is not fsynced for it, for a source
    whose return after a machine crash only repeats work under the same id (a taken Pickup
    file: a duplicate at worst, never a loss)."""

    path: Path
    durable: bool = True


Op = Write | Link | Unlink


class Listing(NamedTuple):
    ids: Iterator[str]
    oldest_first: bool  # else in directory order


class Mailroot:
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

    def _create_tmp(self, suffix: str) -> tuple[int, Path]:
        """A new file of this process's own in tmp/, open for writing."""
        path = self.tmp / f"{new_id()}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        did("create", path)
        return fd, path

    def _spares(self) -> list[str]:
        """The spares' paths, as strings: tmp/ may hold hundreds of names to look through."""
        with os.scandir(self.tmp) as entries:
            return [entry.path for entry in entries if entry.name.startswith(SPARE)]

    def _take_spare(self, spares: list[str]) -> Path | None:
        """Rename one of `spares` to a ready file of this process (None if others took
        them all first)."""
        while spares:
            ready = self.tmp / f"{new_id()}{READY}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(spares.pop(), ready)
                did("rename", ready)
                return ready
        return None

    def _make_ready(self) -> None:
        """In a pool thread: make files in tmp/ until `ready_files` wait, taking
        spares first (a rename: another process may take the same one first)."""
        try:
            while len(self._ready) < self.ready_files:  # commits may take more meanwhile
                spares = self._spares()
                for _ in range(self.ready_files - len(self._ready)):
                    path = self._take_spare(spares)
                    if path is None:  # none left: a new file
                        fd, path = self._create_tmp(READY)
                        os.close(fd)
                    self._ready.append(path)
        except OSError:
            pass  # a full disk, say: commits make their own files meanwhile
        finally:
            self._filling.release()

    def top_up(self) -> None:
        """Have a pool thread make ready files up to `ready_files`: at a process's start (so
        its first messages find them), and for those a commit used once its renames are
        done (while it waits for its directory fsyncs, not beside its writes in tmp/)."""
        if len(self._ready) < self.ready_files and self._filling.acquire(blocking=False):
            self._pool.submit(self._make_ready)

    def _new_tmp(self) -> tuple[int, Path]:
        """A file in tmp/ to write a commit's data into (a ready one if there is one), open
        and locked: its writer's claim until the commit has given its names, so no pass takes
        it for a crash's leftover in between (clear_tmp, _remove_partial)."""
        while True:
            try:
                path = self._ready.popleft()
            except IndexError:  # none left (another thread may have taken the last one)
                fd, path = self._create_tmp(".tmp")
            else:
                flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                try:
                    fd = os.open(path, flags)
                except OSError:  # gone, or not a plain file of ours: left to clear_tmp
                    continue
            if _lock(fd) and _names(path, fd):
                return fd, path
            os.close(fd)  # a clear_tmp at a relay's start got it first: another one

    def discard_ready(self) -> None:
        """Remove the ready files not used, and the spares (a clean stop; after a kill, the
        next start's clear_tmp does)."""
        self.ready_files = 0
        with self._filling:  # a pool thread making some stops first
            while self._ready:
                with contextlib.suppress(OSError):
                    self._ready.popleft().unlink()
            for spare in self._spares():
                with contextlib.suppress(OSError):
                    os.unlink(spare)

    def recycle(self, path: Path, keep: bool = True) -> None:
        """Remove a file of this relay's own in tmp/ that nothing refers to any more, or
        rather, if `keep` and in a long-running process with a free spare slot, zero it out
        and keep it as a spare. A file with another name elsewhere is only unlinked. Once the
        slots tried were all taken (more files come back than commits use, as when a backlog
        drains), none is tried for SLOTS_FULL_PAUSE: the files are only unlinked meanwhile."""
        try:
            if keep and self.ready_files and time.monotonic() >= self._slots_full_until:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    stat = os.fstat(fd)
                    if stat.st_nlink == 1:
                        zero_out(fd, stat.st_size)
                        did("zero", path)
                        if not self._keep_spare(path):
                            self._slots_full_until = time.monotonic() + SLOTS_FULL_PAUSE
                finally:
                    os.close(fd)
        except OSError:
            pass
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            did("unlink", path)

    def _keep_spare(self, path: Path) -> bool:
        """Give a zeroed-out file a free slot's name (link: a taken slot is not replaced);
        False if the slots tried were all taken."""
        for _ in range(3):
            spare = self.tmp / f"{SPARE}{next(self._slots) % SPARE_SLOTS:02d}"
            try:
                os.link(path, spare)
                did("link", spare)
                return True
            except FileExistsError:
                continue
        return False

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

    def acquire(self, folder: str, message_id: str, wait: float = 0.0) -> int | None:
        """Take the message's claim: a descriptor to os.close() when done, or None if another
        holder has it (for longer than `wait`) or the message is not committed in `folder`."""
        try:
            fd = os.open(self.path(folder, message_id, ".eml"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        deadline = time.monotonic() + wait
        pause = 0.0005  # a commit lets go of a new message file's lock some µs after its
        # marker is named (and inotify tells of it): the first looks come soon
        while not _lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        if not self.has(folder, message_id) or not _names(self.path(folder, message_id, ".eml"),
                                                          fd):
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def claim(self, folder: str, message_id: str, wait: float = 0.0) -> Iterator[bool]:
        """Hold the message's claim; yields True only while the message is still committed
        in `folder` and no one else holds it."""
        fd = self.acquire(folder, message_id, wait)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)

    @contextlib.contextmanager
    def holding(self, path: Path) -> Iterator[None]:
        """Hold the lock on a file that a commit links into a folder from outside the
        folders (a taken Pickup file), as a move holds its message's claim."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def claim_missing(self, folder: str, message_id: str) -> Iterator[bool]:
        """The claim on a committed entry whose message file is missing (so no claim of its
        own can be had): yields True while its marker, opened and locked here, kept its name
        all the while no message file was there. No step of the protocol leaves that (a
        marker is named after its message file and removed before it), so it is damage,
        never a move or a delivery in progress."""
        marker = self.path(folder, message_id, MARKER[folder])
        try:
            fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            yield False
            return
        try:
            yield (_lock(fd) and not os.path.lexists(self.path(folder, message_id, ".eml"))
                   and _names(marker, fd))
        finally:
            os.close(fd)

    # --- recovery ---
    #
    # What a crash can leave half-done is bounded by what was in flight, but finding it means
    # looking at every entry, and the Queue may hold a million.  So the start clears only tmp/
    # (bounded) before intake starts; `settle()` resolves one id under its claim before it is
    # delivered or acted on, and `recover()` walks the folders in the background.

    def retire_delivered(self, message_id: str) -> None:
        """Take a message delivered to every recipient out of Queue, without a directory
        fsync (a machine crash that loses this sends it again, a duplicate). One rename
        makes it delivered: its envelope becomes Queue/<id>.delivered, which no scan takes
        for a message to deliver and which explains the message file if a kill comes before
        that too is renamed, to tmp/<id>.spent. Both wait for `dispose_retired`, once the
        message's claim is closed; after a kill, the recovery pass removes them
        (finish_retired)."""
        delivered = self.path(QUEUE, message_id, DELIVERED)
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path(QUEUE, message_id, ".env"), delivered)
            did("rename", delivered)
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path(QUEUE, message_id, ".eml"), self.tmp / f"{message_id}{SPENT}")
            did("rename", self.tmp / f"{message_id}{SPENT}")

    def dispose_retired(self, message_ids: list[str]) -> None:
        """Recycle retired messages' files, their claims closed (a spare must not be locked
        by the claim of the message it was). The Queue directory is fsynced first, once for
        all: a file may carry another message's bytes only once a machine crash can no
        longer bring back its old name in Queue. If that fsync fails, they are removed."""
        try:
            self._dir_sync.sync(self.folder(QUEUE))
            reuse = True
        except OSError:
            reuse = False
        for message_id in message_ids:
            self.recycle(self.tmp / f"{message_id}{SPENT}", keep=reuse)
            self.recycle(self.path(QUEUE, message_id, DELIVERED), keep=reuse)

    def finish_retired(self, message_id: str) -> bool:
        """Finish a retirement a kill cut short: the files of a message whose envelope is
        Queue/<id>.delivered (True if they were there). A message committed again since
        under the same id (a requeue from Drop) loses only the marker; one being committed
        right now has its message file locked by its writer, and is left alone."""
        if self.has(QUEUE, message_id):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(QUEUE, message_id, DELIVERED))
                did("unlink", self.path(QUEUE, message_id, DELIVERED))
            return False
        return self._remove_partial(QUEUE, message_id)

    def clear_tmp(self) -> None:
        """Remove what a crash left in tmp/: half-written files nothing refers to, spares and
        ready files of processes gone. A file a live writer holds (a command's commit, while
        a relay starts) is locked by it, and stays."""
        for entry in os.scandir(self.tmp):
            if not entry.is_file(follow_symlinks=False):
                continue  # tmp/pickup: taken Pickup files, the Pickup taker's to finish
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                             | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if _lock(fd) and _names(Path(entry.path), fd):
                    os.unlink(entry.path)
                    did("unlink", entry.path)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)

    def _moves(self, folder: str, message_id: str) -> int:
        """How many moves the copy in `folder` has behind it (Envelope.moves): -1 if its
        envelope can't be read; a Badmail entry without one (refused at intake, or a
        quarantined copy of an unreadable entry) is never the source of a move that leaves
        one, so it counts as the latest."""
        try:
            return int(json_fields(_read(self.path(folder, message_id, ".env")))
                       .get("moves", 0))
        except FileNotFoundError:
            return math.inf if folder == BADMAIL else -1  # type: ignore[return-value]
        except (OSError, ValueError, TypeError, AttributeError):
            return -1

    def copies(self, message_id: str) -> list[str]:
        """The folders the id is committed in (of those an interrupted move can leave it in
        twice)."""
        return [f for f in MOVE_FOLDERS if self.has(f, message_id)]

    def later_copy(self, message_id: str) -> str | None:
        """Of the folders an id is committed in, the one holding its later state: a move
        commits its destination, with one move more counted in the envelope, before it
        removes its source. No clock decides it (a Queue envelope's mtime is its next
        attempt). On a tie (no envelope tells), the move's usual direction: Badmail, Trash,
        Hold, then Queue."""
        found = self.copies(message_id)
        if len(found) < 2:
            return found[0] if found else None
        rank = (QUEUE, HOLD, TRASH, BADMAIL)
        return max(found, key=lambda f: (self._moves(f, message_id), rank.index(f)))

    def settle(self, message_id: str) -> list[str]:
        """If an interrupted move left the id committed in more than one folder, keep the
        later state (later_copy) and remove the others, each marker first; returns the
        folders it was removed from.  The caller holds the message's claim (every move is
        made under it, so a move in progress is never mistaken for an interrupted one)."""
        found = self.copies(message_id)
        if len(found) < 2:
            return []
        latest = self.later_copy(message_id)
        stale = [f for f in found if f != latest]
        self.commit([Unlink(self.path(f, message_id, ext)) for f in stale
                     for ext in dict.fromkeys((MARKER[f], ".env", ".BAD", ".eml"))])
        return stale

    def recover(self, stop: threading.Event | None = None) -> Iterator[tuple[str, str, str]]:
        """Clear what a crash left half-done, folder by folder; yields (folder, id, what was
        done).  Runs beside a live relay, so it never holds a listing in memory and touches
        only what cannot be in progress: an uncommitted partial entry whose message file's
        lock can be had (a writer holds it from before the file is named until its marker
        is), and the older copy of an id committed in two folders, under the message's
        claim. Committed entries whose files are missing or damaged are found by
        `damaged()`."""
        for folder in MOVE_FOLDERS:
            for mid, delivered in self._partials(folder, stop):
                if delivered:
                    if self.finish_retired(mid):
                        yield folder, mid, "removed a delivered message's files left by a kill"
                elif self._remove_partial(folder, mid):
                    yield folder, mid, f"removed uncommitted partial (no {MARKER[folder]})"
        # Every pair of folders holds Hold, Badmail or Trash, usually small: walking those
        # finds every id committed twice without listing the Queue.
        for folder in (HOLD, BADMAIL, TRASH):
            for mid in self.iter_ids(folder, stop):
                if len(self.copies(mid)) < 2:
                    continue
                fd = self.acquire(folder, mid)
                if fd is None:
                    continue  # someone is moving it right now (or it has moved on)
                try:
                    for stale in self.settle(mid):
                        yield stale, mid, "removed the source of an interrupted move"
                finally:
                    os.close(fd)

    def _partials(self, folder: str, stop: threading.Event | None
                  ) -> Iterator[tuple[str, bool]]:
        """(id, whether a delivered marker explains it) for the ids with files but no marker
        in `folder`, and in Queue those with a delivered marker (a message committed again
        since keeps only its new entry)."""
        marker = MARKER[folder]
        base = f"{self.root}/{folder}"
        seen: set[str] = set()  # ids already yielded: a partial has one to three files
        for name in self.iter_names(folder, stop):
            mid, dot, ext = name.partition(".")
            if not dot or f".{ext}" == marker or mid in seen or not is_id(mid):
                continue
            delivered = folder == QUEUE and (f".{ext}" == DELIVERED or os.path.lexists(
                f"{base}/{mid}{DELIVERED}"))
            if delivered or not os.path.lexists(f"{base}/{mid}{marker}"):
                seen.add(mid)
                yield mid, delivered

    def _remove_partial(self, folder: str, mid: str) -> bool:
        """Remove an entry's files that have no marker, unless its message file's lock is
        held (a writer between naming it and its marker, a move under its claim, a commit
        replacing it), or its marker is there by the time the lock is had. The message file
        goes last: while it is there (and locked by this pass) no writer names anything of
        this id in `folder` (every commit names the message file first and, replacing one,
        locks it first: Mailroot.commit)."""
        base = f"{self.root}/{folder}/{mid}"
        try:
            fd: int | None = os.open(base + ".eml", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                     | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        except OSError:  # not a plain file: hands made it, hands must remove it
            return False
        try:
            if fd is not None and not (_lock(fd) and _names(Path(base + ".eml"), fd)):
                return False
            if os.path.lexists(base + MARKER[folder]):
                return False
            did("lock", base + ".eml")  # (what is left is removed under the lock)
            for leftover in sorted((self.root / folder).glob(f"{mid}.*"),
                                   key=lambda p: p.suffix == ".eml"):
                if leftover.is_symlink() or leftover.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
                        did("unlink", leftover)
            return True
        finally:
            if fd is not None:
                os.close(fd)

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

    def inspect(self, folder: str, message_id: str) -> tuple[dict | None, str | None]:
        """A committed Queue/Hold entry's envelope as raw JSON fields and, if it must not be
        delivered, why.

        A commit never leaves such entries (files are fsynced before they are named), so they
        come from disk faults or hands.  Cheap enough for start-up over 100,000 entries: one
        small read, a JSON decode and one stat; the body is not read (delivery checks the
        checksum before sending).  Raises FileNotFoundError if the entry is gone.
        """
        base = f"{self.root}/{folder}/{message_id}"  # plain strings: pathlib is the cost here
        try:
            raw = json_fields(_read(base + ".env"))
            size = raw["size"]
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, KeyError) as exc:
            return None, f"the envelope {folder}/{message_id}.env cannot be read: {exc!r}"
        try:
            found: int | None = os.stat(base + ".eml").st_size
        except FileNotFoundError:
            found = None
        if found == size:
            return raw, None
        return raw, (f"the message file {folder}/{message_id}.eml is missing" if found is None
                     else f"the stored message file is damaged: {found} bytes, expected "
                          f"{size} bytes")

    def due_at(self, folder: str, message_id: str) -> float | None:
        """A sound entry's next attempt, found without decoding its envelope: the scan of a
        million entries pays for a read, two regex searches and a stat.  None when anything
        looks off (then `inspect()` says what)."""
        base = f"{self.root}/{folder}/{message_id}"
        try:
            raw = _read(base + ".env")
            size, due = _SIZE.search(raw), _NEXT_ATTEMPT.search(raw)
            if size is None or due is None or not raw.rstrip().endswith(b"}"):
                return None
            if os.stat(base + ".eml").st_size != int(size[1]):
                return None
            return float(due[1])
        except (OSError, ValueError):
            return None

    def damaged(self, folder: str) -> Iterator[tuple[str, Envelope | None, str]]:
        """(id, envelope or None, reason) for each entry of Queue or Hold not to deliver."""
        for mid in self.ids(folder):
            try:
                raw, problem = self.inspect(folder, mid)
            except FileNotFoundError:
                continue  # moved by someone else meanwhile
            if problem:
                yield mid, envelope_or_none(raw), problem


# top-level keys only: inside a JSON string a quote is escaped, so it never follows { or ,
_SIZE = re.compile(rb'[{,]\s*"size"\s*:\s*(\d+)')
_NEXT_ATTEMPT = re.compile(rb'[{,]\s*"next_attempt"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def envelope_or_none(raw: dict | None) -> Envelope | None:
    try:
        return Envelope.from_dict(raw) if raw is not None else None
    except (TypeError, KeyError):
        return None


def _read(path: str | Path) -> bytes:
    """A small file's bytes with no more system calls than needed."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 1 << 16)]
        while len(chunks[-1]) == 1 << 16:
            chunks.append(os.read(fd, 1 << 16))
        return b"".join(chunks)
    finally:
        os.close(fd)


def damage(envelope: Envelope, data: bytes) -> str | None:
    """Why a stored message file doesn't match its envelope (a crash or disk fault), if so."""
    if len(data) != envelope.size or zlib.crc32(data) != envelope.crc32:
        return (f"the stored message file is damaged: {len(data)} bytes with checksum "
                f"{zlib.crc32(data):08x}, expected {envelope.size} bytes with {envelope.crc32:08x}")
    return None


def checksum(data: bytes) -> int:
    return zlib.crc32(data)
