"""The workloads: each measures one system once and returns its figures."""

from __future__ import annotations

import contextlib
import dataclasses
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
from bench.sink import Hop, Sink
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
    # A hop with a round trip takes its time on every connection and transaction: fewer
    # messages there keep the full run within about 25 minutes on 2 cores.
    round_trip_smtp_count: int = 2000
    round_trip_big_count: int = 800
    round_trip_pickup_count: int = 2000

    def for_hop(self, hop: Hop) -> Params:
        """The counts for `hop`: the round-trip counts where they are smaller."""
        if not hop.round_trip_ms:
            return self
        return dataclasses.replace(
            self, smtp_count=min(self.smtp_count, self.round_trip_smtp_count),
            big_count=min(self.big_count, self.round_trip_big_count),
            pickup_count=min(self.pickup_count, self.round_trip_pickup_count))


@dataclass
class Context:
    sinks: dict[str, Sink]  # by hop name, in the order chosen; the first serves every other
    params: Params
    work: Path
    postfix_missing: str | None = None
    filled_queue: Relay | None = None
    postfix_template: Path | None = None

    @property
    def sink(self) -> Sink:
        """The first hop's sink: the smart host of the workloads that have no next hop."""
        return next(iter(self.sinks.values()))

    def home(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.work))

    def relay(self, sink: Sink) -> Relay:
        return Relay(self.home("relay-"), sink.port)

    def postfix(self, sink: Sink) -> postfixmod.Postfix:
        if self.postfix_missing:
            raise NotAvailable(f"skipped: {self.postfix_missing}")
        if self.postfix_template is None:
            template = postfixmod.Postfix(sink.port, 0, self.home("postfix-template-"))
            template.configure()
            self.postfix_template = template.home
        instance = postfixmod.Postfix(sink.port, free_port(), self.home("postfix-"))
        instance.clone(self.postfix_template)
        return instance

    def system(self, name: str, sink: Sink) -> postfixmod.Postfix | Relay:
        """A Postfix instance or a relay (not started) delivering to `sink`."""
        return self.postfix(sink) if name == "postfix" else self.relay(sink)


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running(system) -> Iterator[None]:
    """A Postfix instance or a relay, started for the block, then stopped and removed."""
    system.start()
    try:
        yield
    finally:
        system.stop()
        cleanup(system.home)


# --- SMTP relay throughput ------------------------------------------------------------------

def smtp_throughput(size: int, count: int, hop: Hop):
    def measure(system: str, ctx: Context) -> dict[str, float]:
        sessions = ctx.params.sessions
        if system in REFERENCES:
            ref = Reference(system.split()[1])
            try:
                began = time.monotonic()
                smtp_load(ref.port, count, sessions, size, timeout=WAIT)
                return {"msg/s": count / (time.monotonic() - began)}
            finally:
                ref.stop()
        sink = ctx.sinks[hop.name]
        target = ctx.system(system, sink)
        with running(target):
            cpu = tree_cpu_seconds(target.pid)
            figures = _relay_run(sink, target.smtp_port, count, sessions, size)
            figures["CPU s per 1000 msgs"] = (tree_cpu_seconds(target.pid) - cpu) * 1000 / count
            return figures
    return measure


def _relay_run(sink: Sink, port: int, count: int, sessions: int,
               size: int) -> dict[str, float]:
    """Send through a relay on `port`; end to end is until the sink has them all."""
    before = sink.count
    began = time.monotonic()
    smtp_load(port, count, sessions, size, timeout=WAIT)
    accepted = time.monotonic() - began
    if not sink.wait(before + count, timeout=WAIT):
        raise RuntimeError(f"the sink got {sink.count - before} of {count}")
    return {"msg/s": count / (time.monotonic() - began), "accepted msg/s": count / accepted}


# --- Pickup ----------------------------------------------------------------------------------

