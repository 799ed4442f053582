"""The console's index: every message of every folder as a compact Entry, shared by all panes.

Built once in a thread after the first paint, then kept current from the file events the
console already watches (only changed ids are re-read; no periodic full rescans). Plain Python
dicts of slotted Entries: a filter over 100,000 entries is one pass of substring tests
(tens of milliseconds) and a sort one `list.sort`, so an embedded database would add a copy
of every row and a second representation without making either faster. The answers the panes
asked for last are kept and changed in place as messages come and go (a bisect per changed
id), so a bulk action moving thousands does not filter and sort the whole folder again at
every redraw.

Reading files happens off the event loop (`read`, `build`); changing the dicts (`merge`,
`install`) and querying them happen on it, so no lock is needed.
"""

from __future__ import annotations

import bisect
import re
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable

from relay.ops import PICKUP, QUEUE
from relay.ops.admin import Admin
from relay.ops.listing import SORTS, Entry, compile_match, entry_of, read_entry
from relay.ops.qshape import AGE_BUCKETS, bucket

Changes = dict[str, dict[str, Entry | None]]  # folder -> id -> its entry, or None: gone
KEPT_ANSWERS = 12  # query answers kept current (each pane's, and a few recent ones)
RELATIVE = re.compile(r"\b(older|newer):", re.IGNORECASE)  # terms judged against the clock


def _compact(entry: Entry) -> Entry:
    """Share the strings that repeat across thousands of messages (senders, domains, replies)."""
    entry.sender = sys.intern(entry.sender)
    entry.domains = tuple(sys.intern(d) for d in entry.domains)
    entry.reply = sys.intern(entry.reply)
    return entry


class FolderIndex:
    def __init__(self, admin: Admin, folders: Iterable[str]) -> None:
        self.admin = admin
        self.entries: dict[str, dict[str, Entry]] = {f: {} for f in folders}
        self.ready = False
        self._answers: OrderedDict[tuple[str, str, int], Answer] = OrderedDict()
        # while the first build runs: per folder, the messages listed and read so far
        self.listed: dict[str, int] = {}
        self.read_so_far: dict[str, int] = dict.fromkeys(self.entries, 0)

    # --- reading (in a thread) ---

    def read(self, folder: str, ids: Iterable[str],
             tally: bool = False) -> dict[str, Entry | None]:
        """The current entries of these ids in `folder` (None: no longer there); `tally`:
        count them in `read_so_far` as they are read (the first build)."""
        if folder == PICKUP:  # short-lived files under producers' names: list it whole
            listed = {row.id: _compact(entry_of(row)) for row in self.admin.list_folder(PICKUP)}
            return {**dict.fromkeys(self.entries[PICKUP]), **listed}
        out: dict[str, Entry | None] = {}
        for mid in ids:
            try:
                out[mid] = _compact(read_entry(self.admin, folder, mid))
            except (OSError, ValueError, LookupError, KeyError, TypeError):
                out[mid] = None  # gone, or moved on while we looked; its file event follows
            if tally:
                self.read_so_far[folder] += 1
        return out

    def read_changes(self, changed: dict[str, set[str]]) -> Changes:
        return {folder: self.read(folder, ids) for folder, ids in changed.items()
                if folder in self.entries}

    def build(self) -> Changes:
        """Every folder, read whole (the first time); `progress` says how far it has got."""
        listed = {folder: self.admin.store.ids(folder) if folder != PICKUP else []
                  for folder in self.entries}
        self.listed = {folder: len(ids) for folder, ids in listed.items()}
        return {folder: self.read(folder, ids, tally=True) for folder, ids in listed.items()}

    def progress(self, folder: str) -> tuple[int, int] | None:
        """(read, listed) for a folder while the first build reads it; None before it
        was listed."""
        listed = self.listed.get(folder)
        return None if listed is None else (min(self.read_so_far[folder], listed), listed)

    # --- changing (on the event loop) ---

    def merge(self, changes: Changes) -> None:
        for folder, read in changes.items():
            entries = self.entries[folder]
            answers = [a for (f, _, _), a in self._answers.items() if f == folder]
            for mid, entry in read.items():
                old = entries.pop(mid, None) if entry is None else entries.get(mid)
                if entry is not None:
                    entries[mid] = entry
                for answer in answers:
                    answer.change(old, entry)

    def install(self, built: Changes) -> None:
        """The first full build, then marked ready."""
        for folder, read in built.items():
            self.entries[folder] = {mid: e for mid, e in read.items() if e is not None}
        self._answers.clear()
        self.ready = True

    # --- asking ---

    def query(self, folder: str, expression: str = "", sort: int = 0) -> list[str]:
        """The ids of `folder` matching the expression, in the sort's order (a fresh list).
        Raises MatchError for a bad expression."""
        key = (folder, expression, sort)
        answer = self._answers.get(key)
        if answer is None or answer.stale():
            answer = self._answers[key] = Answer(expression, sort, self.entries[folder].values())
            while len(self._answers) > KEPT_ANSWERS:
                self._answers.popitem(last=False)
        self._answers.move_to_end(key)
        return answer.ids()

    def domains_of(self, folder: str, ids: Iterable[str]) -> Counter[str]:
        """How many of these messages go to each destination domain."""
        entries = self.entries[folder]
        return Counter(d for mid in ids if mid in entries for d in entries[mid].domains[:1]
                       or ("(local)",))

    def shape(self, now: float) -> list[DomainRow]:
        """Queue by destination domain and age, as `mailroot summary` counts it, with the most
        common last reply of each domain."""
        rows: dict[str, DomainRow] = {}
        for entry in self.entries[QUEUE].values():
            age = bucket(now - entry.received)
            for domain in entry.domains:
                row = rows.get(domain or "(local)")
                if row is None:
                    row = rows[domain or "(local)"] = DomainRow(domain or "(local)")
                row.counts[age] += 1
                if entry.reply:
                    row.replies[entry.reply] += 1
        return sorted(rows.values(), key=lambda r: (-r.total, r.name))


class Answer:
    """One query's matching ids in its sort's order, kept current entry by entry. The sort
    keys end in the id, so they are unique and a key finds its place by bisection. An answer
    with a relative time term (`older:2h`) holds its cutoff for a second at most."""

    def __init__(self, expression: str, sort: int, entries: Iterable[Entry]) -> None:
        _, self.order, self.reverse = SORTS[sort]
        self.made = time.monotonic()
        self.timed = bool(RELATIVE.search(expression))
        self.test = test = compile_match(expression)
        rows = sorted((e for e in entries if test(e)), key=self.order)
        self.keys = [self.order(e) for e in rows]  # ascending
        self._ids = [e.id for e in rows]

    def change(self, old: Entry | None, new: Entry | None) -> None:
        """An entry replaced (old, new), added (None, new) or gone (old, None)."""
        if old is not None:
            at = bisect.bisect_left(self.keys, self.order(old))
            if at < len(self.keys) and self._ids[at] == old.id:
                del self.keys[at], self._ids[at]
        if new is not None and self.test(new):
            key = self.order(new)
            at = bisect.bisect_left(self.keys, key)
            self.keys.insert(at, key)
            self._ids.insert(at, new.id)

    def ids(self) -> list[str]:
        return self._ids[::-1] if self.reverse else self._ids[:]

    def stale(self) -> bool:
        return self.timed and time.monotonic() - self.made >= 1.0


class DomainRow:
    """One line of the by-domain view."""

    __slots__ = ("name", "counts", "replies")

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = [0] * len(AGE_BUCKETS)
        self.replies: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def top_reply(self) -> str:
        return self.replies.most_common(1)[0][0] if self.replies else ""
