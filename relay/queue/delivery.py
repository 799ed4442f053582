"""One delivery attempt at a claimed Queue message, and what its outcome does to the message.

The scheduler (relay/queue/scheduler.py) claims a message when it comes due and hands it
here: its envelope is re-read under the claim, its pending recipients are sent by domain, and
each reply is recorded. The outcome policy follows: recipients still pending wait for the
next round on the Delivery schedule (and their sender gets a delay notice once it is due); a
message delivered to all leaves Queue; one with a recipient failed for good, or past its
expiration, goes to Badmail with a report to its sender. The reports are RFC 3464 delivery
status notifications, made here apart from the `.BAD` files (relay/core/bounce.py), so what
reads Badmail loads none of the email package's MIME classes.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import formatdate, make_msgid

from relay.core.address import domain_of
from relay.core.bounce import failed_delivery_ops, quarantine_ops
from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.intake import Intake, Rejected, Submission
from relay.core.message import MAX_LINE
from relay.core.router import Router
from relay.core.store import QUEUE, Attempt, Envelope, Mailroot, Op, Recipient, damage
from relay.queue.smtp_client import Client, Result
from relay.queue.smtp_transaction import Outgoing, Reply, masquerade

CLAIM_WAIT = 0.02  # a new entry's writer may still hold its lock some µs after its marker
SMTP_REPLY = re.compile(r"^[245]\d\d[ -]")


def rounds(envelope: Envelope) -> int:
    """Delivery rounds since the message was queued or last requeued (the attempts of one
    round, one per domain, share a time); a requeued message keeps its earlier attempts."""
    return len({a.time for a in envelope.attempts if a.time >= envelope.queued_at})


def summary(replies: dict[str, Reply]) -> str:
    texts = {str(reply) for reply in replies.values()}
    if len(texts) == 1:
        return texts.pop()
    return "; ".join(f"<{rcpt}> {reply}" for rcpt, reply in replies.items())


class Delivery:
    """Claimed messages sent through the SMTP client, and their outcomes written back. The
    client and the disk threads are the scheduler's, which reconfigures and stops them."""

    def __init__(self, config: Config, store: Mailroot, intake: Intake, events: EventLog,
                 client: Client, disk: ThreadPoolExecutor) -> None:
        self.config = config
        self.store = store
        self.intake = intake
        self.events = events
        self.client = client
        self.disk = disk  # claims, reads and releases
        self.releasing: list[tuple[int, str | None]] = []  # claims to close (, retired id)
        self.retired: set[str] = set()  # delivered, out of Queue, their claims not yet closed

    @property
    def router(self) -> Router:
        return self.intake.router  # follows live config changes

    # --- one message ---

    async def attempt(self, mid: str, claim: int,
                      loaded: tuple[Envelope, bytes] | Exception | None) -> float | None:
        """Try the claimed message's pending recipients, record the outcome, release the
        claim. Returns when the message is due again while it stays in Queue, else None."""
        try:
            if isinstance(loaded, FileNotFoundError):
                return None
            if isinstance(loaded, Exception):  # the scan only skimmed it
                await asyncio.to_thread(self._quarantine_claimed, mid, loaded)
                return None
            envelope, data = loaded
            now = time.time()
            if envelope.next_attempt > now + 0.05:  # rescheduled by someone meanwhile
                return envelope.next_attempt
            problem = damage(envelope, data)
            notes: list[dict] = []
            if problem:
                notes.append({"event": "quarantined", "id": mid, "reason": problem})
                for rcpt in envelope.pending:
                    rcpt.state, rcpt.status, rcpt.reply = "failed", "5.3.0", problem
            else:
                notes = await self.deliver(envelope, data, now)
            return await self.finish(envelope, data, now, notes)
        finally:
            self._release(claim, mid)

    def claim(self, mid: str) -> tuple[int | None, tuple[Envelope, bytes] | Exception | None]:
        """The message's claim and, under it, its envelope and bytes (or why they could not
        be read): one hop to a disk thread for both."""
        claim = self.store.acquire(QUEUE, mid, wait=CLAIM_WAIT)
        if claim is None:
            return None, None
        try:
            return claim, self._load(mid)
        except (FileNotFoundError, ValueError, TypeError, KeyError) as exc:
            return claim, exc
        except BaseException:
            os.close(claim)
            raise

    def _release(self, claim: int, mid: str) -> None:
        """Close a claim off the loop, and then recycle the files of a delivered message
        (more than the loop should pay). Claims released meanwhile wait for the same hop
        to a disk thread."""
        retired = mid in self.retired
        self.retired.discard(mid)
        self.releasing.append((claim, mid if retired else None))
        if len(self.releasing) == 1:
            self.disk.submit(self._close_released)

    def _close_released(self) -> None:
        claims, self.releasing = self.releasing, []  # claims released from now on: a new hop
        for claim, _ in claims:
            os.close(claim)
        retired = [mid for _, mid in claims if mid]
        if retired:
            self.store.dispose_retired(retired)

    def _quarantine_claimed(self, mid: str, exc: Exception) -> None:
        reason = f"the envelope {QUEUE}/{mid}.env cannot be read: {exc!r}"
        self.store.commit(quarantine_ops(self.store, QUEUE, mid, None, reason))
        self.events.emit("quarantined", id=mid, folder=QUEUE, reason=reason)

    def _load(self, mid: str) -> tuple[Envelope, bytes]:
        """The claimed message's envelope and bytes; FileNotFoundError if an interrupted move
        had left this Queue copy behind (the start-up recovery may not have reached it yet:
        it is resolved here, before any delivery)."""
        stale = self.store.settle(mid)
        for folder in stale:
            self.events.emit("recovered", id=mid, folder=folder,
                             action="removed the source of an interrupted move")
        if QUEUE in stale:
            raise FileNotFoundError(f"{QUEUE}/{mid}.env")
        return self.store.read_envelope(QUEUE, mid), self.store.read_claimed(QUEUE, mid)

    async def deliver(self, envelope: Envelope, data: bytes, now: float) -> list[dict]:
        """One round: the pending recipients, by domain, in parallel; returns the events."""
        sender, data = masquerade(envelope.sender, data, self.config.delivery.masquerade_domain)
        outgoing = Outgoing(sender, data)
        groups: dict[str, list[str]] = defaultdict(list)
        for rcpt in envelope.pending:
            groups[domain_of(rcpt.address).lower()].append(rcpt.address)
        sends = [self.client.deliver(self.router.route(domain), outgoing, rcpts)
                 for domain, rcpts in groups.items()]
        # one domain (most mail): awaited here, not in a task of its own, so the reply is
        # recorded two turns of the loop sooner (what a kill finds delivered but not recorded)
        results = [await sends[0]] if len(sends) == 1 else await asyncio.gather(*sends)
        notes: list[dict] = []
        for rcpts, result in zip(groups.values(), results, strict=True):
            notes += self.record(envelope, now, rcpts, result)
        return notes

    def record(self, envelope: Envelope, now: float, rcpts: list[str],
               result: Result) -> list[dict]:
        """Put one domain's replies into the envelope; the events to emit once it is saved."""
        by_address = {r.address: r for r in envelope.recipients}
        outcomes: dict[str, list[str]] = defaultdict(list)
        for address, reply in result.replies.items():
            rcpt = by_address[address]
            rcpt.state = "delivered" if reply.ok else "failed" if reply.permanent else "deferred"
            rcpt.status, rcpt.reply, rcpt.host = reply.status, str(reply), result.host
            outcomes[rcpt.state].append(address)
        envelope.attempts.append(Attempt(now, result.host, summary(result.replies), result.tls,
                                         rcpts))
        return [{"event": state, "id": envelope.id, "to": addresses, "host": result.host,
                 "reply": summary({a: result.replies[a] for a in addresses}), "tls": result.tls}
                for state, addresses in outcomes.items()]

    # --- the outcome ---

    async def finish(self, envelope: Envelope, data: bytes, now: float,
                     notes: list[dict]) -> float | None:
        """Write back the outcome (retry later, done, or Badmail and an NDR), then tell:
        an event never runs ahead of what is on disk. Returns the next attempt's time while
        recipients are still pending."""
        delivery = self.config.delivery
        expires = envelope.clock_start + delivery.expiration
        if envelope.pending and now >= expires:
            for rcpt in envelope.pending:
                rcpt.state, rcpt.status = "failed", "4.4.7"
            notes.append({"event": "expired", "id": envelope.id,
                          "after": str(delivery.expiration)})
        if envelope.pending:
            interval = delivery.retry[min(rounds(envelope), len(delivery.retry)) - 1]
            notice_at = envelope.clock_start + delivery.delay_notification
            envelope.next_attempt = min(now + interval, expires)
            if not envelope.delay_notified and envelope.sender and notice_at > now:
                # one more try when the delay notice is due, so it is not late by a whole
                # retry interval (up to hours with the IIS defaults)
                envelope.next_attempt = min(envelope.next_attempt, notice_at)
            for note in notes:
                if note["event"] == "deferred":
                    note["next_attempt"] = round(envelope.next_attempt, 3)
            notify = (not envelope.delay_notified and bool(envelope.sender)
                      and now >= envelope.clock_start + delivery.delay_notification)
            envelope.delay_notified |= notify
            update: list[Op] = [self.store.envelope_write(QUEUE, envelope)]
            if notify:
                report = delivery_report(envelope, data, envelope.pending,
                                         hostname=self.config.fqdn, action="delayed",
                                         will_retry_until=expires)
                notice = await self.report(envelope, report, "delay", update)
                notes.append({"event": "delay-notice", "id": envelope.id, "notice": notice,
                              "to": [r.address for r in envelope.pending]})
            else:
                await asyncio.to_thread(self.store.commit, update)
            self.tell(notes)
            return envelope.next_attempt
        failed = [r for r in envelope.recipients if r.state == "failed"]
        if not failed:
            # out of Queue at once, on the loop, as the last reply arrives (two renames
            # into tmp/): a kill from then on cannot deliver it again
            self.store.retire_delivered(envelope.id)
            self.retired.add(envelope.id)
            self.tell(notes)
            return None
        reason = self.failure_reason(failed, expired=now >= expires)
        moves = failed_delivery_ops(self.store, envelope, data, reason)
        bounced = {"event": "bounced", "id": envelope.id, "reason": reason, "ndr": None,
                   "to": [r.address for r in failed]}
        if envelope.sender:
            report = delivery_report(envelope, data, failed, hostname=self.config.fqdn,
                                     action="failed")
            bounced["ndr"] = await self.report(envelope, report, "ndr", moves)
        else:
            await asyncio.to_thread(self.store.commit, moves)
            bounced["detail"] = "null sender: no report is sent"
        self.tell([*notes, bounced])
        return None

    def tell(self, notes: list[dict]) -> None:
        for note in notes:
            self.events.emit(note.pop("event"), **note)

    def failure_reason(self, failed: list[Recipient], expired: bool) -> str:
        first = failed[0]
        what = (f"delivery time expired ({self.config.delivery.expiration}); last reply"
                if expired else "delivery failed")
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return (f"{what} for <{first.address}>{others}: {first.reply or first.status}")

    async def report(self, envelope: Envelope, report: bytes, kind: str,
                     with_ops: list[Op]) -> str | None:
        """Send a report to the sender (and the NDR copy address), committed together with
        `with_ops`; returns its id, or None if intake refused it (the ops are still done)."""
        recipients = [envelope.sender]
        if kind == "ndr" and self.config.delivery.ndr_copy_to:
            recipients.append(self.config.delivery.ndr_copy_to)
        sub = Submission(report, "", recipients, f"{kind} for {envelope.id}",
                         done_ops=with_ops, kind=kind)
        try:
            outcome = await asyncio.to_thread(self.intake.accept, sub)
        except Rejected as exc:
            self.events.emit("report-error", id=envelope.id, kind=kind, reason=exc.reason)
            await asyncio.to_thread(self.store.commit, with_ops)
            return None
        return outcome.id


# --- RFC 3464 reports: the non-delivery and delay notices to a message's sender ---------------

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
