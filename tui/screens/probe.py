"""The console's `mailroot probe`: the SMTP conversation with an address's first hop, shown
line by line as it happens. `ctrl+s` sends a real test message through the relay and follows
it to delivered, deferred or Badmail (not offered in --readonly)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Input, RichLog, Static

from tui.actions import Act, Guarded, bindings
from tui.widgets.keybar import KeyBar

PROBE = [
    Act("ctrl+t", "check", "Probe", "EHLO, STARTTLS, AUTH, MAIL, RCPT, QUIT: no DATA",
        label="probe"),
    Act("ctrl+s", "send", "Send a test message", "through Pickup, followed to its end",
        mutating=True, label="send test"),
    Act("escape", "back", "Back", label="back"),
]
STYLES = {"send": "cyan", "reply": "", "tls": "magenta", "error": "bold red",
          "event": "yellow", "done": "bold", "info": "dim"}


class ProbeScreen(Guarded, Screen):
    ACTS = PROBE
    BINDINGS = bindings(PROBE)
    DEFAULT_CSS = """
    ProbeScreen #probe-title { height: 1; background: $primary-background; }
    ProbeScreen #probe-address { margin: 0 1; }
    ProbeScreen #probe-log { height: 1fr; padding: 0 1; }
    """

    def __init__(self, address: str = "") -> None:
        super().__init__()
        self.address = address

    def compose(self) -> ComposeResult:
        yield Static(Text(" Probe: the first hop for an address, live (enter or ctrl+t "
                          "probes, esc back)", style="bold"), id="probe-title")
        yield Input(self.address, placeholder="address, e.g. someone@partner.example",
                    id="probe-address")
        yield RichLog(id="probe-log", wrap=True, markup=False)
        yield KeyBar()

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        if self.address:
            self.action_check()

    @on(Input.Submitted, "#probe-address")
    def address_given(self) -> None:
        self.action_check()

    def action_check(self) -> None:
        self._start(send=False)

    def action_send(self) -> None:
        self._start(send=True)

    def _start(self, send: bool) -> None:
        address = self.query_one(Input).value.strip()
        if not address:
            self.notify("Type an address first.", severity="warning")
            return
        log = self.query_one(RichLog)
        log.clear()
        self.run_worker(self._run(address, send), exclusive=True, group="probe")

    async def _run(self, address: str, send: bool) -> None:
        log = self.query_one(RichLog)

        def show(step) -> None:
            log.write(Text(step.line(), style=STYLES.get(step.kind, "")))

        probe = self.app.admin.prober(show)
        sender = f"postmaster@{self.app.config.default_domain}"
        try:
            ok = await (probe.send(address, sender) if send else probe.check(address, sender))
        except Exception as exc:  # shown, never a crash of the console
            log.write(Text(f"probe failed: {type(exc).__name__}: {exc}", style="bold red"))
            return
        log.write(Text("finished: " + ("ok" if ok else "not delivered / refused"),
                       style="bold green" if ok else "bold red"))

    def action_back(self) -> None:
        self.app.pop_screen()
