"""What one folder pane shows: a window of ids, their rows, the filter, the sort and the marks.

No Textual here: the pane widget draws what this computes, so the rules (which rows, in which
order, how a cell reads) can be tested and reused without a terminal.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from relay.ops import BADMAIL, DROP, HOLD, MARKER, PICKUP, QUEUE, TRASH
from relay.ops.admin import Admin
from relay.ops.queries import MessageSummary
from relay.ops.reasons import reason_class, reply_text

PAGE = 200  # rows loaded into a table at once; a folder of 100,000 is paged by key order


def ago(seconds: float) -> str:
    """A short age: 42s, 5m, 3h, 2d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def until(when: float | None, now: float) -> str:
    if when is None:
        return "-"
    return "due" if when <= now else f"in {ago(when - now)}"


def state_word(row: MessageSummary, now: float) -> str:
    """The row's state as a symbol and a word, so it reads without colour."""
    if row.folder == PICKUP:  # why it waits, when the file says: a writer has it, or settling
        return "… " + {"being written": "writing", "settling": "settling"}.get(row.waiting,
                                                                               "waiting")
    if row.folder == HOLD:
        return "‖ held"
    if row.folder == BADMAIL:
        return "✗ bad"
    if row.folder == DROP:
        return "✓ local"
    if row.folder == TRASH:
        return "× deleted"
    if row.attempts == 0:
        return "→ new"
    return "▶ due" if (row.next_attempt or 0) <= now else "↻ retry"


def short_reason(reason: str) -> str:
    """A Badmail reason for its table cell: the code and text the remote said
    ("550 5.1.1 no such user"), the recipient being in the `to` column already; an intake
    refusal as it is (Enter shows it all)."""
    return reply_text(reason)


HEADER_MARK = "To: "  # a recipient read from the header, not the envelope (intake refusals)


def recipients_text(row: MessageSummary) -> str:
    names = [r.address for r in row.recipients]
    if not names and row.header_to:
        return (HEADER_MARK if row.folder == BADMAIL else "") + row.header_to
    return names[0] + (f" +{len(names) - 1}" if len(names) > 1 else "") if names else ""


def sender_text(row: MessageSummary) -> str:
    """<sender>; <> is the null sender; a file refused at intake shows its From: field,
    which names the application that wrote it."""
    if row.folder == BADMAIL and not row.sender and not row.recipients and row.header_from:
        return "From: " + row.header_from
    if row.folder == PICKUP and not row.sender:
        return row.header_from
    return f"<{row.sender}>"


def short_address(text: str, width: int) -> str:
    """An address cell cut to `width` in its local part, never its domain:
    "us…@greylist.test" (a "To: " mark in front and a " +2" behind are kept)."""
    if len(text) <= width:
        return text
    mark = HEADER_MARK if text.startswith(HEADER_MARK) else ""
    body, more = text[len(mark):], ""
    if re.search(r" \+\d+$", body):
        body, more = body.rsplit(" ", 1)
        more = " " + more
    local, at, domain = body.rpartition("@")
    domain = domain.rstrip(">")
    room = width - len(mark) - len(more) - len(at + domain) - 1
    if at and room >= 1:
        return f"{mark}{local.lstrip('<')[:room]}…@{domain}{more}"
    for short in (f"{mark}…@{domain}{more}", f"…@{domain}{more}", f"…@{domain}"):
        if at and len(short) <= width:
            return short
    return "…" + body[-(width - 1):] if width > 1 else "…"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int  # the flexible column's least width
    cell: Callable[[MessageSummary, float], str]
    drop: int = 0  # when the pane is too narrow, the highest goes first; 0: always shown
    flex: bool = False  # takes the width left over (one per folder)
    ticks: bool = False  # changes with the clock alone: redrawn every second
    shorten: Callable[[str, int], str] | None = None  # how a long cell is cut to its width
    want: int = 0  # the flexible column's comfortable width, before extras are shown
    least: int = 0  # in a pane too narrow for what is never dropped, cut down to this (0: never;
    # the flexible column goes first there)


EXTRA = 7  # columns dropped at this priority and above are extras: they show only when the
# flexible column (the reply or reason) has its comfortable width


def _col(key: str, label: str, width: int, cell: Callable[[MessageSummary, float], str],
         drop: int = 0, flex: bool = False, ticks: bool = False,
         shorten: Callable[[str, int], str] | None = None, want: int = 0,
         least: int = 0) -> Column:
    return Column(key, label, width, cell, drop, flex, ticks, shorten, want, least)


