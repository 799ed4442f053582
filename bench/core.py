"""Running workloads interleaved across systems, and reporting medians with ratios.

A workload measures one system once and returns its figures ({metric: value}).  Each run
goes through every system in turn (A B A B ...), so slow drifts of a noisy machine hit every
system alike; a figure is the median of the runs with their min and max, and its ratio is to
the reference system's median measured in the same workload (so with the same next hop).
A relay workload runs once per next hop; the systems the load goes to directly (`direct`,
the receivers that relay nothing) are measured with the first hop only and have no hop.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.systems import NotAvailable

Measure = Callable[[str], dict[str, float]]

@dataclass
class Workload:
    name: str
    systems: list[str]
    measure: Callable[[str, Any], dict[str, float]]
    references: list[str] = field(default_factory=list)  # first one measured is the ratio base
    hop: str = ""  # the next hop the relays deliver to; "" when there is none
    direct: list[str] = field(default_factory=list)  # systems that take the load themselves

    def hop_of(self, system: str) -> str:
        return "" if system in self.direct else self.hop

@dataclass
class Row:
    workload: str
    hop: str
    system: str
    metric: str
    runs: list[float] = field(default_factory=list)
    note: str = ""
    reference: str = ""
    ratio: float | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

def spread(ms: list[float], prefix: str = "ms") -> dict[str, float]:
    """Median and 95th percentile of some milliseconds."""
    ms = sorted(ms)
    return {f"{prefix} median": statistics.median(ms),
            f"{prefix} p95": ms[max(0, math.ceil(len(ms) * 0.95) - 1)]}

def run(workloads: list[Workload], context: Any, runs: int, log: Callable[[str], None]) -> list[Row]:
    found: list[Row] = []
    for workload in workloads:
        rows: dict[tuple[str, str], Row] = {}
        skipped: dict[str, str] = {}
        title = f"{workload.name} [{workload.hop}]" if workload.hop else workload.name
        for number in range(runs):
            for system in workload.systems:
                if system in skipped:
                    continue
                began = time.monotonic()
                try:
                    figures = workload.measure(system, context)
                except NotAvailable as exc:
                    skipped[system] = str(exc)
                    rows[(system, "")] = Row(workload.name, workload.hop_of(system), system, "",
                                             note=str(exc))
                    log(f"  {title} / {system}: {exc}")
                    continue
                for metric, value in figures.items():
                    rows.setdefault((system, metric), Row(
                        workload.name, workload.hop_of(system), system, metric)).runs.append(value)
                shown = ", ".join(f"{v:.4g} {m}" for m, v in figures.items())
                log(f"  {title} / {system} run {number + 1}: {shown} "
                    f"({time.monotonic() - began:.1f}s)")
        for row in rows.values():
            if row.median is None:
                continue
            for reference in workload.references:
                base = rows.get((reference, row.metric))
                if base and base.median:
                    row.reference, row.ratio = reference, row.median / base.median
                    break
        found += rows.values()
    return found

def table(rows: list[Row]) -> str:
    lines = ["| workload | next hop | system | figure | median (min–max) | ratio |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        head = f"| {row.workload} | {row.hop or '–'} | {row.system}"
        if row.median is None:
            lines.append(f"{head} | – | {row.note} | – |")
            continue
        ratio = f"{row.ratio:.2f}× {row.reference}" if row.ratio is not None and \
            row.reference != row.system else "–"
        lines.append(f"{head} | {row.metric} | {row.median:.4g} "
                     f"({min(row.runs):.4g}–{max(row.runs):.4g}) | {ratio} |")
    return "\n".join(lines)

def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "results": [
        {"workload": r.workload, "hop": r.hop or None, "system": r.system, "metric": r.metric,
         "runs": r.runs,
         "median": r.median, "min": min(r.runs, default=None), "max": max(r.runs, default=None),
         "reference": r.reference or None, "ratio": r.ratio, "note": r.note or None}
        for r in rows]}, indent=2))
