"""The console on a large Queue, driven by keys in a pseudo-terminal as an operator would:
first paint, the index complete, a whole-folder filter, and a bulk hold with its frame gaps.

Fills a throw-away mailroot with COUNT queued messages (10 destination domains, next attempt a
week away; written directly, no fsync: this measures the console, not intake), then runs
`mailroot console` (relay embedded) in a 100x40 pseudo-terminal and reads what it draws:
- s first paint: process start until the Queue tab shows its full count;
- s index complete: until the Queue pane's title no longer says "indexing…";
- s filter: a filter pasted at once until the title shows its count: a word found only in
  the newest message ("1 of COUNT"), then `domain:d3.example` (a tenth of the folder);
- bulk hold: `*` (mark all matches), `h`, `y`, until the result line; msg/s over that span,
  and the longest gap between two frames the console wrote meanwhile (its progress bar
  redraws every 0.1 s, so a gap is the event loop held up);
- MB peak RSS (VmHWM) of the console process at the end.
Usage: python -m bench.console_index [COUNT]   (default 100,000; one run)
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

from bench.admin_scale import filled_mailroot
from bench.console import console_in_pty
from bench.procstat import status_mb
from relay.core.store import Attempt, Envelope, Recipient, new_id

ESCAPES = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
SIZE = (40, 100)  # rows, columns: narrow, so the Queue pane and its title use the full width
DOMAINS = 10
TOKEN = "zq-newest-7731"


def fill(root: Path, count: int) -> None:
    for name in ("Pickup", "Queue", "Drop", "Badmail", "Hold", "tmp", "log", "Trash"):
        (root / name).mkdir(parents=True, exist_ok=True)
    now = time.time()
    for n in range(count):
        mid = new_id()
        subject = TOKEN if n == count - 1 else f"statement {n}"
        body = (f"From: billing@example.com\r\nTo: c{n}@d{n % DOMAINS}.example\r\n"
                f"Subject: {subject}\r\n\r\nhello\r\n").encode()
        env = Envelope(mid, "billing@example.com",
                       [Recipient(f"c{n}@d{n % DOMAINS}.example", "deferred", "4.7.1",
                                  "451 4.7.1 greylisted")],
                       received=now - count + n, size=len(body), subject=subject,
                       next_attempt=now + 7 * 86400, queued_at=now,
                       attempts=[Attempt(now - 60, "127.0.0.1", "451 4.7.1 greylisted")])
        (root / "Queue" / f"{mid}.eml").write_bytes(body)
        (root / "Queue" / f"{mid}.env").write_bytes(env.to_json())


class Screen:
    """Everything the console wrote, with the time of each read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True, name="pty-reader").start()

    def _read(self) -> None:
        tail = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            text = ESCAPES.sub(b"", tail + chunk)
            tail = chunk[-96:]
            with self._lock:
                self.chunks.append((time.monotonic(), text))

    def wait(self, pattern: bytes, after: float, timeout: float) -> float:
        """When `pattern` (a regex) was first drawn after `after`. Each chunk is searched
        once: searching all again at every poll took enough CPU from the console (two
        cores) to show up in its frame gaps."""
        deadline = time.monotonic() + timeout
        seen = re.compile(pattern)
        searched = 0
        while time.monotonic() < deadline:
            with self._lock:
                fresh, searched = self.chunks[searched:], len(self.chunks)
            for when, text in fresh:
                if when >= after and seen.search(text):
                    return when
            time.sleep(0.01)
        raise RuntimeError(f"the console never drew {pattern!r}")

    def longest_gap(self, start: float, end: float) -> float:
        with self._lock:
            times = [t for t, _ in self.chunks if start <= t <= end]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def type_filter(fd: int, text: str) -> None:
    """`/`, then the text pasted at once (one change of the filter, not one per letter)."""
    os.write(fd, b"/")
    time.sleep(0.3)  # the filter line takes the focus
    os.write(fd, b"\x1b[200~" + text.encode() + b"\x1b[201~\r")


def measure(config: Path, count: int) -> dict[str, float]:
    total = f"{count:,}".encode()
    per_domain = f"{count // DOMAINS:,}".encode()
    with console_in_pty(config, SIZE) as (proc, master, began):
        screen = Screen(master)
        painted = screen.wait(rb"Queue " + total, began, 60)  # the tab
        indexed = screen.wait(rb"Queue  " + total + rb" messages  (sort|rows)", painted, 120)
        time.sleep(1.0)
        asked = time.monotonic() + 0.3
        type_filter(master, TOKEN)
        found = screen.wait(rb"1 of " + total, asked, 30)
        os.write(master, b"\x1b")  # esc clears the filter
        time.sleep(1.0)
        chosen = time.monotonic() + 0.3
        type_filter(master, "domain:d3.example")
        filtered = screen.wait(per_domain + rb" of " + total, chosen, 30)
        time.sleep(0.5)
        os.write(master, b"*")
        screen.wait(rb"Mark all " + per_domain, filtered, 30)
        os.write(master, b"y")
        screen.wait(per_domain + rb" marked", filtered, 30)
        os.write(master, b"h")
        screen.wait(rb"Hold " + per_domain + rb" messages", filtered, 30)
        time.sleep(0.3)
        start = time.monotonic()
        os.write(master, b"y")
        ended = screen.wait(rb"Held " + per_domain, start, 600)
        return {"s first paint": painted - began,
                "s index complete": indexed - began,
                "s filter, a word": found - asked,
                "s filter, domain:": filtered - chosen,
                "bulk hold msg/s": count // DOMAINS / (ended - start),
                "ms longest frame gap in the bulk hold": screen.longest_gap(start, ended) * 1000,
                "MB peak RSS": status_mb(proc.pid, "VmHWM")}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with filled_mailroot(count, fill, "smtp: {listen: ['127.0.0.1:0']}\n") as config:
        figures = measure(config, count)
    print(json.dumps({"queued": count, "load": os.getloadavg(), **figures}, indent=1))


if __name__ == "__main__":
    main()
