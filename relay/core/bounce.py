"""Badmail: the `.BAD` report a person reads with `less`, then the original byte for byte;
moving failed and damaged messages there. (The reports to senders: relay/queue/delivery.py.)"""

from __future__ import annotations

import time
from pathlib import Path

from relay.core.store import BADMAIL, QUEUE, Envelope, Mailroot, Op, Write, envelope_or_none

SEPARATOR = b"\n----- the original message follows, byte for byte -----\n"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(stamp))


def bad_report(reason: str, *, message_id: str, source: str = "",
               envelope: Envelope | None = None, now: float | None = None) -> str:
    """The readable head of a `.BAD` file: the reason first, then where and when."""
    now = time.time() if now is None else now
    lines = [
        "This message could not be delivered and was put in Badmail.",
        "",
        f"Reason:    {reason}",
    ]
    if source:
        lines.append(f"Source:    {source}")
    lines += [f"Id:        {message_id}", f"Time:      {_when(now)}"]
    if envelope is not None:
        lines.append(f"From:      <{envelope.sender}>")
        lines.append(f"Received:  {_when(envelope.received)} ({envelope.origin})")
        if envelope.recipients:
            lines += ["", "Recipients:"]
            for rcpt in envelope.recipients:
                status = f" {rcpt.status}" if rcpt.status else ""
                lines.append(f"  <{rcpt.address}>  {rcpt.state}{status}")
                if rcpt.reply:
                    via = f" from {rcpt.host}" if rcpt.host else ""
                    lines.append(f"      reply{via}: {rcpt.reply}")
        if envelope.attempts:
            lines += ["", "Attempts:"]
            for attempt in envelope.attempts:
                host = attempt.host or "-"
                tls = {True: " TLS", False: "", None: ""}[attempt.tls]
                lines.append(f"  {_when(attempt.time)}  {host}{tls}  {attempt.reply}")
    return "\n".join(lines) + "\n"


def badmail_ops(store: Mailroot, message_id: str, reason: str, original: bytes, *,
                source: str = "", envelope: Envelope | None = None) -> list[Op]:
    """Ops that put a new entry in Badmail: the original, its envelope, then the `.BAD`
    report (the commit marker, written last)."""
    if envelope is not None:
        envelope.reason = reason
    head = bad_report(reason, message_id=message_id, source=source, envelope=envelope)
    ops: list[Op] = [Write(store.path(BADMAIL, message_id, ".eml"), original)]
    if envelope is not None:
        ops.append(store.envelope_write(BADMAIL, envelope))
    ops.append(Write(store.path(BADMAIL, message_id, ".BAD"),
                     head.encode() + SEPARATOR + original))
    return ops


def read_reason(path: Path) -> str:
    """The one-line reason from a `.BAD` file (reads only its head)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    for line in head.splitlines():
        if line.startswith("Reason:"):
            return line.split(":", 1)[1].strip()
    return ""


# --- delivery failures and damaged entries ----------------------------------------------------

def failed_delivery_ops(store: Mailroot, envelope: Envelope, original: bytes,
                        reason: str) -> list[Op]:
    """Ops that move a queued message to Badmail, its `.BAD` report first in the file; the
    envelope stays with it so the message can be requeued."""
    envelope.reason = reason
    head = bad_report(reason, message_id=envelope.id, source=envelope.origin, envelope=envelope)
    return store.move_ops(QUEUE, BADMAIL, envelope, extra=[
        Write(store.path(BADMAIL, envelope.id, ".BAD"), head.encode() + SEPARATOR + original)])


def quarantine_ops(store: Mailroot, folder: str, message_id: str, envelope: Envelope | None,
                   reason: str) -> list[Op]:
    """Ops that move a damaged committed entry out of Queue/Hold into Badmail, keeping what
    is left of its message file byte for byte."""
    try:
        original = store.read_message(folder, message_id)
    except FileNotFoundError:
        original = b""
    if envelope is not None:
        envelope.moves += 1  # Badmail's is the later copy (Mailroot.later_copy)
    return badmail_ops(store, message_id, reason, original, source=f"{folder}/{message_id}",
                       envelope=envelope) + store.remove_ops(folder, message_id)


def quarantine(store: Mailroot, folder: str, message_id: str) -> str | None:
    """Move a damaged Queue/Hold entry into Badmail with its reason, looked at again under
    its claim: what a reader saw while the entry moved on is no damage. An entry whose
    message file is missing has no claim to take: its marker is held instead, and only a
    marker that stayed in place while the message file was missing counts (no step of the
    protocol leaves that). Returns the reason, or None: sound after all, gone, or busy."""
    with store.claim(folder, message_id) as claimed:
        if claimed:
            return _quarantine_if_damaged(store, folder, message_id)
    with store.claim_missing(folder, message_id) as missing:
        if missing:
            return _quarantine_if_damaged(store, folder, message_id)
    return None


def _quarantine_if_damaged(store: Mailroot, folder: str, message_id: str) -> str | None:
    try:
        raw, problem = store.inspect(folder, message_id)
    except FileNotFoundError:
        return None
    if problem:
        store.commit(quarantine_ops(store, folder, message_id, envelope_or_none(raw), problem))
    return problem
