"""The console tells the truth: live panes, ticking clocks, exact counts, safe exits."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from relay import config as configmod
from tests.tui_fixture import build, hold_lock, write_config
from tui.app import ConsoleApp

SIZE = (80, 24)


async def until(pilot, predicate, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.05)


@pytest.fixture
def attached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A console attached to a fixed mailroot whose lock a "relay" holds: nothing moves but
    what the test writes."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    root = tmp_path / "mailroot"
    build(root)
    fd = hold_lock(root)
    config = configmod.load(write_config(tmp_path))
    yield root, config
    os.close(fd)
    monkeypatch.undo()
    time.tzset()


def append_events(root: Path, events: list[dict]) -> None:
    with (root / "log" / "events.jsonl").open("a") as log:
        log.write("".join(json.dumps(e) + "\n" for e in events))


async def test_activity_pane_follows_the_newest_event_through_bursts(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.dashboard.query_one("#activity")
        now = time.time()
        for burst in range(8):
            append_events(root, [{"time": now + burst, "event": "delivered", "id": f"B{burst}N{n}",
                                  "to": [f"u{n}@far.example"], "reply": "250 ok"}
                                 for n in range(250)])
            last = f"id B{burst}N249"
            await until(pilot, lambda last=last: log.lines and log.lines[-1].endswith(last))
            await pilot.pause(0.1)
            assert log.scroll_y == log.max_scroll_y, f"burst {burst}: not at the newest"
            assert last in shown_text(log)[-1], (burst, shown_text(log))


def shown_text(widget) -> list[str]:
    """The lines the widget paints now (its rendered cache, as the screen gets them)."""
    strips = widget.render_lines(widget.outer_size.region)
    return ["".join(seg.text for seg in strip) for strip in strips]


async def test_a_cut_activity_line_ends_in_an_ellipsis(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.dashboard.query_one("#activity")
        append_events(root, [{"time": time.time(), "event": "deferred", "id": "LONG",
                              "to": ["someone@far.example"], "reply": "451 " + "x" * 200}])
        await until(pilot, lambda: log.lines and log.lines[-1].endswith("id LONG"))
        await pilot.pause(0.1)
        assert shown_text(log)[-1].rstrip().endswith("…")
