"""A health check for Nagios/Icinga-style monitoring: one status line with perfdata and the
plugin exit codes. It reads the folders and the relay lock only, so it runs beside a relay
(as any user that may read the mailroot)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay.core.folderstats import all_usage
from relay.core.relay_lock import lock_holder
from relay.core.store import BADMAIL, HOLD, PICKUP, QUEUE, Mailroot

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class Thresholds:
    warn_age: float = 3600.0
    crit_age: float = 4 * 3600.0
    warn_queue: int | None = None
    crit_queue: int | None = None
    warn_badmail: int | None = None
    crit_badmail: int | None = None
    expect_relay: bool = False


def _level(value: float, warn: float | None, crit: float | None) -> int:
    if crit is not None and value >= crit:
        return CRITICAL
    if warn is not None and value >= warn:
        return WARNING
    return OK


def _limit(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def check(store: Mailroot, limits: Thresholds, now: float | None = None) -> tuple[int, str]:
    """(exit code, `MAILROOT WARNING - ... | perfdata`)."""
    now = time.time() if now is None else now
    if not store.folder(QUEUE).is_dir():
        return UNKNOWN, f"MAILROOT UNKNOWN - no mailroot at {store.root}"
    try:
        usage = all_usage(store, now)
        holder = lock_holder(store)
    except OSError as exc:
        return UNKNOWN, f"MAILROOT UNKNOWN - cannot read {store.root}: {exc.strerror or exc}"
    queue, badmail = usage[QUEUE], usage[BADMAIL]
    problems: list[tuple[int, str]] = [
        (_level(queue.oldest_age, limits.warn_age, limits.crit_age),
         f"oldest queued message {_age(queue.oldest_age)} old"),
        (_level(queue.messages, limits.warn_queue, limits.crit_queue),
         f"{queue.messages} queued"),
        (_level(badmail.messages, limits.warn_badmail, limits.crit_badmail),
         f"{badmail.messages} in Badmail"),
        (CRITICAL if limits.expect_relay and holder is None else OK, "no relay running"),
    ]
    code = max(level for level, _ in problems)
    said = [text for level, text in problems if level == code and level != OK]
    relay = f"relay {holder}" if holder else "no relay running"
    summary = "; ".join(said) if said else (
        f"{queue.messages} queued, oldest {_age(queue.oldest_age)}, "
        f"{badmail.messages} in Badmail, {relay}")
    perf = [
        f"queue={queue.messages};{_limit(limits.warn_queue)};{_limit(limits.crit_queue)};0;",
        f"oldest={queue.oldest_age:.0f}s;{limits.warn_age:g};{limits.crit_age:g};0;",
        f"badmail={badmail.messages};{_limit(limits.warn_badmail)};"
        f"{_limit(limits.crit_badmail)};0;",
        f"hold={usage[HOLD].messages};;;0;", f"pickup={usage[PICKUP].messages};;;0;",
        f"relay={int(holder is not None)};;;0;1",
    ]
    return code, f"MAILROOT {NAMES[code]} - {summary} | {' '.join(perf)}"
