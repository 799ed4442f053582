"""Delivery counts, queue depth and SMTP listeners, from the relay's own events."""

from __future__ import annotations

from collections import deque
from typing import Any

from relay.ops.refusals import Pressure

HOUR = 3600
OUTCOMES = ("delivered", "deferred", "failed")


def outcome(event: dict[str, Any]) -> str | None:
    """delivered / deferred / failed for an event that ends a delivery attempt, else None.

    The scheduler emits `delivered` and `deferred` per attempt (one per recipient domain),
    `failed` for the recipients a hop refused for good and then one `bounced` when the message
    goes to Badmail (after `expired` too). A message fails once: `bounced` is its failure, and
    so is a Pickup file put in Badmail at intake; the recipient-level `failed` and `expired`
    events are not counted again.
    """
    name = event.get("event", "")
    if name in ("delivered", "deferred"):
        return name
    if name == "bounced":
        return "failed"
    if name == "intake" and event.get("outcome") in ("badmail", "set-aside"):
        return "failed"
    return None


class Stats:
    """Outcomes with their times (last hour), a queue-depth sample per minute, and the SMTP
    listeners the running relay reported."""

    def __init__(self) -> None:
        self.outcomes: deque[tuple[float, str, str]] = deque()  # (time, outcome, message id)
        self.depth: dict[int, int] = {}  # minute number -> queue depth seen in it
        self.listeners: list[str] | None = None  # None: no relay start seen in the events
        self._starting = False  # between a relay's first smtp-listening and relay-started
        self.pressure = Pressure()  # refusals of hostile clients, stress mode

    def add(self, event: dict[str, Any]) -> None:
        kind = outcome(event)
        if kind:
            self.outcomes.append((float(event.get("time", 0)), kind, str(event.get("id", ""))))
        self._follow_listeners(event)
        self.pressure.add(event)

    def _follow_listeners(self, event: dict[str, Any]) -> None:
        """A relay reports each bound socket (smtp-listening) before relay-started."""
        name = event.get("event")
        if name == "smtp-listening":
            if not self._starting:
                self.listeners, self._starting = [], True
            host = str(event.get("host", "?"))
            host = f"[{host}]" if ":" in host else host
            flags = "+".join(f for f in ("tls", "auth") if event.get(f))
            self.listeners.append(f"{host}:{event.get('port')}" + (f" {flags}" if flags else ""))
        elif name == "relay-started":
            if not self._starting:
                self.listeners = []  # started without SMTP listeners
            self._starting = False
        elif name == "relay-stopped":
            self.listeners, self._starting = None, False

    def sample_depth(self, now: float, depth: int) -> None:
        self.depth[int(now // 60)] = depth
        for minute in [m for m in self.depth if m < (now - HOUR) // 60]:
            del self.depth[minute]

    def counts(self, now: float, span: float) -> dict[str, int]:
        """Attempts delivered and deferred in the span; messages failed, each once: one
        requeued that fails again is still one message in Badmail."""
        while self.outcomes and self.outcomes[0][0] < now - HOUR:
            self.outcomes.popleft()
        out = dict.fromkeys(OUTCOMES, 0)
        failed: set[str] = set()
        for n, (when, kind, mid) in enumerate(self.outcomes):
            if when < now - span:
                continue
            if kind == "failed":
                failed.add(mid or f"#{n}")  # an event without an id counts on its own
            else:
                out[kind] += 1
        out["failed"] = len(failed)
        return out

    def rate_series(self, now: float) -> list[float]:
        """Deliveries per minute, one value per minute of the last hour, oldest first."""
        first = int(now // 60) - 59
        series = [0.0] * 60
        for when, kind, _ in self.outcomes:
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
