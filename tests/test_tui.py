"""The console against a real relay (embedded in the app) on a temporary mailroot."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import smtplib
import struct
import subprocess
import sys
import termios
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from relay.core import config_loader
from relay.core.relay_lock import lock_holder
from relay.core.store import BADMAIL, DROP, QUEUE, Mailroot
from relay.ops.admin import Admin
from relay.ops.config_keys import key_paths
from tests.busy_fixture import build_busy
from tests.conftest import drop_file, sample, wait_for
from tests.tui_fixture import T0, build, hold_lock
from tests.tui_fixture import until as wait_until
from tests.tui_fixture import write_config as fixture_config
from tui.app import ConsoleApp
from tui.fields import form_keys
from tui.relay_link import holder_pid
from tui.screens.confirm import Confirm
from tui.screens.inspector import Inspector
from tui.screens.settings import SettingsForm

SIZE = (80, 24)


until = partial(wait_until, timeout=5.0)  # this file's default wait


def console(path: Path, **kw) -> ConsoleApp:
    return ConsoleApp(config_loader.load(path), **kw)


async def test_pickup_file_appears_in_queue_pane_within_a_second(write_config, tmp_path):
    app = console(write_config())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)
        assert "embedded relay" in str(app.dashboard.query_one("#header").render())
        example = sample("iis-example-as-written.txt").replace(b"yourdomain.com",
                                                              b"remote.example")
        started = time.monotonic()
        drop_file(tmp_path / "mailroot" / "Pickup", "iis.txt", example)
        table = app.dashboard.panes[QUEUE].table
        await until(pilot, lambda: table.row_count == 1, timeout=3)
        assert time.monotonic() - started < 1.0 + 0.5  # 1 s, with slack for a busy machine
        assert app.dashboard.panes[QUEUE].view.rows[app.dashboard.panes[QUEUE].current_id()
                                                    ].subject == "Email test"
        assert "Queue 1" in str(app.dashboard.query_one("#tab-queue").label)


async def test_badmail_enter_shows_reason_first(write_config, tmp_path):
    app = console(write_config())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None)
        drop_file(tmp_path / "mailroot" / "Pickup", "norcpt.eml",
                  b"From: a@yourdomain.com\r\nSubject: [no one] to send to\r\n\r\nbody\r\n")
        await pilot.press("4")
        pane = app.dashboard.panes[BADMAIL]
        await until(pilot, lambda: pane.table.row_count == 1)
        reason = next(iter(pane.view.rows.values())).last_error
        assert reason
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, Inspector))
        text = str(app.screen.query_one("#inspector-text").render())
        assert text.lstrip().startswith("✗ Why it is in Badmail")
        assert text.index(reason) < text.index("Envelope")
        assert "[no one] to send to" in text  # a header with brackets, shown as text
        await pilot.press("v")
        assert "Subject: [no one] to send to" in str(
            app.screen.query_one("#inspector-text").render())
        await pilot.press("escape", "escape")  # raw -> summary -> dashboard
        assert app.screen is app.dashboard  # esc goes back, never quits


async def test_marking_three_and_d_asks_with_scope_and_n_keeps_all(write_config, tmp_path):
    app = console(write_config())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None)
        for n in range(3):
            drop_file(tmp_path / "mailroot" / "Pickup", f"m{n}.eml",
                      f"From: a@yourdomain.com\r\nTo: b{n}@far.example\r\nSubject: {n}\r\n\r\n"
                      "x\r\n".encode())
        pane = app.dashboard.panes[QUEUE]
        await until(pilot, lambda: pane.table.row_count == 3)
        await pilot.press("2", "g", "space", "space", "space")
        assert len(pane.view.marks) == 3
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert app.screen.question == "Delete 3 messages from Queue (3 to far.example)?"
        assert app.screen.focused.id == "no"  # the default is no
        await pilot.press("n")
        await until(pilot, lambda: app.screen is app.dashboard)
        await pilot.pause(0.3)
        assert len(Admin(app.config).store.ids(QUEUE)) == 3
        assert pane.table.row_count == 3


async def test_readonly_hides_and_refuses_actions(write_config, tmp_path):
    app = console(write_config(), readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.relay is None  # read-only never starts a relay
        assert "no relay running" in str(app.dashboard.query_one("#header").render())
        assert app.dashboard.check_action("bulk", ("delete",)) is False
        footer_keys = {k for k, ab in app.dashboard.active_bindings.items() if ab.enabled}
        assert not footer_keys & {"d", "r", "t", "h"}
        await pilot.press("d")
        assert not isinstance(app.screen, Confirm)


async def test_a_relay_that_cannot_listen_is_shown_and_the_console_stays(write_config, tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    app = console(write_config({"smtp": {"listen": [f"127.0.0.1:{port}"]}}))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: not app.starting)
            assert app.relay is None and "cannot listen" in app.relay_error
            header = str(app.dashboard.query_one("#header").render())
            assert "relay not started" in header
            drop_file(tmp_path / "mailroot" / "Pickup", "a.eml", sample("iis-example-as-written.txt"))
            await pilot.press("1")  # still usable: the file shows in Pickup, untaken
            await until(pilot, lambda: len(app.dashboard.panes["Pickup"].view.ids) == 1)
    finally:
        taken.close()


async def test_retry_interval_15x_is_refused_inline_and_nothing_saved(write_config):
    path = write_config()
    before = path.read_bytes()
    app = console(path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, SettingsForm))
        form = app.screen
        assert set(form.fields) == set(form_keys())
        assert {k for k in key_paths() if k.startswith("delivery.")} <= set(form.fields)
        await pilot.press("ctrl+a", "ctrl+k", *"15x, 30m, 1h, 4h")
        error = str(form.query_one("#f-delivery-retry .error").render())
        assert "bad duration '15x'" in error
        await pilot.press("ctrl+s")
        assert app.screen is form  # not saved, still editing
        assert "nothing saved" in str(form.query_one("#form-errors").render())
        await pilot.press("escape")
        assert app.screen is app.dashboard
    assert path.read_bytes() == before


async def test_command_palette_lists_every_dashboard_action(write_config):
    from tui.actions import DASHBOARD, GLOBAL
    from tui.commands import ConsoleCommands

    app = console(write_config())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        provider = ConsoleCommands(app.dashboard)
        titles = [hit.text async for hit in provider.discover()]
        for act in DASHBOARD + [a for a in GLOBAL if a.action != "command_palette"]:
            offered = any(t.startswith(act.title) for t in titles)
            # "Start relay" only when none runs: this console runs one, or is starting it
            assert offered == (act.action != "start_relay"), act.title
        await pilot.press("colon")
        assert app.screen.__class__.__name__ == "CommandPalette"
        await pilot.press("escape", "question_mark")
        assert app.screen.__class__.__name__ == "Help"


async def test_cursor_stays_on_its_row_when_rows_arrive(tmp_path):
    path = fixture_config(tmp_path)
    build(tmp_path / "mailroot")
    fd = hold_lock(tmp_path / "mailroot")
    try:
        app = console(path, clock=lambda: T0)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            pane = app.dashboard.panes[QUEUE]
            await pilot.press("s")  # newest first: a new row lands above the cursor
            await pilot.press("j")
            chosen = pane.current_id()
            store = app.store
            env = store.read_envelope(QUEUE, chosen)
            env.id = "1K00000000000000"[:11] + "ZZZZZ"
            env.received = T0
            store.commit(store.enqueue_ops(QUEUE, env, store.read_message(QUEUE, chosen)))
            await until(pilot, lambda: pane.table.row_count == 4)
            assert pane.current_id() == chosen
    finally:
        os.close(fd)


async def test_alias_added_in_domain_editor_routes_next_message_to_drop(write_config, tmp_path):
    app = console(write_config())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None)
        await pilot.press("e", "a", *"newalias.test", "enter")
        await until(pilot, lambda: any(r.domain == "newalias.test" for r in app.screen.rows))
        events = tmp_path / "mailroot" / "log" / "events.jsonl"
        await until(pilot, lambda: '"config-reloaded"' in events.read_text())  # applied live
        drop_file(tmp_path / "mailroot" / "Pickup", "a.eml",
                  b"From: x@yourdomain.com\r\nTo: someone@newalias.test\r\nSubject: hi\r\n\r\n.\r\n")
        await until(pilot, lambda: len(app.dashboard.panes[DROP].view.ids) == 1)


def test_importing_relay_never_imports_textual():
    code = ("import sys, relay.cli, relay.ops.admin, relay.supervisor.single, relay.core.events; "
            "print(any(m == 'textual' or m.startswith('textual.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"


def drain(fd: int, into: bytearray) -> None:
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 65536):
            into += chunk


def listening_port(log: Path, after: int) -> int | None:
    """The SMTP port the relay that started after byte `after` of the event log reported."""
    events = [json.loads(line) for line in log.read_bytes()[after:].splitlines()]
    return next((e["port"] for e in reversed(events) if e["event"] == "smtp-listening"), None)


@pytest.mark.parametrize(("hangup", "unsized"), [("sighup", False), ("closed tty", False),
                                                  ("both", False), ("sighup", True)])
def test_a_hangup_hands_the_embedded_relay_to_a_background_serve(write_config, tmp_path,
                                                                 hangup, unsized):
    """A dropped SSH session (SIGHUP to the console's process group, its terminal closed, or
    both; also on a terminal that reports no size): the console exits, a detached `mailroot
    serve` takes the mailroot over, the log says so, and mail goes on through it."""
    path = write_config()
    root = tmp_path / "mailroot"
    log = root / "log" / "events.jsonl"
    primary, secondary = pty.openpty()
    if not unsized:
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "-c", str(path)],
                            stdin=secondary, stdout=secondary, stderr=secondary,
                            start_new_session=True, cwd=Path(__file__).parent.parent,
                            env={**os.environ, "TERM": "xterm-256color"})
    os.close(secondary)
    screen = bytearray()  # drain the terminal, as a real one would, so the app never blocks
    reader = threading.Thread(target=drain, args=(primary, screen), daemon=True)
    reader.start()
    background = None
    try:
        wait_for(lambda: log.exists() and b"relay-started" in log.read_bytes(), timeout=15)
        drop_file(root / "Pickup", "local.eml", sample("iis-example-as-written.txt"))
        wait_for(lambda: list((root / "Drop").glob("*.eml")), timeout=5)
        handed = log.stat().st_size
        if hangup in ("closed tty", "both"):
            os.close(primary)
        if hangup in ("sighup", "both"):
            os.killpg(proc.pid, signal.SIGHUP)
        assert proc.wait(timeout=20) is not None
        holder = lock_holder(Mailroot(root))
        background = holder_pid(holder or "")
        assert background is not None and background != proc.pid, holder
        events = [json.loads(line) for line in log.read_bytes()[handed:].splitlines()]
        over = [e for e in events if e["event"] == "relay-handed-over"]
        assert len(over) == 1 and over[0]["relay"] == holder
        assert over[0]["why"] in {"sighup": {"SIGHUP"}, "closed tty": {"the terminal is gone"},
                                  "both": {"SIGHUP", "the terminal is gone"}}[hangup]
        port = listening_port(log, handed)
        assert port
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("app@yourdomain.com", ["after@yourdomain.com"],
                            b"Subject: after the hangup\r\n\r\nstill delivered\r\n")
        wait_for(lambda: len(list((root / "Drop").glob("*.eml"))) == 2, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        if hangup == "sighup":
            os.close(primary)
        if background is not None:
            os.kill(background, signal.SIGTERM)
            wait_for(lambda: lock_holder(Mailroot(root)) is None, timeout=15)
    assert b"embedded relay" in screen


COLOUR_CODES = re.compile(r"^(3[0-8]|4[0-8]|9[0-7]|10[0-7])$")  # 39 and 49: the default


def colour_codes(screen: bytes) -> list[str]:
    """The SGR sequences in terminal output that set a colour (of text or background)."""
    found = []
    for params in re.findall(rb"\x1b\[([0-9;:]*)m", screen):
        codes = params.decode().replace(":", ";").split(";")
        if any(COLOUR_CODES.match(code) for code in codes):
            found.append(params.decode())
    return found


def test_no_color_sends_no_colour_codes_to_the_terminal(tmp_path):
    """NO_COLOR=1: not one colour code reaches the terminal (Textual's own answer is grey
    tones in 256-colour codes), and the cursor row is drawn in reverse video."""
    root = tmp_path / "mailroot"
    build_busy(root)
    path = fixture_config(tmp_path)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "console", "--readonly",
                             "-c", str(path)],
                            stdin=secondary, stdout=secondary, stderr=secondary,
                            start_new_session=True, cwd=Path(__file__).parent.parent,
                            env={**os.environ, "TERM": "xterm-256color", "NO_COLOR": "1",
                                 "COLORTERM": "truecolor"})
    os.close(secondary)
    screen = bytearray()
    reader = threading.Thread(target=drain, args=(primary, screen), daemon=True)
    reader.start()
    try:
        wait_for(lambda: b"READ-ONLY" in screen, timeout=15)
        time.sleep(1.5)  # a second's ticks drawn too
        os.killpg(proc.pid, signal.SIGHUP)
        assert proc.wait(timeout=10) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    assert colour_codes(bytes(screen)) == []
    assert b"\x1b[7m" in screen or re.search(rb"\x1b\[[0-9;]*;7[;m]", screen)


def test_listeners_follow_each_relay_run_in_the_events():
    from tui.stats import Stats

    stats = Stats()
    run = [{"event": "smtp-listening", "host": "127.0.0.1", "port": 2525},
           {"event": "smtp-listening", "host": "::1", "port": 2525, "tls": True},
           {"event": "relay-started"}]
    for event in run:
        stats.add(event)
    assert stats.listeners == ["127.0.0.1:2525", "[::1]:2525 tls"]
    stats.add({"event": "relay-stopped"})
    assert stats.listeners is None
    for event in [run[0], run[2], {"event": "relay-stopped"}, {"event": "relay-started"}]:
        stats.add(event)
    assert stats.listeners == []  # the last run listened on nothing


def test_queue_columns_fit_80_columns_with_attempts_next_and_last_reply():
    from tui.model import COLUMNS, PAD, fit

    fitted = fit(COLUMNS[QUEUE], 79)
    keys = [c.key for c, _ in fitted]
    assert {"state", "to", "attempts", "next", "error"} <= set(keys)
    assert sum(w + PAD for _, w in fitted) == 79
    assert [c.key for c, _ in fit(COLUMNS[QUEUE], 300)] == [c.key for c in COLUMNS[QUEUE]]
