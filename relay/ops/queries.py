"""The reading side of the operator API: folder listings and counts, one message's row,
detail and raw bytes, envelope fields, the queue shape. It only reads the folders, so
`mailroot route` (relay.ops.explain) uses it alone, and Admin (relay.ops.admin) is made of it
and the modules that act and edit.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from relay.core.address import domain_of
from relay.core.bounce import SEPARATOR, read_reason
from relay.core.config import Config
from relay.core.fanout import fan_out
from relay.core.pickup_file import why_waiting
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
    Mailroot,
    Recipient,
    id_time,
    json_fields,
)
from relay.ops.qshape import QueueShape, bucket
from relay.ops.reasons import reason_class

if TYPE_CHECKING:
    from relay.core.dkim import Signature


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


Part = TypeVar("Part")  # what folder_parts renders each chunk of rows into


@dataclass
class FolderParts(Generic[Part]):
    parts: Iterator[Part]
    oldest_first: bool  # else in directory order


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


class Queries:
    """What the operator can see of one mailroot, from its folders alone."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Mailroot(config.root)

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
