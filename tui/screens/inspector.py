"""Enter on a row: everything about one message. Badmail's reason comes first; `v` shows the
message exactly as stored. Mail text is shown as Text, never as markup (headers hold `[`)."""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from relay.ops import BADMAIL, DROP, HOLD, PICKUP
from relay.ops.queries import MessageDetail, NotFound
from tui.actions import INSPECTOR, Guarded, bindings
from tui.model import ago, state_word, until
from tui.screens.route import open_route
from tui.theme import FAILED_TEXT, MUTED, WAITING
from tui.widgets.keybar import KeyBar
from tui.widgets.scrolling import scroll_by_key

BODY_LINES = 400  # a body longer than this is cut in the inspector; `v` shows all of it


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def heading(text: Text, title: str) -> None:
    text.append(f"\n{title}\n", style="bold underline")


def field(text: Text, name: str, value: str, style: str = "") -> None:
    text.append(f"{name:<16}", style="bold")
    text.append(f"{value}\n", style=style)


NO_ATTEMPTS = {
    BADMAIL: "none: it was refused before any delivery (r requeues it through intake again)",
    DROP: "none: delivered into Drop for a local domain, never sent on",
}
REPORT_FIELDS = ("Reason:", "Id:", "From:", "Received:", "Recipients:", "Attempts:", "  ")


def report_extras(report: str) -> list[str]:
    """What the `.BAD` report says beyond the reason, the envelope and the attempts shown
    below it anyway: its source, when it was written, and any note."""
    lines = report.splitlines()[1:]  # the first says it is in Badmail: the heading does
    return [line for line in lines if line.strip() and not line.startswith(REPORT_FIELDS)]


def render_detail(detail: MessageDetail, now: float) -> Text:
    """The inspector's page for one message."""
    row = detail.summary
    text = Text()
    if row.folder == BADMAIL:
        text.append("✗ Why it is in Badmail\n", style=FAILED_TEXT)
        text.append(f"{detail.reason or '(no reason recorded)'}\n", style="bold")
        for line in report_extras(detail.report):
            text.append(f"{line}\n", style=MUTED)
    heading(text, "Envelope")
    field(text, "id", row.id)
    field(text, "folder", f"{row.folder}  {state_word(row, now)}")
    field(text, "from", f"<{row.sender}>")
    for rcpt in row.recipients:
        status = f" {rcpt.status}" if rcpt.status else ""
        reply = f"  {rcpt.reply}" if rcpt.reply else ""
        field(text, "to", f"<{rcpt.address}>  {rcpt.state}{status}{reply}")
    field(text, "size", f"{row.size} bytes")
    field(text, "signed by", ", ".join(map(str, detail.signatures)) or "not DKIM-signed",
          "" if detail.signatures else MUTED)
    field(text, "received", f"{stamp(row.received)} ({ago(now - row.received)} ago)")
    if row.next_attempt is not None:
        field(text, "next retry", f"{until(row.next_attempt, now)}  ({stamp(row.next_attempt)})")
    if detail.delay_notice_at is not None:
        field(text, "delay notice", until(detail.delay_notice_at, now).replace("due", "now"))
    if detail.expires_at is not None:
        left = detail.expires_at - now
        field(text, "expires", f"in {ago(left)}" if left > 0 else "now (expired)",
              FAILED_TEXT if left < 3600 else "")
    heading(text, f"Attempts ({len(detail.attempts)})")
    if not detail.attempts:
        text.append(NO_ATTEMPTS.get(row.folder, "none yet") + "\n", style=MUTED)
    for attempt in detail.attempts:
        tls = {True: "TLS", False: "plain", None: "-"}[attempt.tls]
        text.append(f"{stamp(attempt.time)}  ", style=MUTED)
        text.append(f"{attempt.host or '-':<28} {tls:<5}  ")
        text.append(f"{attempt.reply}\n", style=FAILED_TEXT if attempt.reply[:1] == "5" else
                    WAITING if attempt.reply[:1] == "4" else "")
    heading(text, "Headers")
    for name, value in detail.headers:
        text.append(f"{name}: ", style="bold")
        text.append(f"{value}\n")
    heading(text, "Body")
    lines = detail.body_text.splitlines()
    text.append("\n".join(lines[:BODY_LINES]) + "\n")
    if len(lines) > BODY_LINES:
        text.append(f"… {len(lines) - BODY_LINES} more lines (v shows the raw message)\n",
                    style=MUTED)
    return text


class Inspector(Guarded, Screen):
    ACTS = INSPECTOR
    BINDINGS = bindings(INSPECTOR)

    def __init__(self, folder: str, message_id: str) -> None:
        super().__init__()
        self.folder = folder
        self.message_id = message_id
        self.raw = False

    def compose(self) -> ComposeResult:
        yield Static(id="inspector-title", markup=False)
        with VerticalScroll(id="inspector-body"):
            yield Static(id="inspector-text", markup=False)
        yield KeyBar()

    def on_mount(self) -> None:
        self.show()
        self.query_one("#inspector-body").focus()

    def show(self) -> None:
        admin = self.app.admin
        title = Text(f" {self.folder} › {self.message_id}", style="bold")
        try:
            if self.folder == PICKUP:  # not taken yet: no envelope, only the file
                body = Text((admin.store.folder(PICKUP) / self.message_id).read_bytes().decode(
                    "utf-8", "replace"))
                title.append("  in Pickup, not taken yet (esc: back)", style=MUTED)
            elif self.raw:
                body = Text(admin.raw(self.message_id).decode("utf-8", "replace"))
                title.append("  raw message (v: back to the summary)", style=MUTED)
            else:
                body = render_detail(admin.show(self.message_id), self.app.clock())
                title.append("  (v: raw message, esc: back)", style=MUTED)
        except (NotFound, OSError) as exc:
            body = Text(f"This message is no longer here: {exc}", style="bold")
        self.query_one("#inspector-title", Static).update(title)
        self.query_one("#inspector-text", Static).update(body)

    def action_raw(self) -> None:
        self.raw = not self.raw
        self.show()

    def action_back(self) -> None:
        """esc: from the raw message to the summary, from the summary to the dashboard."""
        if self.raw:
            self.raw = False
            self.show()
        else:
            self.app.pop_screen()

    def action_requeue(self) -> None:
        from tui.widgets.folder_pane import can

        if not can(self.folder, "requeue"):
            self.notify(f"A message in {self.folder} is not requeued"
                        + (": it is not taken in yet." if self.folder == PICKUP else
                           ": release it first (h on the dashboard)." if self.folder == HOLD
                           else "."), severity="warning")
            return
        self.app.confirm_and_operate("requeue", self.folder, [self.message_id],
                                     then=self.follow)

    def action_route(self) -> None:
        """Where does it go: the route screen, listing the recipients of this message."""
        open_route(self.app)

    def follow(self) -> None:
        """After an action: show the message wherever it is now."""
        folder = self.app.admin.store.locate(self.message_id)
        if folder is not None:
            self.folder = folder
        self.show()

    def action_scroll(self, where: str) -> None:
        scroll_by_key(self.query_one("#inspector-body", VerticalScroll), where)
