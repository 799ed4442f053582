"""The console's text input: compact, and still (no blinking cursor) when the app is."""

from __future__ import annotations

from textual.widgets import Input


class TextBox(Input):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("compact", True)
        super().__init__(*args, **kwargs)

    def on_mount(self) -> None:
        if getattr(self.app, "still", False):
            self.cursor_blink = False
