"""The systems under test as processes the bench starts and stops: the relay
(`mailroot serve`) and the reference receivers.  What the relay can do is probed, not
assumed: a workload that needs a feature the relay doesn't have yet says so."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.load import fill_pickup, free_port

LOCAL_DOMAIN = "bench.local"


class NotAvailable(Exception):
    """This system can't run this workload (yet); the reason is printed instead of a figure."""


class Relay:
    """A `mailroot serve` process on a mailroot under `home`, relaying through the sink."""

    name = "mailroot"

    def __init__(self, home: Path, sink_port: int) -> None:
        self.home = home
        self.root = home / "mailroot"
        self.smtp_port = free_port()
        self.config = home / "mailroot.yaml"
        self.config.write_text(yaml.safe_dump({
            "mailroot": str(self.root), "hostname": "relay.bench.test",
            "domains": {"local": {"default": LOCAL_DOMAIN}},
            "smtp": {"listen": [f"127.0.0.1:{self.smtp_port}"], "max_message_size": "20MiB"},
            "delivery": {"smarthost": f"127.0.0.1:{sink_port}"},
            "pickup": {"rescan": "1s"},
        }))
        self.proc: subprocess.Popen | None = None

    def _started_events(self) -> int:
        log = self.root / "log" / "events.jsonl"
        if not log.exists():
            return 0
        return log.read_bytes().count(b'"event":"relay-started"')

    def start(self, timeout: float = 120) -> float:
        """Start and wait until the relay says it has started; returns the seconds taken."""
        before = self._started_events()
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while self._started_events() == before:
            if self.proc.poll() is not None or time.monotonic() - began > timeout:
                raise RuntimeError(f"the relay did not start (exit {self.proc.poll()})")
            time.sleep(0.005)
        return time.monotonic() - began

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def committed(self) -> int:
        """Messages taken from Pickup and committed (Drop, Queue, Badmail)."""
        return sum(1 for folder, marker in (("Drop", ".eml"), ("Queue", ".env"),
                                            ("Badmail", ".BAD"))
                   for name in _names(self.root / folder) if name.endswith(marker))

    def pickup(self) -> Path:
        return self.root / "Pickup"


def _names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except FileNotFoundError:
        return []


def listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def probe(home: Path, sink) -> dict[str, bool]:
    """Which relay features exist: an SMTP listener, and delivery from Queue to the next hop
    (one remote-domain message through Pickup must reach the sink)."""
    relay = Relay(home, sink.port)
    relay.root.joinpath("Pickup").mkdir(parents=True)
    relay.start()
    try:
        smtp = listening(relay.smtp_port, 3)
        before = sink.count
        fill_pickup(relay.pickup(), 1, 500)
        delivery = sink.wait(before + 1, timeout=8)
    finally:
        relay.stop()
    return {"smtp": smtp, "delivery": delivery}


class Reference:
    """A bare aiosmtpd receiver process (`count` or `fsync`), the Python ceilings."""

    def __init__(self, mode: str) -> None:
        self.name = f"aiosmtpd {mode}"
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.sink", mode],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def mailroot_queue_json(config: Path) -> float:
    """Seconds `mailroot queue --json` takes, or NotAvailable if there is no such command."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "relay.cli", "queue", "--json", "-c",
                           str(config)], capture_output=True, timeout=300)
    took = time.monotonic() - began
    if done.returncode != 0 and b"invalid choice" in done.stderr:
        raise NotAvailable("`mailroot queue --json` not available yet")
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace")[-500:])
    json.loads(done.stdout or b"null")
    return took
