"""The workloads: each measures one system once and returns its figures."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import console, dkim
from bench import postfix as postfixmod
from bench.core import Workload, spread
from bench.load import RECIPIENT, fill_pickup, free_port, message, smtp_load, smtp_one
from bench.procstat import tree_cpu_seconds, tree_rss_mb
from bench.sink import Sink
from bench.systems import LOCAL_DOMAIN, NotAvailable, Reference, Relay, mailroot_queue_json
from relay.core.store import QUEUE, Envelope, Mailroot, Recipient, checksum, new_id

REFERENCES = ["aiosmtpd count", "aiosmtpd fsync"]
WAIT = 600  # the longest any one measurement may wait for its messages


@dataclass
class Params:
    smtp_count: int = 5000
    big_count: int = 2000  # 5,000 at 100 KB would take the full run past 10 minutes
    sessions: int = 10
    pickup_count: int = 5000
    latency_samples: int = 50
    queue_count: int = 100_000
    idle_seconds: float = 30.0
    console_rate: float = 200.0  # Pickup files per second while the console runs
    console_seconds: float = 10.0
    dkim_count: int = 300  # messages through intake per DKIM system and run


@dataclass
class Context:
    sink: Sink
    params: Params
    work: Path
    postfix_missing: str | None = None
    filled_queue: Relay | None = None
    postfix_template: Path | None = None

    def home(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.work))

    def relay(self) -> Relay:
        return Relay(self.home("relay-"), self.sink.port)

    def postfix(self) -> postfixmod.Postfix:
        if self.postfix_missing:
            raise NotAvailable(f"skipped: {self.postfix_missing}")
        if self.postfix_template is None:
            template = postfixmod.Postfix(self.sink.port, 0, self.home("postfix-template-"))
            template.configure()
            self.postfix_template = template.home
        instance = postfixmod.Postfix(self.sink.port, free_port(), self.home("postfix-"))
        instance.clone(self.postfix_template)
        return instance


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- SMTP relay throughput ------------------------------------------------------------------

def smtp_throughput(size: int, big: bool):
    def measure(system: str, ctx: Context) -> dict[str, float]:
        count = ctx.params.big_count if big else ctx.params.smtp_count
        sessions = ctx.params.sessions
        if system in REFERENCES:
            ref = Reference(system.split()[1])
            try:
                began = time.monotonic()
                smtp_load(ref.port, count, sessions, size, timeout=WAIT)
                return {"msg/s": count / (time.monotonic() - began)}
            finally:
                ref.stop()
        if system == "postfix":
            instance = ctx.postfix()
            instance.start()
            try:
                return _relay_run(ctx, instance.smtp_port, count, sessions, size)
            finally:
                instance.stop()
                cleanup(instance.home)
        relay = ctx.relay()
        relay.start()
        try:
            cpu = tree_cpu_seconds(relay.pid)
            figures = _relay_run(ctx, relay.smtp_port, count, sessions, size)
            figures["CPU s per 1000 msgs"] = (tree_cpu_seconds(relay.pid) - cpu) * 1000 / count
            return figures
        finally:
            relay.stop()
            cleanup(relay.home)
    return measure


def _relay_run(ctx: Context, port: int, count: int, sessions: int,
               size: int) -> dict[str, float]:
    """Send through a relay on `port`; end to end is until the sink has them all."""
    before = ctx.sink.count
    began = time.monotonic()
    smtp_load(port, count, sessions, size, timeout=WAIT)
    accepted = time.monotonic() - began
    if not ctx.sink.wait(before + count, timeout=WAIT):
        raise RuntimeError(f"the sink got {ctx.sink.count - before} of {count}")
    return {"msg/s": count / (time.monotonic() - began), "accepted msg/s": count / accepted}


# --- Pickup ----------------------------------------------------------------------------------

@contextlib.contextmanager
def running(system) -> Iterator[None]:
    """A Postfix instance or a relay, started for the block, then stopped and removed."""
    system.start()
    try:
        yield
    finally:
        system.stop()
        cleanup(system.home)


def drain(ctx: Context, system, until: int) -> tuple[bool, float]:
    """Start a system whose pickup folder was filled while it was stopped; (the sink got
    `until` messages in time, seconds from start)."""
    began = time.monotonic()
    with running(system):
        return ctx.sink.wait(until, timeout=WAIT), time.monotonic() - began


def pickup_drain(system: str, ctx: Context) -> dict[str, float]:
    """N files of 2 KB pre-filled in the pickup folder, the system started after; until the
    sink has them all."""
    count = ctx.params.pickup_count
    before = ctx.sink.count
    if system == "postfix":
        instance = ctx.postfix()
        with ThreadPoolExecutor(8) as pool:  # fill while stopped: its maildrop holds them
            list(pool.map(lambda n: instance.sendmail(message(n, 2000)), range(count)))
        ok, took = drain(ctx, instance, before + count)
    else:
        relay = ctx.relay()
        relay.pickup().mkdir(parents=True)
        fill_pickup(relay.pickup(), count, 2000)
        ok, took = drain(ctx, relay, before + count)
    if not ok:
        raise RuntimeError(f"the sink got {ctx.sink.count - before} of {count}")
    return {"msg/s": count / took}


# --- latency ---------------------------------------------------------------------------------

def _latencies(samples: int, send, arrived) -> dict[str, float]:
    """Send one message at a time; milliseconds from send(token) to arrived(token)."""
    taken = []
    for number in range(samples):
        token = f"lat-{new_id()}-{number}"
        began = time.monotonic()
        send(token)
        deadline = began + 30
        while not (done := arrived(token)) and time.monotonic() < deadline:
            time.sleep(0.0005)
        if not done:
            raise RuntimeError(f"message {token} did not arrive within 30 s")
        taken.append(((done if isinstance(done, float) else time.monotonic()) - began) * 1000)
    return spread(taken)


def _rename_into(folder: Path, token: str, recipient: str) -> None:
    aside = folder.parent / f"{token}.eml"
    aside.write_bytes(message(token, 2000, recipient))
    os.rename(aside, folder / f"{token}.eml")


def latency_pickup(system: str, ctx: Context) -> dict[str, float]:
    if system == "postfix":
        target = ctx.postfix()
        send = lambda t: target.sendmail(message(t, 2000))  # noqa: E731
    else:
        target = ctx.relay()
        send = lambda t: _rename_into(target.pickup(), t, RECIPIENT)  # noqa: E731
    with running(target):
        return _latencies(ctx.params.latency_samples, send, ctx.sink.arrived)


def latency_smtp(system: str, ctx: Context) -> dict[str, float]:
    target = ctx.postfix() if system == "postfix" else ctx.relay()
    with running(target):
        return _latencies(ctx.params.latency_samples,
                          lambda t: smtp_one(target.smtp_port, message(t, 2000)),
                          ctx.sink.arrived)


# --- scale -----------------------------------------------------------------------------------

def filled_queue(ctx: Context) -> Relay:
    """A mailroot with N deferred messages in Queue (next attempt in a day), written once
    per session straight to disk with the store's envelope format."""
    if ctx.filled_queue is None:
        relay = Relay(ctx.home("scale-"), ctx.sink.port)
        store = Mailroot(relay.root)
        store.ensure()
        later = time.time() + 86400
        for number in range(ctx.params.queue_count):
            data = message(number, 2000)
            mid = new_id()
            envelope = Envelope(id=mid, sender="bench@bench.test",
                                recipients=[Recipient(RECIPIENT, state="deferred")],
                                received=time.time(), origin="bench", size=len(data),
                                crc32=checksum(data), next_attempt=later, queued_at=time.time())
            store.path(QUEUE, mid, ".eml").write_bytes(data)
            store.path(QUEUE, mid, ".env").write_bytes(envelope.to_json())
        ctx.filled_queue = relay
    return ctx.filled_queue


