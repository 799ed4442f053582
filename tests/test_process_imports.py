"""Each process of the relay loads only the code it runs: the queue manager neither the
operator API, nor SMTP receive, nor the Pickup taker (measured in a fresh interpreter, as a
child process starts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# module of the process -> relay modules it must not load, and how many it may load at most
# (the store is six modules of one job each: layout, envelope, fileops, spares, claims,
# leftovers beside store itself)
PROCESSES = {
    "relay.proc_queue": ({"admin", "smtpd", "pickup", "service", "probe", "explain"}, 30),
    "relay.proc_pickup": ({"admin", "smtpd", "scheduler", "smtp_client", "service"}, 25),
    "relay.proc_receiver": ({"admin", "pickup", "scheduler", "smtp_client", "service"}, 23),
}


@pytest.mark.parametrize("process", PROCESSES)
def test_a_process_loads_only_what_it_runs(process: str) -> None:
    code = (f"import sys, {process}; "
            "print(' '.join(sorted(m[6:] for m in sys.modules if m.startswith('relay.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    loaded = set(out.stdout.split())
    forbidden, most = PROCESSES[process]
    assert not loaded & forbidden, sorted(loaded & forbidden)
    assert len(loaded) <= most, sorted(loaded)
