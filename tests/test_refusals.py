"""Issue: abusive clients — the figures others read from the events: refusals per minute and
stress mode (what the console shows), and `mailroot summary`'s most refused addresses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from relay.ops.refusals import Pressure, events_since, top_refused
from tests.conftest import wait_for
from tests.smtpd_support import RawClient, code

ABUSER, OTHER = "127.0.0.2", "127.0.0.3"


def summary(config: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "relay.cli", "summary", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_summary_and_pressure_from_a_real_relays_refusals(relay) -> None:
    r = relay({"smtp": {"max_connections": 2, "limits": {"per_client_connections": 1}}})
    port = r.smtp_port()
    first = RawClient(port, source=ABUSER)
    refused = [RawClient(port, source=ABUSER) for _ in range(3)]
    assert code(first.greeting) == 220 and all(code(c.greeting) == 421 for c in refused)
    other = RawClient(port, source=OTHER)  # 2 of 2 open: stress
    assert code(RawClient(port, source="127.0.0.4").greeting) == 421  # the listener is full
    events = wait_for(lambda: [e for e in r.events() if e["event"] == "stress"] and r.events())
    pressure = Pressure()
    for event in events:
        pressure.add(event)
    now = time.time()
    assert pressure.stressed and pressure.per_minute(now) == 4
    assert pressure.per_minute(now + 61) == 0
    first.close()
    other.close()
    off = wait_for(lambda: [e for e in r.events() if e["event"] == "stress"][1:])
    pressure.add(off[0])
    assert not pressure.stressed
    out = summary(r.config)
    lines = out[out.index("Refused clients, last hour"):].splitlines()
    assert lines[1].split() == [ABUSER, "3"] and lines[2].split() == ["127.0.0.4", "1"]


def test_summary_counts_only_the_last_hour_of_a_long_log(tmp_path: Path) -> None:
    now = time.time()
    lines = []
    for n in range(4000):  # two hours, a refusal every 1.8 s, in a log of a few hundred KiB
        when = now - 7200 + n * 1.8 + 0.9
        client = "192.0.2.1" if n % 2 else "192.0.2.2"
        lines.append(json.dumps({"time": when, "event": "connection-refused",
                                 "client": client, "reason": "per-client-connections",
                                 "padding": "x" * 40}))
    lines.append(json.dumps({"time": now, "event": "auth-failed", "client": "192.0.2.3"}))
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    recent = events_since(tmp_path, now - 3600)
    assert len(recent) == 2001 and recent[0]["time"] >= now - 3600
    top = top_refused(tmp_path, now)
    assert sorted(top[:2]) == [("192.0.2.1", 1000), ("192.0.2.2", 1000)]
    assert top[2:] == [("192.0.2.3", 1)]
    assert top_refused(tmp_path / "nothing", now) == []
