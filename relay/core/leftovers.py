"""What a crash or a disk fault can leave, and its clearing: retired messages' files,
partial entries (removed under their message file's lock, never by a clock), ids committed
in two folders (the copy with more moves wins), damaged entries. A mixin of Mailroot; the
pass that runs it beside a live relay is relay/queue/recovery.py."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from relay.core.envelope import Envelope, envelope_or_none, is_id, json_fields
from relay.core.fileops import Unlink, _lock, _names, _read, did
from relay.core.layout import BADMAIL, DELIVERED, HOLD, MARKER, MOVE_FOLDERS, QUEUE, SPENT, TRASH


class Leftovers:
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
            if folder == QUEUE and f".{ext}" == DELIVERED:
                seen.add(mid)
                yield mid, True
            elif not os.path.lexists(f"{base}/{mid}{marker}"):  # a committed entry: one stat
                seen.add(mid)
                yield mid, folder == QUEUE and os.path.lexists(f"{base}/{mid}{DELIVERED}")

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
