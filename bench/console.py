"""The operator console as an operator sees it: `mailroot console` in a pseudo-terminal.

Everything is read from what the console writes to its terminal, so the figures include the
imports, the start of the embedded relay, listing the folders and Textual's rendering:
- start-to-first-paint: process start until the screen shows the Queue pane's full count
  (the panes come first; "relay running" is when the header says the embedded relay runs);
- RSS: the process's peak resident memory (VmHWM) by the end of the run;
- appearance under intake: files renamed into Pickup at a steady rate (local recipient, so
  they stay in Drop), fed once the header says the embedded relay runs; the n-th file counts as shown when the screen first shows a Drop count
  of at least n (arrival order, so a count is a fair stand-in for a file).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.core import spread
from bench.load import message
from bench.procstat import status_mb

ESCAPES = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
COUNT = re.compile(rb"(Queue|Drop)\s+(\d[\d,]*)")
SIZE = (40, 120)  # rows, columns: every pane side by side


class Screen:
    """Reads the terminal's output in a thread; notes when each (pane, count) first showed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen: dict[str, list[tuple[float, int]]] = {"Queue": [], "Drop": []}
        self.relay_running: float | None = None  # when the header first said so
        self._tail = b""
        self._thread = threading.Thread(target=self._read, daemon=True, name="pty-reader")
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:  # the console exited and the pty closed
                return
            if not chunk:
                return
            now = time.monotonic()
            text = ESCAPES.sub(b"", self._tail + chunk)
            self._tail = chunk[-64:]  # a count split between two reads is seen next time
            if self.relay_running is None and b"embedded relay pid" in text:
                self.relay_running = now
            for pane, count in COUNT.findall(text):
                self.seen[pane.decode()].append((now, int(count.replace(b",", b""))))

    def first(self, pane: str, at_least: int) -> float | None:
        return next((t for t, n in self.seen[pane] if n >= at_least), None)

    def wait(self, pane: str, at_least: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while (when := self.first(pane, at_least)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return when


def feed_pickup(pickup: Path, rate: float, seconds: float, recipient: str) -> list[float]:
    """Rename files into Pickup at `rate` per second for `seconds`; when each went in."""
    aside = pickup.parent / "bench-staging"
    aside.mkdir(exist_ok=True)
    began, times = time.monotonic(), []
    for number in range(int(rate * seconds)):
        delay = began + number / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        path = aside / f"c{number}.eml"
        path.write_bytes(message(f"console-{number}", 2000, recipient))
        os.rename(path, pickup / path.name)
        times.append(time.monotonic())
    return times


@contextlib.contextmanager
def console_in_pty(config: Path, size: tuple[int, int] = SIZE
                   ) -> Iterator[tuple[subprocess.Popen, int, float]]:
    """`mailroot console` on a pseudo-terminal of `size` (rows, columns): yields the process,
    the terminal's master side and when it started; stopped (q, else SIGTERM) at the end."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "console", "-c", str(config)],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(slave)
    try:
        yield proc, master, began
        os.write(master, b"q")
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:  # the embedded relay's question: stop it and quit
            os.write(master, b"y")
            proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        os.close(master)


def measure(config: Path, pickup: Path, queued: int, rate: float, seconds: float,
            recipient: str) -> dict[str, float]:
    """One console run on a mailroot holding `queued` messages in Queue and none in Drop."""
    with console_in_pty(config) as (proc, master, began):
        screen = Screen(master)
        painted = screen.wait("Queue", queued, timeout=60)
        if painted is None:
            raise RuntimeError(f"the console never showed {queued} in Queue")
        deadline = time.monotonic() + 60
        while screen.relay_running is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the panes show first; the relay loads its queue meanwhile
        if screen.relay_running is None:
            raise RuntimeError("the console never said its embedded relay was running")
        fed = feed_pickup(pickup, rate, seconds, recipient)
        if screen.wait("Drop", len(fed), timeout=60) is None:
            raise RuntimeError(f"the console never showed {len(fed)} in Drop")
        shown = [((screen.first("Drop", n + 1) or 0.0) - at) * 1000 for n, at in enumerate(fed)]
        return {"s first paint": painted - began,
                "s relay running": screen.relay_running - began,
                "MB peak RSS": status_mb(proc.pid, "VmHWM"),
                **spread(shown, "ms to show")}
