"""The operator API: everything the console and the CLI can see and do, in one place.

It works on the folders alone, so it serves the console with an embedded relay and a separate
process beside a running `mailroot serve` alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from relay.core import config_loader
from relay.core.address import domain_of
from relay.core.bounce import SEPARATOR, quarantine, read_reason
from relay.core.config import Config, ConfigError, RemoteDomain
from relay.core.events import EventLog
from relay.core.fanout import fan_out
from relay.core.logrotate import Rotation
from relay.core.message import Message, MessageError
from relay.core.pickup_file import parse_pickup, why_waiting
from relay.core.store import (
    BADMAIL,
    DROP,
    FOLDERS,
    HOLD,
    MOVE_FOLDERS,
    PICKUP,
    QUEUE,
    TRASH,
    WAITING,
    Attempt,
    Envelope,
    Link,
    Mailroot,
    Op,
    Recipient,
    Write,
    checksum,
    damage,
    id_time,
    is_id,
    json_fields,
)
from relay.ops.audit import AuditEntry, AuditLog
from relay.ops.config_keys import describe
from relay.ops.qshape import QueueShape, bucket
from relay.ops.reasons import reason_class

if TYPE_CHECKING:
    from types import ModuleType

    from relay.core.dkim import Signature
    from relay.core.intake import Intake
    from relay.ops.dkim_keys import RecordCheck
    from relay.ops.explain import Explanation
    from relay.ops.probe import Probe, Step
    from relay.ops.settings import Document


@dataclass
class MessageSummary:
    """One row of a folder listing: what `mailroot queue` and the console's tables show."""

    id: str
    folder: str
    received: float
    size: int
    sender: str
    recipients: list[Recipient]
    subject: str = ""
    attempts: int = 0
    next_attempt: float | None = None
    last_error: str = ""
    held: bool = False
    name: str = ""  # the file name (Pickup entries keep the producer's name)
    header_from: str = ""  # the From: and To: fields, for entries without an envelope
    header_to: str = ""  # (a Pickup file refused at intake names its application there)
    waiting: str = ""  # Pickup: why it is not taken yet (being written, settling), if known
    deleted_from: str = ""  # Trash: the folder it was deleted from

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.received)

    def to_dict(self) -> dict:
        return {"id": self.id, "folder": self.folder, "received": self.received,
                "size": self.size, "sender": self.sender,
                "recipients": [{"address": r.address, "state": r.state, "status": r.status,
                                "reply": r.reply} for r in self.recipients],
                "subject": self.subject, "attempts": self.attempts,
                "next_attempt": self.next_attempt, "last_error": self.last_error,
                "held": self.held, **({"deleted_from": self.deleted_from}
                                      if self.folder == TRASH else {})}


@dataclass
class MessageDetail:
    """Everything the inspector shows about one message."""

    summary: MessageSummary
    headers: list[tuple[str, str]]
    body_text: str
    attempts: list[Attempt] = field(default_factory=list)
    reason: str = ""  # Badmail: the .BAD reason line
    report: str = ""  # Badmail: the readable head of the .BAD file
    delay_notice_at: float | None = None
    expires_at: float | None = None
    signatures: list[Signature] = field(default_factory=list)  # its DKIM-Signature fields


class NotFound(LookupError):
    """No message with that id in a state for the action."""


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
Part = TypeVar("Part")  # what folder_parts renders each chunk of rows into


@dataclass
class FolderParts(Generic[Part]):
    parts: Iterator[Part]
    oldest_first: bool  # else in directory order


class DomainList(NamedTuple):
    default: str
    aliases: list[str]
    remote: dict[str, RemoteDomain]


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


