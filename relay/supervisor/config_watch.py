"""Apply config file changes to a running relay: reload, validate, swap in; a broken file is
reported and the last good config stays in force."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import watchfiles

from relay.core import config_loader
from relay.core.config import Config, ConfigError
from relay.core.events import EventLog


class ConfigWatcher:
    def __init__(self, path: str | Path, apply: Callable[[Config], None],
                 events: EventLog, announce: bool = True) -> None:
        self.path = Path(path).absolute()
        self.apply = apply
        self.events = events
        self.announce = announce  # False: `apply` says config-reloaded once it is in force
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.loaded = self._signature()  # the file as the running config was read from it

    def start(self) -> None:
        self.task = asyncio.create_task(self._watch(), name="config-watch")

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    async def _watch(self) -> None:
        # The directory, not the file: editors and atomic writers replace the file by rename.
        # Every half second the file's signature is compared too, so a change made before the
        # watch was in place (or on a filesystem without notifications) is not missed.
        async for _ in watchfiles.awatch(
                self.path.parent, watch_filter=lambda _, changed: Path(changed) == self.path,
                debounce=200, step=50, stop_event=self.stop_event, recursive=False,
                rust_timeout=500, yield_on_timeout=True):
            signature = self._signature()
            if signature != self.loaded:
                self.loaded = signature
                self.reload()

    def reload(self) -> None:
        try:
            config = config_loader.load(self.path)
        except ConfigError as exc:
            self.events.emit("config-error", file=str(self.path), error=str(exc),
                             detail="the last good config stays in force")
            return
        try:
            self.apply(config)
        except ConfigError as exc:
            self.events.emit("config-error", file=str(self.path), error=str(exc),
                             detail="the last good config stays in force")
            return
        if self.announce:
            self.events.emit("config-reloaded", file=str(self.path))
