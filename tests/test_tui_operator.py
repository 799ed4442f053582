"""The console an operator can leave running: every screen true after every action, and no
error that takes the console down."""

from __future__ import annotations

import os
import re
import signal
from dataclasses import replace

import pytest
from textual import events
from textual.widgets import Select

from relay.core import config_loader
from relay.core.relay_lock import lock_holder
from relay.core.store import BADMAIL, QUEUE, TRASH
from relay.ops.admin import Admin
from tests.bulk_support import fill_queue
from tests.tui_fixture import T0, build, fixed_id, hold_lock, until, write_config
from tui.app import ConsoleApp
from tui.model import COLUMNS
from tui.relay_link import holder_pid
from tui.screens.confirm import Confirm
from tui.screens.dashboard import Dashboard
from tui.screens.domains import TLS_POLICIES


async def test_a_bulk_requeue_question_counts_the_permanent_failures(busy):
    """Of Badmail's ten, three were refused with a 5xx reply: requeued, they will be again."""
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")
        await until(pilot, lambda: app.index.ready)
        await pilot.press("asterisk")
        await until(pilot, lambda: len(app.dashboard.panes[BADMAIL].view.marks) == 10)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert app.screen.question.endswith(
            "?\n3 of them failed permanently (550 5.1.1 no such user, …): requeued, they will "
            "most likely fail again and each send another NDR.")


async def test_an_error_in_a_view_is_one_line_on_the_status_line_not_a_dead_console(
        busy, monkeypatch):
    """A Trash cell that raises (a fault put in on purpose): the status line says so in one
    line, the traceback is in log/console-errors.log, and the console goes on."""
    root, config = busy

    def broken(row, now):
        raise KeyError("deleted_from of an entry with empty fields")

    columns = [replace(c, cell=broken) if c.key == "origin" else c for c in COLUMNS[TRASH]]
    monkeypatch.setitem(COLUMNS, TRASH, columns)
    Admin(config).bulk("delete", [fixed_id(T0 - 3600 * 1, 100)])  # one in Trash
    seen: dict[str, object] = {}
    app = ConsoleApp(config, clock=lambda: T0)
    with pytest.raises(KeyError, match="empty fields"):  # run_test hands it over at the end
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("6")
            await until(pilot, lambda: app.view_error)
            seen["status"] = str(app.dashboard.query_one("#status-line").render())
            await pilot.press("2", "j")
            await pilot.pause()
            seen["alive"] = app.is_running and app.dashboard.pane.table.cursor_row == 1
    assert "✗ error in the console: KeyError: 'deleted_from of an entry" in seen["status"]
    assert seen["alive"]
    log = (root / "log" / "console-errors.log").read_text()
    assert "Traceback" in log and "def broken" not in log and "broken" in log


async def test_an_error_in_a_key_handler_leaves_the_console_running(busy, monkeypatch):
    """What no view catches (a key's handler that raises, put in on purpose) is reported the
    same way: one line, and the next key works."""
    root, config = busy

    def broken(self) -> None:
        raise RuntimeError("the next folder is not there")

    monkeypatch.setattr(Dashboard, "action_next_folder", broken)
    seen: dict[str, object] = {}
    app = ConsoleApp(config, clock=lambda: T0)
    with pytest.raises(RuntimeError, match="not there"):
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("tab")
            await until(pilot, lambda: app.view_error)
            await pilot.press("4")
            await pilot.pause()
            seen["status"] = str(app.dashboard.query_one("#status-line").render())
            seen["active"] = app.is_running and app.dashboard.active
    assert "✗ error in the console: RuntimeError: the next folder" in seen["status"]
    assert seen["active"] == BADMAIL


