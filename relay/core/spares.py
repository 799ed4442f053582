"""Files made ahead and spares: a long-running process's commits write into files it made
beforehand in tmp/ (new ones, or the zeroed files of delivered messages), so that mail
flowing through neither frees nor creates files. A mixin of Mailroot."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from relay.core.envelope import new_id
from relay.core.fileops import _lock, _names, did, zero_out
from relay.core.layout import READY, SPARE

SPARE_SLOTS = 256
SLOTS_FULL_PAUSE = 0.5  # seconds no spare is kept after the slots tried were all taken
READY_FILES = 16  # kept by each process of a running relay: 2 per commit, 8 commits at once


class ReadyFiles:
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