def _read_small(path: str, dir_fd: int | None = None) -> bytes:
    """A whole file, in one read when under 64 KiB (an envelope nearly always is); `path`
    relative to `dir_fd` if given."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = [os.read(fd, 65536)]
        while len(chunks[-1]) == 65536:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _domain_matches(recipients: list[Recipient], domain: str | None) -> bool:
    wanted = (domain or "").lower().rstrip(".")
    return not wanted or any(domain_of(r.address).lower() == wanted for r in recipients)


def _settings() -> ModuleType:
    """relay.ops.settings, which edits the config file with ruamel.yaml: loaded by the commands
    that change settings, not by every listing."""
    from relay.ops import settings

    return settings


class Admin:
    """Operator actions on one mailroot."""

    def __init__(self, config: Config, wait: float = 2.0) -> None:
        self.config = config
        self.store = Mailroot(config.root)
        self.audit_log = AuditLog(self.store.log_dir, Rotation.of(config.log))
        self.events = EventLog(self.store.log_dir, stream=None,
                               rotation=Rotation.of(config.log))
        self.wait = wait  # how long an action waits for a message the relay is working on

    @functools.cached_property
    def intake(self) -> Intake:
        """What requeue passes messages through again; made on first use, so a command that
        only reads (a listing of a million) starts without the routing and DKIM modules."""
        from relay.core.intake import Intake

        return Intake(self.config, self.store, signing=False)

    # --- reading ---

    def counts(self) -> dict[str, int]:
        """Messages per folder, from names alone (cheap enough to call every second)."""
        counts = {}
        for folder in FOLDERS:
            if folder == PICKUP:
                try:
                    counts[folder] = sum(1 for n in os.listdir(self.store.folder(PICKUP))
                                         if not n.startswith("."))
                except FileNotFoundError:
                    counts[folder] = 0
            else:
                counts[folder] = len(self.store.ids(folder))
        return counts

    def envelope_fields(self, folder: str, message_id: str) -> dict:
        """A message's envelope as raw JSON fields: the cheapest read, for listing many."""
        return json_fields(_read_small(f"{self.store.root}/{folder}/{message_id}.env"))

    def summary_of(self, folder: str, message_id: str) -> MessageSummary:
        """One message's row; reads the small envelope or the head of the file, not bodies."""
        if folder in (QUEUE, HOLD, TRASH) or (folder == BADMAIL and self.store.path(
                BADMAIL, message_id, ".env").exists()):
            # The hot path of listing 100,000 messages: the raw JSON, no Path, no Envelope.
            env = self.envelope_fields(folder, message_id)
            attempts = env.get("attempts") or []
            return MessageSummary(
                id=message_id, folder=folder, received=env["received"], size=env.get("size", 0),
                sender=env["sender"], recipients=[Recipient(**r) for r in env["recipients"]],
                subject=env.get("subject", ""), attempts=len(attempts),
                next_attempt=env.get("next_attempt") if folder == QUEUE else None,
                last_error=read_reason(self.store.path(BADMAIL, message_id, ".BAD"))
                if folder == BADMAIL else env.get("reason") or (
                    attempts[-1]["reply"] if attempts else ""),
                held=folder == HOLD, deleted_from=env.get("deleted_from", ""))
        if folder == BADMAIL:  # refused at intake: the original file, its header fields
            path = self.store.path(BADMAIL, message_id, ".BAD")
            if not path.exists():  # no marker: not (or no longer) in Badmail
                raise FileNotFoundError(path)
            original = self.store.path(BADMAIL, message_id, ".eml")
            try:
                row = self._file_summary(folder, message_id, original)
            except FileNotFoundError:  # set aside unopened: no message file
                row = MessageSummary(id=message_id, folder=folder, received=0, sender="",
                                     size=0, recipients=[])
            row.received, row.last_error = id_time(message_id), read_reason(path)
            row.recipients = [Recipient(r.address, state="failed") for r in row.recipients]
            return row
        if folder == DROP:
            return self._file_summary(folder, message_id,
                                      self.store.path(DROP, message_id, ".eml"))
        raise NotFound(f"{folder} has no envelopes")

    def _file_summary(self, folder: str, message_id: str, path: os.PathLike) -> MessageSummary:
        """A row from a message file's head: X-Sender/X-Receiver lines (Drop, Pickup), and
        the From:, To: and Subject: fields (LF or CRLF line ends, as producers write them)."""
        with open(path, "rb") as handle:
            head = handle.read(8192).replace(b"\r\n", b"\n")
        sender, rcpts, fields = "", [], {"subject": "", "from": "", "to": ""}
        for line in head.split(b"\n\n", 1)[0].splitlines():
            name, _, value = line.decode("utf-8", "replace").partition(":")
            key = name.strip().lower()
            if key == "x-sender":  # "<>" is the null sender, shown as <> like any other
                sender = value.strip().removeprefix("<").removesuffix(">")
            elif key == "x-receiver":
                rcpts.append(Recipient(value.strip().strip("<>"), state="delivered"))
            elif key in fields and not fields[key]:
                fields[key] = value.strip()
        st = os.stat(path)
        return MessageSummary(id=message_id, folder=folder, received=st.st_mtime,
                              size=st.st_size, sender=sender, recipients=rcpts,
                              subject=fields["subject"], name=os.path.basename(path),
                              header_from=fields["from"], header_to=fields["to"])

    def list_folder(self, folder: str = QUEUE) -> list[MessageSummary]:
        """A folder's messages, oldest first."""
        return list(self.iter_folder(folder))

    def iter_folder(self, folder: str = QUEUE, ordered: bool = True) -> Iterator[MessageSummary]:
        """A folder's messages, each as soon as it is read: oldest first (after one listing
        of the names), or in directory order (from the first entry on).  An id an
        interrupted move left in two folders is shown only where its later state is."""
        for rows in self.folder_parts(folder, list, math.inf if ordered else 0).parts:
            yield from rows

    def folder_parts(self, folder: str, render: Callable[[list[MessageSummary]], Part],
                     sort_up_to: float = math.inf, workers: int = 1) -> FolderParts[Part]:
        """iter_folder's rows a chunk at a time, each chunk `render`ed: oldest first if the
        folder holds at most `sort_up_to` (see Mailroot.listing); with `workers` > 1 the
        chunks are read and rendered by that many forked processes (relay.core.fanout), for a
        command listing a million. Never from a process running threads."""
        if folder == PICKUP:
            return FolderParts(iter([render(self._pickup_rows())]), oldest_first=True)
        listing = self.store.listing(folder, sort_up_to)
        current = self._current_in(folder)
        return FolderParts(fan_out(lambda chunk: render(list(self._rows(folder, current(chunk)))),
                                   listing.ids, workers), listing.oldest_first)

    def _current_in(self, folder: str) -> Callable[[Iterable[str]], Iterator[str]]:
        """A filter of ids for those whose current state is in `folder`: an id an interrupted
        move left in two folders counts only where its later state is."""
        elsewhere = self._committed_elsewhere(folder)
        return lambda ids: (mid for mid in ids
                            if not (elsewhere(mid) and self._superseded(folder, mid)))

    def _rows(self, folder: str, ids: Iterable[str]) -> Iterator[MessageSummary]:
        for mid in ids:
            try:
                yield self.summary_of(folder, mid)
            except (OSError, ValueError):
                continue  # moved on while we looked

    def _committed_elsewhere(self, folder: str) -> Callable[[str], bool]:
        """A quick test for "this id may be committed in another folder too": the names of
        Hold, Badmail and Trash (usually few) are listed once, the Queue is asked per id."""
        if folder not in MOVE_FOLDERS:
            return lambda mid: False
        others = set().union(*(self.store.ids(f) for f in (HOLD, BADMAIL, TRASH)
                               if f != folder))
        if folder == QUEUE:
            return others.__contains__
        queue = f"{self.store.root}/{QUEUE}/"
        return lambda mid: mid in others or os.path.exists(f"{queue}{mid}.env")

    def _superseded(self, folder: str, message_id: str) -> bool:
        later = self.store.later_copy(message_id)
        return later is not None and later != folder

    def _pickup_rows(self) -> list[MessageSummary]:
        rows = []
        pickup = self.store.folder(PICKUP)
        for name in sorted(os.listdir(pickup)):
            path = pickup / name
            if name.startswith(".") or not path.is_file() or path.is_symlink():
                continue
            try:
                row = self._file_summary(PICKUP, name, path)
                row.waiting = why_waiting(path, self.config.pickup.settle)
            except OSError:
                continue
            rows.append(row)
        return sorted(rows, key=lambda r: r.received)

    def find(self, message_id: str) -> str:
        """The folder a message is in (its later state, if a move was interrupted)."""
        folder = self.store.later_copy(message_id) or self.store.locate(message_id)
        if folder is None:
            raise NotFound(f"no message {message_id}")
        return folder

    def raw(self, message_id: str) -> bytes:
        """The message exactly as stored."""
        folder = self.find(message_id)
        return self.store.read_message(folder, message_id)

    def show(self, message_id: str) -> MessageDetail:
        folder = self.find(message_id)
        summary = self.summary_of(folder, message_id)
        data = self.store.read_message(folder, message_id) if self.store.path(
            folder, message_id, ".eml").exists() else b""
        import email.parser
        import email.policy

        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
        headers = [(k, str(v)) for k, v in parsed.items()]
        try:
            part = parsed.get_body(preferencelist=("plain", "html"))
            body = part.get_content() if part is not None else ""
        except (KeyError, LookupError, ValueError):
            body = data.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")
        from relay.core.dkim import signatures_in  # dkimpy: loaded for the commands that show DKIM
        detail = MessageDetail(summary=summary, headers=headers, body_text=body,
                               signatures=signatures_in(
                                   [v for k, v in headers if k.lower() == "dkim-signature"]))
        if folder in (QUEUE, HOLD, BADMAIL) and self.store.path(folder, message_id,
                                                                ".env").exists():
            env: Envelope = self.store.read_envelope(folder, message_id)
            detail.attempts = env.attempts
            if folder == QUEUE:
                delivery = self.config.delivery
                detail.delay_notice_at = None if env.delay_notified else (
                    env.clock_start + delivery.delay_notification)
                detail.expires_at = env.clock_start + delivery.expiration
        if folder == BADMAIL:
            bad = self.store.path(BADMAIL, message_id, ".BAD").read_bytes()
            detail.report = bad.split(SEPARATOR, 1)[0].decode("utf-8", "replace")
            detail.reason = summary.last_error
        return detail

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

    # --- requeue: back to delivery, routed by the current config ---

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
               if _domain_matches(row.recipients, domain)] if domain else self.store.ids(folder)
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

    # --- retry, hold, release ---

    def retry(self, ids: list[str]) -> ActionResult:
        """Due now: the relay, watching Queue's envelopes, tries within a second."""
        return self._act("retry", ids, self._retry_one)

    def retry_all(self, domain: str | None = None) -> ActionResult:
        ids = [row.id for row in self.list_folder(QUEUE)
               if _domain_matches([r for r in row.recipients
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

    # --- queue shape ---

    def summary(self, folder: str = QUEUE, workers: int = 1) -> QueueShape:
        """Messages per destination domain by age, and Badmail by reason class; the
        envelopes are streamed in directory order (a million take constant memory), read
        by `workers` forked processes when more than one (see folder_parts)."""
        now = time.time()
        shape = QueueShape()
        current = self._current_in(folder)
        for part in fan_out(lambda chunk: self._shape_of(folder, current(chunk), now),
                            self.store.iter_ids(folder), workers):
            shape.add(part)
        for mid in self.store.ids(BADMAIL):
            try:
                envelope = self.store.read_envelope(BADMAIL, mid) if self.store.path(
                    BADMAIL, mid, ".env").exists() else None
            except (OSError, ValueError):
                envelope = None
            reason = read_reason(self.store.path(BADMAIL, mid, ".BAD"))
            received = envelope.received if envelope else id_time(mid)
            shape.add_badmail(reason_class(reason), now - received)
        shape.sort()
        return shape

    def _shape_of(self, folder: str, ids: Iterable[str], now: float) -> QueueShape:
        """The queue shape of some messages, from their raw envelope fields; their bytes on
        disk are the envelope's length and the message size it records (no stat). The
        loop is a million turns long: counts go to a plain dict, rows are made at the end."""
        shape = QueueShape()
        tally: dict[tuple[str, int], int] = {}
        try:  # names opened relative to the folder: no walk of the whole path each time
            where = os.open(self.store.folder(folder), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return shape
        try:
            for mid in ids:
                try:
                    raw = _read_small(f"{mid}.env", where)
                    env = json_fields(raw)
                except (OSError, ValueError):
                    continue  # moved on while we looked
                received = env["received"]
                shape.add_message(len(raw) + env.get("size", 0), received)
                column = bucket(now - received)
                for domain in {domain_of(r["address"]).lower() or "(local)" for r in
                               env["recipients"] if r.get("state", "pending") in WAITING}:
                    key = (domain, column)
                    tally[key] = tally.get(key, 0) + 1
        finally:
            os.close(where)
        shape.add_domains(tally)
        return shape

    # --- settings and domains ---

    def _current(self) -> Config:
        """The config as its file says now (another process may have changed it)."""
        return config_loader.load(self.config.source) if self.config.source else self.config

    def _edit(self, action: str, change: Callable[[Document, Config], None],
              **detail: object) -> Config:
        if not self.config.source:
            raise ConfigError("no config file to change: give one with -c FILE")
        config = _settings().ConfigFile(self.config.source).edit(change)
        self.config = config
        self.intake.reconfigure(config)
        entry = self.audit_log.append(action, [], **detail)
        self.events.emit("admin", action=action, user=entry.user, **entry.detail)
        return config

    def settings_get(self, key: str) -> str:
        """A setting's effective value, as `mailroot check` shows it."""
        for path, value, _ in describe(self._current()):
            if path == key:
                return value
        raise ConfigError("unknown setting (see mailroot check for the keys)", key=key)

    def settings_set(self, key: str, value_text: str) -> Config:
        return self.set_many({key: value_text})

    def set_many(self, changes: dict[str, str]) -> Config:
        """Several settings in one validated write; a bad value raises ConfigError naming
        its key and leaves the file untouched."""
        return self._edit("settings-set", _settings().set_values(changes), changes=changes)

    def domains(self) -> DomainList:
        config = self._current()
        return DomainList(config.default_domain, list(config.domains.local.aliases),
                          dict(config.domains.remote))

    def add_alias(self, domain: str) -> Config:
        """Another local domain: its mail goes to Drop."""
        return self._edit("domains-add-local", _settings().add_alias(domain), domain=domain)

    add_local = add_alias

    def set_default(self, domain: str) -> Config:
        """The new default local domain; the old default becomes an alias, as IIS does."""
        return self._edit("domains-set-default", _settings().set_default(domain), domain=domain)

    def remove_domain(self, domain: str) -> Config:
        return self._edit("domains-remove", _settings().remove_domain(domain), domain=domain)

    def rename_domain(self, old: str, new: str) -> Config:
        return self._edit("domains-rename", _settings().rename_domain(old, new), old=old, new=new)

    def set_remote(self, domain: str, tls: str | None = None,
                   smarthost: str | None = None) -> Config:
        """A remote domain's TLS policy and smart host (None: unchanged, "": no smart host)."""
        return self._edit("domains-set-remote", _settings().set_remote(domain, tls, smarthost),
                          domain=domain, tls=tls, smarthost=smarthost)

    # --- the audit log ---

    def add_dkim_key(self, domain: str, selector: str, key_file: str, algorithm: str) -> Config:
        """Sign `domain`'s mail with one more key (its file already written)."""
        from relay.ops import dkim_keys
        return self._edit("dkim-add-key", dkim_keys.add_key(domain, selector, key_file, algorithm),
                          domain=domain, selector=selector, key_file=key_file)

    def dkim_records(self, domain: str | None = None) -> list[RecordCheck]:
        """Whether each DKIM key's record is published in DNS and matches the key."""
        from relay.ops import dkim_keys
        return dkim_keys.check(self._current(), domain)

    def audit(self) -> list[AuditEntry]:
        return self.audit_log.entries()

    # --- where mail goes (`mailroot route` / `probe`, for the console) ---

    async def route(self, address: str) -> tuple[Explanation, list[str]]:
        """What the relay would do with mail to `address`, and the same as lines of text;
        raises explain.BadAddress."""
        from relay.ops import explain

        result = await explain.explain(self.config, address)
        return result, explain.render(result)

    def prober(self, on_step: Callable[[Step], None]) -> Probe:
        """A probe of an address's first hop (`check`) or a test message (`send`)."""
        from relay.ops.probe import Probe  # loads cryptography: only when probing

        return Probe(self.config, on_step)


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
