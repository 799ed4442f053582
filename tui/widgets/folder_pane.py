"""One folder: a title with counts, a filter line and a keyed table updated by diff."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.events import Resize
from textual.widgets import DataTable, Static

from relay.ops import BADMAIL, DROP, HOLD, PICKUP, QUEUE, TRASH
from relay.ops.listing import SORTS
from relay.ops.queries import MessageSummary
from tui.model import COLUMNS, PAGE, Column, FolderView, fit, state_word
from tui.theme import ACTIVE, FAILED_TEXT, MUTED, OK, WAITING, failed_style
from tui.widgets.textbox import TextBox

REBUILD = 40  # rows gone at once from which adding all again beats removing each (O(n))
SCROLLBAR = 1  # the table's vertical scrollbar, kept free so columns never jump
STATE_STYLE = {"‖": WAITING, "↻": WAITING, "▶": ACTIVE, "→": ACTIVE, "✓": OK, "…": MUTED}


class FolderTable(DataTable):
    """The folder's table; j/k as well as the arrows; g/G (home/end) the first and last row
    of the whole folder as filtered, not of the page it shows (as in less and k9s)."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g,home", "folder_end(False)", "First", show=False),
        Binding("G,end", "folder_end(True)", "Last", show=False),
    ]

    def action_folder_end(self, last: bool) -> None:
        pane = self.parent
        assert isinstance(pane, FolderPane)
        pane.go_to_end(last)


GAP = "  "  # between two parts of a title


def cut_end(text: str, width: int, rest: int) -> str:
    """`text` cut with … so that it and `rest` more cells fit `width` (0: never cut)."""
    room = width - rest
    if not width or len(text) <= room:
        return text
    return text[:max(1, room - 1)] + "…"


def wrap_parts(parts: list[Text], width: int) -> Text:
    """Parts joined by two spaces, a part that would pass `width` starting a new line: a
    title's state is never cut off at the right."""
    text = Text(no_wrap=True, overflow="ellipsis")
    used = 0
    for part in parts:
        size = part.cell_len
        if used and width and used + len(GAP) + size > width:
            text.append("\n")
            used = 0
        elif used:
            text.append(GAP)
            used += len(GAP)
        text.append_text(part)
        used += size
    return text


class PaneTitle(Static):
    """A folder pane's title, drawn at its own width: one line, or more rather than cut."""

    def render(self) -> Text:
        return self.pane.title_text(self.content_size.width)

    @property
    def pane(self) -> FolderPane:
        assert isinstance(self.parent, FolderPane)
        return self.parent

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.pane.title_text(width).plain.split("\n"))


