"""The console at real queue sizes: filter, sort, marks and bulk actions over whole folders,
follow, the by-domain view and Trash. The console attaches (the relay lock is held, as by a
running `mailroot serve`), so nothing delivers the queued mail while we look at it."""

from __future__ import annotations

import asyncio
import gc
import os
import smtplib
import threading
from functools import partial

import pytest

from relay.core import config_loader
from relay.core.store import DROP, HOLD, QUEUE, TRASH, Mailroot
from relay.ops.admin import Admin
from tests.admin_support import cli
from tests.bulk_support import fill_queue
from tests.tui_fixture import hold_lock
from tests.tui_fixture import until as wait_until
from tui.app import ConsoleApp
from tui.collector import NO_FULL_PASS
from tui.screens.by_domain import ByDomain
from tui.screens.confirm import Confirm

SIZE = (120, 40)


until = partial(wait_until, timeout=10.0)  # this file's default wait


def gate_holds(app, monkeypatch, after: int) -> threading.Event:
    """Hold the console's bulk hold still after `after` messages until the test opens the
    gate (30 s at most), so what happens *while* it runs is seen however fast the disk is."""
    gate, real, count = threading.Event(), app.admin._hold_one, [0]

    def gated(folder: str, mid: str) -> None:
        count[0] += 1
        if count[0] == after + 1:
            gate.wait(30)
        real(folder, mid)

    monkeypatch.setattr(app.admin, "_hold_one", gated)
    return gate


def title(pane) -> str:
    return str(pane.query_one(".pane-title").render())


@pytest.fixture
def attached(write_config, tmp_path):
    """A config whose mailroot's relay lock is held: the console attaches, no relay runs."""
    path = write_config()
    root = tmp_path / "mailroot"
    Mailroot(root).ensure()
    fd = hold_lock(root)
    yield path, root
    os.close(fd)


@pytest.mark.slow
async def test_filter_and_sort_cover_the_whole_folder(attached):
    path, root = attached
    ids = fill_queue(root, 3000, domains=20, last_subject="agetest-7f3q",
                     size_of=lambda n: 40_000 if n == 1234 else 100 + n % 97)
    app = ConsoleApp(config_loader.load(path))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.index.ready, timeout=30)
        pane = app.dashboard.panes[QUEUE]
        await pilot.press("2", "slash", *"agetest-7f3q", "enter")
        await until(pilot, lambda: len(pane.view.ids) == 1)
        assert "filter “agetest-7f3q”: 1 of 3,000" in title(pane)
        assert pane.table.row_count == 1 and pane.current_id() == ids[-1]
        # every count on screen written alike: the tab and the depth line as the title
        assert str(app.dashboard.query_one("#tab-queue").label).endswith("Queue 3,000")
        depth = str(app.dashboard.query_one("#depth-label").render())
        assert depth.startswith("queue 3,000 now"), depth

        await pilot.press("escape", "slash", *"domain:d7.example", "enter")
        await until(pilot, lambda: "d7" in pane.view.needle and len(pane.view.ids) < 3000)
        listed = cli(path, "queue", "--match", "domain:d7.example", "--json")
        count = len(listed.stdout.splitlines())
        assert count == 150 and len(pane.view.ids) == count
        assert f"filter “domain:d7.example”: {count:,} of 3,000" in title(pane)
        assert {pane.view.rows[m].recipients[0].address.split("@")[1]
                for m in pane.view.window()} == {"d7.example"}

        await pilot.press("escape")
        await until(pilot, lambda: len(pane.view.ids) == 3000)
        assert "rows 1–200 of 3,000" in title(pane)  # paging walks the whole folder
        await pilot.press(*"s" * 7)  # oldest, newest, sender, recipient, domain, subject,
        await until(pilot, lambda: "sort: largest" in title(pane))  # attempts, largest
        assert pane.view.ids[0] == ids[1234]
        assert pane.table.coordinate_to_cell_key((0, 0)).row_key.value == ids[1234]