async def test_a_killed_relay_is_said_to_have_died_and_the_palette_starts_one(relay):
    """kill -9 of the relay a console watches: the header and the status line say it died,
    the activity pane has a line for it; `start relay` from the palette starts `mailroot
    serve` and the console attaches; killed in turn, its signal is known."""
    served = relay()
    app = ConsoleApp(config_loader.load(served.config))
    try:
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: app.holder)
            first = served.proc.pid
            served.kill()
            await until(pilot, lambda: app.relay_died)
            header = str(app.dashboard.query_one("#header").render())
            assert re.search(rf"✗ relay died \(pid {first}\) at \d\d:\d\d:\d\d", header), header
            assert str(app.dashboard.query_one("#status-line").render()).startswith(
                "✗ relay died")
            activity = app.dashboard.query_one("#activity")
            await until(pilot, lambda: any(f"relay-died relay pid {first} ended" in line
                                           for line in activity.lines))

            await pilot.press("colon")
            await pilot.pause()
            await pilot.press(*"start relay")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await until(pilot, lambda: app.holder, timeout=20)
            second = holder_pid(app.holder)
            assert second == app.started.pid != first
            assert f"attached to relay pid {second}" in str(
                app.dashboard.query_one("#header").render())
            assert not app.relay_died
            os.kill(second, signal.SIGKILL)
            await until(pilot, lambda: f"(pid {second}, signal 9)" in app.relay_died)
    finally:
        if app.started is not None and app.started.poll() is None:
            app.started.terminate()
            app.started.wait(10)
    assert lock_holder(Admin(config_loader.load(served.config)).store) is None


def test_the_result_line_agrees_in_number_and_says_why():
    from relay.ops.actions import ActionResult
    from tui.bulk import result_line

    assert result_line("requeue", ActionResult([], {"A": "busy: being delivered"}), 1) \
        == "requeued 0; 1 was being delivered and was skipped"
    assert result_line("requeue", ActionResult(["A"], {"B": "wrong state: in Hold"}), 2) \
        == "requeued 1; 1 was skipped (wrong state: in Hold)"
    gone = {"B": "not found: B", "C": "not found: C"}
    assert result_line("hold", ActionResult(["A"], gone), 3) == "held 1; 2 were no longer there"


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (120, 30)])
async def test_a_toast_never_covers_the_key_bar(busy, size):
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=size, notifications=True) as pilot:
        await pilot.pause()
        app.notify("Requeued 0; 1 was skipped (wrong state: in Hold)", timeout=30)
        app.notify("A second line of news", timeout=30)
        await until(pilot, lambda: len(app.screen.query("Toast")) == 2)
        await pilot.pause()
        keys = app.screen.query_one("KeyBar").region
        for toast in app.screen.query("Toast"):
            assert not toast.region.overlaps(keys), (toast.region, keys)


@pytest.mark.parametrize("size", [(80, 24), (60, 20)])
async def test_the_key_bar_lists_every_key_the_help_lists(busy, size):
    """b, F, *, z and : were in the help only, and the inspector's w too."""
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for folder in ("2", "4"):
            await pilot.press(folder)
            await pilot.pause()
            shown = str(app.screen.query_one("KeyBar").render())
            for key in ("b by domain", "F follow", "* all", "z disk", ": commands", "q quit"):
                assert key in shown, (key, shown)
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Inspector")
        await pilot.pause()
        assert "w route" in str(app.screen.query_one("KeyBar").render())


async def test_keys_that_arrive_in_one_write_all_scroll(busy):
    """Five `j` in one write (keys bunch over SSH) scroll five lines in the help and the
    inspector; a page and `G`/`g` too."""
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()

        async def burst(*keys: str) -> None:
            for key in keys:  # all queued before the first is handled, as one read of a tty
                app.post_message(events.Key(key, key if len(key) == 1 else None))
            await pilot.pause(0.3)

        await pilot.press("question_mark")
        await pilot.pause()
        body = app.screen.query_one("#help-body")
        await burst(*"jjjjj")
        assert body.scroll_y == 5
        await burst("k", "k")
        assert body.scroll_y == 3
        await burst("G")
        assert body.scroll_y == body.max_scroll_y > 5
        await pilot.press("escape", "4", "enter")
        await until(pilot, lambda: app.screen.__class__.__name__ == "Inspector")
        await pilot.pause()
        body = app.screen.query_one("#inspector-body")
        await burst(*"jjjjj")
        assert body.scroll_y == min(5, body.max_scroll_y) and body.max_scroll_y >= 5


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (120, 40)])
async def test_the_help_says_more_is_below_where_it_can_be_seen(busy, size):
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        await pilot.pause()
        dialog, hint = app.screen.query_one(".dialog"), app.screen.query_one("#help-more")
        assert dialog.content_region.contains_region(hint.region), (dialog.content_region,
                                                                    hint.region)
        assert "↓&#160;more&#160;below" in app.export_screenshot()


