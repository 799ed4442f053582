"""A mailroot with fixed content in every folder, for console snapshots: fixed ids, times,
addresses and events, so the same screen renders the same way on every run."""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import yaml

from relay.core.bounce import badmail_ops
from relay.core.store import DROP, HOLD, PICKUP, QUEUE, Attempt, Envelope, Mailroot, Recipient

T0 = 1_760_000_000.0  # "now" for the frozen clock
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def fixed_id(when: float, serial: int) -> str:
    """A valid sortable id for a given time (what new_id would make then)."""
    number, digits = int(when * 1e6), []
    for _ in range(11):
        number, digit = divmod(number, 32)
        digits.append(CROCKFORD[digit])
    return "".join(reversed(digits)) + f"{serial:05d}"


def message(sender: str, to: str, subject: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{zlib.crc32(subject.encode()):08x}@example.com>\r\n"
            f"X-Tag: [ticket 42] brackets stay text\r\n\r\n{body}").encode()


def envelope(mid: str, when: float, sender: str, to: list[str], subject: str, data: bytes,
             **extra) -> Envelope:
    return Envelope(id=mid, sender=sender, recipients=[Recipient(a) for a in to], received=when,
                    origin="Pickup/app.eml", size=len(data), crc32=zlib.crc32(data),
                    subject=subject, queued_at=when, **extra)


def write_config(tmp: Path, relative: bool = False) -> Path:
    path = tmp / "mailroot.yaml"
    path.write_text(yaml.safe_dump({
        "mailroot": "./mailroot" if relative else str(tmp / "mailroot"), "hostname": "relay.example.com",
        "domains": {"local": {"default": "example.com", "aliases": ["corp.example.com"]},
                    "remote": {"partner.example": {"tls": "require",
                                                   "smarthost": "mx.partner.example:587"}}},
        "smtp": {"listen": ["127.0.0.1:2525"]},
    }, sort_keys=False))
    return path


def build(root: Path) -> None:
    """Fill every folder of the mailroot at `root` with fixed messages and events."""
    store = Mailroot(root)
    store.ensure()
    for n, (to, subject, tries) in enumerate([
            ("ops@partner.example", "Nightly report [prod]", 2),
            ("billing@customer.example", "Invoice 2291", 0),
            ("sales@slow.example", "Quote request", 5)]):
        when = T0 - 3600 * (n + 1)
        mid = fixed_id(when, n)
        data = message("app@example.com", to, subject)
        attempts = [Attempt(when + 900 * i, f"mx{i % 2}.{to.split('@')[1]}",
                            "451 4.7.1 greylisted, try again later", tls=i % 2 == 0)
                    for i in range(tries)]
        env = envelope(mid, when, "app@example.com", [to], subject, data, attempts=attempts,
                       next_attempt=T0 + 600 * (n + 1) if tries else T0 - 5)
        store.commit(store.enqueue_ops(QUEUE, env, data))
    held = fixed_id(T0 - 86400, 9)
    data = message("cron@example.com", "audit@partner.example", "Held for review")
    store.commit(store.enqueue_ops(HOLD, envelope(held, T0 - 86400, "cron@example.com",
                                                  ["audit@partner.example"], "Held for review",
                                                  data, held_at=T0 - 7200), data))
    for n, (to, reason) in enumerate([
            ("nobody@customer.example", "550 5.1.1 <nobody@customer.example>: user unknown"),
            ("x@gone.example", "expired after 2d without delivery (last: 421 4.4.2 timeout)")]):
        when = T0 - 7200 * (n + 1)
        mid = fixed_id(when, 20 + n)
        data = message("app@example.com", to, f"Welcome {n}")
        env = envelope(mid, when, "app@example.com", [to], f"Welcome {n}", data,
                       attempts=[Attempt(when + 60, "mx.customer.example", reason, tls=True)])
        env.recipients[0].state, env.recipients[0].reply = "failed", reason
        ops = badmail_ops(store, mid, reason, data, source="Queue", envelope=env)
        report = ops[-1]  # the .BAD file: its Time: line says when it was written; fix it
        report.data = re.sub(rb"Time: +[^\n]*", b"Time:      2025-10-09 08:53:00 +0000",
                             report.data, count=1)
        store.commit(ops)
    for n in range(2):
        mid = fixed_id(T0 - 300 * (n + 1), 30 + n)
        path = store.path(DROP, mid, ".eml")
        path.write_bytes(b"X-Sender: app@example.com\r\nX-Receiver: it@example.com\r\n" +
                         message("app@example.com", "it@example.com", f"Disk alert {n}"))
        os.utime(path, (T0 - 300 * (n + 1),) * 2)
    pickup = store.folder(PICKUP) / "invoice-2292.eml"
    pickup.write_bytes(message("app@example.com", "billing@customer.example", "Invoice 2292"))
    os.utime(pickup, (T0 - 2,) * 2)
    events = [  # as the relay writes them (relay/queue/scheduler.py, pickup.py, smtpd.py, admin.py)
        {"time": T0 - 60, "event": "smtp-listening", "host": "127.0.0.1", "port": 2525,
         "tls": False, "auth": False},
        {"time": T0 - 60, "event": "relay-started", "mailroot": str(root), "pid": 4242},
        {"time": T0 - 50, "event": "intake", "id": fixed_id(T0 - 300, 30),
         "source": "Pickup/alert.eml", "outcome": "drop", "from": "app@example.com",
         "to": ["it@example.com"]},
        {"time": T0 - 40, "event": "deferred", "id": fixed_id(T0 - 3600, 0),
         "to": ["ops@partner.example"], "host": "mx0.partner.example[192.0.2.10]:25",
         "reply": "451 4.7.1 greylisted", "tls": True, "next_attempt": T0 + 600},
        {"time": T0 - 30, "event": "delivered", "id": "0000000000000000",
         "to": ["it@customer.example"], "host": "mx.customer.example[192.0.2.20]:25",
         "reply": "250 2.0.0 OK [queued as 7F3]", "tls": True},
        {"time": T0 - 20, "event": "failed", "id": fixed_id(T0 - 7200, 20),
         "to": ["nobody@customer.example"], "host": "mx.customer.example[192.0.2.20]:25",
         "reply": "550 5.1.1 user unknown", "tls": True},
        {"time": T0 - 20, "event": "bounced", "id": fixed_id(T0 - 7200, 20),
         "reason": "delivery failed for <nobody@customer.example>: 550 5.1.1 user unknown",
         "ndr": None, "to": ["nobody@customer.example"]},
        {"time": T0 - 10, "event": "admin", "action": "hold", "ids": [fixed_id(T0 - 86400, 9)],
         "user": "ops"},
    ]
    with (store.log_dir / "events.jsonl").open("w") as log:
        for event in events:
            log.write(json.dumps(event) + "\n")


def hold_lock(root: Path, holder: str = "pid 4242 on relay.example.com") -> int:
    """Hold the mailroot's relay lock as a running relay would, so the console attaches."""
    fd = os.open(root / "relay.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, f"{holder}\n".encode())
    return fd


async def until(pilot, predicate: Callable[[], object], timeout: float = 8.0,
                why: Callable[[], str] | None = None) -> None:
    """Let the app run until predicate() holds; fail after `timeout` s, saying why()."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, why() if why else "condition not met in time"
        await pilot.pause(0.05)
