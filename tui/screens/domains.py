"""The domain editor: the local default domain, its aliases, and the remote domains with their
TLS policy and smart host. Each change is checked inline, then saved through the operator API
(one atomic write that keeps the file's comments); the relay applies it live."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Input, Label, Select, Static

from relay.ops import ConfigError, Domain, HostPort, TlsPolicy
from tui.actions import DOMAINS, Guarded, bindings
from tui.theme import MUTED
from tui.widgets.keybar import KeyBar
from tui.widgets.scrolling import cursor_by_key
from tui.widgets.textbox import TextBox

TLS_POLICIES = typing.get_args(TlsPolicy)


@dataclass(frozen=True)
class Row:
    kind: str  # default | alias | remote
    domain: str
    tls: str = ""
    smarthost: str = ""


def domain_rows(admin) -> list[Row]:
    """The domains as the operator API reads them from the config file."""
    default, aliases, remote = admin.domains()
    rows = [Row("default", str(default))] + [Row("alias", str(a)) for a in aliases]
    for name, settings in sorted(remote.items()):
        hop = settings.smarthost
        rows.append(Row("remote", str(name), settings.tls,
                        str(hop) if hop else ""))
    return rows


def check_domain(text: str) -> str | None:
    try:
        Domain.parse(text)
    except ValueError as exc:
        return str(exc)
    return None


def check_hop(text: str) -> str | None:
    if not text.strip():
        return None
    try:
        HostPort.parse(text)
    except ValueError as exc:
        return str(exc)
    return None


Check = Callable[[str], str | None]  # a typed field's inline check: the problem, or None


class Ask(ModalScreen[dict | None]):
    """A small form: labelled inputs each with its inline check, or a choice among fixed
    values (nothing to mistype; enter opens it rather than saving); Save when all pass."""

    BINDINGS = [("escape", "cancel", "cancel"), ("ctrl+s", "save", "save")]

    def __init__(self, title: str, fields: list[tuple[str, str, str, Check | tuple[str, ...]]]
                 ) -> None:
        super().__init__(classes="dialog-screen")
        self.heading = title
        self.fields = fields  # (name, label, value, check or the values to choose from)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.heading, style="bold"))
            for name, label, value, check in self.fields:
                choice = isinstance(check, tuple)
                with Horizontal(classes="field-row choice-row" if choice else "field-row"):
                    yield Label(label, classes="ask-label", markup=False)
                    if isinstance(check, tuple):
                        yield Select([(c, c) for c in check], value=value or check[0],
                                     allow_blank=False, name=name, id=f"ask-{name}")
                    else:
                        yield TextBox(value, name=name, id=f"ask-{name}")
                yield Static(id=f"err-{name}", classes="error", markup=False)
            yield Static("enter saves (on a choice: opens it), ctrl+s saves, esc cancels",
                         classes="hint", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Save", id="save", variant="primary")

    def value(self, name: str) -> str:
        return str(self.query_one(f"#ask-{name}", TextBox | Select).value).strip()

    def problem(self, name: str) -> str | None:
        check = next(c for n, _, _, c in self.fields if n == name)
        return None if isinstance(check, tuple) else check(self.value(name))

    @on(Input.Changed)
    def changed(self, event: Input.Changed) -> None:
        problem = self.problem(event.input.name or "")
        self.query_one(f"#err-{event.input.name}", Static).update(f"✗ {problem}" if problem
                                                                 else "")

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        bad = [(n, p) for n, *_ in self.fields if (p := self.problem(n))]
        for name, problem in bad:
            self.query_one(f"#err-{name}", Static).update(f"✗ {problem}")
        if not bad:
            self.dismiss({n: self.value(n) for n, *_ in self.fields})

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()


class DomainEditor(Guarded, Screen):
    ACTS = DOMAINS
    BINDINGS = bindings(DOMAINS)

    def compose(self) -> ComposeResult:
        yield Static(Text(" Domains  (local mail goes to Drop; remote to Queue)", style="bold"),
                     classes="form-title")
        table = DataTable(cursor_type="row", id="domains")
        for label, width in (("kind", 10), ("domain", 30), ("tls", 8), ("smart host", 28)):
            table.add_column(label, width=width, key=label)
        yield table
        yield Static(id="domains-note", markup=False)
        yield KeyBar()

    def on_mount(self) -> None:
        self.reload()
        self.query_one(DataTable).focus()

    def reload(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        self.rows = domain_rows(self.app.admin)
        for row in self.rows:
            kind = {"default": "★ default", "alias": "  alias", "remote": "→ remote"}[row.kind]
            table.add_row(Text(kind), Text(row.domain), Text(row.tls), Text(row.smarthost),
                          key=f"{row.kind}:{row.domain}")
        self.query_one("#domains-note", Static).update(Text(
            " Read-only console: the domains are shown, not changed." if self.app.readonly
            else " ★ the default local domain · aliases: also local · → remote: own TLS policy "
                 "and smart host", style=MUTED))

    def current(self) -> Row | None:
        table = self.query_one(DataTable)
        return self.rows[table.cursor_row] if self.rows and table.cursor_row < len(
            self.rows) else None

    async def apply(self, method: str, *args, **kwargs) -> None:
        """Call one operator API method; show its refusal inline; reload on success."""
        call = getattr(self.app.admin, method)
        try:
            result = await asyncio.to_thread(call, *args, **kwargs)
        except (ConfigError, ValueError, LookupError) as exc:
            self.notify(f"Not saved: {exc}", severity="error", markup=False)
            return
        problems = dict(getattr(result, "problems", {}) or {})
        if problems:
            self.notify("Not saved: " + "; ".join(f"{k}: {v}" for k, v in problems.items()),
                        severity="error", markup=False)
        else:
            self.notify("Saved; the relay applies it now.")
        self.reload()

    def ask(self, title: str, fields, then) -> None:
        self.app.push_screen(Ask(title, fields), lambda answer: answer and self.run_worker(
            then(answer), exclusive=True, group="domains"))

    def action_add(self, kind: str) -> None:
        method = "add_alias" if kind == "alias" else "add_local"
        self.ask(f"Add a local {kind} domain", [("domain", "domain", "", check_domain)],
                 lambda a: self.apply(method, a["domain"]))

    def action_remote(self) -> None:
        row = self.current()
        name, tls, hop = (row.domain, row.tls, row.smarthost) if row and row.kind == "remote" \
            else ("", "may", "")
        self.ask("Remote domain: TLS policy and smart host",
                 [("domain", "domain", name, check_domain),
                  ("tls", "tls (STARTTLS policy)", tls, TLS_POLICIES),
                  ("smarthost", "smart host (host:port)", hop, check_hop)],
                 lambda a: self.apply("set_remote", a["domain"], tls=a["tls"],
                                      smarthost=a["smarthost"] or None))

    def action_rename(self) -> None:
        row = self.current()
        if row is None:
            return
        self.ask(f"Rename {row.domain}", [("domain", "new name", row.domain, check_domain)],
                 lambda a: self.apply("rename_domain", row.domain, a["domain"]))

    def action_promote(self) -> None:
        row = self.current()
        if row is None or row.kind != "alias":
            self.notify("Put the cursor on an alias to make it the default.", severity="warning")
            return
        self.run_worker(self.apply("set_default", row.domain), group="domains")

    def action_remove(self) -> None:
        from tui.screens.confirm import Confirm

        row = self.current()
        if row is None or row.kind == "default":
            self.notify("The default domain can't be removed; make another one default first.",
                        severity="warning")
            return
        self.app.push_screen(Confirm(f"Remove the {row.kind} domain {row.domain}?"),
                             lambda yes: yes and self.run_worker(
                                 self.apply("remove_domain", row.domain), group="domains"))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_cursor(self, where: str) -> None:
        cursor_by_key(self.query_one(DataTable), where)
