"""Whole-folder listings: one compact row per message (an Entry), the match expression that
selects rows, and the sort orders.

`mailroot queue --match`, the CLI's bulk actions and the console's filter all use this one
parser, so the same words select the same messages everywhere.

The expression: space-separated terms, all of which must hold (AND).
  word            in the id, sender, a recipient, subject, reason or last reply (any case)
  domain:D        a recipient domain (still to deliver, in Queue and Hold) is D;
                  domain:.D (or *.D) any domain under D
  from:X to:X     part of the sender / of a recipient address
  reason:X        part of the Badmail reason or the last reply, or the reason class
  class:C         the reason class is C, exactly as the console's class column shows it
                  (expired, too-big, loop, no-rcpt, DNS, TLS, damaged, bad-file, 5.1.1, 5xx,
                  other; any case)
  subject:X       part of the subject
  older:2h        received more than 2h ago (s, m, h, d); newer:10m the opposite
  size>1MB        also <, >=, <=, = ; sizes as in the config (KB, MB, KiB, ...)
  attempts>3      also <, >=, <=, =
Quote a term with spaces: "subject:weekly report".
"""

from __future__ import annotations

import operator
import re
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from relay.core.address import domain_of
from relay.core.config import Duration, Size
from relay.core.store import BADMAIL, HOLD, QUEUE, TRASH, WAITING
from relay.ops.reasons import reason_class

__all__ = ["Entry", "MatchError", "SORTS", "compile_match", "entry_of", "reason_class"]


class MatchError(ValueError):
    """A term the expression language does not know; the message names the term."""


# --- one row --------------------------------------------------------------------------------

@dataclass(slots=True)
class Entry:
    """What the index keeps of one message: enough to filter, sort and count by domain."""

    id: str
    folder: str
    received: float
    size: int
    sender: str
    recipients: tuple[str, ...]
    domains: tuple[str, ...]  # lower case; in Queue and Hold only those still to deliver
    subject: str
    attempts: int
    next_attempt: float | None
    reply: str  # the last reply, or the Badmail reason
    reason_class: str  # Badmail (and Trash from Badmail) only
    origin: str  # Trash: the folder it was deleted from
    text: str  # lower-cased id, sender, recipients, subject, reply, reason class and the
    # header From:/To: of a file refused at intake: what words search


def _entry(mid: str, folder: str, received: float, size: int, sender: str,
           recipients: tuple[str, ...], to_domains: Iterable[str], subject: str, attempts: int,
           next_attempt: float | None, reply: str, origin: str,
           header_fields: tuple[str, ...] = ()) -> Entry:
    domains = tuple(dict.fromkeys(domain_of(a).lower() for a in to_domains))
    klass = reason_class(reply) if folder == BADMAIL or origin == BADMAIL else ""
    return Entry(mid, folder, received, size, sender, recipients, domains, subject, attempts,
                 next_attempt, reply, klass, origin,
                 "\0".join((mid, sender, *recipients, subject, reply, klass,
                            *header_fields)).lower())


def entry_of(row) -> Entry:
    """An Entry from an admin MessageSummary (relay.ops.admin builds those from the files)."""
    recipients = tuple(r.address for r in row.recipients)
    waiting = [r.address for r in row.recipients if r.state in WAITING] \
        if row.folder in (QUEUE, HOLD) else recipients
    return _entry(row.id, row.folder, row.received, row.size, row.sender, recipients, waiting,
                  row.subject, row.attempts, row.next_attempt, row.last_error,
                  row.deleted_from, (row.header_from, row.header_to))


def read_entry(admin, folder: str, mid: str) -> Entry:
    """One message's Entry; from the raw envelope fields where there is an envelope (the
    same values as admin.summary_of, without building its objects: 100,000 add up)."""
    if folder not in (QUEUE, HOLD, TRASH):
        return entry_of(admin.summary_of(folder, mid))
    env = admin.envelope_fields(folder, mid)
    rcpts = env["recipients"]
    recipients = tuple(r["address"] for r in rcpts)
    waiting = [r["address"] for r in rcpts if r.get("state", "pending") in WAITING] \
        if folder != TRASH else recipients
    attempts = env.get("attempts") or []
    return _entry(mid, folder, env["received"], env.get("size", 0), env["sender"], recipients,
                  waiting, env.get("subject", ""), len(attempts),
                  env.get("next_attempt") if folder == QUEUE else None,
                  env.get("reason") or (attempts[-1]["reply"] if attempts else ""),
                  env.get("deleted_from", "") if folder == TRASH else "")


