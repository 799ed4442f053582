"""Where the relay's CPU goes: `python -m bench.profile [--workload smtp|drain] [--count 4000]
[--seconds 10]`.

A `mailroot serve` (the bench's config) under the SMTP 2 KB load, or draining `count` 2 KB
files put in Pickup before it started, every one of its processes sampled by py-spy
(`pip install py-spy`) meanwhile; prints, per process, the functions with
the most samples on top of the stack (own time) and the share of the process's samples spent
under each (total time), so a change can be aimed and then measured.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench.load import fill_pickup, smtp_load
from bench.procstat import descendants
from bench.sink import Sink
from bench.systems import Relay


def names(relay: Relay) -> dict[int, str]:
    """pid -> process name (supervisor, receiver-1, ..., from the relay's events)."""
    found = {relay.pid: "supervisor"}
    for line in (relay.root / "log" / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "process-started":
            found[event["pid"]] = event["process"]
    return found


def summarize(path: Path, top: int) -> list[str]:
    """py-spy's raw (collapsed) output: 'frame;frame;frame count' lines."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"  {samples} samples; own time:"]
    out += [f"    {n / samples:6.1%}  {frame}" for frame, n in own.most_common(top)]
    out.append("  total time (under the function):")
    out += [f"    {n / samples:6.1%}  {frame}" for frame, n in total.most_common(top * 2)
            if n < samples]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--workload", choices=("smtp", "drain"), default="smtp")
    parser.add_argument("--count", type=int, default=4000, help="2 KB messages")
    parser.add_argument("--seconds", type=float, default=10, help="how long to sample")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mailroot-profile-") as tmp, Sink() as sink:
        relay = Relay(Path(tmp), sink.port)
        if args.workload == "drain":
            relay.pickup().mkdir(parents=True)
            fill_pickup(relay.pickup(), args.count, 2000)
        relay.start()
        try:
            if args.workload == "smtp":
                load = threading.Thread(target=smtp_load,
                                        args=(relay.smtp_port, args.count, 10, 2000))
            else:  # the files are in Pickup already: wait until the sink has them all
                load = threading.Thread(target=sink.wait, args=(args.count, 300))
            load.start()
            spies = {pid: subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
                 "--format", "raw", "--rate", "200", "--nonblocking",
                 "--output", f"{tmp}/{pid}.txt"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for pid in [relay.pid, *descendants(relay.pid)]}
            for proc in spies.values():
                proc.wait(args.seconds + 30)
            load.join(300)
            who = names(relay)
        finally:
            relay.stop()
        for pid in spies:
            out = Path(f"{tmp}/{pid}.txt")
            print(f"{who.get(pid, pid)} (pid {pid})")
            print("\n".join(summarize(out, args.top) if out.exists() else ["  no samples"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
