"""The systems under test as processes the bench starts and stops: the relay
(`mailroot serve`) and the reference receivers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

LOCAL_DOMAIN = "bench.local"


class NotAvailable(Exception):
    """This system can't run this workload here; the reason is printed instead of a figure."""


class Relay:
    """A `mailroot serve` process on a mailroot under `home`, relaying through the sink."""

    name = "mailroot"

    def __init__(self, home: Path, sink_port: int) -> None:
        self.home = home
        self.root = home / "mailroot"
        self.smtp_port = 0  # the real one is read from its smtp-listening event
        self.config = home / "mailroot.yaml"
        self.config.write_text(yaml.safe_dump({
            "mailroot": str(self.root), "hostname": "relay.bench.test",
            "domains": {"local": {"default": LOCAL_DOMAIN}},
            "smtp": {"listen": ["127.0.0.1:0"], "relay": {"allow": ["127.0.0.0/8"]},
                     "max_message_size": "20MiB", "max_session_size": "2048MiB"},
            "delivery": {"smarthost": f"127.0.0.1:{sink_port}"},
            "dns": {"nameservers": ["127.0.0.1"], "port": 9},  # never the system resolver

        }))
        self.proc: subprocess.Popen | None = None
        self.offset, self.began = 0, 0.0  # the event log's size and the time at the start

    def _log(self, offset: int = 0) -> bytes:
        """The event log from byte `offset` on."""
        try:
            with open(self.root / "log" / "events.jsonl", "rb") as log:
                log.seek(offset)
                return log.read()
        except FileNotFoundError:
            return b""

    def _log_size(self) -> int:
        try:
            return (self.root / "log" / "events.jsonl").stat().st_size
        except FileNotFoundError:
            return 0

    def start(self, timeout: float = 120) -> float:
        """Start and wait until the relay says it has started; returns the seconds taken.
        The SMTP port is the one its `smtp-listening` event names."""
        offset = self.offset = self._log_size()
        began = self.began = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while b'"event":"relay-started"' not in self._log(offset):
            if self.proc.poll() is not None or time.monotonic() - began > timeout:
                raise RuntimeError(f"the relay did not start (exit {self.proc.poll()})")
            time.sleep(0.005)
        took = time.monotonic() - began
        events = [json.loads(line) for line in self._log(offset).splitlines()]
        self.smtp_port = next(e["port"] for e in events if e.get("event") == "smtp-listening")
        return took

    def settled(self, timeout: float = 600) -> float:
        """Wait until the start-up work on the queue is done (the queue manager's first scan
        and the recovery pass, which run beside intake); the seconds since the start."""
        while not all(f'"event":"{name}"'.encode() in self._log(self.offset)
                      for name in ("queue-scanned", "recovery-finished")):
            if time.monotonic() - self.began > timeout:
                raise RuntimeError("the relay's first scan did not end")
            time.sleep(0.05)
        return time.monotonic() - self.began

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

    def pickup(self) -> Path:
        return self.root / "Pickup"


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


def mailroot_queue_json(config: Path, count: int) -> float:
    """Seconds `mailroot queue --json` takes to list `count` messages (a JSON line each)."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "relay.cli", "queue", "--json", "-c",
                           str(config)], capture_output=True, timeout=300)
    took = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace")[-500:])
    lines = done.stdout.splitlines()
    if len(lines) != count:
        raise RuntimeError(f"`mailroot queue --json` listed {len(lines)} of {count}")
    json.loads(lines[0])
    return took
