"""What happened, for the log and the console.

Each event is one JSON line in `log/events.jsonl` inside the mailroot (appended with a single
write, so the relay, the CLI and the console can all write and follow it) and one readable line
on stderr. The log is rotated at log.max_size (relay/core/logrotate.py); read_rotated() and
LogFollower read across the rotated files.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from relay.core.logrotate import Appender, Rotation, rotated_files

LOG_NAME = "events.jsonl"


def _addresses(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"<{v}>" for v in value)
    return f"<{value}>" if value is not None else ""


def format_event(event: dict[str, Any]) -> str:
    """One readable line: time, what, id, from, to, outcome, detail."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.get("time", 0)))
    parts = [stamp, event.get("event", "?")]
    if event.get("id"):
        parts.append(f"id={event['id']}")
    if "from" in event:
        parts.append(f"from={_addresses(event['from'])}")
    if "to" in event:
        parts.append(f"to={_addresses(event['to'])}")
    for key, value in event.items():
        if key not in ("time", "event", "id", "from", "to"):
            parts.append(f"{key}={json.dumps(value) if isinstance(value, str) and ' ' in value else value}")
    return " ".join(parts)


class EventLog:
    """Writes events to the mailroot's log and to stderr; in-process listeners get them too."""

    def __init__(self, log_dir: Path, stream: TextIO | None = sys.stderr,
                 rotation: Rotation | None = None) -> None:
        self.path = log_dir / LOG_NAME
        self.rotation = rotation
        self.stream = stream
        # the stderr line; the journal stamps its lines itself
        self.format: Callable[[dict[str, Any]], str] = \
            journal_line if stream is not None and attached(stream) else format_event
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._appender = Appender(self.path)
        self._lock = threading.Lock()

    def _append(self, line: str) -> None:
        """One write to a descriptor kept open (O_APPEND keeps concurrent writers' lines
        whole), into the file at the log's name; rotated when full (relay/core/logrotate.py)."""
        with self._lock:
            self._appender.append(line.encode(), self.rotation)

    def close(self) -> None:
        with self._lock:
            self._appender.close()

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        try:
            self._append(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        except OSError as exc:  # a full or read-only disk must not stop the relay
            if self.stream:
                print(f"mailroot: cannot write {self.path}: {exc.strerror}", file=self.stream)
        if self.stream:
            # one write per line: the relay's processes share this stream
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        for listener in list(self.listeners):
            listener(record)
        return record


# --- reading across rotated files (events.jsonl.N ... .1, events.jsonl; audit.log alike) ---

CHUNK = 64 * 1024


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a line cut short by a full disk
    return record if isinstance(record, dict) else None


def _open(path: Path) -> BinaryIO | None:
    try:
        return path.open("rb")
    except FileNotFoundError:
        return None  # rotated away or not written yet


def _lines_backwards(path: Path) -> Iterator[bytes]:
    """The file's whole lines, last first, reading only as far back as asked."""
    handle = _open(path)
    if handle is None:
        return
    with handle:
        end = handle.seek(0, os.SEEK_END)
        rest = b""
        while end > 0:
            start = max(0, end - CHUNK)
            handle.seek(start)
            block = handle.read(end - start) + rest
            end = start
            lines = block.split(b"\n")
            rest = lines.pop(0)  # maybe the tail of a line that starts further back
            yield from (line for line in reversed(lines) if line)
        if rest:
            yield rest


def _lines_forwards(path: Path) -> Iterator[bytes]:
    handle = _open(path)
    if handle is None:
        return
    with handle:
        yield from (line for line in handle if line.endswith(b"\n"))


def read_rotated(path: Path, *, newest_first: bool = False,
                 since: float | None = None) -> Iterator[dict[str, Any]]:
    """Every record of a JSON-lines log and its rotated files: oldest to newest, or newest
    first (which reads only as far back as the caller goes). `since`: records at or after
    that time only; newest first stops at the first older one."""
    files = rotated_files(path)
    if newest_first:
        for name in reversed(files):
            for line in _lines_backwards(name):
                record = _parse(line)
                if record is None:
                    continue
                if since is not None and record.get("time", 0) < since:
                    return
                yield record
        return
    for name in files:
        for line in _lines_forwards(name):
            record = _parse(line)
            if record is not None and (since is None or record.get("time", 0) >= since):
                yield record


class LogFollower:
    """The records appended to a log since the last read(), across rotations: the file is
    held open, so when its name moves on to a new file the rest of the old one is read
    first."""

    def __init__(self, path: Path, backlog: int = 0) -> None:
        """Start `backlog` bytes before the current end (at a line start)."""
        self.path = path
        self._handle = _open(path)
        self._partial = b""
        if self._handle and backlog:
            size = self._handle.seek(0, os.SEEK_END)
            if size > backlog:
                self._handle.seek(size - backlog)
                self._handle.readline()  # the rest of a line cut by the seek
            else:
                self._handle.seek(0)

    @classmethod
    def at_end(cls, path: Path) -> LogFollower:
        """A follower of what is appended from now on."""
        follower = cls(path)
        if follower._handle:
            follower._handle.seek(0, os.SEEK_END)
        return follower

    def read(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        while True:
            if self._handle is None:
                self._handle = _open(self.path)
                if self._handle is None:
                    return records
            records += self._drain()
            mine = os.fstat(self._handle.fileno()).st_ino
            try:
                if os.stat(self.path).st_ino == mine:
                    return records
            except FileNotFoundError:
                pass
            records += self._drain()  # lines written between the drain and the rename
            self._handle.close()
            self._handle, self._partial = self._successor(mine), b""

    def _successor(self, inode: int) -> BinaryIO | None:
        """The file written after the one with `inode` (rotated more than once since the last
        read, it is not the newest); the oldest kept if that one is gone too."""
        files = rotated_files(self.path)
        inodes = []
        for path in files:
            try:
                inodes.append(path.stat().st_ino)
            except FileNotFoundError:
                inodes.append(None)
        after = inodes.index(inode) + 1 if inode in inodes else 0
        return _open(files[after]) if after < len(files) else None

    def _drain(self) -> list[dict[str, Any]]:
        assert self._handle is not None
        data = self._partial + self._handle.read()
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        return [r for r in map(_parse, data[:end].splitlines()) if r is not None]

    def close(self) -> None:
        if self._handle:
            self._handle.close()


# Event lines for systemd's journal: when stderr is the journal (JOURNAL_STREAM names it,
# systemd.exec(5)), each line starts with a syslog priority (`<4>`) instead of a timestamp,
# which the journal adds itself.
WARNING = {"deferred", "bounced", "expired", "quarantined", "smtp-relay-denied",
           "smtp-auth-failed", "delay-notice", "config-error", "report-error"}
INFO, WARN, ERR = 6, 4, 3


def attached(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Is `stream` the journal's socket (device:inode in JOURNAL_STREAM)?"""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def priority(event: dict[str, Any]) -> int:
    name = str(event.get("event", ""))
    if name.endswith("-error") and name != "config-error":
        return ERR
    return WARN if name in WARNING else INFO


def journal_line(event: dict[str, Any]) -> str:
    """`<4>deferred id=... to=<a@b> ...`: one line (newlines in values are escaped)."""
    text = format_event(event).split(" ", 2)[2]  # without the date and the time
    return f"<{priority(event)}>" + text.replace("\r", "\\r").replace("\n", "\\n")
