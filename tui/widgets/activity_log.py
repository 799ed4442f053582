"""The activity pane: the newest relay events, always in view, like `tail -f`."""

from __future__ import annotations

from collections.abc import Iterable

from rich.cells import cell_len
from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import Log


class ActivityLog(Log):
    """A Log that repaints and follows on every write, and marks a cut line with `…`.

    Textual's Log, once full (max_lines), drops old lines and writes new ones where the old
    were without repainting them: the screen kept showing lines minutes old until a resize.
    """

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> ActivityLog:
        super().write_lines(lines, scroll_end=False)
        self.refresh()  # every row moved up: all of it is new
        self.scroll_end(animate=False, immediate=True, x_axis=False)
        return self

    def _render_line(self, y: int, scroll_x: int, width: int) -> Strip:
        width = min(width, self.scrollable_content_region.width)  # not under the scrollbar
        strip = super()._render_line(y, scroll_x, width)
        if width > 1 and y < len(self._lines) and cell_len(self._lines[y]) > scroll_x + width:
            style = self.rich_style
            strip = Strip.join([strip.crop(0, width - 1), Strip([Segment("…", style)], 1)])
        return strip
