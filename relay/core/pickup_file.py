"""A Pickup file as a file: what its envelope is (IIS's rules), how a careful producer writes
one, and whether its writer is done with it. No watching here, so the commands that list or
write Pickup load none of the relay's event loop, intake or DKIM modules.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from relay.core.message import Message, MessageError, binary_junk, normalize_line_ends, unstuff
from relay.core.store import PICKUP, Mailroot, new_id

ENVELOPE_LINE = re.compile(rb"^X-(Sender|Receiver):[ \t]*(.*)$", re.I)


@dataclass
class Parsed:
    sender: str
    recipients: list[str]
    message: bytes


def parse_pickup(raw: bytes) -> Parsed:
    """Read a Pickup file as IIS does; raise MessageError with the reason.

    Leading `X-Sender:`/`X-Receiver:` lines are the envelope.  Without them the envelope
    comes from Sender/From and To/Cc/Bcc.  Bcc is never kept.  A final line holding only "."
    ends the message; files in that SMTP form, and IIS/.NET files with envelope lines, are
    dot-stuffed and get unstuffed.
    """
    if not raw.strip():
        raise MessageError("the file is empty")
    if b"\x00" in raw:
        raise MessageError("the file contains NUL bytes: binary data, not a text message")
    data = normalize_line_ends(raw)
    sender: str | None = None
    receivers: list[str] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        match = ENVELOPE_LINE.match(data[pos:end if end >= 0 else len(data)])
        if not match:
            break
        value = match[2].decode("utf-8", "replace").strip()
        if match[1].lower() == b"sender":
            if sender is not None:
                raise MessageError("more than one X-Sender: line")
            sender = value
        else:
            receivers.append(value)
        pos = len(data) if end < 0 else end + 2
    envelope_given = sender is not None or bool(receivers)
    data = data[pos:]
    if data.endswith(b"\r\n.\r\n") or data == b".\r\n" or data.endswith(b"\r\n."):
        data = data[: data.rfind(b".")]
        envelope_given = True  # SMTP DATA form: dot-stuffed
    if envelope_given:
        data = unstuff(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    message = Message.parse(data)
    message.check_header()
    if binary_junk(message.body):
        raise MessageError("the body is binary data, not text (control characters)")
    if not receivers:
        receivers = message.addresses("to", "cc", "bcc")
    if sender is None:
        senders = message.addresses("sender") or message.addresses("from")
        sender = senders[0] if senders else ""
    if not receivers:
        raise MessageError("no recipients: no X-Receiver: lines and no To:, Cc: or Bcc: field")
    message.remove("bcc")
    return Parsed(sender, receivers, message.to_bytes())


def write_pickup(store: Mailroot, data: bytes) -> str:
    """Put a message into Pickup as a careful producer does (a dot-file, fsync, rename), so
    the relay never sees it half written; returns its name in Pickup. The file is made
    group-readable whatever the writer's umask, so a relay in the submit group can read a
    member's file."""
    name = f"{new_id()}.eml"
    tmp = store.folder(PICKUP) / f".{name}.tmp"  # dot-files in Pickup are never taken
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.fchmod(fd, 0o640)  # the umask (077 for many users) must not take the group's read
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, store.folder(PICKUP) / name)
    return name


def writer_busy(fd: int, st: os.stat_result, settle: float) -> bool:
    """True while another process may still be writing the file."""
    return bool(_writer_state(fd, st, settle))


def _writer_state(fd: int, st: os.stat_result, settle: float) -> str:
    """"being written" (open for writing by someone), "settling" (no lease to be had here,
    and changed in the last `settle` seconds), or "" (free to take)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return "being written"
        return "settling" if time.time() - st.st_mtime < settle else ""  # go by quiet time
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return ""


def why_waiting(path: Path, settle: float) -> str:
    """Why a Pickup file may not be taken yet, as intake sees it: "being written" (open for
    writing by someone), "settling" (changed in the last `settle` seconds), else ""."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return _writer_state(fd, os.fstat(fd), settle)
    finally:
        os.close(fd)