async def test_g_and_G_go_to_the_first_and_last_of_the_whole_folder(tmp_path):
    """450 queued (three pages): G is the last message of the folder, not of the page; with a
    filter, the last that matches; in the by-domain view, the last domain."""
    root = tmp_path / "mailroot"
    ids = fill_queue(root, 450, domains=2)
    fd = hold_lock(root)  # a relay runs elsewhere: the console attaches
    try:
        app = ConsoleApp(config_loader.load(write_config(tmp_path)), clock=lambda: T0)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.index.ready)
            pane = app.dashboard.panes[QUEUE]
            await pilot.press("G")
            await pilot.pause()
            assert pane.current_id() == ids[-1] and pane.view.page == 2
            await pilot.press("g")
            await pilot.pause()
            assert pane.current_id() == ids[0] and pane.view.page == 0
            await pilot.press("slash", *"domain:d0.example", "enter")
            await until(pilot, lambda: len(pane.view.ids) == 225)
            await pilot.press("G")
            await pilot.pause()
            assert pane.current_id() == ids[-2]  # the last of d0.example
            await pilot.press("escape", "b")
            await until(pilot, lambda: app.screen.__class__.__name__ == "ByDomain")
            table = app.screen.query_one("#by-domain-table")
            await pilot.press("G")
            await pilot.pause()
            assert table.cursor_row == table.row_count - 1 == 1
            await pilot.press("g")
            await pilot.pause()
            assert table.cursor_row == 0
    finally:
        os.close(fd)


def test_a_message_that_fails_twice_counts_once_as_badmail_does():
    """Requeued from Badmail, failed again: the status line's ✗ counts messages, as Badmail
    holds them, so it agrees with the folder; attempts delivered and deferred count each."""
    from tui.stats import Stats

    stats = Stats()
    for n, (event, mid) in enumerate([("bounced", "A"), ("deferred", "B"), ("bounced", "A"),
                                      ("deferred", "B"), ("bounced", "C")]):
        stats.add({"time": T0 - 100 + n, "event": event, "id": mid})
    assert stats.counts(T0, 3600) == {"delivered": 0, "deferred": 2, "failed": 2}
    assert stats.counts(T0, 98.5) == {"delivered": 0, "deferred": 1, "failed": 2}


async def test_the_domain_editor_offers_tls_as_a_choice_and_enter_there_does_not_save(
        tmp_path):
    """`m` in the domain editor: tls is one of its valid values, picked from a list; enter on
    it opens the list (it saved the form, half typed, when tls was free text)."""
    root = tmp_path / "mailroot"
    build(root)
    fd = hold_lock(root)
    try:
        config = config_loader.load(write_config(tmp_path))
        app = ConsoleApp(config, clock=lambda: T0)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("e")
            await until(pilot, lambda: app.screen.__class__.__name__ == "DomainEditor")
            await pilot.press("m")
            await until(pilot, lambda: app.screen.__class__.__name__ == "Ask")
            ask = app.screen
            choice = ask.query_one("#ask-tls", Select)
            assert choice.value == "may"
            await pilot.press(*"partner.example", "tab")
            assert choice.has_focus
            await pilot.press("enter")
            await until(pilot, lambda: choice.expanded)
            assert app.screen is ask  # not saved
            listed = choice.query_one("SelectOverlay")
            assert [str(listed.get_option_at_index(i).prompt)
                    for i in range(listed.option_count)] == list(TLS_POLICIES)
            await pilot.press("down", "enter")  # may -> require
            await until(pilot, lambda: not choice.expanded)
            assert choice.value == "require"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: app.screen.__class__.__name__ == "DomainEditor")
            await until(pilot, lambda: "partner.example" in Admin(
                config_loader.load(config.source)).domains().remote)
        remote = config_loader.load(config.source).domains.remote["partner.example"]
        assert remote.tls == "require"
    finally:
        os.close(fd)
