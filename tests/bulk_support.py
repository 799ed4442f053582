"""Large folders for the whole-folder tests: messages written straight to disk in the store's
envelope format (no fsync: these tests are about listing and acting, not about intake)."""

from __future__ import annotations

import time
from pathlib import Path

from relay.core.store import QUEUE, Attempt, Envelope, Mailroot, Recipient, new_id


def fill_queue(root: Path, count: int, domains: int = 20, folder: str = QUEUE,
               size_of=lambda n: 200, last_subject: str = "", prefix: str = "d") -> list[str]:
    """`count` messages deferred once, recipient domain {prefix}{n % domains}.example, oldest
    first; the last one's subject is `last_subject` when given. Returns the ids in order."""
    store = Mailroot(root)
    store.ensure()
    now, later, ids = time.time(), time.time() + 86400, []
    for n in range(count):
        mid = new_id()
        subject = last_subject if last_subject and n == count - 1 else f"report {n}"
        data = (f"From: app@example.com\r\nTo: u{n}@{prefix}{n % domains}.example\r\n"
                f"Subject: {subject}\r\n\r\n").encode() + b"x" * size_of(n)
        env = Envelope(mid, "app@example.com",
                       [Recipient(f"u{n}@{prefix}{n % domains}.example", "deferred", "4.7.1",
                                  "451 4.7.1 greylisted")],
                       received=now - count + n, size=len(data), subject=subject,
                       next_attempt=later, queued_at=now,
                       attempts=[Attempt(now - 60, "127.0.0.1", "451 4.7.1 greylisted")])
        store.path(folder, mid, ".eml").write_bytes(data)
        store.path(folder, mid, ".env").write_bytes(env.to_json())
        ids.append(mid)
    return ids
