"""The operator console: a live view of the mailroot's folders, with the operator's actions.

It runs the relay in-process unless one already holds the mailroot, in which case it attaches
to it; either way it works through the operator API (relay.ops.admin) and the event log alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import itertools
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping

from rich.text import Text
from textual import work
from textual.actions import ActionParseResult
from textual.app import App
from textual.css.query import NoMatches
from textual.dom import DOMNode
from textual.message import Message
from textual.widgets import Static
from watchfiles import awatch

from relay.ops import (
    LOG_NAME,
    QUEUE,
    AlreadyRunning,
    Config,
    ConfigError,
    LogFollower,
    lock_holder,
    read_rotated,
)
from relay.ops.admin import Admin
from relay.ops.listing import MatchError
from relay.ops.queries import NotFound
from relay.ops.reasons import permanent_reply
from relay.ops.running import ListenError, Relay, Supervisor, make_relay
from tui.actions import GLOBAL, bindings
from tui.activity import activity_line
from tui.bulk import VERBS, question, requeue_warning, result_line
from tui.commands import ConsoleCommands
from tui.index import FolderIndex
from tui.model import changed_ids
from tui.screens.dashboard import VIEWS, Dashboard
from tui.screens.inspector import Inspector
from tui.screens.route import RouteCommands
from tui.stats import HOUR, Stats
from tui.theme import THEME
from tui.widgets.status import StatusBar

ACTIVITY_AT_START = 200
BULK_REFRESH = 0.5  # seconds between two redraws of the panes while a bulk action runs
NO_FULL_PASS = 1_000_000  # gc's third threshold while a bulk action runs: never reached
VIEW_ERROR_SHOWN = 60.0  # seconds a view's error stays on the status line
ERROR_LOG = "console-errors.log"  # in the mailroot's log/: the tracebacks of views' errors


class MailrootChanged(Message):
    """Files changed; the ids wait in the app's pending set. A burst merges into one."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MailrootChanged)