# --- the expression -------------------------------------------------------------------------

Test = Callable[[Entry], bool]
_COMPARE = re.compile(r"(size|attempts)(<=|>=|<|>|=)(.+)", re.IGNORECASE)
_OPS = {"<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge,
        "=": operator.eq}


def _domain_test(wanted: str) -> Test:
    if wanted.startswith(("*.", ".")):  # every domain under it
        suffix = "." + wanted.lstrip("*.")
        return lambda e: any(d.endswith(suffix) for d in e.domains)
    wanted = wanted.rstrip(".")
    return lambda e: wanted in e.domains


def _term(term: str, now: float) -> Test:
    compare = _COMPARE.fullmatch(term)
    if compare:
        field, op, value = compare[1].lower(), _OPS[compare[2]], compare[3]
        try:
            number = int(Size.parse(value)) if field == "size" else int(value)
        except ValueError:
            raise MatchError(f"{term}: {value!r} is not a "
                             f"{'size (1MB, 200KB)' if field == 'size' else 'number'}") from None
        if field == "size":
            return lambda e: op(e.size, number)
        return lambda e: op(e.attempts, number)
    key, colon, value = term.partition(":")
    key = key.lower()
    if not colon or key not in _KEYS:
        if colon and key.isalpha() and key not in ("http", "https"):
            raise MatchError(f"{term}: unknown key {key!r} (known: {', '.join(_KEYS)})")
        word = term.lower()
        return lambda e: word in e.text
    if not value:
        raise MatchError(f"{term}: give a value after {key}:")
    return _KEYS[key](value.lower(), now, term)


def _age_test(older: bool) -> Callable[[str, float, str], Test]:
    def make(value: str, now: float, term: str) -> Test:
        try:
            cutoff = now - float(Duration.parse(value))
        except ValueError:
            raise MatchError(f"{term}: {value!r} is not a duration (30s, 10m, 2h, 1d)") from None
        return (lambda e: e.received < cutoff) if older else (lambda e: e.received >= cutoff)
    return make


_KEYS: dict[str, Callable[[str, float, str], Test]] = {
    "domain": lambda v, now, t: _domain_test(v),
    "from": lambda v, now, t: lambda e: v in e.sender.lower(),
    "to": lambda v, now, t: lambda e: any(v in r.lower() for r in e.recipients),
    "reason": lambda v, now, t: lambda e: v in e.reply.lower() or v == e.reason_class.lower(),
    "class": lambda v, now, t: lambda e: v == e.reason_class.lower(),
    "subject": lambda v, now, t: lambda e: v in e.subject.lower(),
    "older": _age_test(older=True),
    "newer": _age_test(older=False),
}


def compile_match(expression: str, now: float | None = None) -> Test:
    """The expression as one test of an Entry; raises MatchError naming a bad term."""
    try:
        terms = shlex.split(expression)
    except ValueError as exc:
        raise MatchError(f"{expression}: {exc}") from None
    now = time.time() if now is None else now
    tests = [_term(term, now) for term in terms]
    if not tests:
        return lambda e: True
    if len(tests) == 1:
        return tests[0]
    return lambda e: all(test(e) for test in tests)


def select(entries: Iterable[Entry], expression: str) -> list[Entry]:
    test = compile_match(expression)
    return [e for e in entries if test(e)]


# --- sorting --------------------------------------------------------------------------------

SORTS: list[tuple[str, Callable[[Entry], object], bool]] = [
    ("oldest first", lambda e: e.id, False),
    ("newest first", lambda e: e.id, True),
    ("sender", lambda e: (e.sender.lower(), e.id), False),
    ("recipient", lambda e: (e.recipients[0].lower() if e.recipients else "", e.id), False),
    ("domain", lambda e: (e.domains[0] if e.domains else "", e.id), False),
    ("subject", lambda e: (e.subject.lower(), e.id), False),
    ("most attempts", lambda e: (e.attempts, e.id), True),
    ("largest", lambda e: (e.size, e.id), True),
    ("next attempt", lambda e: (e.next_attempt or 0.0, e.id), False),
]


def matching(admin, folder: str, expression: str) -> list:
    """The MessageSummary rows of `folder` (an admin listing) the expression selects."""
    test = compile_match(expression)
    return [row for row in admin.list_folder(folder) if test(entry_of(row))]
