"""Claims: an exclusive flock on a message's file, whose inode follows the message from
folder to folder, serialises the relay's delivery and an operator's actions across
processes, and dies with a killed process. A mixin of Mailroot."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from relay.core.fileops import _lock, _names
from relay.core.layout import MARKER


class Claims:
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
