"""`?`: every key of the screen it was opened from, and what each status symbol means."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.actions import Act
from tui.theme import MUTED

LEGEND = [("→ new", "queued, not tried yet"), ("↻ retry", "deferred, waiting for next retry"),
          ("▶ due", "due now"), ("‖ held", "on hold: no delivery, expiry clock stopped"),
          ("✗ bad", "in Badmail, with the reason"), ("✓ local", "delivered into Drop"),
          ("… waiting", "in Pickup, not taken yet")]


class Help(ModalScreen[None]):
    BINDINGS = [("escape,q,question_mark", "dismiss", "close")]

    def __init__(self, title: str, acts: list[Act], readonly: bool) -> None:
        super().__init__(classes="dialog-screen")
        self.heading = title
        self.acts = [a for a in acts if not (readonly and a.mutating)]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        for act in self.acts:
            keys.add_row(Text(act.shown_keys, style="bold"), Text(act.title),
                         Text(act.help, style=MUTED))
        legend = Table.grid(padding=(0, 2))
        for word, meaning in LEGEND:
            legend.add_row(Text(word, style="bold"), Text(meaning))
        with VerticalScroll(classes="dialog help"):
            yield Static(Text(f"{self.heading} — keys (esc closes)", style="bold"))
            yield Static(keys)
            yield Static(Text("\nStatus symbols", style="bold"))
            yield Static(legend)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
