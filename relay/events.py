"""What happened, for the log and the console.

Each event is one JSON line in `log/events.jsonl` inside the mailroot (appended with a single
write, so the relay, the CLI and the console can all write and follow it) and one readable line
on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from relay.store import append_line

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
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        try:
            append_line(self.path, json.dumps(record, separators=(",", ":"), default=str))
        except OSError as exc:  # a full or read-only disk must not stop the relay
            if self.stream:
                print(f"mailroot: cannot write {self.path}: {exc.strerror}", file=self.stream)
        if self.stream:
            print(format_event(record), file=self.stream, flush=True)
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
