"""The settings form's DKIM section: each signing domain's keys, and whether each key's DNS
record is published (looked up in a worker thread, so a slow resolver never blocks the form)."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from relay.ops import ConfigError
from relay.ops.dkim_keys import RecordCheck

ADD_HINT = "add a key: mailroot dkim keygen DOMAIN; check DNS: mailroot dkim check"
STATES = {"published": ("✓ published", "green"), "missing": ("✗ not published", "red"),
          "different": ("✗ DNS has another key", "red"), "unknown": ("? DNS did not answer",
                                                                     "yellow")}


def key_line(domain: str, selector: str, algorithm: str, state: Text) -> Text:
    line = Text(f"  {domain:<28} {selector:<14} {algorithm:<15} ")
    return line.append_text(state)


def record_line(check: RecordCheck) -> Text:
    word, style = STATES[check.state]
    return key_line(check.domain, check.selector, check.algorithm, Text(word, style=style))


class DkimSection(Vertical):
    """Read-only: keys are added by `mailroot dkim keygen`, which also prints the record."""

    DEFAULT_CSS = "DkimSection { height: auto; } DkimSection .dkim-key { height: 1; }"

    def compose(self) -> ComposeResult:
        config = self.app.admin.config
        yield Static("DKIM signing", classes="group", markup=False)
        if not config.dkim:
            yield Static(Text(f"  No domain signs its mail ({ADD_HINT})", style="dim"),
                         id="dkim-none")
            return
        for domain, keys in config.dkim.items():
            for key in keys:
                yield Static(key_line(domain, key.selector, key.algorithm,
                                      Text("checking DNS…", style="dim")),
                             classes="dkim-key", name=f"{key.selector}._domainkey.{domain}")
        yield Static(Text(f"  ({ADD_HINT})", style="dim"))

    def on_mount(self) -> None:
        if self.app.admin.config.dkim:
            self.run_worker(self.look_up(), group="dkim", exclusive=True, exit_on_error=False)

    async def look_up(self) -> None:
        try:
            checks = await asyncio.to_thread(self.app.admin.dkim_records)
        except ConfigError as exc:
            for row in self.query(".dkim-key"):
                row.update(Text(f"  ✗ {exc}", style="red"))
            return
        rows = {row.name: row for row in self.query(".dkim-key")}
        for check in checks:
            row = rows.get(f"{check.selector}._domainkey.{check.domain}")
            if row is not None:
                row.update(record_line(check))
