"""The operator's actions on messages: retry, hold, release, delete, undelete, the purge of
Trash, and the claim every action runs under (relay.ops.requeue adds requeue). A mixin of
Admin (relay.ops.admin), which gives it the store, the config, the audit and event logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from relay.core.address import domain_of
from relay.core.bounce import quarantine, read_reason
from relay.core.store import (
    BADMAIL,
    DROP,
    HOLD,
    QUEUE,
    TRASH,
    WAITING,
    Envelope,
    Link,
    Op,
    Recipient,
    Write,
    id_time,
    is_id,
)


class Problem(Exception):
    """Why one message was not acted on: not found, busy, or not in a state for the action."""


@dataclass
class ActionResult:
    """What an action did: the ids done, and for each other id the reason, named."""

    done: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


Progress = Callable[[int], bool]  # told how many are done; False stops the run


def split_drop(data: bytes) -> tuple[str, list[str], bytes]:
    """A Drop file's X-Sender/X-Receiver lines on top, and the message below them."""
    sender, receivers, pos = "", [], 0
    while True:
        end = data.find(b"\r\n", pos)
        name, _, value = data[pos:end].partition(b":")
        if end < 0 or name.lower() not in (b"x-sender", b"x-receiver"):
            break
        text = value.decode("utf-8", "replace").strip()
        if name.lower() == b"x-sender":
            sender = "" if text == "<>" else text
        else:
            receivers.append(text)
        pos = end + 2
    return sender, receivers, data[pos:]


def domain_matches(recipients: list[Recipient], domain: str | None) -> bool:
    """Whether a recipient is in `domain` (any recipient when no domain is given)."""
    wanted = (domain or "").lower().rstrip(".")
    return not wanted or any(domain_of(r.address).lower() == wanted for r in recipients)


