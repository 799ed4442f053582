"""A large Queue written fast, straight to disk in the store's own format (`<id>.eml` and its
`<id>.env`, whose mtime notes a next attempt still to come: Mailroot.envelope_write), for the
scale tests and the bench: no fsync and no JSON encoding per message (one envelope is encoded
once and its id swapped), so 100,000 take seconds, not minutes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from relay.core.store import QUEUE, Envelope, Mailroot, Recipient, checksum, new_id

PLACEHOLDER = "0" * 16


def queued_message(recipient: str, size: int = 600) -> bytes:
    head = (f"From: app@filler.test\r\nTo: {recipient}\r\nSubject: queued\r\n"
            "Message-ID: <filler@filler.test>\r\n\r\n").encode()
    return head + b"x" * max(0, size - len(head) - 2) + b"\r\n"


def fill_queue(root: Path, count: int, due_in: float = 86400.0,
               recipient: str = "user@deferred.example", size: int = 600) -> list[str]:
    """Write `count` deferred messages into `root`'s Queue, next attempt `due_in` seconds
    from now; returns their ids, oldest first."""
    store = Mailroot(root)
    store.ensure()
    data = queued_message(recipient, size)
    now = time.time()
    template = Envelope(PLACEHOLDER, "app@filler.test",
                        [Recipient(recipient, "deferred", "4.4.1", "421 try again later")],
                        received=now, origin="filler", size=len(data), crc32=checksum(data),
                        subject="queued", next_attempt=now + due_in, queued_at=now).to_json()
    head, tail = template.split(PLACEHOLDER.encode(), 1)
    queue = str(store.folder(QUEUE))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    ids = [new_id() for _ in range(count)]
    noted = (now, now + due_in) if due_in > 0 else None  # the stat notes a due time to come
    for mid in ids:
        for name, content, times in ((f"{queue}/{mid}.eml", data, None),
                                     (f"{queue}/{mid}.env", head + mid.encode() + tail, noted)):
            fd = os.open(name, flags, 0o640)
            try:
                os.write(fd, content)
                if times:
                    os.utime(fd, times)
            finally:
                os.close(fd)
    return ids
