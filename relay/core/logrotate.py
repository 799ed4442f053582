"""Bounded logs: a log file that reaches `log.max_size` is renamed to `.1` (the older ones
to `.2` ... `.keep`, the oldest dropped) and a new one is started.

Several processes write each log (the relay's processes, the CLI, the console), each line
with one O_APPEND write. With a rotation set, every append holds the rotation lock (an flock
on `log/.rotate.lock`, for one write and a stat or two): the line goes into the file at the
log's name, never into one another process has just renamed away, and the line that takes the
file to max_size renames it, so no file exceeds max_size by more than that line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from relay.core.config import Log

LOCK_NAME = ".rotate.lock"


@dataclass(frozen=True)
class Rotation:
    max_size: int
    keep: int

    @classmethod
    def of(cls, log: Log) -> Rotation:
        return cls(int(log.max_size), log.keep)


def rotated_files(path: Path) -> list[Path]:
    """The log and its rotated files, oldest first: name.N ... name.1, name."""
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)")
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    numbered = sorted(((int(m[1]), path.parent / n) for n in names
                       if (m := pattern.fullmatch(n))), reverse=True)
    return [p for _, p in numbered] + ([path] if path.name in names else [])


def _rotate(path: Path, rotation: Rotation) -> None:
    """Rename path to path.1, the older ones one number up, dropping those past keep (under
    the rotation lock)."""
    for older in rotated_files(path)[:-1]:
        number = int(older.name.rsplit(".", 1)[1])
        if number >= rotation.keep:
            older.unlink(missing_ok=True)
        else:
            os.replace(older, path.with_name(f"{path.name}.{number + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


def _after_a_torn_line(fd: int) -> bytes:
    """A line end to write first if the file's last line is torn (its writer was killed in
    the middle of a write that crossed a page: the kernel stops such a write at a page for a
    fatal signal), so the next line is one of its own, not lost inside the torn one."""
    size = os.fstat(fd).st_size
    return b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""


class Appender:
    """Appends whole lines to one log file that other processes write and rotate too.

    `keep_open` keeps the file (and the lock file) open between appends, for a writer of many
    lines (the event log); the audit log opens them per line.
    """

    def __init__(self, path: Path, keep_open: bool = True) -> None:
        self.path = path
        self.keep_open = keep_open
        self._fd: int | None = None
        self._inode: tuple[int, int] = (0, 0)  # of the file behind _fd
        self._lock_fd: int | None = None
        self._lock_pid = 0  # the process that opened _lock_fd
        self._checked = 0.0  # unlocked appends: when the path was last checked

    def append(self, data: bytes, rotation: Rotation | None) -> None:
        """One write of `data` (whole lines); then, with a rotation, the file is rotated if
        this write filled it. OSError if the file cannot be written."""
        try:
            lock = self._lock() if rotation else None
        except OSError:  # no lock to be had here (a read-only log folder, another owner)
            lock = None
        if lock is None:
            self._append_unlocked(data)
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fd = self._current()
            os.write(fd, _after_a_torn_line(fd) + data)
            if os.fstat(fd).st_size >= rotation.max_size:  # type: ignore[union-attr]
                _rotate(self.path, rotation)
                self._close_file()  # the next line starts the new file
        finally:
            if self.keep_open:
                fcntl.flock(lock, fcntl.LOCK_UN)
            else:
                self.close()  # closing the lock file releases the lock

    def _lock(self) -> int:
        """The lock file, opened by this process: a forked child gets its own, as flock locks
        an open file, and one shared over fork would not keep parent and child apart."""
        if self._lock_fd is not None and self._lock_pid != os.getpid():
            os.close(self._lock_fd)  # this process's copy of the parent's; the parent keeps its
            self._lock_fd = None
        if self._lock_fd is None:
            self._lock_fd = os.open(self.path.parent / LOCK_NAME,
                                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def _open(self) -> int:
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o640)
        info = os.fstat(self._fd)
        self._inode = (info.st_ino, info.st_dev)
        return self._fd

    def _current(self) -> int:
        """The descriptor of the file now at the log's name (under the lock: exact)."""
        if self._fd is not None:
            try:
                info = os.stat(self.path)
                if (info.st_ino, info.st_dev) == self._inode:
                    return self._fd
            except FileNotFoundError:
                pass
            self._close_file()
        return self._open()

    def _append_unlocked(self, data: bytes) -> None:
        """Without a rotation of its own: a rename by another process is noticed by the
        inode, looked at at most once a second."""
        now = time.monotonic()
        if self._fd is not None and now - self._checked > 1.0:
            self._checked = now
            try:
                info = os.stat(self.path)
                moved = (info.st_ino, info.st_dev) != self._inode
            except FileNotFoundError:
                moved = True
            if moved:
                self._close_file()
        if self._fd is None:
            self._open()
            self._checked = now
        assert self._fd is not None
        try:
            os.write(self._fd, _after_a_torn_line(self._fd) + data)
        finally:
            if not self.keep_open:
                self.close()

    def _close_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_file()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
