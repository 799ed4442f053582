"""The Pickup watcher's inotify reader, on a real directory."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from relay.core.inotify import DirectoryWatch


async def test_names_arrive_for_rename_in_create_and_close(tmp_path: Path) -> None:
    watched = tmp_path / "Pickup"
    watched.mkdir()
    seen: list[str] = []
    overflows: list[bool] = []
    watch = DirectoryWatch(watched, seen.append, lambda: overflows.append(True))
    try:
        (tmp_path / "ready.eml").write_bytes(b"x")
        os.rename(tmp_path / "ready.eml", watched / "ready.eml")
        with (watched / "slow.eml").open("wb") as handle:
            handle.write(b"partial")
            await asyncio.sleep(0.05)
            assert seen == ["ready.eml", "slow.eml"]  # renamed in; created (still open)
        await asyncio.sleep(0.05)
        assert seen == ["ready.eml", "slow.eml", "slow.eml"]  # closed after writing
        assert not overflows
    finally:
        watch.close()
