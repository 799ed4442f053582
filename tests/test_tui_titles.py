"""Pane titles carry state (the filter and its count, marks, the page, the sort): at every
width they wrap onto a second line rather than cut any of it off. Snapshots at 80x24, 120x30
and 200x50 of Queue with a filter, marks and a sort, of Badmail and of the by-domain view.

Regenerate deliberately: pytest tests/test_tui_titles.py --snapshot-update, then look at the
report before committing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.core.store import QUEUE, Mailroot
from tests.busy_fixture import DOMAINS
from tests.tui_fixture import T0, envelope, fixed_id, message, until
from tui.app import ConsoleApp

MORE = 400  # queued beside the busy fixture's 50: three pages of 200


def queue_more(root: Path) -> None:
    """400 more queued, at fixed ids and times (T0 is the frozen now): snapshots repeat."""
    store = Mailroot(root)
    for n in range(MORE):
        when = T0 - 7200 - 5 * n
        to = f"bulk{n}@{DOMAINS[n % len(DOMAINS)]}"
        data = message("news@example.com", to, f"Order digest {n}")
        store.commit(store.enqueue_ops(QUEUE, envelope(
            fixed_id(when, 1000 + n), when, "news@example.com", [to], f"Order digest {n}",
            data, next_attempt=T0 + 600), data))


@pytest.fixture
def paged(busy):
    root, config = busy
    queue_more(root)
    return ConsoleApp(config, clock=lambda: T0)


STATE = ["filter “subject:order”: 450 of 450", "2 marked", "rows 1–200 of 450 ([ ] page)",
         "sort: newest first"]


async def set_state(pilot) -> None:
    """Queue: a filter, two marks and a sort."""
    app = pilot.app
    await until(pilot, lambda: app.index.ready)
    await pilot.press("2", "slash", *"subject:order", "enter")
    pane = app.dashboard.panes[QUEUE]
    await until(pilot, lambda: len(pane.view.ids) == 450)
    await pilot.press("space", "space", "s")
    await until(pilot, lambda: pane.view.sort == 1 and len(pane.view.marks) == 2)
    # the sort's notice lasts 1.5 s of wall time: on a loaded machine it may be gone before
    # the snapshot is taken, so it never is in one
    app.clear_notifications()
    await pilot.pause()


@pytest.mark.parametrize("size", [(60, 20), (80, 24), (120, 30), (200, 50)])
async def test_the_title_never_cuts_its_state(paged, size):
    app = paged
    async with app.run_test(size=size) as pilot:
        await set_state(pilot)
        title = app.dashboard.panes[QUEUE].query_one(".pane-title")
        lines = str(title.render()).split("\n")
        assert all(len(line) <= title.content_size.width for line in lines), lines
        assert title.size.height == len(lines)  # every line shown
        for part in STATE:
            assert any(part in line for line in lines), (part, lines)


@pytest.mark.parametrize("size", [(80, 24), (120, 30), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("keys", [[], ["4"], ["b"]], ids=["queue", "badmail", "by_domain"])
def test_title_snapshot(snap_compare, paged, size, keys):
    async def settle(pilot):
        await set_state(pilot)
        await pilot.press(*keys)
        await pilot.pause()

    assert snap_compare(paged, run_before=settle, terminal_size=size)
