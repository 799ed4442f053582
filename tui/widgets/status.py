"""The status line: relay state, paused / read-only, outcomes per minute and hour, listeners,
the clock; and the sparklines of queue depth and deliveries."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from tui.stats import Stats
from tui.theme import MUTED, OK, WAITING, failed_style


def short_count(n: int) -> str:
    """4 digits and more shortened: 1.2k, 12k, 1.2M."""
    for size, unit in ((1_000_000, "M"), (1000, "k")):
        if n >= size:
            value = n / size
            return f"{value:.1f}{unit}" if value < 10 else f"{int(value)}{unit}"
    return str(n)


def outcome_text(counts: dict[str, int], short: bool = False, no_color: bool = False) -> Text:
    """✓ delivered ↻ deferred ✗ failed; failures, if any, the most visible of all."""
    show = short_count if short else str
    text = Text()
    text.append(f"✓{show(counts['delivered'])}", style=OK)
    text.append(f" ↻{show(counts['deferred'])}", style=WAITING)
    text.append(" ")
    text.append(f"✗{show(counts['failed'])}",
                style=failed_style(no_color) if counts["failed"] else "")
    return text


@dataclass
class StatusParts:
    running: bool = False
    relay_state: str = "stopped"
    listeners: list[str] = field(default_factory=list)
    minute: dict[str, int] = field(default_factory=dict)
    hour: dict[str, int] = field(default_factory=dict)
    now: float = 0.0
    paused: bool = False
    readonly: bool = False
    no_color: bool = False
    stressed: bool = False  # the SMTP listener is in stress mode (a state: never given up)
    refused: int = 0  # SMTP clients refused in the last minute
    error: str = ""  # a console view's error, in one line (the console goes on)


SHEDDING = ("short", "listeners", "minute", "live", "hint", "refused", "hour")  # in this order


def status_text(parts: StatusParts, width: int) -> Text:
    """The line at `width`: relay state, screen paused / READ-ONLY / STRESS and the clock always
    stay; the counts are shortened first, then the listeners, the 1-minute counts, `live`, the
    pause key hint, the refused clients and at last the hour's counts give way."""
    shed: set[str] = set()
    line = _line(parts, shed)
    for step in SHEDDING:
        if line.cell_len <= width:
            break
        shed.add(step)
        line = _line(parts, shed)
    return line


def _line(parts: StatusParts, shed: set[str]) -> Text:
    short = "short" in shed
    line = Text(no_wrap=True, overflow="ellipsis")
    if parts.running:
        line.append("● ", style=OK)
        line.append(parts.relay_state)
    elif parts.relay_state == "died":
        line.append("✗ relay died", style=failed_style(parts.no_color))
    else:
        line.append(f"○ {parts.relay_state}", style=failed_style(parts.no_color))
    if parts.error:  # never shed: the operator must see that a view failed
        line.append(f"  ✗ {parts.error}", style=failed_style(parts.no_color))
    if parts.paused:
        line.append("  ‖ screen paused" + ("" if "hint" in shed else " (p)"), style="bold reverse")
    if parts.readonly:
        line.append("  READ-ONLY", style="bold reverse")
    if parts.stressed:
        line.append("  STRESS", style=failed_style(parts.no_color))
    if parts.refused and "refused" not in shed:
        count = short_count(parts.refused) if short else str(parts.refused)
        line.append(f"  refused {count}/m", style=WAITING)
    if "listeners" not in shed and parts.listeners:
        line.append("  SMTP " + ",".join(parts.listeners), style=MUTED)
    if "minute" not in shed and parts.minute:
        line.append("  1m ")
        line.append_text(outcome_text(parts.minute, short, parts.no_color))
    if "hour" not in shed and parts.hour:
        line.append("  1h ")
        line.append_text(outcome_text(parts.hour, short, parts.no_color))
    line.append("  " + time.strftime("%H:%M:%S", time.localtime(parts.now)))
    if "live" not in shed and not parts.paused:
        line.append("  live", style=MUTED)
    return line


class StatusLine(Static):
    """Redrawn from its parts at its own width, so a resize never cuts the clock off."""

    parts = StatusParts()

    def show(self, parts: StatusParts) -> None:
        self.parts = parts
        self.refresh()

    def render(self) -> Text:
        return status_text(self.parts, self.size.width or 80)


class StatusBar(Vertical):
    def compose(self) -> ComposeResult:
        yield StatusLine(id="status-line", markup=False)
        with Horizontal(id="spark-row"):
            yield Static(id="depth-label", classes="spark-label", markup=False)
            yield Sparkline([], id="spark-depth", classes="spark")
            yield Static(id="rate-label", classes="spark-label", markup=False)
            yield Sparkline([], id="spark-rate", classes="spark")

    def show(self, *, relay_state: str, running: bool, listeners: list[str], stats: Stats,
             now: float, queue_depth: int, paused: bool, readonly: bool = False,
             no_color: bool = False, error: str = "") -> None:
        hour = stats.counts(now, 3600)
        self.query_one(StatusLine).show(StatusParts(
            running, relay_state, listeners, stats.counts(now, 60), hour, now, paused, readonly,
            no_color, stats.pressure.stressed, stats.pressure.per_minute(now), error))
        self.query_one("#spark-depth", Sparkline).data = stats.depth_series(now)
        self.query_one("#spark-rate", Sparkline).data = stats.rate_series(now)
        self.query_one("#depth-label", Static).update(f"queue {queue_depth:,} now, 1h:")
        self.query_one("#rate-label", Static).update(f"delivered {hour['delivered']} in 1h:")