@pytest.mark.slow
async def test_mark_all_matches_then_hold_with_progress_while_keys_answer(attached,
                                                                         monkeypatch):
    path, root = attached
    grey = fill_queue(root, 1800, domains=1, prefix="greylist")
    others = fill_queue(root, 1200, domains=20)
    app = ConsoleApp(config_loader.load(path))
    gate = gate_holds(app, monkeypatch, after=200)
    thresholds = gc.get_threshold()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.index.ready, timeout=30)
        pane = app.dashboard.panes[QUEUE]
        await pilot.press("2", "slash", *"domain:greylist0.example", "enter")
        await until(pilot, lambda: len(pane.view.ids) == 1800)
        await pilot.press("asterisk")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert "Mark all 1,800 messages in Queue that match" in app.screen.question
        await pilot.press("y")
        await until(pilot, lambda: len(pane.view.marks) == 1800)
        assert "1,800 marked" in title(pane)
        await pilot.press("escape")  # the filter goes; the marks stay, counted in the title
        await until(pilot, lambda: len(pane.view.ids) == 3000)
        assert "1,800 marked" in title(pane)
        await pilot.press("h")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert app.screen.question == ("Hold 1,800 messages in Queue "
                                       "(1,800 to greylist0.example)?")
        await pilot.press("y")
        bar = app.dashboard.query_one("#bulk")
        await until(pilot, lambda: bar.has_class("running"))
        await until(pilot, lambda: "of 1,800" in str(
            app.dashboard.query_one("#bulk-label").render()))
        answered = []
        for key, folder in (("1", "Pickup"), ("3", "Drop"), ("4", "Badmail"), ("5", HOLD),
                            ("2", QUEUE)):
            await pilot.press(key)
            answered.append(app.dashboard.active == folder and bar.has_class("running"))
        row, key = pane.table.cursor_row, pane.current_id()
        await pilot.press("j")  # (a redraw as rows leave may move the cursor's row too)
        moved = pane.table.cursor_row == row + 1 or pane.current_id() != key
        await pilot.press("k")
        assert all(answered) and moved  # keys were answered while the bulk action ran
        assert gc.get_threshold()[2] == NO_FULL_PASS  # gc's full passes wait for quiet times
        gate.set()
        await until(pilot, lambda: app.last_result, timeout=50)
        assert app.last_result == "held 1,800"
        assert gc.get_threshold() == thresholds  # and come back of their own afterwards
        admin = Admin(app.config)
        assert set(admin.store.ids(HOLD)) == set(grey)
        assert set(admin.store.ids(QUEUE)) == set(others)
        await until(pilot, lambda: app.dashboard.panes[HOLD].view.total == 1800)
        assert not pane.view.marks


async def test_a_canceled_bulk_action_leaves_every_message_whole_in_one_folder(attached,
                                                                             monkeypatch):
    path, root = attached
    ids = fill_queue(root, 1500, domains=4)
    store = Mailroot(root)
    before = {mid: store.read_message(QUEUE, mid) for mid in ids}
    app = ConsoleApp(config_loader.load(path))
    gate = gate_holds(app, monkeypatch, after=300)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.index.ready, timeout=30)
        pane = app.dashboard.panes[QUEUE]
        await pilot.press("2", "asterisk", "y")
        await until(pilot, lambda: len(pane.view.marks) == 1500)
        await pilot.press("h", "y")
        await until(pilot, lambda: len(store.ids(HOLD)) >= 300, timeout=20)
        await pilot.press("escape")
        gate.set()
        await until(pilot, lambda: app.last_result, timeout=20)
    held, queued = set(store.ids(HOLD)), set(store.ids(QUEUE))
    assert 300 <= len(held) < 1500, app.last_result
    assert held | queued == set(ids) and not held & queued
    assert app.last_result == f"held {len(held):,}; {1500 - len(held):,} not done (canceled)"
    for mid in ids:
        folder = HOLD if mid in held else QUEUE
        assert store.read_message(folder, mid) == before[mid]
        assert store.read_envelope(folder, mid).id == mid
        other = QUEUE if folder == HOLD else HOLD
        assert not list(root.joinpath(other).glob(f"{mid}.*"))


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_follow_keeps_the_newest_row_on_screen_as_mail_arrives(write_config):
    app = ConsoleApp(config_loader.load(write_config()))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.relay is not None and app.index.ready, timeout=20)
        port = app.relay.addresses()[0][1]
        pane = app.dashboard.panes[DROP]
        await pilot.press("3", "F")
        assert "following" in title(pane)
        client = await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", port, timeout=10)
        try:
            for sent in range(10, 201, 10):  # 200 arrivals, in bursts of 10
                for n in range(sent - 10, sent):
                    await asyncio.to_thread(
                        client.sendmail, "app@yourdomain.com", ["it@yourdomain.com"],
                        f"Subject: arrival {n}\r\n\r\nbody {n}\r\n".encode())
                await until(pilot, lambda sent=sent: pane.view.total == sent)
                newest = max(app.store.ids(DROP))
                await until(pilot, lambda newest=newest: pane.current_id() == newest)
                table = pane.table
                await pilot.pause()
                top = round(table.scroll_y)
                assert top <= table.cursor_row < top + table.scrollable_content_region.height
        finally:
            await asyncio.to_thread(client.quit)


