"""The relay under systemd's Type=notify: READY=1 once it listens, watches Pickup and its queue
manager has loaded the window its last scan saved, then STATUS= lines and WATCHDOG=1 pings at
half WATCHDOG_USEC; the real NOTIFY_SOCKET protocol."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RelayProcess, drop_file, wait_for
from tests.queue_fill import fill_queue

MAILROOT_SERVE = [sys.executable, "-m", "relay.cli", "serve"]


def datagrams(sock: socket.socket, until: Callable[[list[dict[str, str]]], bool],
              timeout: float = 15.0) -> list[dict[str, str]]:
    """Every notification received until `until(received)` holds."""
    received: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while not until(received):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no more notifications; got {received}") from None
        received.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    return received


WINDOW = 1000  # deferred entries the first run's scan saves as its window


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ready_once_listening_with_the_saved_window_loaded_then_status_and_watchdog(
        write_config: Callable[..., Path], tmp_path: Path, workers: str) -> None:
    config = write_config({"pickup": {"settle": "0s"}})
    root = tmp_path / "mailroot"
    fill_queue(root, WINDOW)  # deferred, due in a day
    first = RelayProcess(config, root, ["--workers", workers]).start(timeout=30)
    # its scan notes them as its window (queue.window), for the next start to load first
    wait_for(lambda: any(e["event"] == "queue-scanned" for e in first.events()), timeout=30)
    assert first.stop() == 0
    offset = len(first.events())

    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    with open(tmp_path / "relay.stderr", "ab") as err:
        proc = subprocess.Popen([*MAILROOT_SERVE, "-c", str(config), "--workers", workers],
                                stdout=err, stderr=err, env=env)
    try:
        got = datagrams(sock, lambda r: any("READY" in d for d in r), timeout=30)
        # at the moment READY arrives, the queue manager has its saved window back ...
        names = [e["event"] for e in first.events()[offset:]]
        assert "queue-window-restored" in names, names
        assert names.index("queue-window-restored") < names.index("relay-started"), names
        restored = next(e for e in first.events()[offset:]
                        if e["event"] == "queue-window-restored")
        assert restored["entries"] == WINDOW
        # ... and the listener already answers
        port = next(e["port"] for e in reversed(first.events())
                    if e["event"] == "smtp-listening")
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            assert client.noop()[0] == 250
        ready = got[-1]
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert len(got) == 1, f"a notification before READY: {got}"

        # then STATUS= (counted from Queue's envelopes, after READY) and the watchdog
        more = datagrams(sock, lambda r: sum("WATCHDOG" in d for d in r) >= 3
                         and any("STATUS" in d for d in r), timeout=10)
        assert all(d["WATCHDOG"] == "1" for d in more if "WATCHDOG" in d)
        status = f"{WINDOW} queued, 1 deferred domain"
        assert next(d["STATUS"] for d in more if "STATUS" in d) == status

        proc.send_signal(signal.SIGTERM)
        tail = datagrams(sock, lambda r: any("STOPPING" in d for d in r), timeout=5)
        assert tail[-1]["STOPPING"] == "1"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()


def test_watchdog_for_another_process_is_not_ours() -> None:
    from relay.supervisor.sdnotify import Notifier

    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog == 2.0
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog is None
    assert Notifier({}).send(ready=1) is False  # not under systemd: nothing is sent


def test_stderr_lines_for_the_journal(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """With stderr on the journal (JOURNAL_STREAM names it), lines carry a syslog priority
    and no timestamp of their own; one line per event."""
    config = write_config({"pickup": {"settle": "0s"}})
    root = tmp_path / "mailroot"
    err_path = tmp_path / "journal"
    with open(err_path, "wb") as err:
        info = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        proc = subprocess.Popen([*MAILROOT_SERVE, "-c", str(config)], stdout=err, stderr=err,
                                env=env)
    events = RelayProcess(config, root)
    try:
        wait_for(lambda: any(e["event"] == "relay-started" for e in events.events()))
        drop_file(root / "Pickup", "a.eml",
                  b"From: app@yourdomain.com\r\nTo: x@remote.test\r\nSubject: s\r\n\r\nhi\r\n")
        wait_for(lambda: any(e["event"] == "deferred" for e in events.events()), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    lines = err_path.read_text().splitlines()
    assert len(lines) == len(events.events())
    assert any(line.startswith("<6>relay-started ") for line in lines)
    assert any(line.startswith("<4>deferred id=") for line in lines)
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in lines)
