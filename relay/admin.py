"""The operator API: everything the console and the CLI can see and do, in one place.

It works on the folders alone, so it serves the console with an embedded relay and a separate
process beside a running `mailroot serve` alike.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import time
from dataclasses import dataclass, field

from relay.bounce import SEPARATOR, read_reason
from relay.config import Config
from relay.store import (
    BADMAIL,
    DROP,
    FOLDERS,
    HOLD,
    PICKUP,
    QUEUE,
    Attempt,
    Envelope,
    Mailroot,
    Recipient,
    id_time,
)


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
                "held": self.held}


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


class NotFound(LookupError):
    """No message with that id in a state for the action."""


class Admin:
    """Operator actions on one mailroot."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Mailroot(config.root)

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

    def summary_of(self, folder: str, message_id: str) -> MessageSummary:
        """One message's row; reads the small envelope or the head of the file, not bodies."""
        if folder in (QUEUE, HOLD) or (folder == BADMAIL and self.store.path(
                BADMAIL, message_id, ".env").exists()):
            env = self.store.read_envelope(folder, message_id)
            last = env.attempts[-1].reply if env.attempts else ""
            return MessageSummary(
                id=message_id, folder=folder, received=env.received, size=env.size,
                sender=env.sender, recipients=env.recipients, subject=env.subject,
                attempts=len(env.attempts),
                next_attempt=env.next_attempt if folder == QUEUE else None,
                last_error=read_reason(self.store.path(BADMAIL, message_id, ".BAD"))
                if folder == BADMAIL else last,
                held=folder == HOLD)
        if folder == BADMAIL:
            path = self.store.path(BADMAIL, message_id, ".BAD")
            return MessageSummary(id=message_id, folder=folder, received=id_time(message_id),
                                  size=path.stat().st_size, sender="", recipients=[],
                                  last_error=read_reason(path))
        if folder == DROP:
            return self._file_summary(folder, message_id,
                                      self.store.path(DROP, message_id, ".eml"))
        raise NotFound(f"{folder} has no envelopes")

    def _file_summary(self, folder: str, message_id: str, path: os.PathLike) -> MessageSummary:
        with open(path, "rb") as handle:
            head = handle.read(8192)
        sender, rcpts, subject = "", [], ""
        for line in head.split(b"\r\n\r\n", 1)[0].splitlines():
            name, _, value = line.decode("utf-8", "replace").partition(":")
            key = name.strip().lower()
            if key == "x-sender":
                sender = value.strip()
            elif key == "x-receiver":
                rcpts.append(Recipient(value.strip(), state="delivered"))
            elif key == "subject" and not subject:
                subject = value.strip()
        st = os.stat(path)
        return MessageSummary(id=message_id, folder=folder, received=st.st_mtime,
                              size=st.st_size, sender=sender, recipients=rcpts, subject=subject,
                              name=os.path.basename(path))

    def list_folder(self, folder: str = QUEUE) -> list[MessageSummary]:
        """A folder's messages, oldest first."""
        if folder == PICKUP:
            rows = []
            pickup = self.store.folder(PICKUP)
            for name in sorted(os.listdir(pickup)):
                path = pickup / name
                if name.startswith(".") or not path.is_file() or path.is_symlink():
                    continue
                try:
                    rows.append(self._file_summary(PICKUP, name, path))
                except OSError:
                    continue
            return sorted(rows, key=lambda r: r.received)
        rows = []
        for mid in self.store.ids(folder):
            try:
                rows.append(self.summary_of(folder, mid))
            except (OSError, ValueError):
                continue  # moved on while we looked
        return rows

    def find(self, message_id: str) -> str:
        folder = self.store.locate(message_id)
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
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data)
        headers = [(k, str(v)) for k, v in parsed.items()]
        try:
            part = parsed.get_body(preferencelist=("plain", "html"))
            body = part.get_content() if part is not None else ""
        except (KeyError, LookupError, ValueError):
            body = data.split(b"\r\n\r\n", 1)[-1].decode("utf-8", "replace")
        detail = MessageDetail(summary=summary, headers=headers, body_text=body)
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
