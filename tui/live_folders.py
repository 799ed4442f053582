"""The folders kept live: file events gathered into pending ids, the index of whole folders
built after the first paint, and the panes (and open inspectors) brought up to both; a resync
catches a lost event. A mixin of ConsoleApp (tui/app.py)."""

from __future__ import annotations

import asyncio
import gc
import time

from textual import work
from textual.message import Message
from watchfiles import awatch

from relay.ops.listing import MatchError
from tui.collector import freeze_long_lived
from tui.model import changed_ids
from tui.screens.dashboard import VIEWS
from tui.screens.inspector import Inspector

BULK_REFRESH = 0.5  # seconds between two redraws of the panes while a bulk action runs


class MailrootChanged(Message):
    """Files changed; the ids wait in the app's pending set. A burst merges into one."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MailrootChanged)


class LiveFolders:
    @work(exclusive=True, group="watch", exit_on_error=False)
    async def watch_mailroot(self) -> None:
        """Turn file events into pending ids plus one mergeable message per burst."""
        paths = [self.store.folder(f) for f in VIEWS] + [self.store.log_dir]
        log_dir = str(self.store.log_dir)
        async for changes in awatch(*paths, watch_filter=None, debounce=100, step=50,
                                    recursive=False, stop_event=self._stop_watch):
            names = [path for _, path in changes]
            for folder, ids in changed_ids(str(self.store.root), names).items():
                self.pending.setdefault(folder, set()).update(ids)
            if any(name.startswith(log_dir) for name in names):
                self.pending.setdefault("log", set())
            self.post_message(MailrootChanged())

    def on_mailroot_changed(self, message: MailrootChanged) -> None:
        if not self.paused:
            self.apply_pending()

    @work(group="index", exit_on_error=False)
    async def build_index(self) -> None:
        """Read every folder whole, off the event loop, then let the views use the index;
        what changed meanwhile is read again."""
        built = await asyncio.to_thread(self.index.build)
        async with self._changing:
            self.index.install(built)
            freeze_long_lived()
            again, self.unindexed = self.unindexed, {}
            if again:
                self.index.merge(await asyncio.to_thread(self.index.read_changes, again))
            for folder in VIEWS:
                self.show_view(folder)
            self.dashboard.refresh_panes(VIEWS)

    def show_view(self, folder: str, changed: set[str] | frozenset[str] = frozenset()) -> None:
        """A pane's ids from the index (its filter and sort over the whole folder)."""
        view = self.dashboard.panes[folder].view
        ids = view.ids if view.indexed else []
        try:
            ids = self.index.query(folder, view.needle, view.sort)
            view.error = ""
        except MatchError as exc:
            view.error = str(exc)
        entries = self.index.entries[folder]
        view.show(self.admin, ids, len(entries), entries.__contains__, changed)

    def refresh_view(self, folder: str) -> None:
        """After the operator changed a view's filter, sort or page."""
        if self.index.ready:
            self.show_view(folder)
        else:
            self.dashboard.panes[folder].view.apply(self.admin, ())
        self.dashboard.refresh_panes([folder])

    @work(group="apply", exit_on_error=False)
    async def apply_pending(self) -> None:
        """Bring the index and the panes up to the file events gathered so far."""
        async with self._changing:
            if self.bulk_cancel is not None:  # a bulk action moves thousands: gather more
                await asyncio.sleep(self._last_apply + BULK_REFRESH - time.monotonic())
            self._last_apply = time.monotonic()
            pending, self.pending = self.pending, {}
            if pending.pop("log", None) is not None:
                self.follow_events()
            if not pending:
                return
            if self.index.ready:
                self.index.merge(await asyncio.to_thread(self.index.read_changes, pending))
                for folder, ids in pending.items():
                    self.show_view(folder, ids)
            else:
                for folder, ids in pending.items():
                    self.unindexed.setdefault(folder, set()).update(ids)
                    self.dashboard.panes[folder].view.apply(self.admin, ids)
            self.dashboard.refresh_panes(list(pending))
            self.follow_inspected(set().union(*pending.values()))
            self.show_status()
            if self.bulk_cancel is not None:  # gc's full pass, away from the redraws
                self.set_timer(BULK_REFRESH / 2, gc.collect)

    @work(group="resync", exclusive=True, exit_on_error=False)
    async def resync(self) -> None:
        """A cheap safety net for lost file events: compare names (listed off the event loop:
        100,000 of them take a while), re-read only the differences."""
        if self.paused:
            return
        folders = [f for f in self.dashboard.panes if f != "Pickup"]
        names = await asyncio.to_thread(lambda: {f: set(self.store.ids(f)) for f in folders})
        for folder in folders:
            known = self.index.entries[folder] if self.index.ready else \
                self.dashboard.panes[folder].view.ids
            differ = names[folder].symmetric_difference(known)
            if differ:
                self.pending.setdefault(folder, set()).update(differ)
        self.apply_pending()

    def follow_inspected(self, changed: set[str]) -> None:
        """Every open inspector whose message changed shows it again, wherever it is now:
        a requeued message that fails again is seen back in Badmail."""
        for screen in self.screen_stack:
            if isinstance(screen, Inspector) and screen.message_id in changed:
                screen.follow()
