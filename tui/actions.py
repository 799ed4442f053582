"""The console's actions in one table per screen: keys, footer, `?` help and the palette
are all built from it, so a key can't be in one and missing from another."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Act:
    keys: str  # Textual key names, comma-separated
    action: str
    title: str  # what the palette and the help call it
    help: str = ""
    mutating: bool = False  # hidden and refused in --readonly
    footer: bool = True
    label: str = ""  # the footer's short label (defaults to the title)

    @property
    def shown_keys(self) -> str:
        names = {"slash": "/", "space": "space", "question_mark": "?", "colon": ":",
                 "left_square_bracket": "[", "right_square_bracket": "]", "escape": "esc",
                 "enter": "enter", "ctrl+s": "ctrl+s", "asterisk": "*"}
        return " ".join(names.get(k, k) for k in self.keys.split(","))


def bindings(acts: list[Act]) -> list[Binding]:
    return [Binding(a.keys, a.action, a.label or a.title, show=a.footer) for a in acts]


GLOBAL = [
    Act("question_mark", "help", "Help", "every key on this screen", label="help"),
    Act("colon", "command_palette", "Command palette", "search every action and screen",
        label="commands"),
    Act("q", "quit", "Quit", "leave; asks first whether to stop the relay it runs or keep it",
        label="quit"),
    Act("S", "start_relay", "Start relay", "when none runs: mailroot serve in the background, "
        "and the console attaches to it", mutating=True, footer=False),
]

DASHBOARD = [
    Act("1", "folder('Pickup')", "Show Pickup", "files waiting to be taken", footer=False),
    Act("2", "folder('Queue')", "Show Queue", "messages awaiting remote delivery", footer=False),
    Act("3", "folder('Drop')", "Show Drop", "mail delivered to local domains", footer=False),
    Act("4", "folder('Badmail')", "Show Badmail", "undeliverable, with the reason",
        footer=False),
    Act("5", "folder('Hold')", "Show Hold", "messages put on hold", footer=False),
    Act("6", "folder('Trash')", "Show Trash", "deleted messages: u undeletes", footer=False),
    Act("tab", "next_folder", "Next folder", footer=False),
    Act("enter", "inspect", "Inspect message", "envelope, headers, body, attempts",
        label="open"),
    Act("slash", "filter", "Filter", "the whole folder: words, domain:, from:, to:, reason:, class:, "
        "older:2h, newer:10m, size>1MB, attempts>3", label="filter"),
    Act("space", "mark", "Mark / unmark", "bulk actions apply to the marked rows",
        label="mark"),
    Act("asterisk", "mark_all", "Mark all matching", "every message the filter matches, "
        "on every page", label="all"),
    Act("F", "follow", "Follow newest", "keep the newest message in view as mail arrives",
        label="follow"),
    Act("b", "by_domain", "Queue by domain", "counts per destination domain and age; "
        "enter filters the Queue to one", label="by domain"),
    Act("escape", "clear", "Clear filter and marks", footer=False),
    Act("right_square_bracket", "page(1)", "Next page", "in folders of more than one page",
        footer=False),
    Act("left_square_bracket", "page(-1)", "Previous page", footer=False),
    Act("r", "bulk('requeue')", "Requeue", "Badmail to Queue, Drop and Queue routed again",
        mutating=True, label="requeue"),
    Act("t", "bulk('retry')", "Retry now", "try queued messages at once", mutating=True,
        label="retry"),
    Act("h", "bulk('hold')", "Hold / release", "hold queued messages, release held ones",
        mutating=True, label="hold"),
    Act("d", "bulk('delete')", "Delete", "move to Trash (undelete within the retention)",
        mutating=True, label="delete"),
    Act("u", "bulk('undelete')", "Undelete", "Trash back to the folder it came from",
        mutating=True, label="undelete"),
    Act("s", "sort", "Cycle sort", "oldest, newest, sender, recipient, domain, subject, "
        "attempts, size, next attempt",
        label="sort"),
    Act("p", "pause", "Pause / resume the screen", "stop the screen's live updates while you "
        "read; the relay goes on", label="pause"),
    Act("e", "domains", "Domain editor", "local default, aliases, remote domains",
        label="domains"),
    Act("c", "settings", "Delivery settings", "retry, expiry, smart host, limits",
        label="settings"),
    Act("z", "disk", "Folder sizes", "how much disk each folder holds", label="disk"),
]

INSPECTOR = [
    Act("v", "raw", "Raw message", "the message exactly as stored", label="raw"),
    Act("r", "requeue", "Requeue", "this message back to delivery, routed by today's domains",
        mutating=True, label="requeue"),
    Act("w", "route", "Where does it go", "each recipient's route now: rule, smart host or "
        "MX, TLS; enter on one explains it", label="route"),
    Act("escape", "back", "Back", "from the raw message to the summary, then the dashboard",
        label="back"),
    Act("j", "scroll('down')", "Scroll down", footer=False),
    Act("k", "scroll('up')", "Scroll up", footer=False),
    Act("g", "scroll('home')", "Top", footer=False),
    Act("G", "scroll('end')", "Bottom", footer=False),
]

DOMAINS = [
    Act("a", "add('alias')", "Add alias", "another local domain delivered to Drop",
        mutating=True, label="alias"),
    Act("l", "add('local')", "Add local domain", mutating=True, footer=False),
    Act("m", "remote", "Add / edit remote", "TLS policy and smart host for a remote domain",
        mutating=True, label="remote"),
    Act("n", "rename", "Rename", "rename the domain under the cursor", mutating=True,
        label="rename"),
    Act("P", "promote", "Make default", "the alias becomes the default; the old default an alias",
        mutating=True, label="default"),
    Act("x", "remove", "Remove", "remove the domain under the cursor", mutating=True,
        label="remove"),
    Act("escape", "back", "Back", label="back"),
    Act("j", "cursor('down')", "Down", footer=False),
    Act("k", "cursor('up')", "Up", footer=False),
    Act("g,home", "cursor('top')", "First domain", footer=False),
    Act("G,end", "cursor('bottom')", "Last domain", footer=False),
]

SETTINGS = [
    Act("ctrl+s", "save", "Save", "validate and apply all changes at once", mutating=True,
        label="save"),
    Act("escape", "cancel", "Cancel", "discard the changes", label="cancel"),
]


class Guarded:
    """Screen mixin: in --readonly, mutating actions are hidden (footer, help, palette) and
    refused (their keys do nothing)."""

    ACTS: list[Act] = []

    def offered(self) -> list[Act]:
        """The acts the footer shows now."""
        return [a for a in self.ACTS if not (a.mutating and self.app.readonly)]  # type: ignore[attr-defined]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        mutating = {a.action.split("(")[0] for a in self.ACTS if a.mutating}
        return not (self.app.readonly and action in mutating)  # type: ignore[attr-defined]

    def on_key(self, event) -> None:
        """A changing key in a read-only console says why it does nothing."""
        if not self.app.readonly:  # type: ignore[attr-defined]
            return
        act = next((a for a in self.ACTS if a.mutating and event.key in a.keys.split(",")), None)
        if act is not None:
            event.stop()
            self.notify(f"Read-only console: {act.title.lower()} is off.",  # type: ignore[attr-defined]
                        severity="warning")


BY_DOMAIN = [
    Act("enter", "drill", "Open in Queue", "the Queue filtered to this domain", label="open"),
    Act("space", "mark", "Mark / unmark", "bulk actions apply to the marked domains",
        label="mark"),
    Act("t", "bulk('retry')", "Retry now", "every queued message for the domain",
        mutating=True, label="retry"),
    Act("h", "bulk('hold')", "Hold", "every queued message for the domain", mutating=True,
        label="hold"),
    Act("d", "bulk('delete')", "Delete", "every queued message for the domain, to Trash",
        mutating=True, label="delete"),
    Act("escape", "back", "Back", "to the dashboard", label="back"),
    Act("j", "cursor('down')", "Down", footer=False),
    Act("k", "cursor('up')", "Up", footer=False),
    Act("g,home", "cursor('top')", "First domain", footer=False),
    Act("G,end", "cursor('bottom')", "Last domain", footer=False),
]
