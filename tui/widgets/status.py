"""The status line: relay state, listeners, outcomes per minute/hour, sparklines, refresh."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from relay.refusals import Pressure
from tui.stats import Stats


def outcome_text(counts: dict[str, int]) -> Text:
    text = Text()
    text.append(f"✓{counts['delivered']}", style="green")
    text.append(f" ↻{counts['deferred']}", style="yellow")
    text.append(f" ✗{counts['failed']}", style="red")
    return text


def pressure_text(pressure: Pressure, now: float) -> Text:
    """Refused clients per minute and stress mode; nothing while there are neither."""
    text = Text()
    if pressure.stressed:
        text.append("  STRESS", style="bold reverse red")
    refused = pressure.per_minute(now)
    if refused:
        text.append(f"  refused {refused}/m", style="yellow")
    return text


class StatusBar(Vertical):
    def compose(self) -> ComposeResult:
        yield Static(id="status-line", markup=False)
        with Horizontal(id="spark-row"):
            yield Static(id="depth-label", classes="spark-label", markup=False)
            yield Sparkline([], id="spark-depth", classes="spark")
            yield Static(id="rate-label", classes="spark-label", markup=False)
            yield Sparkline([], id="spark-rate", classes="spark")

    def show(self, *, relay_state: str, running: bool, listeners: list[str], stats: Stats,
             now: float, queue_depth: int, paused: bool) -> None:
        line = Text()
        line.append("● " if running else "○ ", style="green" if running else "red")
        line.append(relay_state)
        if listeners:
            line.append("  SMTP " + ",".join(listeners), style="dim")
        line.append_text(pressure_text(stats.pressure, now))  # first: it must fit at 80 columns
        line.append("  1m ")
        line.append_text(outcome_text(stats.counts(now, 60)))
        line.append("  1h ")
        line.append_text(outcome_text(stats.counts(now, 3600)))
        line.append("  " + time.strftime("%H:%M:%S", time.localtime(now)))
        line.append("  ‖ PAUSED (p)" if paused else "  live", style="bold reverse"
                    if paused else "dim")
        self.query_one("#status-line", Static).update(line)
        self.query_one("#spark-depth", Sparkline).data = stats.depth_series(now)
        rate = stats.rate_series(now)
        self.query_one("#spark-rate", Sparkline).data = rate
        self.query_one("#depth-label", Static).update(f"queue {queue_depth} now, 1h:")
        self.query_one("#rate-label", Static).update(f"delivered {int(sum(rate))} in 1h:")