def scale_queue(system: str, ctx: Context) -> dict[str, float]:
    relay = filled_queue(ctx)
    took = relay.start()
    try:
        settled = relay.settled()  # idle: once the first scan and the recovery pass are done
        cpu, began = tree_cpu_seconds(relay.pid), time.monotonic()
        time.sleep(ctx.params.idle_seconds)
        idle = (tree_cpu_seconds(relay.pid) - cpu) / (time.monotonic() - began) * 100
        return {"s start": took, "s first scan and recovery done": settled,
                "% idle CPU": idle, "MB RSS": tree_rss_mb(relay.pid)}
    finally:
        relay.stop()


def scale_queue_listing(system: str, ctx: Context) -> dict[str, float]:
    return {"s": mailroot_queue_json(filled_queue(ctx).config, ctx.params.queue_count)}


def console_scale(system: str, ctx: Context) -> dict[str, float]:
    """`mailroot console` (its relay embedded) on the filled Queue, then a steady intake of
    local mail whose Drop count it must follow; Drop is emptied again after each run."""
    relay = filled_queue(ctx)
    try:
        return console.measure(relay.config, relay.pickup(), ctx.params.queue_count,
                               ctx.params.console_rate, ctx.params.console_seconds,
                               f"u@{LOCAL_DOMAIN}")
    finally:
        for path in (relay.root / "Drop").iterdir():
            path.unlink()


def all_workloads(params: Params) -> list[Workload]:
    relays = ["postfix", "mailroot"]
    smtp = [*REFERENCES, *relays]
    return [
        Workload(f"SMTP relay, 2 KB, {params.sessions} sessions, {params.smtp_count} msgs",
                 smtp, smtp_throughput(2000, big=False), ["postfix", "aiosmtpd count"]),
        Workload(f"SMTP relay, 100 KB, {params.sessions} sessions, {params.big_count} msgs",
                 smtp, smtp_throughput(100_000, big=True), ["postfix", "aiosmtpd count"]),
        Workload(f"pickup drain, {params.pickup_count} × 2 KB pre-filled → sink", relays,
                 pickup_drain, ["postfix"]),
        Workload(f"latency, pickup → sink ({params.latency_samples} samples)", relays,
                 latency_pickup, ["postfix"]),
        Workload(f"latency, SMTP end-of-data → sink ({params.latency_samples} samples)",
                 relays, latency_smtp, ["postfix"]),
        Workload(f"scale: {params.queue_count} deferred in Queue, idle "
                 f"{params.idle_seconds:g} s", ["mailroot"], scale_queue),
        Workload(f"scale: `mailroot queue --json` with {params.queue_count} queued",
                 ["mailroot"], scale_queue_listing),
        Workload(f"console with {params.queue_count} queued, Pickup intake "
                 f"{params.console_rate:g} msg/s", ["mailroot"], console_scale),
        dkim.workload(params.dkim_count),
    ]
