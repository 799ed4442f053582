"""One path into the mailroot for Pickup files and SMTP: validate the envelope and limits,
add a Received header, route, and commit durably to Drop and/or Queue."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relay.core.address import AddressError, parse_address
from relay.core.config import Config
from relay.core.dkim import Signer, SigningError, load_keys
from relay.core.message import (
    Message,
    MessageError,
    format_date,
    normalize_line_ends,
    wrap_received,
)
from relay.core.router import Router
from relay.core.store import DROP, QUEUE, Envelope, Mailroot, Op, Recipient, Write, checksum, new_id


class Rejected(Exception):
    """The message is refused as a whole: `reason` for people, `code`/`status` for SMTP."""

    def __init__(self, reason: str, code: int = 554, status: str = "5.6.0") -> None:
        super().__init__(reason)
        self.reason, self.code, self.status = reason, code, status


@dataclass
class Submission:
    message: bytes  # CRLF text: header fields, empty line, body
    sender: str  # "" is the null sender
    recipients: list[str]
    source: str  # where it came from, for people: "Pickup/x.eml", "SMTP 127.0.0.1 (helo)"
    received_from: str = ""  # the "from ..." clause of the Received header
    protocol: str = "local"  # the "with ..." clause: local, ESMTP, ESMTPS, ESMTPSA
    headerless_ok: bool = False  # SMTP clients may send a body without header fields
    done_ops: list[Op] = field(default_factory=list)  # committed with the message (source removal)
    message_id: str = field(default_factory=new_id)
    kind: str = "message"  # message | ndr | delay (reports the relay writes itself)


@dataclass
class Outcome:
    id: str
    local: list[str]
    remote: list[str]


def clean_envelope(sender: str, recipients: list[str], max_recipients: int) -> tuple[str, list[str]]:
    """Strictly parsed sender and de-duplicated recipients, or Rejected."""
    try:
        sender = "" if sender.strip() in ("", "<>") else parse_address(sender)
    except AddressError as exc:
        raise Rejected(f"bad sender address {sender!r}: {exc}", 553, "5.1.7") from None
    if not recipients:
        raise Rejected("no recipients", 554, "5.5.1")
    if len(recipients) > max_recipients:
        raise Rejected(f"{len(recipients)} recipients, more than the limit of {max_recipients} "
                       "(smtp.max_recipients)", 452, "4.5.3")
    clean: dict[str, str] = {}
    for rcpt in recipients:
        try:
            address = parse_address(rcpt)
        except AddressError as exc:
            raise Rejected(f"bad recipient address {rcpt!r}: {exc}", 553, "5.1.3") from None
        clean.setdefault(address.lower(), address)
    return sender, list(clean.values())


class Intake:
    def __init__(self, config: Config, store: Mailroot, signing: bool = True) -> None:
        self.store = store
        self.signing = signing  # False: never accepts mail (the operator API routes only)
        self.on_queued: Callable[[str], None] | None = None  # called (from any thread) per Queue entry
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Use a new config from the next message on (local domains, limits, DKIM keys).

        Raises ConfigError, with nothing changed, when a DKIM key is unusable."""
        self.signer = Signer(load_keys(config) if self.signing else {})
        self.config = config
        self.router = Router(config)

    def prepare(self, sub: Submission, limits: bool = True) -> tuple[str, list[str], Message]:
        """Validate limits (size, hop count; unless an operator forces them) and envelope;
        return the cleaned envelope and the message."""
        limit = self.config.smtp.max_message_size
        if limits and len(sub.message) > limit:
            raise Rejected(f"message of {len(sub.message)} bytes is over the size limit of "
                           f"{int(limit)} bytes (smtp.max_message_size)", 552, "5.3.4")
        if not sub.message.strip():
            raise Rejected("the message is empty", 554, "5.6.0")
        sender, recipients = clean_envelope(sub.sender, sub.recipients,
                                            self.config.smtp.max_recipients)
        try:
            message = Message.parse(normalize_line_ends(sub.message),  # no bare CR or LF kept
                                    headerless_ok=sub.headerless_ok)
            message.check_header()
        except MessageError as exc:
            raise Rejected(str(exc), 554, "5.6.0") from None
        hops = message.count("received")
        if limits and hops > self.config.delivery.max_hop_count:
            raise Rejected(f"hop count exceeded: {hops} Received: headers, more than "
                           f"delivery.max_hop_count ({self.config.delivery.max_hop_count}); "
                           "probably a mail loop", 554, "5.4.6")
        return sender, recipients, message

    def received_header(self, sub: Submission, recipients: list[str], now: float) -> str:
        parts = [sub.received_from] if sub.received_from else []
        parts.append(f"by {self.config.fqdn} (mailroot)")
        parts.append(f"with {sub.protocol} id {sub.message_id}")
        if len(recipients) == 1:
            parts.append(f"for <{recipients[0]}>")
        return wrap_received(" ".join(parts) + f"; {format_date(now)}")

    def drop_ops(self, message_id: str, sender: str, local: list[str], data: bytes) -> list[Op]:
        """The op that delivers a message to Drop for its local recipients, with the envelope
        as X-Sender/X-Receiver lines on top (as IIS writes them)."""
        head = f"X-Sender: {sender or '<>'}\r\n" + "".join(
            f"X-Receiver: {self.router.local_address(r)}\r\n" for r in local)
        return [Write(self.store.path(DROP, message_id, ".eml"), head.encode() + data)]

    def accept(self, sub: Submission, limits: bool = True) -> Outcome:
        """Commit the message to Drop and/or Queue, durably, with `sub.done_ops`.

        Raises Rejected (nothing written) or OSError (nothing half-written).
        """
        sender, recipients, message = self.prepare(sub, limits)
        now = time.time()
        message.prepend("Received", self.received_header(sub, recipients, now))
        try:
            self.signer.sign(message)
        except SigningError as exc:
            raise Rejected(f"DKIM signing failed: {exc}", 451, "4.7.0") from None
        data = message.to_bytes()
        local, remote = self.router.split(recipients)
        mid = sub.message_id
        ops: list[Op] = self.drop_ops(mid, sender, local, data) if local else []
        if remote:
            envelope = Envelope(
                id=mid, sender=sender, recipients=[Recipient(r) for r in remote],
                received=now, origin=sub.source, size=len(data), crc32=checksum(data),
                subject=message.get("subject")[:200], header_from=message.get("from")[:200],
                next_attempt=now, kind=sub.kind)
            ops += self.store.enqueue_ops(QUEUE, envelope, data)
        self.store.commit(ops + sub.done_ops)
        if remote and self.on_queued:
            self.on_queued(mid)
        return Outcome(mid, local, remote)
