"""The console tells the truth, more of it: why a Pickup file waits, exact 1-minute counts on a
large log, the same clocks as `mailroot queue`."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from relay import config as configmod
from relay import pickup as pickupmod
from relay.config import Duration
from relay.store import PICKUP
from tests.busy_fixture import build_busy
from tests.tui_fixture import T0, hold_lock, write_config
from tui.app import ConsoleApp


@pytest.fixture
def busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The busy mailroot (Queue of 50, Badmail of 10), attached to a "relay" holding its lock."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    root = tmp_path / "mailroot"
    build_busy(root)
    fd = hold_lock(root)
    monkeypatch.chdir(tmp_path)
    yield root, configmod.load(write_config(tmp_path, relative=True))
    os.close(fd)
    monkeypatch.undo()
    time.tzset()


def column(pane, key: str) -> list[str]:
    table = pane.table
    return [str(table.get_cell(row, key)) for row in table.rows]


class _NoLeases:
    """fcntl where a read lease can't be had (a network share; a file another user owns and
    no CAP_LEASE): the relay then goes by the file's quiet time, `pickup.settle`."""

    def __getattr__(self, name):
        return getattr(fcntl, name)

    @staticmethod
    def fcntl(fd, cmd, arg=0):
        if cmd == fcntl.F_SETLEASE:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return fcntl.fcntl(fd, cmd, arg)


async def test_a_closed_pickup_file_changed_within_its_settle_time_says_settling(
        busy, monkeypatch):
    root, config = busy
    # a settle time the fresh file stays within however slowly this runs
    config = replace(config, pickup=replace(config.pickup, settle=Duration(600)))
    monkeypatch.setattr(pickupmod, "fcntl", _NoLeases())
    fresh, quiet = root / PICKUP / "fresh.eml", root / PICKUP / "quiet.eml"
    fresh.write_bytes(b"From: app@example.com\r\nTo: boss@corp.test\r\nSubject: a\r\n\r\nhi\r\n")
    quiet.write_bytes(b"From: app@example.com\r\nTo: cfo@corp.test\r\nSubject: b\r\n\r\nhi\r\n")
    os.utime(quiet, (time.time() - 3600,) * 2)  # closed, unchanged for an hour: settled
    assert pickupmod.why_waiting(fresh, config.pickup.settle) == "settling"
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("1")
        await pilot.pause()
        pane = app.dashboard.panes[PICKUP]
        states = dict(zip(column(pane, "to"), column(pane, "state"), strict=True))
        assert states == {"boss@corp.test": "… settling", "cfo@corp.test": "… waiting"}