class FolderPane(Vertical):
    """A folder's live view. The app feeds it changed ids; it redraws only what changed."""

    def __init__(self, folder: str, key: str, clock=time.time) -> None:
        super().__init__(id=f"pane-{folder.lower()}", classes="pane")
        self.folder = folder
        self.key = key
        self.view = FolderView(folder)
        self.clock = clock
        self.columns: list[Column] = []  # those shown: as many as the pane's width allows
        self.stale = False  # changed while hidden: redrawn when shown
        self.drawn: dict[str, tuple[MessageSummary, bool, list[Text]]] = {}  # row drawn,
        # its mark and its cells
        self.widths: list[int] = []

    def compose(self) -> ComposeResult:
        yield PaneTitle(classes="pane-title")
        yield TextBox(placeholder="filter: sender, recipient, subject, domain, reason — "
                                "enter keeps, esc clears", classes="filter")
        yield FolderTable(cursor_type="row", zebra_stripes=True,
                          id=f"table-{self.folder.lower()}")

    def on_mount(self) -> None:
        self.fit_columns(80)

    def on_resize(self, event: Resize) -> None:
        self.fit_columns(event.size.width)

    def fit_columns(self, width: int) -> None:
        """Show the columns that fit the pane (no sideways scrolling); rebuild if changed."""
        if width <= 0:
            return  # a hidden pane: fitted when it is shown
        fitted = fit(COLUMNS[self.folder], width - SCROLLBAR)
        columns, widths = [c for c, _ in fitted], [w for _, w in fitted]
        if (columns, widths) == (self.columns, self.widths):
            return
        self.columns, self.widths = columns, widths
        table = self.table
        current = self.current_id()
        table.clear(columns=True)
        for column, cells in fitted:
            table.add_column(Text(column.label), width=cells, key=column.key)
        self.redraw(current)

    @property
    def table(self) -> FolderTable:
        return self.query_one(FolderTable)

    @property
    def filter_input(self) -> TextBox:
        return self.query_one(".filter", TextBox)

    # --- what the title says ---

    def title_parts(self, width: int = 0) -> list[Text]:
        """What the title says, state first, each part whole: the folder and its count, the
        filter and its matches (a long expression is cut, never a count), the marks, the page,
        the sort. `width`: the most a part may take (0: no limit)."""
        view = self.view
        total, shown = view.total, len(view.ids)
        parts = [Text.assemble((f"{self.key} {self.folder}", "bold"),
                               f"  {total:,} message{'s' if total != 1 else ''}")]
        if not view.indexed:
            done = f" {view.indexing[0]:,} of {view.indexing[1]:,}" if view.indexing else ""
            parts.append(Text(f"indexing{done}…", style=MUTED))
            if view.needle:
                parts.append(Text(f"filter “{cut_end(view.needle, width, 10)}”", style=MUTED))
        elif view.needle:
            counts = f"”: {shown:,} of {total:,}"
            needle = cut_end(view.needle, width, len("filter “") + len(counts))
            parts.append(Text(f"filter “{needle}{counts}", style="bold"))
        if view.error:
            parts.append(Text(view.error, style=FAILED_TEXT))
        if view.marks:
            parts.append(Text(f"{len(view.marks):,} marked", style="bold reverse"))
        if view.follow:
            parts.append(Text("following", style="bold"))
        if view.pages > 1:
            first = view.page * PAGE + 1
            parts.append(Text(f"rows {first:,}–{min(shown, first + PAGE - 1):,} of {shown:,} "
                              "([ ] page)"))
        if view.sort:
            parts.append(Text(f"sort: {SORTS[view.sort][0]}", style=MUTED))
        return parts

    def title_text(self, width: int = 0) -> Text:
        """The title's parts on as many lines as `width` needs (0: one line)."""
        return wrap_parts(self.title_parts(width), width)

    def current_id(self) -> str | None:
        table = self.table
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # an empty table has no cell at the cursor
            return None

    def scope(self) -> list[str]:
        """What a bulk action applies to: the marks, else the row under the cursor."""
        if self.view.marks:
            return sorted(self.view.marks)
        current = self.current_id()
        return [current] if current else []

    # --- drawing ---

    def cells(self, row: MessageSummary, now: float) -> list[Text]:
        return [self.cell(row, column, width, now)
                for column, width in zip(self.columns, self.widths, strict=True)]

    def cell(self, row: MessageSummary, column: Column, width: int, now: float) -> Text:
        """One cell; a cell that cannot be drawn shows `?` and the console says why on its
        status line: one odd entry never takes the folder, or the console, down."""
        try:
            return self._cell(row, column, width, now)
        except Exception as exc:  # any error: the rest of the view goes on
            self.app.report_view_error(exc)  # type: ignore[attr-defined]
            return Text("?", style=FAILED_TEXT)

    def _cell(self, row: MessageSummary, column: Column, width: int, now: float) -> Text:
        if column.key == "mark":
            return Text("●" if row.id in self.view.marks else " ", style="bold")
        if column.key == "state":
            word = state_word(row, now)
            style = failed_style(self.app.no_color) if word[0] == "✗" else STATE_STYLE.get(
                word[0], "")
            return Text(word, style=style)
        text = column.cell(row, now)
        if column.shorten is not None:
            text = column.shorten(text, width)
        return Text(text, no_wrap=True, overflow="ellipsis")

    def tick(self) -> None:
        """Ages, countdowns and due states follow the clock: the rows on screen get their
        changed cells, nothing is rebuilt."""
        table = self.table
        if not table.row_count or not self.display:
            return
        now = self.clock()
        ticking = [(c, w) for c, w in zip(self.columns, self.widths, strict=True) if c.ticks]
        first = int(table.scroll_y)
        for row_key in list(table.rows)[first:first + table.size.height + 1]:
            row = self.view.rows.get(row_key.value)
            if row is None:
                continue
            for column, width in ticking:
                cell = self.cell(row, column, width, now)
                if table.get_cell(row_key, column.key) != cell:
                    table.update_cell(row_key, column.key, cell)

    def redraw(self, current: str | None = None) -> None:
        """Bring the table to the view by diff; keep the cursor on its row by key."""
        table = self.table
        now = self.clock()
        rows = self.view.visible()
        wanted = [r.id for r in rows]
        current = current or self.current_id()
        have = [k.value for k in table.rows]
        keep = set(wanted)
        kept = [k for k in have if k in keep]
        if wanted[:len(kept)] != kept or len(have) - len(kept) > REBUILD:
            table.clear()  # the order changed (sort, filter), or many went: rebuild
            have = []
        for key in have:
            if key not in keep:
                table.remove_row(key)
        present = set(have)
        quick = self.app.bulk_cancel is not None  # type: ignore[attr-defined]
        drawn, self.drawn = self.drawn, {}
        for row in rows:
            marked = row.id in self.view.marks
            before = drawn.get(row.id)
            if quick and before is not None and before[:2] == (row, marked):
                self.drawn[row.id] = before  # a bulk action runs: a row not re-read keeps
                if row.id not in present:  # its cells (and ages), also when added again
                    table.add_row(*before[2], key=row.id)
                continue
            cells = self.cells(row, now)
            self.drawn[row.id] = (row, marked, cells)
            if row.id in present:
                for column, cell in zip(self.columns, cells, strict=True):
                    if table.get_cell(row.id, column.key) != cell:
                        table.update_cell(row.id, column.key, cell)
            else:
                table.add_row(*cells, key=row.id)
        if self.view.follow:
            current = self.view.newest()
        if current in keep:
            table.move_cursor(row=table.get_row_index(current), scroll=self.view.follow)
        self.show_title()

    def show_title(self) -> None:
        title = self.query_one(PaneTitle)
        title.refresh(layout=True)  # its height follows its lines

    def go_to_end(self, last: bool) -> None:
        """The cursor on the first or the last message of the whole (filtered) folder: its
        page is loaded first."""
        view = self.view
        page = view.pages - 1 if last else 0
        if page != view.page:
            view.page = page
            self.app.refresh_view(self.folder)  # type: ignore[attr-defined]
        table = self.table
        if table.row_count:
            table.move_cursor(row=table.row_count - 1 if last else 0)

    def toggle_mark(self) -> None:
        current = self.current_id()
        if current is None:
            return
        self.view.marks ^= {current}
        self.redraw()
        self.table.action_cursor_down()


def can(folder: str, action: str) -> bool:
    """Which bulk actions make sense in which folder."""
    return {
        "requeue": folder in (BADMAIL, DROP, QUEUE),
        "retry": folder == QUEUE,
        "hold": folder in (QUEUE, HOLD),
        "delete": folder not in (PICKUP, TRASH),
        "undelete": folder == TRASH,
    }[action]
