"""How long `mailroot queue --json` takes on a queue of 100,000 messages (target: under 3 s).

Fills a throw-away mailroot with envelopes and small message files written directly (no fsync:
this measures listing, not intake), then times the command as a separate process, 3 runs.
Usage: python -m bench.admin_scale [COUNT]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from relay.core.store import Envelope, Recipient, new_id


def fill(root: Path, count: int) -> None:
    queue = root / "Queue"
    for name in ("Pickup", "Queue", "Drop", "Badmail", "Hold", "tmp", "log", "Trash"):
        (root / name).mkdir(parents=True, exist_ok=True)
    now = time.time()
    body = b"From: app@example.com\r\nTo: user@remote.example\r\nSubject: hi\r\n\r\nhello\r\n"
    for i in range(count):
        mid = new_id()
        env = Envelope(mid, "app@example.com", [Recipient(f"user{i % 50}@remote{i % 7}.example",
                                                          "deferred", "4.4.1", "421 try later")],
                       received=now - i, size=len(body), subject=f"message {i}",
                       next_attempt=now + 7 * 86400, queued_at=now - i)
        (queue / f"{mid}.eml").write_bytes(body)
        (queue / f"{mid}.env").write_bytes(env.to_json())


@contextlib.contextmanager
def filled_mailroot(count: int, fill: Callable[[Path, int], None] = fill,
                    extra_config: str = "") -> Iterator[Path]:
    """A throw-away mailroot holding `count` messages written by `fill`; yields its config
    (never the system resolver)."""
    with tempfile.TemporaryDirectory(prefix="mailroot-bench-") as tmp:
        root = Path(tmp) / "mailroot"
        started = time.monotonic()
        fill(root, count)
        print(f"filled {count:,} queued messages in {time.monotonic() - started:.1f} s",
              file=sys.stderr)
        config = Path(tmp) / "mailroot.yaml"
        config.write_text(f"mailroot: {root}\nhostname: relay.test\n{extra_config}"
                          "dns: {nameservers: [127.0.0.1], port: 9}\n")
        yield config


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with filled_mailroot(count) as config:
        runs = []
        for _ in range(3):
            started = time.monotonic()
            out = subprocess.run([sys.executable, "-m", "relay.cli", "queue", "--json", "-c",
                                  str(config)], capture_output=True, check=True,
                                 env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            runs.append(time.monotonic() - started)
            assert out.stdout.count(b"\n") == count
        print(f"mailroot queue --json, {count} messages: median {statistics.median(runs):.2f} s "
              f"(min {min(runs):.2f}, max {max(runs):.2f}; target under 3 s)")


if __name__ == "__main__":
    main()
