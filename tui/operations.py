"""The operator's bulk actions, run from the console: asked with their scope, run off the event
loop behind a progress bar that esc stops, and accounted for message by message (the words are
tui/bulk.py's). A mixin of ConsoleApp (tui/app.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from textual import work

from relay.ops.queries import NotFound
from relay.ops.reasons import permanent_reply
from tui.bulk import VERBS, question, requeue_warning, result_line
from tui.collector import no_full_collections


class Operations:
    def confirm_and_operate(self, action: str, folder: str, ids: list[str],
                            then: Callable[[], None] | None = None) -> None:
        """Ask with the scope and the domains of messages not on screen ("Hold 1,812 messages
        in Queue (1,809 to greylist.test, 3 to b.example)?"); on yes, act."""
        from tui.screens.confirm import Confirm

        if not ids:
            self.notify("Nothing to act on: the folder is empty.", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.operate(action, folder, ids, then)

        domains = self.index.domains_of(folder, ids) if self.index.ready else None
        text = question(action, len(ids), folder, domains)
        if action == "requeue":
            text += requeue_warning(len(ids), self.permanent_failures(folder, ids))
        self.push_screen(Confirm(text), answered)

    def permanent_failures(self, folder: str, ids: list[str]) -> list[str]:
        """The 5xx replies that put these messages where they are, from the index (a lone
        message is read when the index is not built yet)."""
        if self.index.ready:
            entries = self.index.entries[folder]
            reasons = [entries[mid].reply for mid in ids if mid in entries]
        elif len(ids) == 1:
            try:
                reasons = [self.admin.summary_of(folder, ids[0]).last_error]
            except (NotFound, OSError):
                reasons = []
        else:
            reasons = []
        return [reply for reply in map(permanent_reply, reasons) if reply]

    @work(group="operate")
    async def operate(self, action: str, folder: str, ids: list[str],
                      then: Callable[[], None] | None = None) -> None:
        """Run one bulk action off the event loop, with a progress bar that esc stops, and
        report what it did to every message; then `then`, if given."""
        if self.readonly:
            self.notify("Read-only console: actions are off.", severity="error")
            return
        if self.bulk_cancel is not None:
            self.notify("Another bulk action is running; esc stops it.", severity="warning")
            return
        verb = VERBS[action][0]
        cancel = self.bulk_cancel = threading.Event()
        done = [0]

        def progress(count: int) -> bool:
            done[0] = count
            return not cancel.is_set()

        started = time.monotonic()
        self.dashboard.bulk_progress(verb, 0, len(ids), 0.0)
        timer = self.set_interval(0.1, lambda: self.dashboard.bulk_progress(
            verb, done[0], len(ids), time.monotonic() - started))
        try:
            with no_full_collections():
                result = await asyncio.to_thread(self.admin.bulk, action, ids, progress)
        except Exception as exc:  # the API's refusal, shown to the operator, not a crash
            self.notify(f"{verb} failed: {exc}", severity="error", markup=False)
            return
        finally:
            timer.stop()
            self.bulk_cancel = None
            self.dashboard.bulk_progress(verb, None, len(ids), 0.0)
            self.dashboard.refresh_panes([f for f, p in self.dashboard.panes.items() if p.stale])
        self.dashboard.panes[folder].view.marks.difference_update(result.done)
        undo = "Undo: 6 (Trash), mark them, u." if action == "delete" else ""
        self.last_result = result_line(action, result, len(ids), undo)
        self.notify(self.last_result[:1].upper() + self.last_result[1:],
                    severity="warning" if len(result.done) < len(ids) else "information",
                    timeout=8 if undo else 5, markup=False)
        if then is not None:
            then()

    def cancel_bulk(self) -> bool:
        """esc while a bulk action runs: it stops after the message in hand."""
        if self.bulk_cancel is None:
            return False
        self.bulk_cancel.set()
        return True
