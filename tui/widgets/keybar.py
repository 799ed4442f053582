"""The footer, drawn from the screen's action table: every key it offers, in the table's
order, wrapped onto a second line rather than dropped, always ending with `?` help and `q` quit;
READ-ONLY first in a read-only console, where the changing keys would be."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.actions import GLOBAL, Act

KEY_STYLE = "bold reverse"  # a key reads as a key in colour and with NO_COLOR alike
READ_ONLY = "READ-ONLY: changes are off"


def keybar_text(acts: list[Act], width: int, readonly: bool = False) -> Text:
    items = [(a.shown_keys, a.label or a.title) for a in acts + [a for a in GLOBAL if a.footer]
             if a.footer]
    text = Text(no_wrap=True, overflow="crop")
    used = 0
    if readonly:
        text.append(READ_ONLY, style=KEY_STYLE)
        used = len(READ_ONLY)
    for key, label in items:
        size = len(key) + 1 + len(label)
        if used and used + 1 + size > width:
            text.append("\n")
            used = 0
        elif used:
            text.append(" ")
            used += 1
        text.append(key, style=KEY_STYLE)
        text.append(f" {label}")
        used += size
    return text


class KeyBar(Static):
    """Asks its screen which acts to show (`offered()`: those it can do now)."""

    DEFAULT_CSS = "KeyBar { height: auto; max-height: 3; dock: bottom; }"

    def text(self, width: int) -> Text:
        return keybar_text(self.screen.offered(), width,  # type: ignore[attr-defined]
                           getattr(self.app, "readonly", False))

    def render(self) -> Text:
        return self.text(self.size.width)

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self.text(width).plain.split("\n"))
