"""Trash: deleted messages, kept for `admin.trash_retention` so a delete can be undone, then
purged, after each delete (the operator API) and at every queue manager's start (its
recovery pass): one function for both, so the queue manager needs none of the operator
API to do it."""

from __future__ import annotations

import time

from relay.events import EventLog
from relay.store import TRASH, Mailroot, json_fields


def purge_expired(store: Mailroot, retention: float, events: EventLog) -> list[str]:
    """Remove trash deleted more than `retention` seconds ago, each under its claim (an
    undelete under way keeps it), marker first; returns the ids removed."""
    cutoff = time.time() - retention
    purged = []
    for mid in store.ids(TRASH):
        try:
            deleted_at = json_fields(store.path(TRASH, mid, ".env").read_bytes()
                                     ).get("deleted_at")
        except (OSError, ValueError, AttributeError):
            continue
        if deleted_at is None or deleted_at >= cutoff:
            continue
        with store.claim(TRASH, mid) as held:
            if held:
                store.commit(store.remove_ops(TRASH, mid))
                purged.append(mid)
    if purged:
        events.emit("trash-purged", ids=purged)
    return purged