class Actions:
    """Acting on messages, each under its claim, and auditing what was done."""

    # --- acting on messages ---
    #
    # Every action takes the message's claim (a flock on its .eml, which follows it from folder
    # to folder), so the relay never delivers a message while an operator moves it, and the
    # relay, which re-reads the envelope after claiming, sees the operator's change.

    @contextlib.contextmanager
    def _claimed(self, message_id: str) -> Iterator[str]:
        """Hold the message's claim; yields the folder it is in, or raises Problem."""
        if not is_id(message_id):
            raise Problem("not found (not a message id)")
        for _ in range(3):  # it may move on while we wait for it
            folder = self.store.locate(message_id)
            if folder is None:
                raise Problem("not found")
            if not self.store.path(folder, message_id, ".eml").exists():
                if folder == BADMAIL and self.store.has(BADMAIL, message_id):
                    raise Problem("wrong state: a Pickup entry set aside unopened, not a message")
                if folder in (QUEUE, HOLD) and (reason := quarantine(self.store, folder,
                                                                     message_id)):
                    self.events.emit("quarantined", id=message_id, folder=folder, reason=reason)
                    raise Problem(f"damaged: {reason}; moved to Badmail with this reason")
                continue
            with self.store.claim(folder, message_id, wait=self.wait) as held:
                if held and self._settled_elsewhere(folder, message_id):
                    continue  # an interrupted move left a stale copy here: look again
                if held:
                    yield folder
                    return
            if self.store.has(folder, message_id):
                raise Problem("busy: the relay is working on it; try again")
        raise Problem("busy: it kept moving between folders; try again")

    def _settled_elsewhere(self, folder: str, message_id: str) -> bool:
        """Resolve an interrupted move of a claimed message; True if `folder` lost."""
        stale = self.store.settle(message_id)
        for lost in stale:
            self.events.emit("recovered", id=message_id, folder=lost,
                             action="removed the source of an interrupted move")
        return folder in stale

    def _act(self, action: str, ids: Iterable[str], step: Callable[[str, str], None],
             progress: Progress | None = None, **detail: object) -> ActionResult:
        """Run step(folder, id) on each message under its claim; audit what was done.
        `progress(count)` is told after each message; when it answers False the run stops
        there (what is done stays done, and is audited)."""
        self.store.ensure()
        result = ActionResult()
        for count, mid in enumerate(dict.fromkeys(ids)):
            if progress is not None and not progress(count):
                break
            try:
                with self._claimed(mid) as folder:
                    step(folder, mid)
                result.done.append(mid)
            except Problem as exc:
                result.problems[mid] = str(exc)
            except (OSError, ValueError) as exc:
                result.problems[mid] = f"failed: {getattr(exc, 'strerror', None) or exc}"
        if result.done:
            entry = self.audit_log.append(action, result.done, **detail)
            self.events.emit("admin", action=action, ids=result.done, user=entry.user,
                             **entry.detail)
        return result

    def bulk(self, action: str, ids: list[str], progress: Progress | None = None,
             **detail: object) -> ActionResult:
        """Any one action on many messages, reporting progress and stoppable between two
        messages (see _act): requeue, retry, hold, release, delete or undelete."""
        steps = {"requeue": self._requeue_one, "retry": self._retry_one,
                 "hold": self._hold_one, "release": self._release_one,
                 "delete": self._delete_one, "undelete": self._undelete_one}
        result = self._act(action, ids, steps[action], progress, **detail)
        if action == "delete":
            self.purge_trash()
        return result

    @staticmethod
    def _expect(folder: str, *wanted: str) -> None:
        if folder in wanted:
            return
        hint = {HOLD: "held (release it first)", TRASH: "deleted (undelete it first)"}
        raise Problem("wrong state: " + hint.get(folder, f"in {folder}, not in "
                                                         f"{' or '.join(wanted)}"))

    # --- retry, hold, release ---

    def retry(self, ids: list[str]) -> ActionResult:
        """Due now: the relay, watching Queue's envelopes, tries within a second."""
        return self._act("retry", ids, self._retry_one)

    def retry_all(self, domain: str | None = None) -> ActionResult:
        ids = [row.id for row in self.list_folder(QUEUE)
               if domain_matches([r for r in row.recipients
                                  if r.state in WAITING], domain)]
        return self.retry(ids)

    def _retry_one(self, folder: str, mid: str) -> None:
        self._expect(folder, QUEUE)
        envelope = self.store.read_envelope(QUEUE, mid)
        envelope.next_attempt = time.time()
        self.store.update_envelope(QUEUE, envelope)

    def hold(self, ids: list[str]) -> ActionResult:
        """Queue -> Hold: never attempted, and the expiry clock stops, until released."""
        return self._act("hold", ids, self._hold_one)

    def _hold_one(self, folder: str, mid: str) -> None:
        if folder == HOLD:
            raise Problem("wrong state: already held")
        self._expect(folder, QUEUE)
        envelope = self.store.read_envelope(QUEUE, mid)
        envelope.held_at = time.time()
        self.store.commit(self.store.move_ops(QUEUE, HOLD, envelope))

    def release(self, ids: list[str]) -> ActionResult:
        """Hold -> Queue, due now; the time held is added to held_total."""
        return self._act("release", ids, self._release_one)

    def _release_one(self, folder: str, mid: str) -> None:
        if folder == QUEUE:
            raise Problem("wrong state: not held")
        self._expect(folder, HOLD)
        envelope = self.store.read_envelope(HOLD, mid)
        now = time.time()
        if envelope.held_at is not None:
            envelope.held_total += max(0.0, now - envelope.held_at)
        envelope.held_at = None
        envelope.next_attempt = now
        self.store.commit(self.store.move_ops(HOLD, QUEUE, envelope))

    # --- delete, undelete, the trash ---

    def delete(self, ids: list[str]) -> ActionResult:
        """To Trash, kept for admin.trash_retention; older trash is purged on each call."""
        result = self._act("delete", ids, self._delete_one)
        self.purge_trash()
        return result

    def _delete_one(self, folder: str, mid: str) -> None:
        if folder == TRASH:
            raise Problem("wrong state: already deleted")
        self._expect(folder, QUEUE, HOLD, BADMAIL, DROP)
        store = self.store
        has_envelope = store.path(folder, mid, ".env").exists()
        if has_envelope:
            envelope = store.read_envelope(folder, mid)
        elif folder == DROP:
            sender, receivers, _ = split_drop(store.read_message(DROP, mid))
            envelope = Envelope(mid, sender, [Recipient(r, "delivered") for r in receivers],
                                received=id_time(mid))
        else:
            envelope = Envelope(mid, "", [], received=id_time(mid),
                                reason=read_reason(store.path(BADMAIL, mid, ".BAD")))
        if not has_envelope:  # the size its folder listed: the file's (a .BAD report's not)
            envelope.size = store.path(folder, mid, ".eml").stat().st_size
        envelope.moves += 1
        record = {**dataclasses.asdict(envelope), "deleted_from": folder,
                  "deleted_at": time.time(), "has_envelope": has_envelope}
        ops: list[Op] = [Link(store.path(folder, mid, ".eml"), store.path(TRASH, mid, ".eml"))]
        if folder == BADMAIL:
            ops.append(Link(store.path(BADMAIL, mid, ".BAD"), store.path(TRASH, mid, ".BAD")))
        ops.append(Write(store.path(TRASH, mid, ".env"), json.dumps(record).encode()))
        store.commit(ops + self.store.remove_ops(folder, mid))

    def undelete(self, ids: list[str]) -> ActionResult:
        """Back to the folder it was deleted from (Queue: due now)."""
        return self._act("undelete", ids, self._undelete_one)

    def _undelete_one(self, folder: str, mid: str) -> None:
        self._expect(folder, TRASH)
        store = self.store
        record = json.loads(store.path(TRASH, mid, ".env").read_bytes())
        dest = record.get("deleted_from", QUEUE)
        envelope = Envelope.from_json(store.path(TRASH, mid, ".env").read_bytes())
        envelope.moves += 1
        if dest == QUEUE:
            envelope.next_attempt = time.time()
        ops: list[Op] = [Link(store.path(TRASH, mid, ".eml"), store.path(dest, mid, ".eml"))]
        if record.get("has_envelope"):
            ops.append(store.envelope_write(dest, envelope))
        if dest == BADMAIL:
            ops.append(Link(store.path(TRASH, mid, ".BAD"), store.path(BADMAIL, mid, ".BAD")))
        store.commit(ops + self.store.remove_ops(TRASH, mid))

    def purge_trash(self) -> list[str]:
        """Remove trash older than admin.trash_retention; returns the ids removed."""
        # the queue manager's own purge, loaded here: the commands that only read load
        # no event loop
        from relay.queue.recovery import purge_expired

        return purge_expired(self.store, self.config.admin.trash_retention, self.events)
