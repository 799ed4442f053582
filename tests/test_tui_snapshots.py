"""Snapshots of the console at 80x24 and 120x40 on a fixed mailroot with a frozen clock.

Regenerate deliberately: pytest tests/test_tui_snapshots.py --snapshot-update, then look at
the report before committing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from relay.core import config_loader
from tests.tui_fixture import T0, build, hold_lock, write_config
from tui.app import ConsoleApp

SIZES = [(80, 24), (120, 40)]
SCREENS = {
    "dashboard": [],
    "badmail_inspector": ["4", "enter"],
    "domain_editor": ["e"],
    "settings_form": ["c"],
}


@pytest.fixture
def fixed_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    root = tmp_path / "mailroot"
    build(root)
    fd = hold_lock(root)  # a relay "holds" the mailroot: the console attaches, moves nothing
    monkeypatch.chdir(tmp_path)  # the config names ./mailroot: the header reads the same
    config = config_loader.load(write_config(tmp_path, relative=True))
    yield ConsoleApp(config, clock=lambda: T0)
    os.close(fd)
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", list(SCREENS))
def test_snapshot(snap_compare, fixed_app, screen, size):
    async def settle(pilot):
        await pilot.pause()
        deadline = time.monotonic() + 10
        while not pilot.app.index.ready and time.monotonic() < deadline:
            await pilot.pause(0.02)  # the index is built in a thread after the first paint
        await pilot.pause()
        await pilot.press(*SCREENS[screen])
        await pilot.pause()

    assert snap_compare(fixed_app, run_before=settle, terminal_size=size)
