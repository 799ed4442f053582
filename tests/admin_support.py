"""Helpers for the operator API tests: the CLI as a subprocess, mail made through intake,
Badmail entries written the way a failed delivery writes them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from relay.core.bounce import SEPARATOR, bad_report
from relay.core.store import BADMAIL, QUEUE, Attempt, Mailroot, Write
from tests.conftest import RelayProcess, drop_file, wait_for


def cli(config: Path, *args: str, stdin: str = "", binary: bool = False
        ) -> subprocess.CompletedProcess:
    """`mailroot -c config ARGS` as a separate process, as an operator or cron runs it."""
    return subprocess.run([sys.executable, "-m", "relay.cli", *args, "-c", str(config)],
                          input=stdin.encode() if binary else stdin, capture_output=True,
                          text=not binary, timeout=30)


def message(to: str, token: str, sender: str = "app@yourdomain.com") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {token}\r\n\r\nbody {token}\r\n").encode()


def submit(r: RelayProcess, to: str, count: int = 1, prefix: str = "m") -> list[str]:
    """Messages through Pickup and intake; returns their ids (in order) once taken in."""
    names = [f"{prefix}{i}.eml" for i in range(count)]
    for i, name in enumerate(names):
        drop_file(r.folder("Pickup"), name, message(to, f"{prefix}-token-{i}"))

    def taken() -> list[str]:
        ids = {e["source"]: e["id"] for e in r.events()
               if e["event"] == "intake" and e.get("source", "").startswith("Pickup/")}
        return [ids[f"Pickup/{n}"] for n in names] if all(
            f"Pickup/{n}" in ids for n in names) else []

    return wait_for(taken, timeout=20)


def fail_delivery(root: Path, mid: str, status: str = "5.1.1",
                  reply: str = "550 5.1.1 <user@remote.example>: no such user") -> None:
    """Move a queued message to Badmail as a permanent failure does: under its claim, every
    recipient failed, an attempt recorded, the report written."""
    store = Mailroot(root)
    with store.claim(QUEUE, mid, wait=10) as held:
        assert held
        envelope = store.read_envelope(QUEUE, mid)
        now = time.time()
        for rcpt in envelope.recipients:
            rcpt.state, rcpt.status, rcpt.reply, rcpt.host = "failed", status, reply, "127.0.0.1"
        envelope.attempts.append(Attempt(now, "127.0.0.1", reply, False,
                                         [r.address for r in envelope.recipients]))
        envelope.reason = f"permanent failure: {reply}"
        head = bad_report(envelope.reason, message_id=mid, envelope=envelope).encode()
        data = store.read_message(QUEUE, mid)
        store.commit(store.move_ops(QUEUE, BADMAIL, envelope, extra=[
            Write(store.path(BADMAIL, mid, ".BAD"), head + SEPARATOR + data)]))
