"""`?`: every key of the screen it was opened from, and what each status symbol means."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.actions import Act
from tui.theme import MUTED
from tui.widgets.scrolling import scroll_by_key

LEGEND = [("→ new", "queued, not tried yet"), ("↻ retry", "deferred, waiting for next retry"),
          ("▶ due", "due now"), ("‖ held", "on hold: no delivery, expiry clock stopped"),
          ("✗ bad", "in Badmail, with the reason"), ("✓ local", "delivered into Drop"),
          ("… waiting", "in Pickup, not taken yet"),
          ("… writing", "in Pickup, a writer still has it open"),
          ("… settling", "in Pickup, closed, taken once its settle time is over")]


class Help(ModalScreen[None]):
    BINDINGS = [("escape,q,question_mark", "dismiss", "close"),
                ("j,down", "scroll('down')", "down"), ("k,up", "scroll('up')", "up"),
                ("g,home", "scroll('home')", "top"), ("G,end", "scroll('end')", "end"),
                ("space,pagedown", "scroll('page')", "page")]

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
        with Vertical(classes="dialog help"):
            yield Static(Text(f"{self.heading} — keys", style="bold"))
            with VerticalScroll(id="help-body"):
                yield Static(keys)
                yield Static(Text("\nStatus symbols", style="bold"))
                yield Static(legend)
            yield Static(id="help-more", markup=False)

    def on_mount(self) -> None:
        self.call_after_refresh(self.show_more)

    def show_more(self) -> None:
        """Say whether more is below, and how to get to it."""
        body = self.query_one("#help-body", VerticalScroll)
        more = body.max_scroll_y - body.scroll_y > 0
        self.query_one("#help-more", Static).update(Text(
            "↓ more below: j/k or ↑/↓ scroll, space pages · esc closes" if more
            else "esc closes" + (" · k/↑ scrolls back" if body.scroll_y else ""),
            style="bold" if more else MUTED))

    def action_scroll(self, where: str) -> None:
        scroll_by_key(self.query_one("#help-body", VerticalScroll), where)
        self.call_after_refresh(self.show_more)

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
