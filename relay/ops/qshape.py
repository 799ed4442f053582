"""Queue shape, as Postfix's qshape shows it: messages per destination domain by age, and
Badmail by reason class (relay.ops.reasons), so an operator sees at a glance where mail is piling
up and why."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

AGE_BUCKETS: list[tuple[float, str]] = [
    (300, "0-5m"), (600, "5-10m"), (1200, "10-20m"), (2400, "20-40m"), (4800, "40-80m"),
    (9600, "80-160m"), (19200, "160-320m"), (math.inf, "older")]
COLUMNS = [label for _, label in AGE_BUCKETS]

_LIMITS = [limit for limit, _ in AGE_BUCKETS]


def bucket(age: float) -> int:
    """The age column: the first whose limit the age is under (a bisect: `summary` asks
    this once for each of a million messages)."""
    return bisect.bisect_right(_LIMITS, age)


@dataclass
class ShapeRow:
    name: str
    counts: list[int] = field(default_factory=lambda: [0] * len(AGE_BUCKETS))

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class QueueShape:
    """Rows of counts by age column; `domains` for the queue, `badmail` by reason class."""

    columns: list[str] = field(default_factory=lambda: list(COLUMNS))
    domains: list[ShapeRow] = field(default_factory=list)
    badmail: list[ShapeRow] = field(default_factory=list)
    _by_name: dict[str, dict[str, ShapeRow]] = field(  # "domains"/"badmail" -> name -> row
        default_factory=lambda: {"domains": {}, "badmail": {}}, repr=False, compare=False)
    # the messages read, their bytes on disk (envelope and message file) and the oldest one's
    # arrival: the folder's disk usage, without a second pass over its files
    messages: int = 0
    bytes: int = 0
    oldest: float = math.inf

    def add_message(self, size: int, received: float) -> None:
        self.messages += 1
        self.bytes += size
        self.oldest = min(self.oldest, received)

    def add_domains(self, tally: dict[tuple[str, int], int]) -> None:
        """Counts by (domain, age column), tallied in a plain dict over many messages."""
        for (domain, column), count in tally.items():
            self._row("domains", domain).counts[column] += count

    def add_badmail(self, reason: str, age: float) -> None:
        self._row("badmail", reason).counts[bucket(age)] += 1

    def add(self, other: QueueShape) -> None:
        """Add the counts of a shape made of other messages (a part read by another process)."""
        self.messages += other.messages
        self.bytes += other.bytes
        self.oldest = min(self.oldest, other.oldest)
        for table in ("domains", "badmail"):
            for row in getattr(other, table):
                counts = self._row(table, row.name).counts
                counts[:] = [a + b for a, b in zip(counts, row.counts, strict=True)]

    def _row(self, table: str, name: str) -> ShapeRow:
        """A row of `domains` or `badmail` by name, found in a dict: a million messages are
        counted one by one."""
        row = self._by_name[table].get(name)
        if row is None:
            row = self._by_name[table][name] = ShapeRow(name)
            getattr(self, table).append(row)
        return row

    def total(self) -> ShapeRow:
        row = ShapeRow("TOTAL")
        for r in self.domains:
            row.counts = [a + b for a, b in zip(row.counts, r.counts, strict=True)]
        return row

    def sort(self) -> None:
        """Busiest first, as qshape prints them."""
        self.domains.sort(key=lambda r: (-r.total, r.name))
        self.badmail.sort(key=lambda r: (-r.total, r.name))
