"""The console an operator can leave running: every screen true after every action, and no
error that takes the console down."""

from __future__ import annotations

from relay.store import BADMAIL
from tests.tui_fixture import T0, until
from tui.app import ConsoleApp
from tui.screens.confirm import Confirm


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
