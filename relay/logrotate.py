"""Bounded logs: a log file that reaches `log.max_size` is renamed to `.1` (the older ones
to `.2` ... `.keep`, the oldest dropped) and a new one is started.

Every process appends with O_APPEND and notices the rename by the file's inode (see
relay/events.py), so writers need no coordination but a lock around the renames themselves.
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path

from relay.config import Log

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


def rotate_if_full(path: Path, rotation: Rotation, written_to: int) -> bool:
    """Rotate `path` if the file behind descriptor `written_to` is it and is full.

    Called after each append; the lock and the second look make sure that of several
    processes finding the file full, one rotates it, once.
    """
    if os.fstat(written_to).st_size < rotation.max_size:
        return False
    lock = os.open(path.parent / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return False
        mine = os.fstat(written_to)
        if (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev) \
                or current.st_size < rotation.max_size:
            return False  # another process rotated it meanwhile
        for older in rotated_files(path)[:-1]:
            number = int(older.name.rsplit(".", 1)[1])
            if number >= rotation.keep:
                older.unlink(missing_ok=True)
            else:
                os.replace(older, path.with_name(f"{path.name}.{number + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
        return True
    finally:
        os.close(lock)  # closing releases the lock


def rotate_path_if_full(path: Path, rotation: Rotation) -> bool:
    """rotate_if_full for a writer that does not keep the file open."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return rotate_if_full(path, rotation, fd)
    finally:
        os.close(fd)
