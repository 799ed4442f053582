"""The console tells the truth, more of it: why a Pickup file waits, exact 1-minute counts on a
large log, the same clocks as `mailroot queue`."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from relay.core import pickup_file as pickupmod
from relay.core.config import Duration
from relay.core.store import PICKUP, QUEUE, Attempt, Mailroot
from tests.busy_fixture import column
from tests.tui_fixture import T0, envelope, fixed_id, message, until
from tui.app import ConsoleApp


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


def write_log(path: Path, events: list[dict]) -> None:
    with path.open("w") as log:
        log.write("".join(json.dumps(e) + "\n" for e in events))


def status_line(app) -> str:
    return str(app.dashboard.query_one("#status-line").render())


async def test_minute_counts_are_exact_however_long_the_log(busy):
    """More than 2 MiB of events in the last minute alone, the rest of the hour in the rotated
    log: each outcome of the real last minute is counted once, none a moment older; the
    minute moves on with the clock."""
    root, config = busy
    pad = "p" * 1000
    older = [{"time": T0 - 4000 + n, "event": "delivered", "id": f"OLD{n}"} for n in range(20)]
    older += [{"time": T0 - 3000 + n, "event": "delivered", "id": f"H{n}", "pad": pad[:500]}
              for n in range(1000)]
    older += [  # just outside the minute: the hour's, not the minute's
        {"time": T0 - 60.5, "event": "delivered", "id": "EDGE1"},
        {"time": T0 - 60.01, "event": "bounced", "id": "EDGE2", "reason": "550"},
        {"time": T0 - 60.001, "event": "deferred", "id": "EDGE3", "reply": "451"}]
    minute = [{"time": T0 - 59.5, "event": "delivered", "id": "FIRST"},
              {"time": T0 - 59.4, "event": "bounced", "id": "FIRSTBAD", "reason": "550"}]
    minute += [{"time": T0 - 59 + n * 0.02, "event": "delivered", "id": f"M{n}", "pad": pad}
               for n in range(2400)]  # up to T0 - 11
    minute += [{"time": T0 - 10 + n, "event": "deferred", "id": f"D{n}", "reply": "451"}
               for n in range(7)]
    minute += [{"time": T0 - 3, "event": "failed", "id": f"B{n}", "to": ["x@far.example"]}
               for n in range(3)]  # the recipient-level failures: their bounce is the count
    minute += [{"time": T0 - 3, "event": "bounced", "id": f"B{n}", "reason": "550"}
               for n in range(3)]
    minute += [{"time": T0 - 1, "event": "intake", "id": "I1", "outcome": "badmail"}]
    log = root / "log" / "events.jsonl"
    write_log(log.with_name("events.jsonl.1"), older)
    write_log(log, minute)
    assert log.stat().st_size > 2 * 1024 * 1024
    now = [T0]
    app = ConsoleApp(config, clock=lambda: now[0])
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        app.tick()
        assert app.stats.counts(T0, 60) == {"delivered": 2401, "deferred": 7, "failed": 5}
        assert app.stats.counts(T0, 3600) == {"delivered": 3402, "deferred": 8, "failed": 6}
        line = status_line(app)
        assert "1m ✓2401 ↻7 ✗5" in line and "1h ✓3402 ↻8 ✗6" in line, line
        now[0] = T0 + 0.55  # FIRST falls out of the minute, FIRSTBAD not yet
        app.tick()
        assert "1m ✓2400 ↻7 ✗5" in status_line(app), status_line(app)
        now[0] = T0 + 0.7
        with log.open("a") as out:
            out.write(json.dumps({"time": T0 + 0.6, "event": "delivered", "id": "NEW"}) + "\n")
        await until(pilot, lambda: "1m ✓2401 ↻7 ✗4" in status_line(app),
                    why=lambda: status_line(app))
        assert "1h ✓3403 ↻8 ✗6" in status_line(app)


def cli_queue_at(config_path: Path, now: float, capsys) -> dict[str, tuple[str, str]]:
    """`mailroot queue` run as the command runs it (relay.cli main) with its clock at `now`:
    {id: (age, next)} as printed, e.g. ("29s", "in 30s")."""
    from relay import cli as climod

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as frozen:
        frozen.setattr(time, "time", lambda: now)
        assert climod.main(["queue", "-c", str(config_path)]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        found = re.match(r"(\S{16})[ !]\s+\d+\s+(\S+)\s+<[^>]*>\s+\d+ tr(?:y|ies), next (.+)$",
                         line)
        if found:
            rows[found[1]] = (found[2], found[3])
    return rows


async def test_queue_ages_and_countdowns_agree_with_the_command_line(busy, tmp_path, capsys):
    """The same message at the same frozen time: the console's age and next attempt read as
    `mailroot queue` prints them (the console's `due` is the command's `now`)."""
    root, config = busy
    store = Mailroot(root)
    offsets = [(29.4, 30.6), (0.2, 59.9), (59.99, 0.01), (90.5, 3599.5), (3600.2, 86399.9),
               (2 * 86400 + 5, -3.0), (44.0, 15.0)]  # (age, next) in seconds at T0
    for n, (age, wait) in enumerate(offsets):
        mid = fixed_id(T0 - age, 500 + n)
        data = message("app@example.com", f"t{n}@far.example", f"T{n}")
        env = envelope(mid, T0 - age, "app@example.com", [f"t{n}@far.example"], f"T{n}", data,
                       attempts=[Attempt(T0 - age + 0.1, "mx.far.example", "451 4.7.1 later")],
                       next_attempt=T0 + wait)
        store.commit(store.enqueue_ops(QUEUE, env, data))
    for at in (T0, T0 + 0.5, T0 + 17.3):
        printed = cli_queue_at(tmp_path / "mailroot.yaml", at, capsys)
        assert len(printed) == 50 + len(offsets)
        app = ConsoleApp(config, clock=lambda at=at: at)
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            await pilot.press("2")
            await pilot.pause()
            table = app.dashboard.panes[QUEUE].table
            shown = {str(key.value): (str(table.get_cell(key, "age")),
                                      str(table.get_cell(key, "next"))) for key in table.rows}
        assert set(shown) == set(printed)
        for mid, (age, wait) in printed.items():
            assert shown[mid] == (age, "due" if wait == "now" else wait), (at, mid)
        if at == T0:
            assert printed[fixed_id(T0 - 29.4, 500)] == ("29s", "in 30s")
