"""The dashboard: one pane per folder (tabs when narrow, two rows side by side when wide), the
status line and the activity pane."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Input, ProgressBar, Static, Tab, Tabs

from relay.ops import BADMAIL, FOLDERS, HOLD, PICKUP, QUEUE, TRASH, all_usage, usage_table
from tui.actions import DASHBOARD, Act, Guarded, bindings
from tui.bulk import VERBS, plural
from tui.screens.confirm import Confirm
from tui.widgets.activity_log import ActivityLog
from tui.widgets.folder_pane import FolderPane, can
from tui.widgets.keybar import KeyBar
from tui.widgets.status import StatusBar

WIDE = 120  # columns from which all panes show side by side
TIGHT = 80  # columns under which the tabs leave out their keys (1-6) and most of their padding,
# so that every folder's count shows (at 60 the last two were cut)
VIEWS = (*FOLDERS, TRASH)  # Trash last: deleted messages, until undeleted or purged
ACTED_ON = (QUEUE, BADMAIL)  # side by side, these take the most width when they hold mail
ROWS = {"top": VIEWS[:3], "bottom": VIEWS[3:]}  # side by side: Pickup Queue Drop over Badmail Hold Trash, activity


class Dashboard(Guarded, Screen):
    ACTS = DASHBOARD
    BINDINGS = bindings(DASHBOARD)

    def __init__(self) -> None:
        super().__init__(id="dashboard", classes="narrow")
        self.panes = {folder: FolderPane(folder, str(i + 1), self.app.clock)
                      for i, folder in enumerate(VIEWS)}
        self.panes[TRASH].add_class("trash")
        self.active = QUEUE
        self.widths: dict[str, str | None] = {}  # each pane's share of its row, as last set

    def compose(self) -> ComposeResult:
        yield Static(id="header", markup=False)
        yield StatusBar(id="status")
        tabs = Tabs(*[Tab(self.tab_label(f), id=f"tab-{f.lower()}") for f in VIEWS],
                    active=f"tab-{self.active.lower()}")
        tabs.can_focus = False
        yield tabs
        with Vertical(id="folders"):
            for row, folders in ROWS.items():
                with Horizontal(id=f"row-{row}", classes="row"):
                    yield from (self.panes[f] for f in folders)
                    if row == "bottom":
                        yield ActivityLog(id="activity", max_lines=500)
        with Horizontal(id="bulk"):
            yield Static(id="bulk-label", markup=False)
            yield ProgressBar(id="bulk-bar", show_eta=False)
        yield KeyBar()

    async def on_mount(self) -> None:
        self.show_folder(self.active)
        await self.app.begin()

    def offered(self) -> list[Act]:
        """The footer's keys: only the bulk actions that make sense in this folder."""
        acts = [a for a in super().offered()
                if not a.action.startswith("bulk(") or can(self.active, a.action[6:-2])]
        if self.active == HOLD:  # h releases what is held
            acts = [replace(a, label="release") if a.keys == "h" else a for a in acts]
        return acts

    def on_resize(self, event: Resize) -> None:
        wide = event.size.width >= WIDE
        self.set_class(wide, "wide")
        self.set_class(not wide, "narrow")
        tight = event.size.width < TIGHT
        if tight != self.has_class("tight"):
            self.set_class(tight, "tight")
            for folder in VIEWS:
                self.query_one(f"#tab-{folder.lower()}", Tab).label = self.tab_label(folder)
        self.share_width()
        self.call_after_refresh(self.redraw_stale)
        self.call_after_refresh(self.query_one("#activity", ActivityLog).scroll_end, animate=False)

    def redraw_stale(self) -> None:
        """Panes that changed while hidden and show now (the screen grew wide)."""
        for pane in self.panes.values():
            if pane.stale and pane.display:
                pane.stale = False
                pane.redraw()

    # --- the app feeds these ---

    def tab_label(self, folder: str) -> Text:
        pane = self.panes[folder]
        key = "" if self.has_class("tight") else f"{pane.key} "
        return Text(f"{key}{folder} {pane.view.total:,}")  # as the pane title counts

    def refresh_panes(self, folders) -> None:
        """Redraw the panes. While a bulk action runs, a hidden one (narrow: all but the
        active) is redrawn when it is shown, so moving thousands between two folders draws
        one table, not two."""
        with self.app.batch_update():
            for folder in folders:
                pane = self.panes[folder]
                pane.stale = not pane.display and self.app.bulk_cancel is not None
                if not pane.stale:
                    pane.redraw()
                self.query_one(f"#tab-{folder.lower()}", Tab).label = self.tab_label(folder)
            self.share_width()
        if QUEUE in folders and hasattr(self.app.screen, "index_changed"):
            self.app.screen.index_changed()

    def tick_panes(self) -> None:
        for pane in self.panes.values():
            pane.tick()

    def share_width(self) -> None:
        """Side by side, each row shares its width among its panes by what they hold: an
        empty pane has 1 share, one with mail 2, and Queue and Badmail with mail 4 (the
        folders an operator acts on; the activity pane has 2). So a busy Queue is not squeezed
        by an empty Pickup or Drop. Narrow, one pane takes the whole width."""
        wide = self.has_class("wide")
        for folder, pane in self.panes.items():
            busy = 4 if folder in ACTED_ON else 2
            width = f"{busy if pane.view.total else 1}fr" if wide else None
            if self.widths.get(folder, "") != width:
                self.widths[folder] = width
                pane.styles.width = width

    def activity(self, lines: list[str]) -> None:
        self.query_one("#activity", ActivityLog).write_lines(lines)

    def bulk_progress(self, verb: str, done: int | None, total: int, seconds: float) -> None:
        """The bulk action's bar: count and rate while it runs (done=None: it ended)."""
        box = self.query_one("#bulk")
        box.set_class(done is not None, "running")
        if done is None:
            return
        rate = f"  {done / seconds:,.0f} msg/s" if seconds > 0.2 and done else ""
        self.query_one("#bulk-label", Static).update(
            f"{verb}: {done:,} of {total:,}{rate}  (esc stops)")
        self.query_one("#bulk-bar", ProgressBar).update(total=total, progress=done)

    # --- showing folders ---

    @property
    def pane(self) -> FolderPane:
        return self.panes[self.active]

    def show_folder(self, folder: str) -> None:
        self.active = folder
        self.set_class(folder == TRASH, "trash-active")
        for name, pane in self.panes.items():
            pane.set_class(name == folder, "active")
        self.query_one(Tabs).active = f"tab-{folder.lower()}"
        for row, folders in ROWS.items():
            self.query_one(f"#row-{row}").set_class(folder in folders, "has-active")
        if self.pane.stale:
            self.pane.stale = False
            self.pane.redraw()
        self.pane.table.focus()
        self.query_one(KeyBar).refresh(layout=True)  # its lines follow its keys

    @on(Tabs.TabActivated)
    def tab_activated(self, event: Tabs.TabActivated) -> None:
        folder = next(f for f in VIEWS if f"tab-{f.lower()}" == event.tab.id)
        if folder != self.active:
            self.show_folder(folder)

    def action_folder(self, folder: str) -> None:
        self.show_folder(folder)

    def action_next_folder(self) -> None:
        self.show_folder(VIEWS[(VIEWS.index(self.active) + 1) % len(VIEWS)])

    @on(DataTable.RowHighlighted)
    def follow_focus(self, event: DataTable.RowHighlighted) -> None:
        pane = next((p for p in self.panes.values() if p.table is event.data_table), None)
        if pane is not None and pane.folder != self.active and event.data_table.has_focus:
            self.active = pane.folder
            for name, other in self.panes.items():
                other.set_class(name == pane.folder, "active")
            self.query_one(KeyBar).refresh(layout=True)  # its lines follow its keys

    # --- reading ---

    @on(DataTable.RowSelected)
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_inspect()

    def action_inspect(self) -> None:
        from tui.screens.inspector import Inspector

        current = self.pane.current_id()
        if current is None:
            self.notify("No message under the cursor.", severity="warning")
            return
        self.app.push_screen(Inspector(self.active, current))

    def action_filter(self) -> None:
        box = self.pane.filter_input
        box.add_class("shown")
        box.focus()

    @on(Input.Changed, ".filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.pane.view.needle = event.value.strip()
        self.pane.view.page = 0
        self.app.refresh_view(self.active)

    @on(Input.Submitted, ".filter")
    def filter_done(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            event.input.remove_class("shown")
        self.pane.table.focus()

    def set_filter(self, folder: str, text: str) -> None:
        """Show `folder` filtered by `text` (the by-domain view's drill-in)."""
        self.show_folder(folder)
        box = self.pane.filter_input
        box.value = text  # its Changed message applies it
        box.set_class(bool(text), "shown")
        self.pane.table.focus()

    def action_clear(self) -> None:
        """esc: one level back — a running bulk action first, then the filter, then the
        marks. Never quits."""
        if self.app.cancel_bulk():
            self.notify("Stopping after the message in hand…", timeout=2)
            return
        pane = self.pane
        if pane.view.needle or pane.filter_input.has_focus:
            pane.filter_input.value = ""
            pane.view.needle = ""
            pane.filter_input.remove_class("shown")
            pane.table.focus()
            self.app.refresh_view(self.active)
        elif pane.view.marks:
            pane.view.marks.clear()
        pane.redraw()

    def action_sort(self) -> None:
        from relay.ops.listing import SORTS

        view = self.pane.view
        view.sort = (view.sort + 1) % len(SORTS)
        self.app.refresh_view(self.active)
        self.notify(f"{self.active}: sorted {SORTS[view.sort][0]}", timeout=1.5)

    def action_mark(self) -> None:
        self.pane.toggle_mark()

    def action_mark_all(self) -> None:
        """`*`: mark every message the filter matches (on every page); asks when that is
        more than the screen shows."""
        pane = self.pane
        ids = list(pane.view.ids)
        if not ids:
            return

        def mark(yes: bool | None) -> None:
            if yes:
                pane.view.marks.update(ids)
                pane.redraw()

        if len(ids) <= pane.table.size.height:
            mark(True)
            return
        scope = f" that match “{pane.view.needle}”" if pane.view.needle else ""
        self.app.push_screen(Confirm(f"Mark all {plural(len(ids))} in {pane.folder}{scope}? "
                                     f"(the screen shows {pane.table.size.height})"), mark)

    def action_follow(self) -> None:
        view = self.pane.view
        view.follow = not view.follow
        self.app.refresh_view(self.active)

    def action_page(self, step: int) -> None:
        view = self.pane.view
        view.page = max(0, min(view.pages - 1, view.page + step))
        self.app.refresh_view(self.active)

    def action_pause(self) -> None:
        self.app.toggle_pause()

    def action_domains(self) -> None:
        from tui.screens.domains import DomainEditor

        self.app.push_screen(DomainEditor())

    def action_by_domain(self) -> None:
        from tui.screens.by_domain import ByDomain

        self.app.push_screen(ByDomain())

    def action_settings(self) -> None:
        from tui.screens.settings import SettingsForm

        self.app.push_screen(SettingsForm())

    async def action_disk(self) -> None:
        """Drop and Badmail grow until the operator clears them: say what each folder holds."""
        usage = await asyncio.to_thread(all_usage, self.app.store, time.time())
        self.notify("\n".join(usage_table(usage)), title="Disk used by each folder", timeout=15,
                    markup=False)

    # --- acting ---

    def action_bulk(self, action: str) -> None:
        if self.app.readonly:
            self.notify("Read-only console: actions are off.", severity="error")
            return
        pane = self.pane
        if not can(pane.folder, action):
            self.notify(f"{VERBS[action][0]} does not apply in {pane.folder}"
                        + (": its files are not taken in yet." if pane.folder == PICKUP else
                           ": release first (h)." if pane.folder == HOLD else "."),
                        severity="warning")
            return
        if action == "hold" and pane.folder == HOLD:
            action = "release"
        self.app.confirm_and_operate(action, pane.folder, pane.scope())
