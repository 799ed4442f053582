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
        text.append(" ")
        used = len(READ_ONLY) + 1
    for key, label in items:
        size = len(key) + len(label) + 2
        if used and used + size > width:
            text.append("\n")
            used = 0
        text.append(key, style=KEY_STYLE)
        text.append(f" {label} ")
        used += size
    return text


class KeyBar(Static):
    """Asks its screen which acts to show (`offered()`: those it can do now)."""

    DEFAULT_CSS = "KeyBar { height: auto; max-height: 3; dock: bottom; }"

    def render(self) -> Text:
        screen = self.screen
        return keybar_text(screen.offered(), self.size.width,  # type: ignore[attr-defined]
                           getattr(self.app, "readonly", False))

    def on_resize(self) -> None:
        self.refresh(layout=True)  # the number of lines follows the width
