"""Moving through a text view or a table by key, so that every key acts."""

from __future__ import annotations

from textual.containers import ScrollableContainer
from textual.widgets import DataTable


def scroll_by_key(body: ScrollableContainer, where: str) -> None:
    """Scroll at once, without animation, from where the last key sent the view: Textual's
    own moves wait for the next refresh and count from where the view is now, so five `j`
    that arrive in one write (as keys do over SSH) moved it one line."""
    last = body.scroll_target_y
    page = max(1, body.scrollable_content_region.height - 1)
    y = {"down": last + 1, "up": last - 1, "page": last + page, "home": 0,
         "end": body.max_scroll_y}[where]
    body.scroll_to(y=min(body.max_scroll_y, max(0, y)), animate=False, immediate=True)


def cursor_by_key(table: DataTable, where: str) -> None:
    """j/k/g/G in a table that holds all its rows: one down or up, the first or the last."""
    {"down": table.action_cursor_down, "up": table.action_cursor_up,
     "top": table.action_scroll_top, "bottom": table.action_scroll_bottom}[where]()
