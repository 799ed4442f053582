"""Wires the relay together: folders, the mailroot lock, recovery, intake, the services."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import sys
from typing import TextIO

from relay.bounce import quarantine_ops
from relay.config import Config
from relay.events import EventLog
from relay.intake import Intake
from relay.pickup import PickupWatcher
from relay.store import HOLD, QUEUE, Mailroot

LOCK_NAME = "relay.lock"


class AlreadyRunning(Exception):
    """Another relay holds this mailroot."""


def lock_holder(store: Mailroot) -> str | None:
    """Who holds the mailroot's relay lock ('pid 123 on host'), or None if no relay runs."""
    path = store.root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)
    return None


class Relay:
    """One relay on one mailroot; start() and stop() from a running event loop."""

    def __init__(self, config: Config, stream: TextIO | None = sys.stderr) -> None:
        self.config = config
        self.store = Mailroot(config.root)
        self.store.ensure()
        self.events = EventLog(self.store.log_dir, stream)
        self.intake = Intake(config, self.store)
        self.pickup = PickupWatcher(config, self.store, self.intake, self.events)
        self._lock_fd: int | None = None
        self.running = False

    def _take_lock(self) -> None:
        fd = os.open(self.store.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(f"another relay is already running on {self.store.root} "
                                 f"({holder or 'unknown process'})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    async def start(self) -> None:
        self._take_lock()
        with contextlib.suppress(ValueError):  # only the main thread may set handlers
            signal.signal(signal.SIGIO, signal.SIG_IGN)  # Pickup's read-lease probe
        for folder, mid, what in self.store.recover():
            self.events.emit("recovered", id=mid, folder=folder, action=what)
        self.quarantine_damaged()
        await self.pickup.start()
        self.running = True
        self.events.emit("relay-started", mailroot=str(self.store.root), pid=os.getpid())

    def quarantine_damaged(self) -> None:
        """Move committed entries whose files are missing or damaged into Badmail, so they
        are never delivered blindly."""
        for folder in (QUEUE, HOLD):
            for mid, envelope, reason in list(self.store.damaged(folder)):
                with self.store.claim(folder, mid) as claimed:
                    if not claimed and self.store.path(folder, mid, ".eml").exists():
                        continue  # someone else is handling it
                    self.store.commit(quarantine_ops(self.store, folder, mid, envelope, reason))
                self.events.emit("quarantined", id=mid, folder=folder, reason=reason)

    async def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        await self.pickup.stop()
        self.events.emit("relay-stopped", pid=os.getpid())
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


async def serve(config: Config) -> None:
    """Run a relay until SIGTERM or SIGINT; stop cleanly."""
    relay = Relay(config)
    await relay.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await asyncio.wait_for(relay.stop(), timeout=4.5)
