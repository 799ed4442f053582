"""The delivery-settings form: every delivery.* key and hostname, grouped like the IIS Delivery
and Messages tabs (then the DKIM keys and their DNS state). Bad values are flagged as they are
typed; Save applies all changes in one validated write through the operator API; Cancel
discards them."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Input, Label, Static

from relay.ops import ConfigError
from tui.actions import SETTINGS, Guarded, bindings
from tui.fields import GROUPS, Field, fields_for
from tui.theme import MUTED
from tui.widgets.checkbox import FormCheckbox
from tui.widgets.dkim_status import DkimSection
from tui.widgets.keybar import KeyBar
from tui.widgets.textbox import TextBox


def field_id(key: str) -> str:
    return "f-" + key.replace(".", "-")


class SettingsForm(Guarded, Screen):
    ACTS = SETTINGS
    BINDINGS = bindings(SETTINGS)

    def __init__(self) -> None:
        super().__init__()
        self.fields = {f.key: f for f in fields_for(self.app.admin.config)}

    def compose(self) -> ComposeResult:
        hint = ("read-only console: shown, not changed; esc: back" if self.app.readonly
                else "tab: next field, ctrl+s: save, esc: cancel")
        yield Static(Text(f" Delivery settings  ({hint})", style="bold"), classes="form-title")
        with VerticalScroll(id="form"):
            grouped = {k for _, keys in GROUPS for k in keys}
            groups = GROUPS + [("Other", [k for k in self.fields if k not in grouped])]
            for title, keys in groups:
                keys = [k for k in keys if k in self.fields]
                if not keys:
                    continue
                yield Static(title, classes="group", markup=False)
                for key in keys:
                    yield from self.row(self.fields[key])
            yield DkimSection()
            yield Static(id="form-errors", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary",
                             disabled=self.app.readonly)
                yield Button("Cancel", id="cancel")
        yield Static(id="field-help", markup=False)
        yield KeyBar()

    def row(self, field: Field) -> ComposeResult:
        with Vertical(classes="field", id=field_id(field.key)):
            with Horizontal(classes="field-row"):
                yield Label(field.label, classes="field-label", markup=False)
                readonly = self.app.readonly
                if field.is_bool:
                    yield FormCheckbox("", field.text == "true", name=field.key,
                                       disabled=readonly)
                else:
                    yield TextBox(field.text, name=field.key, disabled=readonly,
                                  placeholder="(none)" if field.optional else "")
            yield Static(classes="error", markup=False)

    # --- inline validation ---

    def value_of(self, key: str) -> str:
        widget = self.query_one(f"#{field_id(key)}").query_one("Checkbox, TextBox")
        if isinstance(widget, Checkbox):
            return "true" if widget.value else "false"
        return widget.value

    def flag(self, key: str, problem: str | None) -> None:
        box = self.query_one(f"#{field_id(key)}")
        box.set_class(problem is not None, "-bad")
        box.query_one(".error", Static).update(f"  ✗ {problem}" if problem else "")
        box.query_one(".error").display = problem is not None

    @on(Input.Changed)
    def changed(self, event: Input.Changed) -> None:
        key = event.input.name or ""
        if key in self.fields:
            self.flag(key, self.fields[key].check(event.value))

    def on_descendant_focus(self, event) -> None:
        key = getattr(event.widget, "name", None)
        if key in self.fields:
            field = self.fields[key]
            self.query_one("#field-help", Static).update(
                Text(f" {field.key}: {field.doc}", style=MUTED))

    def on_mount(self) -> None:
        for error in self.query(".field .error"):
            error.display = False
        self.query_one("TextBox").focus()

    # --- save and cancel ---

    def problems(self) -> dict[str, str]:
        out = {}
        for key, field in self.fields.items():
            problem = field.check(self.value_of(key))
            self.flag(key, problem)
            if problem:
                out[key] = problem
        return out

    def changes(self) -> dict[str, str]:
        return {key: field.setting_text(self.value_of(key)) for key, field in self.fields.items()
                if self.value_of(key).strip() != field.text}

    async def action_save(self) -> None:
        errors = self.query_one("#form-errors", Static)
        if self.app.readonly:
            errors.update("Read-only console: nothing saved.")
            self.notify("Read-only console: save is off.", severity="warning")
            return
        problems = self.problems()
        if problems:
            first = next(iter(problems))
            text = (f"✗ {len(problems)} value{'s' if len(problems) > 1 else ''} to fix "
                    f"(first: {first}); nothing saved.")
            errors.update(text)
            self.notify(text, severity="error", markup=False)
            self.query_one(f"#{field_id(first)}").query_one("TextBox, Checkbox").focus()
            return
        changes = self.changes()
        if not changes:
            self.notify("No changes.")
            self.app.pop_screen()
            return
        try:
            await asyncio.to_thread(self.app.admin.set_many, changes)
        except ConfigError as exc:
            if exc.key in self.fields:
                self.flag(exc.key, exc.reason)
            errors.update(f"✗ not saved: {exc}")
            return
        self.notify(f"Saved {len(changes)} setting{'s' if len(changes) > 1 else ''}; "
                    "the relay applies them now.")
        self.app.pop_screen()

    def action_cancel(self) -> None:
        self.app.pop_screen()

    @on(Button.Pressed, "#save")
    async def save_pressed(self) -> None:
        await self.action_save()

    @on(Button.Pressed, "#cancel")
    def cancel_pressed(self) -> None:
        self.action_cancel()
