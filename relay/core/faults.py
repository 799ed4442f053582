"""Faults injected at a named file operation of the store, for the crash bench only.

A relay started with MAILROOT_FAULTS=<file> has each child process look at that file at
every file operation the store tells of (relay.core.store.did). While the file holds a fault,
as JSON, the process that matches it acts at the `after`-th operation matching it:

    {"match": "rename Queue/*.env", "process": "pickup", "after": 3,
     "action": "kill" | "kill-group" | "sleep", "seconds": 0.01}

`match` is a glob over "<operation> <path in the mailroot>"; `process` one over the
child's name (receiver-1, pickup, queue). A kill removes the file first (only the process
that removes it kills: one kill per fault written); "kill-group" kills the whole relay
(supervisor and children); "sleep" waits `seconds` each time and stays. Without the
variable nothing is installed and nothing is looked at.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import time
from pathlib import Path

from relay.core import store


class FaultProbe:
    def __init__(self, path: str, root: Path, process: str) -> None:
        self.path, self.root, self.process = path, str(root), process
        self.version: int | None = None  # the fault file's mtime when last read
        self.fault: dict = {}
        self.count = 0

    def _current(self) -> dict:
        try:
            version = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            self.version, self.fault = None, {}
            return self.fault
        if version != self.version:
            self.version, self.count = version, 0
            try:
                self.fault = json.loads(Path(self.path).read_text())
            except (OSError, ValueError):
                self.fault = {}  # being written: read again at the next operation
                self.version = None
        return self.fault

    def __call__(self, operation: str, path: str) -> None:
        fault = self._current()
        if not fault or not fnmatch.fnmatchcase(self.process, fault.get("process", "*")):
            return
        where = os.path.relpath(path, self.root) if path else ""
        if not fnmatch.fnmatchcase(f"{operation} {where}", fault["match"]):
            return
        self.count += 1
        if self.count < fault.get("after", 1):
            return
        if fault.get("action") == "sleep":
            time.sleep(fault.get("seconds", 0.01))
            return
        try:
            os.unlink(self.path)  # one kill per fault written
        except FileNotFoundError:
            return
        if fault.get("action") == "kill-group":
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def install(path: str, root: Path, process: str) -> None:
    """Install the probe of the fault file `path` (MAILROOT_FAULTS) in this process."""
    store.PROBES.append(FaultProbe(path, root, process))
