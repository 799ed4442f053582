"""The console an operator can leave running: every screen true after every action, and no
error that takes the console down."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay.admin import Admin
from relay.store import BADMAIL, TRASH
from tests.tui_fixture import T0, fixed_id, until
from tui.app import ConsoleApp
from tui.model import COLUMNS
from tui.screens.confirm import Confirm
from tui.screens.dashboard import Dashboard


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
