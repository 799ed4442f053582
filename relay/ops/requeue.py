"""Requeue: a message back to delivery, routed by the current config (Badmail, Drop and
Queue; a Badmail entry refused at intake goes through intake again). A mixin of Admin
(relay.ops.admin), beside the other actions (relay.ops.actions) whose claim it runs under.
"""

from __future__ import annotations

import time

from relay.core.message import Message, MessageError
from relay.core.pickup_file import parse_pickup
from relay.core.store import (
    BADMAIL,
    DROP,
    QUEUE,
    WAITING,
    Envelope,
    Op,
    Recipient,
    checksum,
    damage,
    id_time,
)
from relay.ops.actions import ActionResult, Problem, domain_matches, split_drop


class Requeues:
    """Requeue: back to delivery, routed by the current config."""

    def requeue(self, ids: list[str], reason: str = "", force: bool = False) -> ActionResult:
        """Badmail -> Queue under the same id with its envelope (failed recipients due again,
        the delivery clock restarted, earlier attempts kept); Drop and Queue -> routed again by
        the current domains (like postsuper -r); a Badmail entry refused at intake goes
        through intake again under its id.  One that intake would refuse again at once (size,
        hop count) is refused with the reason unless `force`; one that names no recipient or
        cannot be read as a message is always refused."""
        return self._act("requeue", ids, lambda folder, mid: self._requeue_one(folder, mid, force),
                         reason=reason)

    def requeue_all(self, folder: str = BADMAIL, domain: str | None = None,
                    reason: str = "", force: bool = False) -> ActionResult:
        ids = [row.id for row in self.list_folder(folder)
               if domain_matches(row.recipients, domain)] if domain else self.store.ids(folder)
        return self.requeue(ids, reason, force)

    def _requeue_one(self, folder: str, mid: str, force: bool = False) -> None:
        self._expect(folder, BADMAIL, DROP, QUEUE)
        now = time.time()
        if folder == DROP:
            sender, receivers, data = split_drop(self.store.read_message(DROP, mid))
            envelope = self._new_envelope(mid, sender, receivers, data, now)
        elif self.store.path(folder, mid, ".env").exists():
            envelope = self.store.read_envelope(folder, mid)
            data = self.store.read_message(folder, mid)
            if problem := damage(envelope, data):  # it would only fail again, with an NDR
                raise Problem(f"refused, it stays in {folder}: {problem}")
            envelope.next_attempt = now
            if folder == BADMAIL:
                _restart(envelope, now)
        else:  # refused at intake: the original file goes through intake again
            self._reintake(mid, force)
            return
        if not envelope.pending:
            raise Problem("wrong state: no recipient is left to deliver to")
        self._route(folder, envelope, data)

    def _reintake(self, mid: str, force: bool) -> None:
        """A Pickup file refused at intake, through intake again under its id: Badmail keeps
        it (and says why) if intake would refuse it again."""
        raw = self.store.read_message(BADMAIL, mid)
        try:
            parsed = parse_pickup(raw)
        except MessageError as exc:
            raise Problem(f"refused, it stays in Badmail: {exc}") from None
        from relay.core.intake import Rejected, Submission

        sub = Submission(parsed.message, parsed.sender, parsed.recipients,
                         f"requeue of {BADMAIL}/{mid}", done_ops=self.store.remove_ops(BADMAIL, mid),
                         message_id=mid)
        try:
            self.intake.accept(sub, limits=not force)
        except Rejected as exc:
            hint = "" if force else " (--force requeues it over the size and hop limits)"
            raise Problem(f"refused, it stays in Badmail: {exc.reason}{hint}") from None

    def _new_envelope(self, mid: str, sender: str, receivers: list[str], data: bytes,
                      now: float) -> Envelope:
        try:
            message = Message.parse(data)
        except MessageError as exc:
            raise Problem(f"wrong state: the stored message cannot be parsed ({exc})") from None
        return Envelope(id=mid, sender=sender, recipients=[Recipient(r) for r in receivers],
                        received=id_time(mid), origin=f"{DROP}/{mid}.eml", size=len(data),
                        crc32=checksum(data), subject=message.get("subject")[:200],
                        header_from=message.get("from")[:200], next_attempt=now,
                        queued_at=now)

    def _route(self, src: str, envelope: Envelope, data: bytes) -> None:
        """Commit the message to Drop for its pending local recipients and to Queue for the
        rest, then take it out of `src` (unless it stays there)."""
        mid = envelope.id
        local, remote = self.intake.router.split([r.address for r in envelope.pending])
        if src == DROP and not remote:
            raise Problem("not requeued: its recipients are still local; it stays in Drop")
        moved = set(local)
        envelope.recipients = [r for r in envelope.recipients
                               if not (r.address in moved and r.state in WAITING)]
        ops: list[Op] = []
        if remote:
            if src == DROP:
                ops += self.store.enqueue_ops(QUEUE, envelope, data)
            elif src == BADMAIL:
                ops += self.store.move_ops(BADMAIL, QUEUE, envelope)
            else:
                ops.append(self.store.envelope_write(QUEUE, envelope))
        if local:
            ops += self.intake.drop_ops(mid, envelope.sender, local, data)
        elif src == DROP:
            ops += self.store.remove_ops(DROP, mid)
        if not remote and src != DROP:
            ops += self.store.remove_ops(src, mid)
        self.store.commit(ops)


def _restart(envelope: Envelope, now: float) -> None:
    """A requeued Badmail message: failed recipients due again, clocks restarted (the attempts
    stay: the new ones follow them)."""
    for rcpt in envelope.recipients:
        if rcpt.state in ("failed", "deferred"):
            rcpt.state, rcpt.status, rcpt.reply, rcpt.host = "pending", None, None, None
    envelope.reason = ""
    envelope.delay_notified = False
    envelope.queued_at = now
    envelope.held_at = None
    envelope.held_total = 0.0
