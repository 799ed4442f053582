"""Badmail and reports to senders: the `.BAD` report a person reads with `less`, then the
original byte for byte; RFC 3464 non-delivery and delay reports."""

from __future__ import annotations

import re
import time
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formatdate, make_msgid
from pathlib import Path

from relay.message import MAX_LINE
from relay.store import BADMAIL, QUEUE, Envelope, Mailroot, Op, Recipient, Unlink, Write

SMTP_REPLY = re.compile(r"^[245]\d\d[ -]")

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


# --- delivery failures and delays --------------------------------------------------------------

def failed_delivery_ops(store: Mailroot, envelope: Envelope, original: bytes,
                        reason: str) -> list[Op]:
    """Ops that move a queued message to Badmail, its `.BAD` report first in the file; the
    envelope stays with it so the message can be requeued."""
    envelope.reason = reason
    head = bad_report(reason, message_id=envelope.id, source=envelope.origin, envelope=envelope)
    return store.move_ops(QUEUE, BADMAIL, envelope, extra=[
        Write(store.path(BADMAIL, envelope.id, ".BAD"), head.encode() + SEPARATOR + original)])


def _mta_name(host: str) -> str:
    """'mx.example[192.0.2.1]:25' -> 'mx.example'."""
    name = host.split("[", 1)[0]
    return name.rsplit(":", 1)[0] if "[" not in host and name.count(":") == 1 else name


def _recipient_block(rcpt: Recipient, action: str, envelope: Envelope,
                     will_retry_until: float | None) -> Message:
    block = Message()
    block["Final-Recipient"] = f"rfc822; {rcpt.address}"
    block["Action"] = action
    block["Status"] = rcpt.status or ("5.0.0" if action == "failed" else "4.0.0")
    reply = rcpt.reply or ""
    if rcpt.host and SMTP_REPLY.match(reply):
        block["Remote-MTA"] = f"dns; {_mta_name(rcpt.host)}"
        block["Diagnostic-Code"] = f"smtp; {reply}"
    elif reply:
        block["Diagnostic-Code"] = f"X-mailroot; {reply}"
    if envelope.attempts:
        block["Last-Attempt-Date"] = formatdate(envelope.attempts[-1].time, localtime=True)
    if will_retry_until is not None:
        block["Will-Retry-Until"] = formatdate(will_retry_until, localtime=True)
    return block


def _text_part(text: str, subtype: str) -> MIMEText:
    return MIMEText(text, subtype, "us-ascii" if text.isascii() else "utf-8")


def delivery_report(envelope: Envelope, original: bytes, recipients: list[Recipient], *,
                    hostname: str, action: str, will_retry_until: float | None = None) -> bytes:
    """An RFC 3464 report to the sender: `action` is 'failed' (an NDR) or 'delayed'."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = f"<{envelope.sender}>"
    report["Subject"] = ("Undelivered Mail Returned to Sender" if action == "failed" else
                         "Delayed Mail (still being retried)")
    report["Date"] = formatdate(localtime=True)
    report["Message-ID"] = make_msgid(domain=hostname)
    report["Auto-Submitted"] = "auto-replied"
    original_head = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    original_id = original_message_id(original_head)
    if original_id:
        report["In-Reply-To"] = original_id
        report["References"] = original_id
    lines = [f"This is the mail system at {hostname}.", ""]
    if action == "failed":
        lines += ["Your message could not be delivered to the recipients below. This is a "
                  "permanent error; the mail system has given up.", ""]
    else:
        lines += ["Your message has not been delivered yet to the recipients below. The mail "
                  "system will keep trying; you do not need to send it again."]
        if will_retry_until is not None:
            lines.append(f"It gives up at {formatdate(will_retry_until, localtime=True)}.")
        lines.append("")
    for rcpt in recipients:
        via = f" (from {rcpt.host})" if rcpt.host else ""
        lines.append(f"<{rcpt.address}>: {rcpt.reply or rcpt.status}{via}")
    report.attach(_text_part("\n".join(lines) + "\n", "plain"))
    head = Message()
    head["Reporting-MTA"] = f"dns; {hostname}"
    head["X-Mailroot-Queue-ID"] = envelope.id
    head["Arrival-Date"] = formatdate(envelope.received, localtime=True)
    status = MIMEBase("message", "delivery-status")
    status.set_payload([head] + [_recipient_block(r, action, envelope, will_retry_until)
                                 for r in recipients])
    report.attach(status)
    report.attach(_text_part(original_head.decode("utf-8", "replace"), "rfc822-headers"))
    return report.as_bytes(policy=compat32.clone(linesep="\r\n", max_line_length=MAX_LINE))


def original_message_id(head: bytes) -> str:
    """The Message-ID of the original, for In-Reply-To/References ('' if it has none)."""
    match = re.search(rb"^Message-ID:[ \t]*(<[^>\r\n]+>)", head, re.I | re.M)
    return match[1].decode("ascii", "replace") if match else ""


def quarantine_ops(store: Mailroot, folder: str, message_id: str, envelope: Envelope | None,
                   reason: str) -> list[Op]:
    """Ops that move a damaged committed entry out of Queue/Hold into Badmail, keeping what
    is left of its message file byte for byte."""
    try:
        original = store.read_message(folder, message_id)
    except FileNotFoundError:
        original = b""
    return badmail_ops(store, message_id, reason, original, source=f"{folder}/{message_id}",
                       envelope=envelope) + [Unlink(store.path(folder, message_id, ".env")),
                                             Unlink(store.path(folder, message_id, ".eml"))]


def quarantine(store: Mailroot, folder: str, message_id: str, envelope: Envelope | None,
               reason: str) -> bool:
    """Move a damaged entry into Badmail under its claim; False if someone else has it."""
    with store.claim(folder, message_id) as claimed:
        if not claimed and store.path(folder, message_id, ".eml").exists():
            return False
        store.commit(quarantine_ops(store, folder, message_id, envelope, reason))
    return True
