"""Shared test helpers: config files, a real `mailroot serve` process, waiting."""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

# The relay processes the tests start run as installed: `pip install .` compiles every module
# to bytecode, where a checkout under PYTHONDONTWRITEBYTECODE would compile them all again at
# each process start (tenths of a second against bounds of 1 and 2 s).
for _package in ("relay", "tui"):
    compileall.compile_dir(Path(__file__).resolve().parent.parent / _package, quiet=1)

pytest_plugins = ["tests.busy_fixture"]  # the `busy` mailroot for console tests


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> dict[str, Callable[[], Any]]:
    """Each async test on the loop its code runs on: the relay's processes run on uvloop,
    the console on asyncio's own loop (Textual starts it)."""
    if item.module is not None and item.module.__name__.split(".")[-1].startswith("test_tui"):
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"
HERE_SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> bytes:
    """A pickup sample as real producers write it (tests/samples mirrors ../shared/samples)."""
    return (HERE_SAMPLES / name).read_bytes()


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; return its value or fail with the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


ALONE_TIMEOUT = 150  # an `alone` test may first wait for the other worker's test to end


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("alone") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(ALONE_TIMEOUT))


@pytest.fixture(autouse=True)
def alone_or_together(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """With two workers, a test marked `alone` (it asserts a time bound) runs while no other
    test does; the others run side by side. A readers-writer lock on files the workers share,
    with a turnstile so a waiting `alone` test is not starved by the other worker's next one."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    shared = tmp_path_factory.getbasetemp().parent  # one directory per run, above each worker's
    alone = request.node.get_closest_marker("alone") is not None
    with open(shared / "alone.lock", "a") as lock, open(shared / "turnstile.lock", "a") as gate:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            if alone:
                fcntl.flock(lock, fcntl.LOCK_EX)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        if not alone:
            fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """write_config({...}) -> path of a config for a mailroot under tmp_path."""

    def write(extra: dict | None = None, name: str = "mailroot.yaml") -> Path:
        base = {
            "mailroot": str(tmp_path / "mailroot"),
            "hostname": "relay.test",
            "domains": {"local": {"default": "yourdomain.com", "aliases": ["alias.test"]}},
            "smtp": {"listen": ["127.0.0.1:0"]},
            # never the system resolver: nothing answers here, so remote mail stays queued
            "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": "1s"},
        }
        path = tmp_path / name
        path.write_text(yaml.safe_dump(deep_merge(base, extra or {}), sort_keys=False))
        return path

    return write


class RelayProcess:
    """A real `mailroot serve` subprocess on a mailroot."""

    def __init__(self, config: Path, root: Path, args: list[str] | None = None,
                 own_group: bool = False, env: dict[str, str] | None = None) -> None:
        self.config, self.root = config, root
        self.args = args or []  # more `mailroot serve` options
        self.own_group = own_group  # a process group of its own: kill_group() kills it all
        self.env = env or {}  # more environment (the crash bench's MAILROOT_FAULTS)
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0

    def events(self) -> list[dict]:
        path = self.root / "log" / "events.jsonl"
        if not path.exists():
            return []
        events = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line a SIGKILL tore (relay/core/logrotate.py)
                events.append(json.loads(line))
        return events

    def start(self, timeout: float = 10) -> RelayProcess:
        started = sum(1 for e in self.events() if e["event"] == "relay-started")
        self.stderr = open(self.root.parent / "relay.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "serve", "-c", str(self.config), *self.args],
            stdout=self.stderr, stderr=self.stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            start_new_session=self.own_group)
        wait_for(lambda: sum(1 for e in self.events() if e["event"] == "relay-started") > started
                 or self.proc.poll() is not None, timeout)
        assert self.proc.poll() is None, (self.root.parent / "relay.stderr").read_text()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.stderr.close()
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL to the relay and all its processes at once (started with own_group)."""
        assert self.proc is not None and self.own_group
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.stop(signal.SIGKILL)

    def children(self) -> list[int]:
        """The pids of the relay's child processes (a supervisor's receivers, ...)."""
        assert self.proc is not None
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except FileNotFoundError:
            return []
        return [int(pid) for pid in text.split()]

    def folder(self, name: str) -> Path:
        return self.root / name

    def smtp_port(self) -> int:
        """The port of the relay's SMTP listener, from its smtp-listening event (port 0 works)."""
        return wait_for(lambda: next((e["port"] for e in reversed(self.events())
                                      if e["event"] == "smtp-listening"), None))

    def files(self, name: str, pattern: str = "*") -> list[Path]:
        return sorted(p for p in (self.root / name).glob(pattern) if not p.name.startswith("."))


@pytest.fixture
def relay(write_config: Callable[..., Path], tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """relay({...config...}) starts a real relay process; it is stopped after the test."""
    started: list[RelayProcess] = []

    def start(extra: dict | None = None) -> RelayProcess:
        proc = RelayProcess(write_config(extra), tmp_path / "mailroot").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.proc and proc.proc.poll() is None:
            proc.stop()


def drop_file(pickup: Path, name: str, data: bytes) -> Path:
    """Write a file into Pickup the way careful producers do: elsewhere, then rename."""
    tmp = pickup.parent / "tmp" / f"test-{name}"
    tmp.write_bytes(data)
    os.rename(tmp, pickup / name)
    return pickup / name


@pytest.fixture
def dns_server() -> Iterator[Any]:
    """A real DNS server on 127.0.0.1 (UDP and TCP) with zone data set by the test."""
    from tests.dnsserver import DnsServer

    server = DnsServer()
    yield server
    server.close()


@pytest.fixture
def sink() -> Iterator[Callable[..., Any]]:
    """sink(**options) starts a real aiosmtpd next hop on 127.0.0.1 (see tests/smtpsink.py)."""
    from tests.smtpsink import Sink

    started: list[Sink] = []

    def start(**options: Any) -> Sink:
        started.append(Sink(**options))
        return started[-1]

    yield start
    for one in started:
        one.stop()
