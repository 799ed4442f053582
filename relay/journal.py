"""Event lines for systemd's journal: when stderr is the journal (JOURNAL_STREAM names it,
systemd.exec(5)), each line starts with a syslog priority (`<4>`) instead of a timestamp,
which the journal adds itself."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, TextIO

from relay.events import format_event

WARNING = {"deferred", "bounced", "expired", "quarantined", "smtp-relay-denied",
           "smtp-auth-failed", "delay-notice", "config-error", "report-error"}
INFO, WARN, ERR = 6, 4, 3


def attached(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Is `stream` the journal's socket (device:inode in JOURNAL_STREAM)?"""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def priority(event: dict[str, Any]) -> int:
    name = str(event.get("event", ""))
    if name.endswith("-error") and name != "config-error":
        return ERR
    return WARN if name in WARNING else INFO


def journal_line(event: dict[str, Any]) -> str:
    """`<4>deferred id=... to=<a@b> ...`: one line (newlines in values are escaped)."""
    text = format_event(event).split(" ", 2)[2]  # without the date and the time
    return f"<{priority(event)}>" + text.replace("\r", "\\r").replace("\n", "\\n")