async def test_trash_view_undeletes_back_to_the_folder_and_the_notice_names_the_key(attached):
    path, root = attached
    ids = fill_queue(root, 5, domains=1, size_of=lambda n: 3000)
    app = ConsoleApp(config_loader.load(path))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.index.ready, timeout=30)
        queue, trash = app.dashboard.panes[QUEUE], app.dashboard.panes[TRASH]
        await pilot.press("2", "space", "space", "space", "d", "y")
        await until(pilot, lambda: app.last_result)
        assert app.last_result.startswith("deleted 3. Undo: 6 (Trash)")
        await until(pilot, lambda: trash.view.total == 3 and queue.view.total == 2)
        await pilot.press("6")
        await until(pilot, lambda: trash.table.row_count == 3)
        row = trash.view.rows[ids[0]]
        assert row.deleted_from == QUEUE and row.size > 3000
        cells = [str(c) for c in trash.table.get_row(ids[0])]
        assert "Queue" in cells and f"{row.size // 1024}K" in cells
        app.last_result = ""
        await pilot.press("space", "space", "u")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert app.screen.question.startswith("Undelete 2 messages from Trash")
        await pilot.press("y")
        await until(pilot, lambda: app.last_result == "undeleted 2")
        await until(pilot, lambda: queue.view.total == 4 and trash.view.total == 1)
    store = Mailroot(root)
    assert set(store.ids(QUEUE)) == {ids[0], ids[1], ids[3], ids[4]}
    assert store.ids(TRASH) == [ids[2]]


@pytest.mark.slow
async def test_by_domain_counts_equal_summary_and_enter_drills_in(attached):
    path, root = attached
    fill_queue(root, 3000, domains=20)
    fill_queue(root, 30, domains=3, prefix="partner")
    app = ConsoleApp(config_loader.load(path))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.index.ready, timeout=30)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, ByDomain))
        screen = app.screen
        admin = Admin(app.config)
        assert [(r.name, r.total) for r in screen.rows] == [
            (r.name, r.total) for r in admin.summary().domains]
        for _ in range(3):  # the ages move on: a message may cross a bucket in between
            shape = admin.summary()
            screen.reload()
            if [(r.name, r.counts) for r in screen.rows] == [
                    (r.name, r.counts) for r in shape.domains]:
                break
        else:
            raise AssertionError("the age buckets differ from mailroot summary's")
        table = screen.query_one("#by-domain-table")
        target = next(i for i, r in enumerate(screen.rows) if r.name == "partner1.example")
        table.move_cursor(row=target)
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is app.dashboard)
        pane = app.dashboard.panes[QUEUE]
        await until(pilot, lambda: len(pane.view.ids) == 10)
        assert "filter “domain:partner1.example”: 10 of 3,030" in title(pane)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, ByDomain))
        app.screen.query_one("#by-domain-table").move_cursor(row=target)
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert app.screen.question == ("Retry now 10 messages in Queue "
                                       "(10 to partner1.example)?")
        await pilot.press("y")
        await until(pilot, lambda: app.last_result == "due now 10")


async def test_the_page_keys_stay_whole_in_the_title_at_80_columns(attached):
    path, root = attached
    fill_queue(root, 2235, domains=20)
    app = ConsoleApp(config_loader.load(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.index.ready, timeout=30)
        pane = app.dashboard.panes[QUEUE]
        await pilot.press("2", "asterisk", "y")
        await until(pilot, lambda: len(pane.view.marks) == 2235)
        await pilot.press("s")  # newest first
        await until(pilot, lambda: "sort:" in title(pane))

        def visible() -> str:
            return title(pane)[:pane.size.width]

        assert "2,235 marked  rows 1–200 of 2,235 ([ ] page)" in visible()
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: "rows 201–400 of 2,235 ([ ] page)" in visible())


def test_the_index_says_how_far_its_first_build_has_got(attached):
    from tui.index import FolderIndex
    from tui.widgets.folder_pane import FolderPane

    path, root = attached
    fill_queue(root, 1200, domains=3)
    index = FolderIndex(Admin(config_loader.load(path)), [QUEUE, HOLD])
    assert index.progress(QUEUE) is None  # not listed yet
    built = index.build()
    assert index.progress(QUEUE) == (1200, 1200) and index.progress(HOLD) == (0, 0)
    assert len(built[QUEUE]) == 1200

    pane = FolderPane(QUEUE, "2")
    pane.view.total, pane.view.indexing = 3000, (1200, 3000)
    assert "3,000 messages  indexing 1,200 of 3,000…" in pane.title_text().plain


async def test_a_tick_while_the_panes_are_torn_down_does_not_crash(attached):
    path, _ = attached
    app = ConsoleApp(config_loader.load(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await app.dashboard.panes["Pickup"].table.remove()  # as when the console quits
        app.tick()
