"""The operator console: a live view of the mailroot's folders, with the operator's actions.

It runs the relay in-process unless one already holds the mailroot, in which case it attaches
to it; either way it works through the operator API (relay.ops.admin) and the event log alone.
ConsoleApp is the shell (its state, start and stop, the status line, errors) over one mixin
per job: tui/relay_link.py, tui/event_feed.py, tui/live_folders.py, tui/operations.py and
tui/global_actions.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
from collections.abc import Callable, Mapping

from rich.text import Text
from textual.actions import ActionParseResult
from textual.app import App
from textual.css.query import NoMatches
from textual.dom import DOMNode
from textual.widgets import Static

from relay.ops import QUEUE, Config, LogFollower, lock_holder
from relay.ops.admin import Admin
from relay.ops.running import Relay, Supervisor
from tui.actions import GLOBAL, bindings
from tui.commands import ConsoleCommands
from tui.event_feed import EventFeed
from tui.global_actions import GlobalActions
from tui.index import FolderIndex
from tui.live_folders import LiveFolders
from tui.operations import Operations
from tui.relay_link import RelayLink
from tui.screens.dashboard import VIEWS, Dashboard
from tui.screens.route import RouteCommands
from tui.stats import Stats
from tui.theme import THEME
from tui.widgets.status import StatusBar

VIEW_ERROR_SHOWN = 60.0  # seconds a view's error stays on the status line
ERROR_LOG = "console-errors.log"  # in the mailroot's log/: the tracebacks of views' errors


class ConsoleApp(GlobalActions, RelayLink, EventFeed, LiveFolders, Operations, App):
    CSS_PATH = "app.tcss"
    TITLE = "mailroot"
    COMMANDS = {ConsoleCommands, RouteCommands}
    ACTS = GLOBAL
    BINDINGS = bindings(GLOBAL)

    def __init__(self, config: Config, *, readonly: bool = False,
                 clock: Callable[[], float] | None = None) -> None:
        # NO_COLOR (as Textual reads it): no colour at all. Textual's own answer is grey
        # tones, still sent as 256-colour codes; with ANSI colours on it strips them instead.
        super().__init__(ansi_color=True if os.environ.get("NO_COLOR") is not None else None)
        self.config = config
        self.readonly = readonly
        self.clock = clock or time.time
        self.still = clock is not None  # a frozen clock: snapshots want nothing moving
        self.admin = Admin(config)
        self.store = self.admin.store
        self.relay: Relay | Supervisor | None = None
        self.starting = False  # the embedded relay is loading its queue
        self.relay_error = ""  # why the embedded relay could not start
        self._relay_start: asyncio.Task | None = None
        self.holder: str | None = None
        self.paused = False
        self.pending: dict[str, set[str]] = {}
        self.follower: LogFollower | None = None
        self.stats = Stats()
        self._stop_watch: asyncio.Event | None = None
        self.index = FolderIndex(self.admin, VIEWS)
        self.unindexed: dict[str, set[str]] = {}  # changed while the index was being built
        self._changing = asyncio.Lock()  # one change of the index and the views at a time
        self._last_apply = 0.0
        self.bulk_cancel: threading.Event | None = None  # set by esc: the running bulk stops
        self.last_result = ""  # the line that accounted for the last bulk action
        self.terminal: int | None = None  # the terminal's fd, watched for a hangup
        self.stopped_pids: set[int] = set()  # relays the event log says stopped cleanly
        self.relay_died = ""  # "relay died (pid N, signal 9) at 12:00:03", until one runs
        self.started: subprocess.Popen | None = None  # the `mailroot serve` started from here
        self.hung_up = False  # SIGHUP, or the terminal went away
        self.view_error = ""  # the last error a view raised, in one line
        self._view_error_until = 0.0  # time.monotonic() when it leaves the status line

    def get_default_screen(self) -> Dashboard:
        self.dashboard = Dashboard()
        return self.dashboard

    # --- start and stop ---

    def on_mount(self) -> None:
        self.register_theme(THEME)
        self.theme = THEME.name

    async def begin(self) -> None:
        """Show the folders, go live, then start or attach to the relay; called once the
        dashboard is mounted.  The panes come first: a relay with 100,000 queued messages takes
        seconds to load its schedule, and the operator should not stare at an empty screen."""
        self.store.ensure()
        self.holder = lock_holder(self.store)
        self.starting = self.holder is None and not self.readonly
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.hang_up,
                                                          "SIGHUP")
        self.terminal = terminal_fd() if not self.is_headless else None
        for pane in self.dashboard.panes.values():
            pane.view.load(self.admin)
        self.dashboard.refresh_panes(VIEWS)
        self.call_after_refresh(self.build_index)  # the first frame goes out first
        self.follow_events(first=True)
        self._stop_watch = asyncio.Event()
        self.watch_mailroot()
        self.set_interval(1.0, self.tick)
        self.set_interval(30.0, self.resync)
        self.tick()
        if self.starting:  # a plain task, not a worker: it must finish even while quitting
            self._relay_start = asyncio.create_task(self.start_relay())

    async def on_unmount(self) -> None:
        if self._stop_watch is not None:
            self._stop_watch.set()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._relay_start is not None:
            await self._relay_start
        if self.relay is not None:
            await self.relay.stop()  # mail stays committed in its folders; nothing is lost

    def _handle_exception(self, error: Exception) -> None:
        """Textual's hook for an exception nothing caught, which would end the console with
        a traceback (and with it an embedded relay): once the status line is there, the
        error is reported there and the console goes on."""
        dashboard = getattr(self, "dashboard", None)  # made with the first screen
        if dashboard is None or not dashboard.query(StatusBar):  # nowhere to say it yet
            super()._handle_exception(error)
            return
        self.report_view_error(error)

    async def run_action(self, action: str | ActionParseResult,
                         default_namespace: DOMNode | None = None,
                         namespaces: Mapping[str, DOMNode] | None = None) -> bool:
        """Every key's action, caught: an error raised there would stop the loop that
        reads the keys (Textual's message pump ends on an uncaught error)."""
        try:
            return await super().run_action(action, default_namespace, namespaces)
        except Exception as exc:  # any error: reported, and the next key works
            self.report_view_error(exc)
            return True

    def report_view_error(self, error: Exception) -> None:
        """A view's error as one line on the status line for a minute; its traceback in
        log/console-errors.log (once while it repeats). App.run_test still re-raises it at
        its end, so a test does not pass over it."""
        line = " ".join(f"{type(error).__name__}: {error}".split())
        line = f"error in the console: {line[:80]} (log/{ERROR_LOG})"
        if line != self.view_error:  # a row that fails on every redraw is written once
            with contextlib.suppress(OSError), (self.store.log_dir / ERROR_LOG).open("a") as log:
                log.write(time.strftime("%Y-%m-%d %H:%M:%S ")
                          + "".join(traceback.format_exception(error)))
            self.bell()
        self.view_error = line
        self._view_error_until = time.monotonic() + VIEW_ERROR_SHOWN
        if self._exception is None:
            self._exception = error
        self.call_later(self.show_status)

    def tick(self) -> None:
        if self.terminal is not None and not os.isatty(self.terminal):
            self.terminal = None  # a closed pty reads as end of file for ever, no SIGHUP
            self.hang_up("the terminal is gone")
        if self.relay is None:
            self.follow_lock()
        self.show_status()
        try:
            self.dashboard.tick_panes()
            if not self.index.ready:  # how far the index has got, in each pane's title
                for folder, pane in self.dashboard.panes.items():
                    pane.view.indexing = self.index.progress(folder)
                    pane.show_title()
        except NoMatches:  # the last tick of a console quitting: its panes are gone already
            pass

    def show_status(self) -> None:
        """Header and status line from the same figures the panes and tabs show now."""
        now = self.clock()
        if self.view_error and time.monotonic() > self._view_error_until:
            self.view_error = ""
        depth = self.dashboard.panes[QUEUE].view.total
        self.stats.sample_depth(now, depth)
        state, running = self.relay_state()
        header = Text()
        header.append(" mailroot ", style="bold reverse")
        if self.readonly:  # first, where no width cuts it off
            header.append(" READ-ONLY ", style="bold reverse")
        header.append(f" {state}  ·  {self.config.mailroot}")
        try:
            title, status = self.dashboard.query_one("#header", Static), self.dashboard.query_one(
                StatusBar)
        except NoMatches:
            return  # the dashboard is being taken down as the console quits
        title.update(header)
        status.show(
            relay_state="running" if running else "died" if state.startswith("✗") else
            "stopped", running=running,
            listeners=self.listeners() if running else [], stats=self.stats, now=now,
            queue_depth=depth, paused=self.paused, readonly=self.readonly,
            no_color=self.no_color, error=self.view_error)

    def listeners(self) -> list[str]:
        """The SMTP sockets the running relay reported binding; the configured addresses
        (marked so) when its start is older than the events read."""
        if self.stats.listeners is not None:
            return self.stats.listeners or ["off"]
        return [f"{hp} (config)" for hp in self.config.smtp.listen] or ["off"]

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self.apply_pending()
        self.tick()


def terminal_fd() -> int | None:
    """The console's terminal (stdin), if it is one: watched so that its loss is noticed."""
    fd = sys.__stdin__.fileno() if sys.__stdin__ is not None else -1
    return fd if fd >= 0 and os.isatty(fd) else None


def give_terminal_a_size(fd: int = 1) -> None:
    """A terminal that reports no size (0x0: some serial lines, a pty nobody sized) sends the
    screen into an endless re-layout; give it 80x24, which any real terminal overrides."""
    try:
        rows, columns = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        if not rows or not columns:
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    except OSError:
        pass  # not a terminal: nothing to size


def run_console(config: Config, readonly: bool = False) -> int:
    give_terminal_a_size()
    app = ConsoleApp(config, readonly=readonly)
    app.run()
    return app.return_code or 0