def state_symbol(text: str, width: int) -> str:
    """A state cut to its symbol when its word does not fit: "✓", not "✓ lo"."""
    return text if len(text) <= width else text.split(" ", 1)[0][:width]


def _state(width: int) -> Column:
    return _col("state", "state", width, state_word, ticks=True, shorten=state_symbol, least=1)


PAD = 2  # a table cell's padding, one each side
NARROWEST = 18  # an address cell is never cut narrower: "…@customer.example" names its domain


def fit(columns: list[Column], width: int) -> list[tuple[Column, int]]:
    """The columns that fit in `width` cells, in order, with their widths: the least needed
    are dropped first, extras before the flexible column has its comfortable width, and the
    flexible column takes what is left. Narrower than what is never dropped, the flexible
    column goes and columns are cut down to their `least`, rather than the pane's right edge."""
    shown = list(columns)
    want = sum(max(0, c.want - c.width) for c in columns if c.flex)
    for column in sorted((c for c in columns if c.drop), key=lambda c: -c.drop):
        needed = sum(c.width + PAD for c in shown) + (want if column.drop >= EXTRA else 0)
        if needed <= width:
            break
        shown.remove(column)
    spare = width - sum(c.width + PAD for c in shown)
    if spare >= 0:
        return [(c, c.width + spare if c.flex else c.width) for c in shown]
    # Too narrow even for what is never dropped: the reply (or subject) goes first, then the
    # state word is cut to its symbol, then the address in its local part; never the row's end.
    shown = [c for c in shown if not c.flex]
    spare = width - sum(c.width + PAD for c in shown)
    widths = {c.key: c.width for c in shown}
    for c in sorted((c for c in shown if c.least), key=lambda c: c.key != "state"):
        cut = min(max(0, -spare), widths[c.key] - c.least)
        widths[c.key] -= cut
        spare += cut
    return [(c, widths[c.key] + max(0, spare) * (c.key == "to")) for c in shown]


MARK = _col("mark", " ", 1, lambda r, now: "")
# The age goes last of the droppable columns: how long mail has waited is what an operator
# reads first (at 120x30, side by side, the Queue pane had lost it).
AGE = _col("age", "age", 4, lambda r, now: ago(now - r.received), drop=2, ticks=True)
# The sender at the narrowest an address is cut to (its domain whole), the subject at 20: so
# both fit beside the reply in the Queue pane of a 200-column terminal, side by side.
FROM = _col("from", "from", NARROWEST, lambda r, now: sender_text(r), drop=7,
            shorten=short_address)
# The recipient is what an operator looks for first: never dropped, cut in its local part.
TO = _col("to", "to", 22, lambda r, now: recipients_text(r), shorten=short_address,
          least=NARROWEST)
SUBJECT = _col("subject", "subject", 20, lambda r, now: r.subject, drop=8)
ATTEMPTS = _col("attempts", "att", 3, lambda r, now: str(r.attempts), drop=4)
NEXT = _col("next", "next", 7, lambda r, now: until(r.next_attempt, now), drop=3, ticks=True)
# The same 451 filled every row of a wide reply while sender and subject were never shown:
# the reply comes after them, taking what they leave (12 at least: its code and start).
ERROR = _col("error", "last reply", 12, lambda r, now: r.last_error, flex=True)
REASON = _col("reason", "reason", 14, lambda r, now: short_reason(r.last_error), flex=True,
              want=40)
CLASS = _col("class", "class", 8, lambda r, now: reason_class(r.last_error), drop=3)
SIZE = _col("size", "size", 5, lambda r, now: f"{r.size // 1024}K" if r.size >= 1024
            else f"{r.size}B", drop=7)
ID = _col("id", "id", 16, lambda r, now: r.id, drop=9)
NAME = _col("name", "file", 20, lambda r, now: r.id, drop=1)
FLEX_SUBJECT = _col("subject", "subject", 12, lambda r, now: r.subject, flex=True)

COLUMNS: dict[str, list[Column]] = {
    PICKUP: [MARK, _state(10), AGE, NAME, FROM, TO, FLEX_SUBJECT, SIZE],
    QUEUE: [MARK, _state(7), AGE, TO, ATTEMPTS, NEXT, FROM, SUBJECT, ERROR, ID],
    DROP: [MARK, _state(7), AGE, FROM, TO, FLEX_SUBJECT, SIZE, ID],
    BADMAIL: [MARK, _state(5), AGE, TO, CLASS, REASON, FROM, SUBJECT, SIZE, ID],
    HOLD: [MARK, _state(6), AGE, TO, ATTEMPTS, FROM, SUBJECT, ERROR, ID],
    TRASH: [MARK, _state(9), _col("origin", "was in", 7, lambda r, now: r.deleted_from),
            replace(SIZE, drop=0), AGE, TO, FLEX_SUBJECT, FROM, ID],
}

