"""`q` in a console that runs the relay: stop it, leave it running in the background, or stay."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

STOP, BACKGROUND = "stop", "background"


def quit_question(queued: int) -> str:
    waiting = (f"{queued:,} queued message{'s' if queued != 1 else ''} will wait until it runs "
               "again." if queued else "Nothing is queued.")
    return f"Quit and stop the relay? {waiting}"


class QuitDialog(ModalScreen[str | None]):
    """Answers STOP, BACKGROUND or None (stay); the default is to stay."""

    BINDINGS = [("y", "answer('stop')", "stop"), ("b", "answer('background')", "background"),
                ("n,escape", "answer(None)", "stay")]

    def __init__(self, queued: int) -> None:
        super().__init__(classes="dialog-screen")
        self.question = quit_question(queued)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, id="question", markup=False)
            yield Static("y = stop the relay and quit   b = quit, keep the relay running in the "
                         "background (mailroot serve)   n / esc = stay", classes="hint",
                         markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Stay", id="stay", variant="primary")
                yield Button("Keep running", id=BACKGROUND)
                yield Button("Stop relay", id=STOP, variant="error")

    def on_mount(self) -> None:
        self.query_one("#stay", Button).focus()

    def action_answer(self, answer: str | None) -> None:
        self.dismiss(answer)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id if event.button.id in (STOP, BACKGROUND) else None)
