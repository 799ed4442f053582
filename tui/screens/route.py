"""Where does mail to this address go, and why? The console's `mailroot route`.

Opened from the command palette, or with `w` in the inspector. When a message is under the
cursor (or open in the inspector), its recipients are listed: `enter` on one explains its route. `ctrl+t` probes the
address's first hop (tui/screens/probe.py).
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Input, OptionList, Static

from tui.actions import Act, Guarded, bindings
from tui.widgets.keybar import KeyBar

ROUTE = [
    Act("ctrl+t", "probe", "Probe the first hop", "EHLO, STARTTLS, MAIL, RCPT; no DATA",
        label="probe"),
    Act("escape", "back", "Back", label="back"),
]


def current_recipients(app) -> list[str]:
    """The recipients of the message open in the inspector or under the dashboard's cursor."""
    for screen in reversed(app.screen_stack):
        message_id = getattr(screen, "message_id", None)
        if message_id is None and hasattr(screen, "panes"):
            message_id = screen.pane.current_id()
        if message_id is None:
            continue
        try:
            return [r.address for r in app.admin.show(message_id).summary.recipients]
        except (LookupError, OSError, ValueError):
            return []  # a Pickup file (no envelope yet) or gone meanwhile
    return []


def open_route(app) -> None:
    """The route screen for the message in view: its recipients listed, enter explains one."""
    app.push_screen(RouteScreen(recipients=current_recipients(app)))


def verdict_style(line: str) -> str:
    if "would fail now" in line:
        return "bold red"
    return "bold green" if "deliverable now" in line else ""


class RouteScreen(Guarded, Screen):
    ACTS = ROUTE
    BINDINGS = bindings(ROUTE)
    DEFAULT_CSS = """
    RouteScreen #route-title { height: 1; background: $primary-background; }
    RouteScreen #route-address { margin: 0 1; }
    RouteScreen #route-recipients { height: auto; max-height: 8; margin: 0 1; }
    RouteScreen #route-body { height: 1fr; padding: 0 1; }
    """

    def __init__(self, address: str = "", recipients: list[str] | None = None) -> None:
        super().__init__()
        self.address = address
        self.recipients = recipients or []

    def compose(self) -> ComposeResult:
        yield Static(Text(" Route: where mail to an address goes now, and why "
                          "(enter explains, ctrl+t probes, esc back)", style="bold"),
                     id="route-title")
        yield Input(self.address, placeholder="address, e.g. someone@partner.example",
                    id="route-address")
        if self.recipients:
            yield OptionList(*self.recipients, id="route-recipients")
        with VerticalScroll(id="route-body"):
            yield Static(id="route-text", markup=False)
        yield KeyBar()

    def on_mount(self) -> None:
        if self.recipients:
            self.query_one(OptionList).focus()
        else:
            self.query_one(Input).focus()
        if self.address:
            self.explain(self.address)

    @on(OptionList.OptionSelected)
    def recipient_chosen(self, event: OptionList.OptionSelected) -> None:
        address = str(event.option.prompt)
        self.query_one(Input).value = address
        self.explain(address)

    @on(Input.Submitted, "#route-address")
    def address_given(self, event: Input.Submitted) -> None:
        self.explain(event.value)

    def explain(self, address: str) -> None:
        if address.strip():
            self.query_one("#route-text", Static).update(Text(f"looking up {address} …",
                                                              style="dim"))
            self.run_worker(self._explain(address.strip()), exclusive=True, group="route")

    async def _explain(self, address: str) -> None:
        try:
            _, lines = await self.app.admin.route(address)
        except ValueError as exc:  # not an address the relay takes
            text = Text(f"{address}: not an address the relay takes: {exc}", style="bold red")
        else:
            text = Text()
            for line in lines:
                text.append(line + "\n", style=verdict_style(line))
        self.query_one("#route-text", Static).update(text)

    def action_probe(self) -> None:
        from tui.screens.probe import ProbeScreen

        self.app.push_screen(ProbeScreen(self.query_one(Input).value.strip()))

    def action_back(self) -> None:
        self.app.pop_screen()


class RouteCommands(Provider):
    """Palette entries: explain a route, probe an address."""

    def _entries(self) -> list[tuple[str, str, object]]:
        from tui.screens.probe import ProbeScreen

        app = self.app

        def probe() -> None:
            recipients = current_recipients(app)
            app.push_screen(ProbeScreen(recipients[0] if recipients else ""))

        return [("Explain route for an address  [route]",
                 "where mail to it goes now and why (enter on a recipient)",
                 lambda: open_route(app)),
                ("Probe an address's first hop  [probe]",
                 "live SMTP transcript without DATA; ctrl+s sends a test message",
                 probe)]

    async def discover(self) -> Hits:
        for title, help_text, run in self._entries():
            yield DiscoveryHit(Text(title), run, text=title, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self._entries():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), run, text=title, help=help_text)
