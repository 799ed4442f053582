"""Apply config file changes to a running relay: reload, validate, swap in; a broken file is
reported and the last good config stays in force."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import watchfiles

from relay import config as configmod
from relay.config import Config, ConfigError
from relay.events import EventLog


class ConfigWatcher:
    def __init__(self, path: str | Path, apply: Callable[[Config], None],
                 events: EventLog) -> None:
        self.path = Path(path).absolute()
        self.apply = apply
        self.events = events
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._watch(), name="config-watch")

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _watch(self) -> None:
        # The directory, not the file: editors and atomic writers replace the file by rename.
        async for _ in watchfiles.awatch(
                self.path.parent, watch_filter=lambda _, changed: Path(changed) == self.path,
                debounce=200, step=50, stop_event=self.stop_event, recursive=False):
            self.reload()

    def reload(self) -> None:
        try:
            config = configmod.load(self.path)
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
        self.events.emit("config-reloaded", file=str(self.path))
