"""The footer line, drawn from the screen's action table: as many keys as the width allows,
in the table's order, and always `?` help and `q` quit, so nothing is cut off mid-word."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.actions import GLOBAL, Act

KEY_STYLE = "bold reverse"  # a key reads as a key in colour and with NO_COLOR alike


def keybar_text(acts: list[Act], width: int) -> Text:
    always = [a for a in GLOBAL if a.footer]
    items = [(a.shown_keys, a.label or a.title) for a in acts if a.footer]
    tail = [(a.shown_keys, a.label or a.title) for a in always]
    room = width - sum(len(k) + len(label) + 2 for k, label in tail)
    shown = []
    for key, label in items:
        room -= len(key) + len(label) + 2
        if room < 0:
            break
        shown.append((key, label))
    text = Text(no_wrap=True, overflow="crop")
    for key, label in shown + tail:
        text.append(key, style=KEY_STYLE)
        text.append(f" {label} ")
    return text


class KeyBar(Static):
    """Asks its screen which acts to show (`offered()`: those it can do now)."""

    DEFAULT_CSS = "KeyBar { height: 1; dock: bottom; }"

    def render(self) -> Text:
        screen = self.screen
        return keybar_text(screen.offered(), self.size.width)  # type: ignore[attr-defined]