class ConsoleApp(App):
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

    async def start_relay(self) -> None:
        try:
            relay = make_relay(self.config, stream=None)
            await relay.start()
            self.relay = relay
            freeze_long_lived()
        except AlreadyRunning:
            self.holder = lock_holder(self.store)
        except (ListenError, ConfigError) as exc:  # a taken port, a bad DKIM key: show it
            self.relay_error = str(exc)
            self.notify(f"The relay did not start: {exc}", severity="error", timeout=30,
                        markup=False)
        finally:
            self.starting = False
            self.tick()

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

    def relay_state(self) -> tuple[str, bool]:
        if self.relay_died and self.holder is None and self.relay is None:
            return f"✗ {self.relay_died}", False
        if self.starting:
            return "starting the embedded relay…", False
        if self.relay_error:
            return f"relay not started: {self.relay_error}", False
        if self.relay is not None and self.relay.running:
            return f"embedded relay {self.relay.processes()}", True
        if self.holder:
            return f"attached to relay {self.holder}", True
        return "no relay running" + (" (read-only view)" if self.readonly else ""), False

    # --- live data ---

    @work(exclusive=True, group="watch", exit_on_error=False)
    async def watch_mailroot(self) -> None:
        """Turn file events into pending ids plus one mergeable message per burst."""
        paths = [self.store.folder(f) for f in VIEWS] + [self.store.log_dir]
        log_dir = str(self.store.log_dir)
        async for changes in awatch(*paths, watch_filter=None, debounce=100, step=50,
                                    recursive=False, stop_event=self._stop_watch):
            names = [path for _, path in changes]
            for folder, ids in changed_ids(str(self.store.root), names).items():
                self.pending.setdefault(folder, set()).update(ids)
            if any(name.startswith(log_dir) for name in names):
                self.pending.setdefault("log", set())
            self.post_message(MailrootChanged())

    def on_mailroot_changed(self, message: MailrootChanged) -> None:
        if not self.paused:
            self.apply_pending()

    # --- the index ---

    @work(group="index", exit_on_error=False)
    async def build_index(self) -> None:
        """Read every folder whole, off the event loop, then let the views use the index;
        what changed meanwhile is read again."""
        built = await asyncio.to_thread(self.index.build)
        async with self._changing:
            self.index.install(built)
            freeze_long_lived()
            again, self.unindexed = self.unindexed, {}
            if again:
                self.index.merge(await asyncio.to_thread(self.index.read_changes, again))
            for folder in VIEWS:
                self.show_view(folder)
            self.dashboard.refresh_panes(VIEWS)

    def show_view(self, folder: str, changed: set[str] | frozenset[str] = frozenset()) -> None:
        """A pane's ids from the index (its filter and sort over the whole folder)."""
        view = self.dashboard.panes[folder].view
        ids = view.ids if view.indexed else []
        try:
            ids = self.index.query(folder, view.needle, view.sort)
            view.error = ""
        except MatchError as exc:
            view.error = str(exc)
        entries = self.index.entries[folder]
        view.show(self.admin, ids, len(entries), entries.__contains__, changed)

    def refresh_view(self, folder: str) -> None:
        """After the operator changed a view's filter, sort or page."""
        if self.index.ready:
            self.show_view(folder)
        else:
            self.dashboard.panes[folder].view.apply(self.admin, ())
        self.dashboard.refresh_panes([folder])

    @work(group="apply", exit_on_error=False)
    async def apply_pending(self) -> None:
        """Bring the index and the panes up to the file events gathered so far."""
        async with self._changing:
            if self.bulk_cancel is not None:  # a bulk action moves thousands: gather more
                await asyncio.sleep(self._last_apply + BULK_REFRESH - time.monotonic())
            self._last_apply = time.monotonic()
            pending, self.pending = self.pending, {}
            if pending.pop("log", None) is not None:
                self.follow_events()
            if not pending:
                return
            if self.index.ready:
                self.index.merge(await asyncio.to_thread(self.index.read_changes, pending))
                for folder, ids in pending.items():
                    self.show_view(folder, ids)
            else:
                for folder, ids in pending.items():
                    self.unindexed.setdefault(folder, set()).update(ids)
                    self.dashboard.panes[folder].view.apply(self.admin, ids)
            self.dashboard.refresh_panes(list(pending))
            self.follow_inspected(set().union(*pending.values()))
            self.show_status()
            if self.bulk_cancel is not None:  # gc's full pass, away from the redraws
                self.set_timer(BULK_REFRESH / 2, gc.collect)

    @work(group="resync", exclusive=True, exit_on_error=False)
    async def resync(self) -> None:
        """A cheap safety net for lost file events: compare names (listed off the event loop:
        100,000 of them take a while), re-read only the differences."""
        if self.paused:
            return
        folders = [f for f in self.dashboard.panes if f != "Pickup"]
        names = await asyncio.to_thread(lambda: {f: set(self.store.ids(f)) for f in folders})
        for folder in folders:
            known = self.index.entries[folder] if self.index.ready else \
                self.dashboard.panes[folder].view.ids
            differ = names[folder].symmetric_difference(known)
            if differ:
                self.pending.setdefault(folder, set()).update(differ)
        self.apply_pending()

    def follow_inspected(self, changed: set[str]) -> None:
        """Every open inspector whose message changed shows it again, wherever it is now:
        a requeued message that fails again is seen back in Badmail."""
        for screen in self.screen_stack:
            if isinstance(screen, Inspector) and screen.message_id in changed:
                screen.follow()

    def follow_events(self, first: bool = False) -> None:
        path = self.store.log_dir / LOG_NAME
        if first or self.follower is None:  # the whole last hour, however long the log
            self.follower = LogFollower.at_end(path)  # then what is appended, across rotations
            events = list(read_rotated(path, newest_first=True,
                                       since=self.clock() - HOUR))[::-1]
        else:
            events = self.follower.read()
        for event in events:
            self.stats.add(event)
            if event.get("event") == "relay-stopped" and isinstance(event.get("pid"), int):
                self.stopped_pids.add(event["pid"])
        if first:  # the latest events, from the rotated files too when the log is young
            shown = list(itertools.islice(read_rotated(path, newest_first=True),
                                          ACTIVITY_AT_START))[::-1]
        else:
            shown = events
        if shown:
            self.dashboard.activity([activity_line(e) for e in shown])

    def tick(self) -> None:
        if self.terminal is not None and not os.isatty(self.terminal):
            self.terminal = None  # a closed pty reads as end of file for ever, no SIGHUP
            self.hang_up("the terminal is gone")
        if self.relay is None:
            was, self.holder = self.holder, lock_holder(self.store)
            if was and self.holder is None:
                self.relay_gone(holder_pid(was))
            elif self.holder:
                self.relay_died = ""
        self.show_status()
        try:
            self.dashboard.tick_panes()
            if not self.index.ready:  # how far the index has got, in each pane's title
                for folder, pane in self.dashboard.panes.items():
                    pane.view.indexing = self.index.progress(folder)
                    pane.show_title()
        except NoMatches:  # the last tick of a console quitting: its panes are gone already
            pass

    def relay_gone(self, pid: int | None) -> None:
        """The relay this console watched let go of the mailroot: a stop it logged, or a
        death (kill -9, a crash) that looks like one unless said; then say it, and log it."""
        self.follow_events()  # its relay-stopped, if it wrote one, is in the log by now
        if pid is None or pid in self.stopped_pids:
            return
        signum = None
        if self.started is not None and self.started.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.started.wait(timeout=1)
                signum = -code if code < 0 else None
        how = f", signal {signum}" if signum else ""
        at = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        self.relay_died = f"relay died (pid {pid}{how}) at {at}"
        self.admin.events.emit("relay-died", pid=pid, signal=signum,
                               reason=f"relay pid {pid} ended without a clean stop{how}",
                               seen_by=f"console pid {os.getpid()}")

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

    # --- operator actions ---

    def confirm_and_operate(self, action: str, folder: str, ids: list[str],
                            then: Callable[[], None] | None = None) -> None:
        """Ask with the scope and the domains of messages not on screen ("Hold 1,812 messages
        in Queue (1,809 to greylist.test, 3 to b.example)?"); on yes, act."""
        from tui.screens.confirm import Confirm

        if not ids:
            self.notify("Nothing to act on: the folder is empty.", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.operate(action, folder, ids, then)

        domains = self.index.domains_of(folder, ids) if self.index.ready else None
        text = question(action, len(ids), folder, domains)
        if action == "requeue":
            text += requeue_warning(len(ids), self.permanent_failures(folder, ids))
        self.push_screen(Confirm(text), answered)

    def permanent_failures(self, folder: str, ids: list[str]) -> list[str]:
        """The 5xx replies that put these messages where they are, from the index (a lone
        message is read when the index is not built yet)."""
        if self.index.ready:
            entries = self.index.entries[folder]
            reasons = [entries[mid].reply for mid in ids if mid in entries]
        elif len(ids) == 1:
            try:
                reasons = [self.admin.summary_of(folder, ids[0]).last_error]
            except (NotFound, OSError):
                reasons = []
        else:
            reasons = []
        return [reply for reply in map(permanent_reply, reasons) if reply]

    @work(group="operate")
    async def operate(self, action: str, folder: str, ids: list[str],
                      then: Callable[[], None] | None = None) -> None:
        """Run one bulk action off the event loop, with a progress bar that esc stops, and
        report what it did to every message; then `then`, if given."""
        if self.readonly:
            self.notify("Read-only console: actions are off.", severity="error")
            return
        if self.bulk_cancel is not None:
            self.notify("Another bulk action is running; esc stops it.", severity="warning")
            return
        verb = VERBS[action][0]
        cancel = self.bulk_cancel = threading.Event()
        done = [0]

        def progress(count: int) -> bool:
            done[0] = count
            return not cancel.is_set()

        started = time.monotonic()
        self.dashboard.bulk_progress(verb, 0, len(ids), 0.0)
        timer = self.set_interval(0.1, lambda: self.dashboard.bulk_progress(
            verb, done[0], len(ids), time.monotonic() - started))
        try:
            with no_full_collections():
                result = await asyncio.to_thread(self.admin.bulk, action, ids, progress)
        except Exception as exc:  # the API's refusal, shown to the operator, not a crash
            self.notify(f"{verb} failed: {exc}", severity="error", markup=False)
            return
        finally:
            timer.stop()
            self.bulk_cancel = None
            self.dashboard.bulk_progress(verb, None, len(ids), 0.0)
            self.dashboard.refresh_panes([f for f, p in self.dashboard.panes.items() if p.stale])
        self.dashboard.panes[folder].view.marks.difference_update(result.done)
        undo = "Undo: 6 (Trash), mark them, u." if action == "delete" else ""
        self.last_result = result_line(action, result, len(ids), undo)
        self.notify(self.last_result[:1].upper() + self.last_result[1:],
                    severity="warning" if len(result.done) < len(ids) else "information",
                    timeout=8 if undo else 5, markup=False)
        if then is not None:
            then()

    def cancel_bulk(self) -> bool:
        """esc while a bulk action runs: it stops after the message in hand."""
        if self.bulk_cancel is None:
            return False
        self.bulk_cancel.set()
        return True

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

    async def hand_over(self, why: str = "the operator chose to keep it running") -> None:
        """Stop the embedded relay, start `mailroot serve` detached in its place, then quit
        once it holds the mailroot; the event log says so, and why."""
        relay, self.relay = self.relay, None
        if relay is not None:
            await relay.stop()
        try:
            pid = start_background_relay(self.config).pid
        except OSError as exc:
            self.handover_failed(f"The background relay did not start: {exc}", why)
            return
        deadline = time.monotonic() + 10
        while (holder := lock_holder(self.store)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if holder is None:
            self.handover_failed(f"The background relay (pid {pid}) has not taken the "
                                 "mailroot; see log/events.jsonl", why)
            return
        self.admin.events.emit("relay-handed-over", console_pid=os.getpid(), relay=holder,
                               why=why)
        self.exit(message=None if self.hung_up else
                  f"mailroot: the relay runs on in the background ({holder})")

    def handover_failed(self, problem: str, why: str) -> None:
        self.admin.events.emit("relay-handover-failed", console_pid=os.getpid(),
                               problem=problem, why=why)
        if self.hung_up:  # nobody to tell but the log
            self.exit()
        else:
            self.notify(problem, severity="error", markup=False)


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

    async def attach_to_started(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 15
        while lock_holder(self.store) is None and proc.poll() is None \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.tick()
        if self.holder is None:
            self.notify(f"mailroot serve (pid {proc.pid}) has not taken the mailroot; "
                        "see log/events.jsonl", severity="error", markup=False)

    def action_help(self) -> None:
        from tui.screens.help import Help

        screen = self.screen
        acts = list(getattr(screen, "ACTS", [])) + GLOBAL
        self.push_screen(Help(screen.__class__.__name__, acts, self.readonly))


def terminal_fd() -> int | None:
    """The console's terminal (stdin), if it is one: watched so that its loss is noticed."""
    fd = sys.__stdin__.fileno() if sys.__stdin__ is not None else -1
    return fd if fd >= 0 and os.isatty(fd) else None


def holder_pid(holder: str) -> int | None:
    """The pid in a lock holder's line ('pid 123 on host')."""
    match = re.match(r"pid (\d+)", holder)
    return int(match[1]) if match else None


def start_background_relay(config: Config) -> subprocess.Popen:
    """`mailroot serve` in its own session, detached from this terminal."""
    command = [sys.executable, "-m", "relay.cli", "serve"]
    if config.source:
        command += ["-c", str(config.source)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return proc


@contextlib.contextmanager
def no_full_collections() -> Iterator[None]:
    """While a bulk action runs, the garbage collector makes no full pass of its own: one
    took 50-130 ms, and landing inside a redraw it made the longest frame gaps of a
    10,000-message hold. apply_pending calls one halfway between two redraws instead."""
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, NO_FULL_PASS)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, full)


def freeze_long_lived() -> None:
    """Leave what exists now (the index's 100,000 entries, the relay's schedule) out of the
    garbage collector's full passes: each pass over them held the console up for 0.2-0.4 s
    during bulk actions, and they live as long as the console."""
    gc.freeze()


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