@dataclass
class FolderView:
    """One folder's state in the console: the ids it shows (every match of the filter, in the
    sort's order, from the index) and the rows of the page on screen.

    Until the index is built, `ids` are the folder's names, oldest first, unfiltered."""

    folder: str
    ids: list[str] = field(default_factory=list)
    rows: dict[str, MessageSummary] = field(default_factory=dict)
    page: int = 0
    needle: str = ""
    sort: int = 0
    marks: set[str] = field(default_factory=set)
    total: int = 0  # messages in the folder, whatever the filter
    error: str = ""  # why the filter expression is not understood
    follow: bool = False  # keep the newest message in view as messages arrive
    indexed: bool = False  # ids come from the index (filter and sort apply)
    indexing: tuple[int, int] | None = None  # until then: (read, listed) of the index's build

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.ids) // PAGE))

    def window(self) -> list[str]:
        self.page = min(self.page, self.pages - 1)
        return self.ids[self.page * PAGE:(self.page + 1) * PAGE]

    def visible(self) -> list[MessageSummary]:
        """The page's rows in the view's order: what the table shows."""
        return [self.rows[mid] for mid in self.window() if mid in self.rows]

    def newest(self) -> str | None:
        """The most recently received message among those shown (ids sort by time)."""
        return max(self.ids) if self.ids else None

    # --- loading from the mailroot ---

    def load(self, admin: Admin) -> None:
        """Read the folder's names, then the rows of the current page (before the index)."""
        if self.folder == PICKUP:
            listing = admin.list_folder(PICKUP)
            self.ids = sorted(r.id for r in listing)
            self.rows = {r.id: r for r in listing}
        else:
            self.ids = admin.store.ids(self.folder)
            self.rows = {}
            self._fill(admin)
        self.total = len(self.ids)

    def apply(self, admin: Admin, changed: Iterable[str]) -> None:
        """Before the index: re-read only the names and rows that changed; keep the page full."""
        if self.folder == PICKUP:
            self.load(admin)  # Pickup is small and short-lived: its names are the ids
            return
        for mid in changed:
            present = admin.store.has(self.folder, mid)
            at = bisect.bisect_left(self.ids, mid)
            listed = at < len(self.ids) and self.ids[at] == mid
            if present and not listed:
                self.ids.insert(at, mid)
            elif not present and listed:
                del self.ids[at]
            self.rows.pop(mid, None)
        self.total = len(self.ids)
        self.marks &= set(self.ids)
        self._fill(admin)

    def show(self, admin: Admin, ids: list[str], total: int, present: Callable[[str], bool],
             changed: Iterable[str] = ()) -> None:
        """From the index: the matching ids in order; rows re-read for the changed ids."""
        self.indexed = True
        self.ids, self.total = ids, total
        self.marks = {m for m in self.marks if present(m)}
        if self.follow and ids:
            self.page = ids.index(self.newest()) // PAGE
        if self.folder == PICKUP:
            self.rows = {r.id: r for r in admin.list_folder(PICKUP)}
            return
        for mid in changed:
            self.rows.pop(mid, None)
        self._fill(admin)

    def _fill(self, admin: Admin) -> None:
        window = self.window()
        keep = set(window)
        for mid in [m for m in self.rows if m not in keep]:
            del self.rows[mid]
        for mid in window:
            if mid not in self.rows:
                try:
                    self.rows[mid] = admin.summary_of(self.folder, mid)
                except (OSError, ValueError, LookupError):
                    continue  # it moved on while we looked; its file event follows


def changed_ids(root: str, paths: Iterable[str]) -> dict[str, set[str]]:
    """Map changed file paths under the mailroot to {folder: {id or Pickup name}}."""
    out: dict[str, set[str]] = {}
    for path in paths:
        rel = os.path.relpath(path, root)
        parts = rel.split(os.sep)
        if len(parts) != 2 or parts[0] not in COLUMNS:
            continue
        folder, name = parts
        if folder == PICKUP:
            out.setdefault(folder, set()).add(name)
        elif name.endswith((MARKER[folder], ".eml", ".env", ".BAD")):
            out.setdefault(folder, set()).add(name.split(".", 1)[0])
    return out
