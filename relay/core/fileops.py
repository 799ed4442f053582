"""The store's low-level file operations: the probes told of each (tests and the crash
bench), locks, zeroing, directory fsyncs shared between commits, and the ops a commit is
made of (Write, Link, Unlink)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FALLOC_FL_ZERO_RANGE = 0x10  # linux/falloc.h


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


