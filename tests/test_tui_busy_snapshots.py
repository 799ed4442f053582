"""Snapshots of a busy dashboard (Queue of 50 across 5 domains, Badmail of 10 with mixed
reason classes) at 60x20, 80x24, 100x30 and 160x48, in colour and with NO_COLOR.

Regenerate deliberately: pytest tests/test_tui_busy_snapshots.py --snapshot-update, then look
at the report before committing.
"""

from __future__ import annotations

import pytest

from tests.tui_fixture import T0
from tui.app import ConsoleApp

SIZES = [(60, 20), (80, 24), (100, 30), (160, 48)]


@pytest.fixture
def busy_app(busy, monkeypatch: pytest.MonkeyPatch, request):
    _, config = busy
    if request.param:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)
    return ConsoleApp(config, clock=lambda: T0)


@pytest.mark.parametrize("busy_app", [False, True], ids=["colour", "no_color"], indirect=True)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("keys", [[], ["4"]], ids=["queue", "badmail"])
def test_busy_dashboard(snap_compare, busy_app, size, keys):
    async def settle(pilot):
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()

    assert snap_compare(busy_app, run_before=settle, terminal_size=size)
