"""The command palette (`:` or ctrl+p): every action of the current screen and the app."""

from __future__ import annotations

from functools import partial

from rich.text import Text
from textual.command import DiscoveryHit, Hit, Hits, Provider

from tui.actions import GLOBAL, Act


class ConsoleCommands(Provider):
    def _acts(self) -> list[tuple[Act, object]]:
        app = self.app
        screen = self.screen
        readonly = getattr(app, "readonly", False)
        pairs = [(a, screen) for a in getattr(screen, "ACTS", [])]
        pairs += [(a, app) for a in GLOBAL if a.action != "command_palette"]
        return [(a, target) for a, target in pairs if not (readonly and a.mutating)
                and target.check_action(a.action.split("(")[0], ()) is not False]

    def _run(self, act: Act, target: object) -> partial:
        return partial(self.app.run_action, act.action, target)

    async def discover(self) -> Hits:
        for act, target in self._acts():
            title = f"{act.title}  [{act.shown_keys}]"
            yield DiscoveryHit(Text(title), self._run(act, target), text=title,
                               help=act.help or None)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for act, target in self._acts():
            title = f"{act.title}  [{act.shown_keys}]"
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), self._run(act, target), text=title,
                          help=act.help or None)
