"""A form's yes/no field: `[X]` or `[ ]`, which reads the same with and without colour."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Checkbox


class FormCheckbox(Checkbox):
    """Textual's Checkbox shows the same X for on and off (only colour differs) and, with no
    label, is cut to `▐X…`; this one is three cells that say its value."""

    @property
    def _button(self) -> Content:
        style = self.get_visual_style("toggle--button")
        return Content.assemble("[", ("X" if self.value else " ", style), "]")

    def render(self) -> Content:
        return self._button
