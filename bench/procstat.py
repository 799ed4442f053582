"""CPU seconds and RSS of a process, or of a process and all its descendants (the relay's
supervisor and its children), from /proc (Linux)."""

from __future__ import annotations

import os

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def descendants(pid: int) -> list[int]:
    """The live processes under `pid`, children first."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children = [int(c) for c in handle.read().split()]
        except FileNotFoundError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and every descendant, live or waited for (a
    restarted child's time is in its parent's cutime/cstime)."""
    total = 0.0
    for one in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{one}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # it ended meanwhile
        total += sum(int(f) for f in fields[11:15]) / TICKS
    return total


def tree_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of the process and every descendant (shared pages counted in each);
    `field` VmHWM: the sum of each one's peak."""
    total = 0.0
    for one in [pid, *descendants(pid)]:
        try:
            total += status_mb(one, field)
        except FileNotFoundError:
            continue
    return total


def status_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory line of /proc/PID/status in MB: VmRSS now, VmHWM the peak."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")
