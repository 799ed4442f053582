"""How much each folder holds: messages, bytes on disk, the oldest message's age.

One directory pass per folder (names and a stat, never a message body), shared by the
metrics, the health check, `mailroot summary` and the systemd STATUS line.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from relay.core.fanout import fan_out
from relay.core.store import FOLDERS, MARKER, TRASH, Mailroot, id_time, is_id

WATCHED = (*FOLDERS, TRASH)


@dataclass(frozen=True)
class FolderUsage:
    folder: str
    messages: int
    bytes: int
    oldest_age: float  # seconds; 0 when the folder is empty


def usage(store: Mailroot, folder: str, now: float, workers: int = 1) -> FolderUsage:
    """Messages are committed entries (any plain file in Pickup); bytes count every file.
    With `workers` > 1 the files are looked at by that many forked processes (relay.core.fanout:
    a million queued are two million files)."""
    where = str(store.folder(folder))
    count = size = 0
    oldest = now
    for part in fan_out(lambda names: _tally(where, names, MARKER.get(folder), now),
                        store.iter_names(folder), workers):
        count, size, oldest = count + part[0], size + part[1], min(oldest, part[2])
    return FolderUsage(folder, count, size, max(0.0, now - oldest) if count else 0.0)


def _tally(where: str, names: list[str], marker: str | None, now: float
           ) -> tuple[int, int, float]:
    """(messages, bytes, the oldest message's time) of some names in one folder."""
    count = size = 0
    oldest = now
    for name in names:
        try:
            info = os.lstat(f"{where}/{name}")
        except FileNotFoundError:
            continue  # delivered or moved while we looked
        if not stat.S_ISREG(info.st_mode):
            continue
        size += info.st_size
        if marker is None:  # Pickup: any name a producer chose, dot-files are in the making
            if not name.startswith("."):
                count += 1
                oldest = min(oldest, info.st_mtime)
        elif name.endswith(marker) and is_id(name[:-len(marker)]):
            count += 1
            oldest = min(oldest, id_time(name[:-len(marker)]))
    return count, size, oldest


MESSAGE_FILES = (".eml", ".env", ".BAD")  # what one message is on disk, outside Pickup


def disk_bytes(store: Mailroot, folder: str, ids: Iterable[str]) -> int:
    """The bytes some messages' files hold (a Pickup entry is its one file): the same
    measure as `usage`, so `mailroot queue` and `summary` give one size for one folder."""
    where = str(store.folder(folder))
    names = ids if MARKER.get(folder) is None else (
        f"{mid}{ext}" for mid in ids for ext in MESSAGE_FILES)
    total = 0
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            info = os.lstat(f"{where}/{name}")
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total


def all_usage(store: Mailroot, now: float, workers: int = 1,
              known: dict[str, FolderUsage] | None = None) -> dict[str, FolderUsage]:
    """Every folder's usage; those in `known` (already counted by a pass that read them) are
    not looked at again."""
    known = known or {}
    return {folder: known.get(folder) or usage(store, folder, now, workers)
            for folder in WATCHED}


def human_size(size: int) -> str:
    """1.5 MiB, 300 KiB, 12 B: for the summary and the console."""
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"


def usage_table(usage: dict[str, FolderUsage]) -> list[str]:
    """`Queue  312 messages  1.2 MiB`: one line per folder, for `mailroot summary` and the
    console (Drop and Badmail keep growing until an operator clears them)."""
    width = max(len(name) for name in usage)
    return [f"{name:<{width}} {one.messages:>8} message{'s' if one.messages != 1 else ' '}"
            f" {human_size(one.bytes):>10}" for name, one in usage.items()]
