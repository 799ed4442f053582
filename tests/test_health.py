"""`mailroot health`: Nagios/Icinga plugin exit codes and perfdata, from the folders and the
relay lock, beside a running relay or without one."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.core.bounce import quarantine_ops
from relay.core.store import QUEUE, Mailroot, id_time
from tests.conftest import drop_file, wait_for
from tests.queue_fill import fill_queue

REMOTE = b"From: app@yourdomain.com\r\nTo: x@remote.test\r\nSubject: s\r\n\r\nhi\r\n"


def health(config: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "relay.cli", "health", "-c", str(config),
                           *args], capture_output=True, text=True, timeout=30)
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 1, done.stdout  # one status line
    return done.returncode, done.stdout.strip()


def test_fresh_then_warning_then_critical_by_age_and_expected_relay(relay, tmp_path) -> None:
    proc = relay({"pickup": {"settle": "0s"}})
    config = proc.config
    code, line = health(config, "--expect-relay")
    assert code == 0, line
    assert line.startswith("MAILROOT OK - 0 queued")
    assert "queue=0;;;0; oldest=0s;3600;14400;0;" in line and "relay=1;;;0;1" in line

    drop_file(proc.folder("Pickup"), "a.eml", REMOTE)  # deferred: no DNS answers here
    wait_for(lambda: any(e["event"] == "deferred" for e in proc.events()), timeout=30)
    queued = proc.files("Queue", "*.env")[0].stem
    wait_for(lambda: time.time() - id_time(queued) > 2.0, timeout=5)

    code, line = health(config, "--warn-age", "2s", "--crit-age", "1h")
    assert code == 1, line
    assert line.startswith("MAILROOT WARNING - oldest queued message")
    age = int(re.search(r"oldest=(\d+)s;2;3600;", line)[1])
    assert age >= 2
    code, line = health(config, "--warn-age", "1s", "--crit-age", "2s")
    assert code == 2 and line.startswith("MAILROOT CRITICAL - oldest queued message"), line
    code, line = health(config, "--warn-badmail", "1")
    assert code == 0 and "queue=1;;;0;" in line, line

    assert proc.stop() == 0
    code, line = health(config)
    assert code == 0 and "no relay running" in line, line
    code, line = health(config, "--expect-relay")
    assert code == 2, line
    assert line.startswith("MAILROOT CRITICAL - no relay running") and "relay=0;;;0;1" in line


def test_unknown_without_a_mailroot_or_with_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "mailroot.yaml"
    config.write_text(f"mailroot: {tmp_path / 'nothing'}\n")
    assert health(config)[0] == 3
    config.write_text("log:\n  keep: 0\n")
    code, line = health(config)
    assert code == 3 and "log.keep" in line


@pytest.mark.parametrize("args, named", [
    (["--warn-age", "5x"], "--warn-age"), (["--crit-queue", "many"], "--crit-queue"),
    (["--warn-age"], "--warn-age"), (["--critical-age", "1h"], "--critical-age")])
def test_a_usage_error_is_unknown_not_critical(tmp_path: Path, args, named) -> None:
    """Exit 2 is CRITICAL to Nagios: a typo in a check's arguments must not page anyone."""
    config = tmp_path / "mailroot.yaml"
    config.write_text(f"mailroot: {tmp_path / 'mailroot'}\n")
    code, line = health(config, *args)
    assert code == 3, line
    assert line.startswith("MAILROOT UNKNOWN - usage: ") and named in line


def test_queue_and_badmail_thresholds_warn_then_go_critical(write_config, tmp_path) -> None:
    """--warn-queue/--crit-queue and --warn-badmail/--crit-badmail at 1 and 2: each trips at
    its own count, the status line names what tripped at the worst level, and the perfdata
    carries the thresholds."""
    config = write_config()
    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    limits = ("--warn-queue", "1", "--crit-queue", "2", "--warn-badmail", "1",
              "--crit-badmail", "2")

    def to_badmail() -> None:
        [mid] = fill_queue(store.root, 1)
        store.commit(quarantine_ops(store, QUEUE, mid, store.read_envelope(QUEUE, mid),
                                    "a test"))

    def perf(line: str) -> tuple[str, str]:
        return (re.search(r" queue=\S+", line)[0].strip(),
                re.search(r" badmail=\S+", line)[0].strip())

    def to_queue() -> None:
        fill_queue(store.root, 1)

    # (what changes first, exit code, start of the status line, queue and badmail perfdata)
    steps = [
        (None, 0, "MAILROOT OK - 0 queued", "queue=0;1;2;0;", "badmail=0;1;2;0;"),
        (to_queue, 1, "MAILROOT WARNING - 1 queued |", "queue=1;1;2;0;", "badmail=0;1;2;0;"),
        (to_badmail, 1, "MAILROOT WARNING - 1 queued; 1 in Badmail |",
         "queue=1;1;2;0;", "badmail=1;1;2;0;"),
        (to_badmail, 2, "MAILROOT CRITICAL - 2 in Badmail |",
         "queue=1;1;2;0;", "badmail=2;1;2;0;"),
        (to_queue, 2, "MAILROOT CRITICAL - 2 queued; 2 in Badmail |",
         "queue=2;1;2;0;", "badmail=2;1;2;0;"),
    ]
    for change, expected, status, queue, badmail in steps:
        if change is not None:
            change()
        code, line = health(config, *limits)
        assert code == expected and line.startswith(status), line
        assert perf(line) == (queue, badmail)
    # without the counts' thresholds the same mailroot is OK (the age is within 1h)
    code, line = health(config)
    assert code == 0 and perf(line) == ("queue=2;;;0;", "badmail=2;;;0;"), line
