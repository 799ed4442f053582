"""The console's own keys (GLOBAL in tui/actions.py): help, quit and start relay; and the
hang-up, which leaves as quit then keep-running does. A mixin of ConsoleApp (tui/app.py)."""

from __future__ import annotations

from relay.ops import QUEUE
from tui.actions import GLOBAL
from tui.relay_link import start_background_relay


class GlobalActions:
    async def action_quit(self) -> None:
        """Quit; the console that runs the relay asks first, and can leave it running."""
        if self.relay is None or not self.relay.running:
            self.exit()  # attached or read-only: the relay, if any, is another process's
            return
        from tui.screens.quit import BACKGROUND, STOP, QuitDialog

        def answered(answer: str | None) -> None:
            if answer == STOP:
                self.exit()
            elif answer == BACKGROUND:
                self.run_worker(self.hand_over(), group="quit", exclusive=True)

        queued = self.dashboard.panes[QUEUE].view.total
        self.push_screen(QuitDialog(queued), answered)

    def hang_up(self, why: str) -> None:
        """SIGHUP, or the terminal gone (a dropped SSH session): the console ends, the mail
        does not. An embedded relay is handed to a detached `mailroot serve`, as `q` then `b`
        does; the next console attaches to it."""
        if self.hung_up:
            return
        self.hung_up = True
        if self.relay is not None and self.relay.running:
            self.run_worker(self.hand_over(why), group="quit", exclusive=True)
        else:
            self.exit()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`start relay` is offered only when no relay runs, and never read-only."""
        if action == "start_relay":
            return not self.readonly and self.relay is None and self.holder is None \
                and not self.starting
        return True

    def action_start_relay(self) -> None:
        """Start `mailroot serve` detached (mail then never depends on this console) and
        attach to it once it holds the mailroot."""
        if not self.check_action("start_relay", ()):
            self.notify("A relay already runs on this mailroot.", severity="warning")
            return
        try:
            self.started = start_background_relay(self.config)
        except OSError as exc:
            self.notify(f"The relay did not start: {exc}", severity="error", markup=False)
            return
        self.notify(f"Starting mailroot serve (pid {self.started.pid})…", markup=False)
        self.run_worker(self.attach_to_started(self.started), group="start", exclusive=True)

    def action_help(self) -> None:
        from tui.screens.help import Help

        screen = self.screen
        acts = list(getattr(screen, "ACTS", [])) + GLOBAL
        self.push_screen(Help(screen.__class__.__name__, acts, self.readonly))
