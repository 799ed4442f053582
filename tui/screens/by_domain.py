"""The Queue by destination domain, as qshape shows it: counts per age bucket and the most
common last reply. Enter opens the Queue filtered to the domain; the bulk keys act on every
queued message of the domain under the cursor (or of the marked domains)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import DataTable, Static

from relay.ops import QUEUE
from relay.ops.qshape import COLUMNS
from tui.actions import BY_DOMAIN, Guarded, bindings
from tui.index import DomainRow
from tui.widgets.keybar import KeyBar
from tui.widgets.scrolling import cursor_by_key


class ByDomain(Guarded, Screen):
    ACTS = BY_DOMAIN
    BINDINGS = bindings(BY_DOMAIN)

    def __init__(self) -> None:
        super().__init__(id="by-domain")
        self.rows: list[DomainRow] = []
        self.marks: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Static(id="by-domain-title", classes="form-title", markup=False)
        table = DataTable(cursor_type="row", zebra_stripes=True, id="by-domain-table")
        table.add_column(" ", width=1, key="mark")
        table.add_column("domain", width=24, key="domain")
        table.add_column("T", width=6, key="total")
        for label in COLUMNS:
            table.add_column(label, width=max(5, len(label)), key=label)
        table.add_column("most common last reply", width=40, key="reply")
        yield table
        yield KeyBar()

    def on_mount(self) -> None:
        self.reload()
        self.query_one(DataTable).focus()

    def reload(self) -> None:
        app = self.app
        table = self.query_one(DataTable)
        current = self.current()
        table.clear()
        self.rows = app.index.shape(app.clock()) if app.index.ready else []
        for row in self.rows:
            table.add_row(Text("●" if row.name in self.marks else " ", style="bold"),
                          Text(row.name), Text(f"{row.total:,}"),
                          *[Text(f"{n:,}" if n else "·") for n in row.counts],
                          Text(row.top_reply, no_wrap=True, overflow="ellipsis"), key=row.name)
        if current is not None and current.name in {r.name for r in self.rows}:
            table.move_cursor(row=table.get_row_index(current.name))
        total = sum(r.total for r in self.rows)
        title = (f" Queue by domain: {len(self.rows)} domains, {total:,} messages"
                 if app.index.ready else " Queue by domain: indexing…")
        if self.marks:
            title += f"  {len(self.marks)} marked"
        self.query_one("#by-domain-title", Static).update(Text(title, style="bold"))

    def index_changed(self) -> None:
        """The Queue changed: count again (a pass over the index, not over the files)."""
        self.reload()

    def current(self) -> DomainRow | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row >= len(self.rows):
            return None
        return self.rows[table.cursor_row]

    def action_cursor(self, where: str) -> None:
        cursor_by_key(self.query_one(DataTable), where)

    def action_back(self) -> None:
        self.app.pop_screen()

    @on(DataTable.RowSelected)
    def row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_drill()

    def action_drill(self) -> None:
        row = self.current()
        if row is None or self.app.screen is not self:  # the key and the table's select
            return
        self.app.pop_screen()
        self.app.dashboard.set_filter(QUEUE, f"domain:{row.name}")

    def action_mark(self) -> None:
        row = self.current()
        if row is None:
            return
        self.marks ^= {row.name}
        self.reload()
        self.query_one(DataTable).action_cursor_down()

    def action_bulk(self, action: str) -> None:
        """Every queued message of the marked domains (or the one under the cursor)."""
        row = self.current()
        domains = self.marks or ({row.name} if row else set())
        entries = self.app.index.entries[QUEUE]
        wanted = {d if d != "(local)" else "" for d in domains}
        ids = sorted(mid for mid, e in entries.items() if wanted.intersection(e.domains))
        self.app.confirm_and_operate(action, QUEUE, ids)
