"""The console tells the truth: live panes, ticking clocks, exact counts, safe exits."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from relay.core import config_loader
from tests.tui_fixture import T0, build, hold_lock, write_config
from tests.tui_fixture import until as wait_until
from tui.app import ConsoleApp

SIZE = (80, 24)


until = partial(wait_until, timeout=8.0)  # this file's default wait


@pytest.fixture
def attached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A console attached to a fixed mailroot whose lock a "relay" holds: nothing moves but
    what the test writes."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    root = tmp_path / "mailroot"
    build(root)
    fd = hold_lock(root)
    config = config_loader.load(write_config(tmp_path))
    yield root, config
    os.close(fd)
    monkeypatch.undo()
    time.tzset()


def append_events(root: Path, events: list[dict]) -> None:
    with (root / "log" / "events.jsonl").open("a") as log:
        log.write("".join(json.dumps(e) + "\n" for e in events))


async def test_activity_pane_follows_the_newest_event_through_bursts(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.dashboard.query_one("#activity")
        now = time.time()
        for burst in range(8):
            append_events(root, [{"time": now + burst, "event": "delivered", "id": f"B{burst}N{n}",
                                  "to": [f"u{n}@far.example"], "reply": "250 ok"}
                                 for n in range(250)])
            last = f"id B{burst}N249"
            await until(pilot, lambda last=last: log.lines and log.lines[-1].endswith(last))
            await pilot.pause(0.1)
            assert log.scroll_y == log.max_scroll_y, f"burst {burst}: not at the newest"
            assert last in shown_text(log)[-1], (burst, shown_text(log))


def shown_text(widget) -> list[str]:
    """The lines the widget paints now (its rendered cache, as the screen gets them)."""
    strips = widget.render_lines(widget.outer_size.region)
    return ["".join(seg.text for seg in strip) for strip in strips]


async def test_a_cut_activity_line_ends_in_an_ellipsis(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.dashboard.query_one("#activity")
        append_events(root, [{"time": time.time(), "event": "deferred", "id": "LONG",
                              "to": ["someone@far.example"], "reply": "451 " + "x" * 200}])
        await until(pilot, lambda: log.lines and log.lines[-1].endswith("id LONG"))
        await pilot.pause(0.1)
        row = next(t for t in shown_text(log) if "deferred" in t)
        assert row.rstrip().endswith("…") and len(row) == log.size.width


async def test_hour_counts_are_exact_however_long_the_log(attached):
    """More than 2 MiB of events in the last hour: every delivery is counted, none older."""
    root, config = attached
    now = time.time()
    pad = "p" * 1000
    old = [{"time": now - 4000 + n, "event": "delivered", "id": f"OLD{n}"} for n in range(50)]
    recent = [{"time": now - 3500 + n, "event": "delivered", "id": f"N{n}", "pad": pad}
              for n in range(3000)]
    recent += [{"time": now - 30, "event": "bounced", "id": "F1"}]
    append_events(root, old + recent)
    assert (root / "log" / "events.jsonl").stat().st_size > 3 * 1024 * 1024
    app = ConsoleApp(config)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        counts = app.stats.counts(time.time(), 3600)
        assert (counts["delivered"], counts["failed"]) == (3000, 1)
        assert "1h ✓3000" in status_line(app)


def status_line(app) -> str:
    return str(app.dashboard.query_one("#status-line").render())


async def test_the_status_line_and_the_tab_count_the_queue_alike(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.tick()
        store = app.store
        from relay.core.store import QUEUE
        from tests.tui_fixture import envelope, fixed_id, message
        for n in range(3):
            mid = fixed_id(time.time(), 90 + n)
            data = message("a@example.com", f"b{n}@far.example", f"S{n}")
            store.commit(store.enqueue_ops(QUEUE, envelope(mid, time.time(), "a@example.com",
                                                           [f"b{n}@far.example"], "S", data),
                                           data))
        tab = app.dashboard.query_one("#tab-queue")
        await until(pilot, lambda: "Queue 6" in str(tab.label), timeout=5)
        depth = str(app.dashboard.query_one("#depth-label").render())
        assert "queue 6 now" in depth


def holder_pid(root: Path) -> int | None:
    from relay.core.relay_lock import lock_holder
    from relay.core.store import Mailroot

    holder = lock_holder(Mailroot(root))
    return int(holder.split()[1]) if holder and holder.startswith("pid ") else None


async def test_q_with_the_embedded_relay_asks_and_can_leave_it_running(write_config, tmp_path):
    from tui.screens.quit import QuitDialog

    app = ConsoleApp(config_loader.load(write_config()))
    root = tmp_path / "mailroot"
    background = None
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.relay is not None and app.relay.running)
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, QuitDialog))
            assert app.screen.question.startswith("Quit and stop the relay?")
            assert app.screen.focused.id == "stay"  # the default keeps everything as it is
            await pilot.press("n")
            await until(pilot, lambda: app.screen is app.dashboard)
            assert app.relay.running
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, QuitDialog))
            await pilot.press("b")
            await until(pilot, lambda: not app.is_running, timeout=15)
        background = holder_pid(root)
        assert background is not None and background != os.getpid()
        os.kill(background, 0)  # alive, holding the mailroot, without the console
    finally:
        if background:
            import signal
            os.kill(background, signal.SIGTERM)
            from tests.conftest import wait_for
            wait_for(lambda: holder_pid(root) is None, timeout=10)


async def test_an_attached_console_quits_without_asking(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)


@pytest.mark.parametrize("screen_keys", [[], ["e"], ["c"]], ids=["dashboard", "domains",
                                                                 "settings"])
async def test_readonly_screens_say_so_and_refuse_with_a_notice(attached, screen_keys):
    root, config = attached
    app = ConsoleApp(config, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press(*screen_keys)
        await pilot.pause()
        keybar = str(app.screen.query_one("KeyBar").render())
        assert keybar.startswith("READ-ONLY")
        key = {"dashboard": "d", "domains": "a", "settings": "ctrl+s"}[
            {(): "dashboard", ("e",): "domains", ("c",): "settings"}[tuple(screen_keys)]]
        if screen_keys == ["c"]:  # every field is shown, none can be typed in
            assert all(box.disabled for box in app.screen.query("TextBox"))
            assert "ctrl+s: save" not in str(app.screen.query_one(".form-title").render())
        if screen_keys == ["e"]:
            note = str(app.screen.query_one("#domains-note").render())
            assert "a alias" not in note
        await pilot.press(key)
        await until(pilot, lambda: any("Read-only" in str(n.message)
                                       for n in app._notifications))
        from tui.screens.confirm import Confirm
        assert not isinstance(app.screen, Confirm)


@pytest.mark.parametrize("width", [60, 70, 80, 100, 160])
def test_status_line_keeps_state_paused_readonly_and_clock_at_any_width(width):
    from tui.widgets.status import StatusParts, status_text

    big = {"delivered": 14640, "deferred": 1203, "failed": 1187}
    parts = StatusParts(True, "running", ["127.0.0.1:2525", "[::1]:2525 tls"], big, big,
                        T0, paused=True, readonly=True)
    stressed = replace(parts, stressed=True, refused=1234)  # everything on at once
    for shown in (parts, stressed):
        line = status_text(shown, width).plain
        assert len(line) <= width, line
        for word in ("running", "‖ screen paused", "READ-ONLY", time.strftime("%H:%M:%S",
                                                                      time.localtime(T0))):
            assert word in line, (width, line)
        if width >= 80:
            assert "1h ✓14k ↻1.2k ✗1.2k" in line or "1h ✓14640" in line
    line = status_text(stressed, width).plain
    assert "STRESS" in line
    if width >= 100:
        assert "refused 1.2k/m" in line or "refused 1234/m" in line


@pytest.mark.parametrize("width", [60, 80, 100])
def test_the_queue_key_bar_wraps_instead_of_dropping_keys(attached, width):
    from tui.actions import DASHBOARD
    from tui.widgets.keybar import keybar_text

    text = keybar_text(DASHBOARD, width).plain
    assert all(len(line) <= width for line in text.split("\n"))
    for label in ("sort", "pause", "domains", "settings", "help", "quit"):
        assert f" {label}" in text


def test_every_text_colour_of_the_theme_meets_wcag_aa():
    from textual.theme import BUILTIN_THEMES

    from tui.theme import contrasts

    low = [(what, round(ratio, 2)) for what, ratio in contrasts() if ratio < 4.5]
    assert low == []
    # the stock theme, which the console used, does not: the check can fail
    assert [what for what, ratio in contrasts(BUILTIN_THEMES["textual-dark"]) if ratio < 4.5]


@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
async def test_failures_stand_out_and_the_cursor_most_with_and_without_colour(
        attached, monkeypatch, no_color):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.theme == "mailroot"
        await pilot.press("4")
        await pilot.pause()
        pane = app.dashboard.panes["Badmail"]
        row = next(iter(pane.view.rows.values()))
        state = pane.cells(row, time.time())[pane.columns.index(
            next(c for c in pane.columns if c.key == "state"))]
        style = app.console.get_style(str(state.style))
        assert style.bold
        assert (style.underline and not style.reverse) if no_color else style.bgcolor is not None
        if no_color:  # reverse video is the cursor row's alone: the most visible thing
            cursor = pane.table.get_component_rich_style("datatable--cursor")
            assert cursor.reverse and cursor.bold
        from tui.widgets.status import outcome_text
        failed = outcome_text({"delivered": 1, "deferred": 0, "failed": 3}, no_color=no_color)
        span = next(s for s in failed.spans if failed.plain[s.start:s.end] == "✗3")
        assert app.console.get_style(str(span.style)).bold


async def test_form_fields_are_visible_and_the_checkbox_is_whole(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        box = app.screen.query_one("#f-delivery-attempt_direct_first").query_one("Checkbox")
        before = str(box.render())
        assert before in ("[X]", "[ ]") and box.size.width == 3
        box.focus()
        await pilot.press("space")
        await pilot.pause()
        assert str(box.render()) in ("[X]", "[ ]") and str(box.render()) != before
        empty = next(b for b in app.screen.query("TextBox") if not b.value)
        assert empty.styles.text_style.underline  # a line to type on, with or without colour
        from tui.theme import contrast
        assert contrast(empty.styles.background, app.screen.styles.background) > 1.2


async def test_help_at_80x24_says_it_scrolls_and_j_k_scroll_it(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        body = app.screen.query_one("#help-body")
        assert body.max_scroll_y > 0  # 80x24 does not hold it all
        assert "more below" in str(app.screen.query_one("#help-more").render())
        await pilot.press("j", "j", "j")
        await pilot.pause()
        assert body.scroll_y == 3
        await pilot.press("k")
        await pilot.pause()
        assert body.scroll_y == 2
        await pilot.press("G")
        await pilot.pause()
        assert "more below" not in str(app.screen.query_one("#help-more").render())


async def test_esc_from_the_raw_view_returns_to_the_summary(attached):
    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("4", "enter")
        await pilot.pause()
        from tui.screens.inspector import Inspector
        assert isinstance(app.screen, Inspector)
        await pilot.press("v")
        assert app.screen.raw
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, Inspector) and not app.screen.raw
        assert "Envelope" in str(app.screen.query_one("#inspector-text").render())
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is app.dashboard


def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def test_r_in_drop_and_in_the_inspector_acts_or_says_why(attached):
    from relay.core.store import BADMAIL, DROP, QUEUE
    from tui.screens.confirm import Confirm
    from tui.screens.inspector import Inspector

    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("3", "r")  # Drop: routed again; still local, so it says so
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert app.screen.question == "Requeue 1 message from Drop?"
        await pilot.press("y")
        await until(pilot, lambda: any("still local" in n for n in notices(app)))
        assert len(app.store.ids(DROP)) == 2
        await pilot.press("4", "enter")
        await until(pilot, lambda: isinstance(app.screen, Inspector))
        mid = app.screen.message_id
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, Inspector)
                    and app.screen.folder == QUEUE)
        assert mid in app.store.ids(QUEUE) and mid not in app.store.ids(BADMAIL)
        assert f"Queue › {mid}" in str(app.screen.query_one("#inspector-title").render())
        await pilot.press("escape", "1", "r")  # Pickup: not taken in yet
        await until(pilot, lambda: any("not taken in yet" in n for n in notices(app)))


async def test_the_inspector_says_each_thing_once_and_no_attempts_honestly(attached):
    from tui.screens.inspector import Inspector

    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("4", "enter")
        await until(pilot, lambda: isinstance(app.screen, Inspector))
        text = str(app.screen.query_one("#inspector-text").render())
        reason = app.admin.show(app.screen.message_id).reason
        head = text[:text.index("Envelope")]  # the reason and what the .BAD report adds
        assert head.count(reason) == 1 and app.screen.message_id not in head
        assert "Recipients:" not in head and "Attempts:" not in head
        assert text.count(app.screen.message_id) == 1
        assert "Source:" in head  # what the report adds is kept
        await pilot.press("escape", "3", "enter")
        await until(pilot, lambda: isinstance(app.screen, Inspector))
        text = str(app.screen.query_one("#inspector-text").render())
        assert "none yet" not in text and "never sent on" in text


async def test_domain_editor_g_keys_move_and_its_keys_are_listed_once(attached):
    from tui.screens.domains import DomainEditor

    root, config = attached
    app = ConsoleApp(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, DomainEditor))
        table = app.screen.query_one("#domains")
        await pilot.press("G")
        await pilot.pause()
        assert table.cursor_row == table.row_count - 1 > 0
        assert app.screen.current().kind == "remote"
        await pilot.press("g")
        await pilot.pause()
        assert table.cursor_row == 0
        note = str(app.screen.query_one("#domains-note").render())
        keybar = str(app.screen.query_one("KeyBar").render())
        assert "remove" in keybar and "remove" not in note and " x " not in note


def test_the_quit_question_counts_the_queue_as_the_panes_do() -> None:
    from tui.screens.quit import quit_question
    assert quit_question(3300) == ("Quit and stop the relay? 3,300 queued messages will wait "
                                   "until it runs again.")
    assert quit_question(1).startswith("Quit and stop the relay? 1 queued message will")
