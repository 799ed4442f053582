"""What happened, for the log and the console.

Each event is one JSON line in `log/events.jsonl` inside the mailroot (appended with a single
write, so the relay, the CLI and the console can all write and follow it) and one readable line
on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

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

    def __init__(self, log_dir: Path, stream: TextIO | None = sys.stderr) -> None:
        self.path = log_dir / LOG_NAME
        self.stream = stream
        self.format: Callable[[dict[str, Any]], str] = format_event  # the stderr line
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._fd: int | None = None
        self._checked = 0.0  # when the path was last checked for a rotated-away file
        self._lock = threading.Lock()

    def _append(self, line: str) -> None:
        """One write to a descriptor kept open (O_APPEND keeps concurrent writers' lines
        whole); the file is reopened if it was rotated away, checked at most once a second."""
        with self._lock:
            now = time.monotonic()
            if self._fd is not None and now - self._checked > 1.0:
                self._checked = now
                try:
                    moved = os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
                except FileNotFoundError:
                    moved = True
                if moved:
                    os.close(self._fd)
                    self._fd = None
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                   | os.O_CLOEXEC, 0o640)
                self._checked = now
            os.write(self._fd, line.encode())

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        try:
            self._append(json.dumps(record, separators=(",", ":"), default=str) + "\n")
        except OSError as exc:  # a full or read-only disk must not stop the relay
            if self.stream:
                print(f"mailroot: cannot write {self.path}: {exc.strerror}", file=self.stream)
        if self.stream:
            print(self.format(record), file=self.stream, flush=True)
        for listener in list(self.listeners):
            listener(record)
        return record


def read_events(log_dir: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events appended since byte `offset`, and the new offset (only whole lines)."""
    path = log_dir / LOG_NAME
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + end


def tail(log_dir: Path, count: int) -> Iterator[dict[str, Any]]:
    """The last `count` events (reads only the end of the file)."""
    path = log_dir / LOG_NAME
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return iter(())
    start = max(0, size - count * 400)
    events, _ = read_events(log_dir, start)
    return iter(events[-count:])