def pickup_drain(count: int, hop: Hop):
    def measure(system: str, ctx: Context) -> dict[str, float]:
        """N files of 2 KB pre-filled in the pickup folder, the system started after; until
        the sink has them all. The CPU is the system's from its start to the last arrival."""
        sink = ctx.sinks[hop.name]
        target = ctx.system(system, sink)
        if isinstance(target, postfixmod.Postfix):
            with ThreadPoolExecutor(8) as pool:  # fill while stopped: its maildrop holds them
                list(pool.map(lambda n: target.sendmail(message(n, 2000)), range(count)))
        else:
            target.pickup().mkdir(parents=True)
            fill_pickup(target.pickup(), count, 2000)
        before = sink.count
        began = time.monotonic()
        with running(target):
            if not sink.wait(before + count, timeout=WAIT):
                raise RuntimeError(f"the sink got {sink.count - before} of {count}")
            took = time.monotonic() - began
            cpu = tree_cpu_seconds(target.pid)
        return {"msg/s": count / took, "CPU s per 1000 msgs": cpu * 1000 / count}
    return measure


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


def latency_pickup(hop: Hop):
    def measure(system: str, ctx: Context) -> dict[str, float]:
        sink = ctx.sinks[hop.name]
        target = ctx.system(system, sink)
        if isinstance(target, postfixmod.Postfix):
            send = lambda t: target.sendmail(message(t, 2000))  # noqa: E731
        else:
            send = lambda t: _rename_into(target.pickup(), t, RECIPIENT)  # noqa: E731
        with running(target):
            return _latencies(ctx.params.latency_samples, send, sink.arrived)
    return measure


def latency_smtp(hop: Hop):
    def measure(system: str, ctx: Context) -> dict[str, float]:
        sink = ctx.sinks[hop.name]
        target = ctx.system(system, sink)
        with running(target):
            return _latencies(ctx.params.latency_samples,
                              lambda t: smtp_one(target.smtp_port, message(t, 2000)),
                              sink.arrived)
    return measure


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


def hop_workloads(params: Params, hop: Hop, direct: list[str]) -> list[Workload]:
    """The workloads that relay to the sink through `hop`; `direct`: the receivers measured
    beside them (with the first hop only)."""
    relays = ["postfix", "mailroot"]
    params = params.for_hop(hop)
    return [
        Workload(f"SMTP relay, 2 KB, {params.sessions} sessions, {params.smtp_count} msgs",
                 [*direct, *relays], smtp_throughput(2000, params.smtp_count, hop),
                 ["postfix", "aiosmtpd count"], hop.name, direct),
        Workload(f"SMTP relay, 100 KB, {params.sessions} sessions, {params.big_count} msgs",
                 [*direct, *relays], smtp_throughput(100_000, params.big_count, hop),
                 ["postfix", "aiosmtpd count"], hop.name, direct),
        Workload(f"pickup drain, {params.pickup_count} × 2 KB pre-filled → sink", relays,
                 pickup_drain(params.pickup_count, hop), ["postfix"], hop.name),
        Workload(f"latency, pickup → sink ({params.latency_samples} samples)", relays,
                 latency_pickup(hop), ["postfix"], hop.name),
        Workload(f"latency, SMTP end-of-data → sink ({params.latency_samples} samples)",
                 relays, latency_smtp(hop), ["postfix"], hop.name),
    ]


def all_workloads(params: Params, hops: list[Hop]) -> list[Workload]:
    """Every workload; each relay workload once per hop, one hop after the other."""
    per_hop = [hop_workloads(params, hop, REFERENCES if number == 0 else [])
               for number, hop in enumerate(hops)]
    return [
        *(workload for same in zip(*per_hop, strict=True) for workload in same),
        Workload(f"scale: {params.queue_count} deferred in Queue, idle "
                 f"{params.idle_seconds:g} s", ["mailroot"], scale_queue),
        Workload(f"scale: `mailroot queue --json` with {params.queue_count} queued",
                 ["mailroot"], scale_queue_listing),
        Workload(f"console with {params.queue_count} queued, Pickup intake "
                 f"{params.console_rate:g} msg/s", ["mailroot"], console_scale),
        dkim.workload(params.dkim_count),
    ]
