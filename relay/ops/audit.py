"""The audit log: who did what to which messages and settings, one JSON line per action in
`<mailroot>/log/audit.log` (appended with a single write, so processes never interleave)."""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.core.events import read_rotated
from relay.core.logrotate import Appender, Rotation

AUDIT_NAME = "audit.log"
INLINE_IDS = 3  # more ids than this read as a count and the first and last (`audit --ids`)


def operator() -> str:
    """The user acting; under sudo, the person behind it too."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{user} (sudo by {sudo})" if sudo and sudo != user else user


@dataclass
class AuditEntry:
    time: float
    user: str
    action: str
    ids: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One readable line, as `mailroot audit` prints it."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        ids = " ".join(self.ids) if len(self.ids) <= INLINE_IDS else \
            f"{len(self.ids):,} messages ({self.ids[0]} … {self.ids[-1]})"
        extra = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in self.detail.items())
        return "  ".join(part for part in (stamp, self.user, self.action, ids, extra) if part)


class AuditLog:
    def __init__(self, log_dir: Path, rotation: Rotation | None = None) -> None:
        self.path = log_dir / AUDIT_NAME
        self.rotation = rotation

    def append(self, action: str, ids: list[str], **detail: Any) -> AuditEntry:
        entry = AuditEntry(round(time.time(), 3), operator(), action, list(ids),
                           {k: v for k, v in detail.items() if v not in (None, "", [], {})})
        record = {"time": entry.time, "user": entry.user, "action": action, "ids": entry.ids,
                  **entry.detail}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        Appender(self.path, keep_open=False).append(line.encode(), self.rotation)
        return entry

    def entries(self) -> list[AuditEntry]:
        """Oldest first, across the rotated files (audit.log.N ... audit.log)."""
        entries = []
        for raw in read_rotated(self.path):
            try:
                entries.append(AuditEntry(raw.pop("time"), raw.pop("user"), raw.pop("action"),
                                          raw.pop("ids", []), raw))
            except KeyError:
                continue  # not an audit record
        return entries
