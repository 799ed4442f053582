"""Delivery counts and queue depth over the last hour, from the relay's events."""

from __future__ import annotations

from collections import deque
from typing import Any

HOUR = 3600
OUTCOMES = ("delivered", "deferred", "failed")


def outcome(event: dict[str, Any]) -> str | None:
    """delivered / deferred / failed for a delivery event, else None.

    Accepts both an event named after its outcome and an `attempt` event carrying `outcome`.
    """
    name = event.get("event", "")
    if name in OUTCOMES:
        return name
    if name in ("attempt", "delivery") and event.get("outcome") in OUTCOMES:
        return event["outcome"]
    if name in ("bounced", "expired") or (name == "intake" and event.get("outcome") == "badmail"):
        return "failed"
    return None


class Stats:
    """Outcomes with their times (last hour) and a queue-depth sample per minute."""

    def __init__(self) -> None:
        self.outcomes: deque[tuple[float, str]] = deque()
        self.depth: dict[int, int] = {}  # minute number -> queue depth seen in it

    def add(self, event: dict[str, Any]) -> None:
        kind = outcome(event)
        if kind:
            self.outcomes.append((float(event.get("time", 0)), kind))

    def sample_depth(self, now: float, depth: int) -> None:
        self.depth[int(now // 60)] = depth
        for minute in [m for m in self.depth if m < (now - HOUR) // 60]:
            del self.depth[minute]

    def counts(self, now: float, span: float) -> dict[str, int]:
        while self.outcomes and self.outcomes[0][0] < now - HOUR:
            self.outcomes.popleft()
        out = dict.fromkeys(OUTCOMES, 0)
        for when, kind in self.outcomes:
            if when >= now - span:
                out[kind] += 1
        return out

    def rate_series(self, now: float) -> list[float]:
        """Deliveries per minute, one value per minute of the last hour, oldest first."""
        first = int(now // 60) - 59
        series = [0.0] * 60
        for when, kind in self.outcomes:
            index = int(when // 60) - first
            if kind == "delivered" and 0 <= index < 60:
                series[index] += 1
        return series

    def depth_series(self, now: float) -> list[float]:
        """Queue depth per minute (carried forward over minutes without a sample)."""
        first = int(now // 60) - 59
        series, last = [], 0.0
        for minute in range(first, first + 60):
            last = float(self.depth.get(minute, last))
            series.append(last)
        return series
