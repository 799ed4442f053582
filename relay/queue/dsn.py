"""RFC 3464 delivery status notifications: the non-delivery and delay reports the queue
manager sends to a message's sender. Apart from the `.BAD` files (relay/core/bounce.py), so what
reads Badmail loads none of the email package's MIME classes."""

from __future__ import annotations

import re
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formatdate, make_msgid

from relay.core.message import MAX_LINE
from relay.core.store import Envelope, Recipient

SMTP_REPLY = re.compile(r"^[245]\d\d[ -]")


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
