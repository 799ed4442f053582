"""The scale workload: a restart with N deferred messages in Queue.

`python -m bench.scale --size 100000 [--idle 10] [--work DIR] [--json FILE]`

Fills Queue with N messages in the store's format (next attempt a day away, tests/queue_fill.py)
plus one due now, places a local-domain file in Pickup, then starts `mailroot serve` and
measures, from the moment the process is started: the first SMTP 250 (a client retrying its
connection from that moment), the Pickup file in Drop, the due message at the sink (its
first attempt), the end of the queue manager's first scan and of the recovery pass; then
idle CPU and RSS (now and peak, summed over the supervisor and its children) over an idle
window; then, with the relay stopped, `mailroot queue --json` (first line and all N; the
first line of `--sort`, oldest first) and `mailroot summary`.  Everything on 127.0.0.1;
every wait bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench.load import free_port
from bench.procstat import tree_cpu_seconds, tree_rss_mb
from bench.sink import Sink
from tests.queue_fill import fill_queue, queued_message

LOCAL = "bench.local"
WAIT = 600.0  # the longest any one step may take


def wait_until(check, what: str, timeout: float = WAIT, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)
    return value


def first_250(port: int, began: float, result: dict[str, float]) -> None:
    """Connect from the start on, until the relay answers; the seconds to the 250."""
    deadline = began + WAIT
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as client:
                client.sendmail(f"app@{LOCAL}", [f"smtp@{LOCAL}"],
                                queued_message(f"smtp@{LOCAL}"))
            result["s first SMTP 250"] = time.monotonic() - began
            return
        except (ConnectionRefusedError, smtplib.SMTPServerDisconnected):
            time.sleep(0.002)


def dropped_for(drop: Path, receiver: str) -> bool:
    """Whether a Drop file for `receiver` is there (its X-Receiver line on top)."""
    wanted = f"X-Receiver: {receiver}".encode()
    for path in drop.glob("*.eml"):
        try:
            with open(path, "rb") as handle:
                if wanted in handle.read(512):
                    return True
        except FileNotFoundError:
            continue
    return False


def events(root: Path) -> list[dict]:
    try:
        text = (root / "log" / "events.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def logged(root: Path, event: str) -> bool:
    return any(e["event"] == event for e in events(root))


def cli(config: Path, *args: str, first_only: bool = False) -> tuple[float, float, int]:
    """(seconds to the first line, seconds in all, lines) of a `mailroot` subcommand;
    `first_only` ends it after its first line."""
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", *args, "-c", str(config)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    took_first = time.monotonic() - began
    if first_only:
        proc.kill()
        proc.wait(WAIT)
        return took_first, took_first, 1 if first else 0
    lines = (1 if first else 0) + sum(1 for _ in proc.stdout)
    if proc.wait(WAIT) != 0:
        raise RuntimeError(f"mailroot {' '.join(args)} failed")
    return took_first, time.monotonic() - began, lines


def measure(size: int, idle: float, work: Path) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="scale-", dir=work))
    try:
        root = home / "mailroot"
        began = time.monotonic()
        fill_queue(root, size)
        fill_queue(root, 1, due_in=-60, recipient="due@remote.example")
        filled = time.monotonic() - began
        os.sync()  # a restart finds its queue written out long ago, not still being flushed
        print(f"filled {size + 1} queued messages in {filled:.0f} s, written out in "
              f"{time.monotonic() - began - filled:.0f} s", file=sys.stderr)
        with Sink() as sink:
            return run_relay(root, home, size, idle, sink)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_relay(root: Path, home: Path, size: int, idle: float, sink: Sink) -> dict[str, float]:
    port = free_port()
    config = home / "mailroot.yaml"
    config.write_text(yaml.safe_dump({
        "mailroot": str(root), "hostname": "relay.bench.test",
        "domains": {"local": {"default": LOCAL}},
        "smtp": {"listen": [f"127.0.0.1:{port}"]},
        "delivery": {"smarthost": f"127.0.0.1:{sink.port}"},
        "dns": {"nameservers": ["127.0.0.1"], "port": 9},
    }))
    aside = home / "waiting.eml"
    aside.write_bytes(queued_message(f"pickup@{LOCAL}"))
    os.rename(aside, root / "Pickup" / "waiting.eml")
    figures: dict[str, float] = {}
    began = time.monotonic()
    relay = subprocess.Popen([sys.executable, "-m", "relay.cli", "serve", "-c", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    smtp = threading.Thread(target=first_250, args=(port, began, figures), daemon=True)
    smtp.start()
    try:
        pending = {"s first Pickup file in Drop": lambda: dropped_for(root / "Drop",
                                                                      f"pickup@{LOCAL}"),
                   "s first due message at the sink": lambda: sink.count >= 1,
                   "s first scan done": lambda: logged(root, "queue-scanned"),
                   "s recovery pass done": lambda: logged(root, "recovery-finished")}
        deadline = began + WAIT
        while pending and time.monotonic() < deadline:
            for name, check in list(pending.items()):
                if check():
                    figures[name] = time.monotonic() - began
                    del pending[name]
            if relay.poll() is not None:
                raise RuntimeError(f"the relay exited ({relay.returncode})")
            time.sleep(0.005)
        if pending:
            raise RuntimeError(f"not within {WAIT:g} s: {', '.join(pending)}")
        smtp.join(WAIT)
        cpu, idle_began = tree_cpu_seconds(relay.pid), time.monotonic()
        time.sleep(idle)
        figures["% idle CPU"] = (tree_cpu_seconds(relay.pid) - cpu) / (
            time.monotonic() - idle_began) * 100
        figures["MB RSS"] = tree_rss_mb(relay.pid)
        figures["MB peak RSS"] = tree_rss_mb(relay.pid, "VmHWM")
    finally:
        relay.terminate()
        relay.wait(60)
    config = home / "mailroot.yaml"
    first, total, lines = cli(config, "queue", "--json")
    if lines != size:
        raise RuntimeError(f"`mailroot queue --json` listed {lines} of {size}")
    figures["s queue --json first line"], figures["s queue --json all"] = first, total
    figures["queue --json lines/s"] = lines / max(total - first, 1e-9)
    figures["s queue --json --sort first line"] = cli(config, "queue", "--json", "--sort",
                                                      first_only=True)[0]
    figures["s summary"] = cli(config, "summary")[1]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="queued messages")
    parser.add_argument("--idle", type=float, default=10.0, help="idle-CPU window, seconds")
    parser.add_argument("--work", type=Path, help="where the mailroot goes (default: tmp)")
    parser.add_argument("--json", type=Path, help="append the figures here as a JSON line")
    args = parser.parse_args(argv)
    figures = measure(args.size, args.idle, args.work or Path(tempfile.gettempdir()))
    for name, value in figures.items():
        print(f"{args.size:>9}  {name:<36} {value:10.3f}")
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps({"size": args.size, "idle": args.idle, "time": time.time(),
                                  "cpus": os.cpu_count(), **figures}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
