"""Hostile clients as the event log tells them: refusals per minute and stress mode (for the
console's status line) and the most refused addresses of the last hour (`mailroot summary`).

Read from events, so a console or a CLI in another process sees what the relay refused.
"""

from __future__ import annotations

from collections import Counter, deque
from pathlib import Path
from typing import Any

from relay.core.events import LOG_NAME, read_rotated

# every refusal of a client names it: a connection refused at connect, a failed or refused AUTH
REFUSAL_EVENTS = frozenset({"connection-refused", "auth-failed"})
HOUR = 3600.0


def is_refusal(event: dict[str, Any]) -> bool:
    return event.get("event") in REFUSAL_EVENTS


class Pressure:
    """Follows events: refusals in the last minute, and whether the listener is under stress."""

    def __init__(self) -> None:
        self.refused: deque[float] = deque()
        self.stressed = False

    def add(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if is_refusal(event):
            self.refused.append(float(event.get("time", 0)))
        elif name == "stress":
            self.stressed = event.get("state") == "on"
        elif name in ("relay-started", "relay-stopped"):
            self.stressed = False

    def per_minute(self, now: float) -> int:
        """Refusals in the minute before `now`."""
        while self.refused and self.refused[0] < now - 60:
            self.refused.popleft()
        return sum(1 for when in self.refused if when <= now)


def events_since(log_dir: Path, since: float) -> list[dict[str, Any]]:
    """The events logged at or after `since`, newest first, across rotated files (only as far
    back as `since` is read)."""
    return list(read_rotated(log_dir / LOG_NAME, newest_first=True, since=since))


def top_refused(log_dir: Path, now: float, span: float = HOUR,
                count: int = 10) -> list[tuple[str, int]]:
    """The client addresses refused most often in the `span` seconds before `now`."""
    refused = Counter(str(e.get("client")) for e in events_since(log_dir, now - span)
                      if is_refusal(e) and float(e.get("time", 0)) <= now)
    return refused.most_common(count)
