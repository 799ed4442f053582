"""The columns an operator needs, on a busy mailroot: the recipient kept and cut in its local
part, the reply and reason readable, clocks that tick, header fields where no envelope is."""

from __future__ import annotations

from collections import Counter

import pytest

from relay.core.store import BADMAIL, DROP, HOLD, PICKUP, QUEUE, Mailroot
from relay.ops.admin import Admin
from relay.ops.listing import matching
from tests.busy_fixture import column
from tests.tui_fixture import T0, until
from tui.app import ConsoleApp
from tui.model import COLUMNS, PAD, fit, short_address


@pytest.mark.parametrize("width", [52, 59, 79, 99, 159])
@pytest.mark.parametrize("folder", [QUEUE, BADMAIL, PICKUP, DROP])
def test_the_recipient_is_never_dropped(folder, width):
    assert "to" in [c.key for c, _ in fit(COLUMNS[folder], width)]


def test_sender_and_subject_come_before_a_wide_reply():
    """The same 451 filled every row of a wide reply column while sender and subject were
    never shown below about 250 columns: the reply now takes what they leave."""
    shown = dict((c.key, w) for c, w in fit(COLUMNS[QUEUE], 99))
    assert "from" in shown and "subject" not in shown and shown["error"] >= 12
    assert {"age", "to", "next", "attempts"} <= set(shown)
    shown = dict((c.key, w) for c, w in fit(COLUMNS[QUEUE], 113))
    assert {"from", "subject"} <= set(shown) and shown["error"] >= 12
    assert [c.key for c, _ in fit(COLUMNS[QUEUE], 113)][-3:] == ["from", "subject", "error"]


@pytest.mark.parametrize(("size", "wanted"), [
    ((120, 30), {"age", "to", "next", "error"}),
    ((200, 50), {"age", "to", "from", "subject", "error"})])
async def test_the_queue_pane_side_by_side_keeps_age_and_shows_sender_and_subject(
        busy, size, wanted):
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        queue = app.dashboard.panes[QUEUE]
        assert wanted <= {c.key for c in queue.columns}, [c.key for c in queue.columns]


@pytest.mark.parametrize("width", [24, 30, 38])
@pytest.mark.parametrize("folder", [QUEUE, BADMAIL, PICKUP, DROP, HOLD])
def test_a_pane_too_narrow_for_its_columns_cuts_the_address_not_the_right_edge(folder, width):
    """Side by side a small pane may be narrower than its never-dropped columns: the reply or
    subject goes first, then the state is cut to its symbol, then the recipient (to 18, in its
    local part), so the row ends on screen."""
    shown = fit(COLUMNS[folder], width)
    widths = dict((c.key, w) for c, w in shown)
    assert "to" in widths and widths["to"] >= 18
    least = sum(PAD + (c.least or c.width) for c in COLUMNS[folder] if not (c.drop or c.flex))
    assert sum(w + PAD for _, w in shown) <= max(width, least)
    assert widths["state"] >= 1


@pytest.mark.parametrize("width", [8, 12, 16, 20, 30])
def test_an_address_is_cut_in_its_local_part_never_its_domain(width):
    cut = short_address("user0_119@greylist.test", width)
    assert len(cut) <= width
    if width >= len("u…@greylist.test"):
        assert cut.endswith("@greylist.test") and cut[0] == "u"
    assert short_address("To: app@corp.test +2", 18).startswith("To: ")
    assert short_address("To: application@corp.test +2", 20).endswith("@corp.test +2")


@pytest.mark.parametrize("size", [(60, 20), (80, 24), (100, 30), (160, 48)])
async def test_queue_shows_recipients_with_their_domain_at_every_size(busy, size):
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        cells = column(app.dashboard.panes[QUEUE], "to")
        assert len(cells) == 50
        assert all(c.rsplit("@", 1)[-1] in {"greylist.test", "slow.example", "partner.example",
                                            "customer.example", "nowhere.example"}
                   for c in cells), cells


async def test_side_by_side_empty_panes_give_their_width_to_busy_ones(busy):
    """At 160x48 a busy Queue keeps every column an operator reads (age, recipient, attempts,
    next try, reply) beside a busy Drop and an empty Pickup; emptying Drop widens it again."""
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        panes = app.dashboard.panes
        queue, badmail = panes[QUEUE], panes[BADMAIL]
        assert {"age", "to", "attempts", "next", "error"} <= {c.key for c in queue.columns}
        assert {"age", "to", "class", "reason"} <= {c.key for c in badmail.columns}
        assert queue.size.width > 160 // 2 > panes[PICKUP].size.width + panes[DROP].size.width
        assert badmail.size.width > 160 // 2 > panes[HOLD].size.width
        wide = queue.size.width
        for path in (root / "Drop").iterdir():
            path.unlink()
        await until(pilot, lambda: panes[DROP].view.total == 0)
        await pilot.pause()
        assert queue.size.width > wide
        assert max(len(reply) for reply in column(queue, "error")) > 30  # the width went there


async def test_ages_and_countdowns_tick_without_a_rebuild(busy):
    root, config = busy
    now = [T0]
    app = ConsoleApp(config, clock=lambda: now[0])
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        pane = app.dashboard.panes[QUEUE]
        before_next, before_age = column(pane, "next"), column(pane, "age")
        keys = list(pane.table.rows)
        now[0] += 60
        app.tick()
        await pilot.pause()
        after_next, after_age = column(pane, "next"), column(pane, "age")
        assert list(pane.table.rows) == keys  # the same rows, only cells changed
        shown = pane.table.size.height
        assert after_next[:shown] != before_next[:shown]
        assert after_age[:shown] != before_age[:shown]
        assert before_next[1] == "in 30s" and after_next[1] == "due"


async def test_badmail_shows_the_reply_the_class_and_header_fields(busy):
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("4")
        await pilot.pause()
        pane = app.dashboard.panes[BADMAIL]
        reasons, classes = column(pane, "reason"), column(pane, "class")
        assert not any(r.startswith("delivery failed") for r in reasons)
        assert any(r.startswith("550 5.1.1 ") and "no such user" in r for r in reasons)
        assert {"5.1.1", "DNS", "expired", "too-big", "no-rcpt", "bad-file", "TLS"} <= set(classes)
        to = column(pane, "to")
        assert "To: ops@corp.test" in to and "To: docs@corp.test" in to
        while not app.index.ready:
            await pilot.pause(0.05)
        pane.view.needle = "DNS"
        app.refresh_view(BADMAIL)
        assert column(pane, "class") == ["DNS", "DNS"]
        pane.view.needle = ""
        app.refresh_view(BADMAIL)
        store = Mailroot(root)
        rows = {r.id: r for r in pane.view.rows.values()}
        cron = next(r for r in rows.values() if r.header_from == "cron@corp.test")
        assert pane.cell(cron, next(c for c in pane.columns if c.key == "to"), 30, T0).plain \
            == ""  # no To: field at all: nothing invented
        from_column = next(c for c in COLUMNS[BADMAIL] if c.key == "from")
        assert pane.cell(cron, from_column, 30, T0).plain == "From: cron@corp.test"
        big = next(r for r in rows.values() if "size limit" in r.last_error)
        assert big.size == store.path(BADMAIL, big.id, ".eml").stat().st_size > 6000


async def test_one_class_name_in_the_column_the_summary_and_the_class_filter(busy):
    """The class a Badmail row shows is the name `summary` counts it under, and typing
    `class:` with that name selects exactly the rows that show it, in the console and in
    `--match`; `no-rcpt` typed as a plain word finds only that class."""
    root, config = busy
    shape = Admin(config).summary()
    by_summary = {row.name: row.total for row in shape.badmail}
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("4")
        await until(pilot, lambda: app.index.ready)
        pane = app.dashboard.panes[BADMAIL]
        shown = Counter(column(pane, "class"))
        assert shown == Counter(by_summary) and shown["5.1.1"] == 2 and shown["no-rcpt"] == 1
        for klass, count in shown.items():
            assert len(matching(Admin(config), BADMAIL, f"class:{klass.lower()}")) == count
        await pilot.press("slash", *"class:no-rcpt", "enter")
        await until(pilot, lambda: column(pane, "class") == ["no-rcpt"])
        pane.view.needle = "no-rcpt"
        app.refresh_view(BADMAIL)
        assert column(pane, "class") == ["no-rcpt"]


async def test_the_null_sender_shows_as_empty_brackets_in_drop(busy):
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("3")
        await pilot.pause()
        assert column(app.dashboard.panes[DROP], "from") == ["<>"]


async def test_a_pickup_file_shows_its_to_field_and_why_it_waits(busy):
    root, config = busy
    path = root / "Pickup" / "report.eml"
    with path.open("wb") as writer:  # a producer still has it open for writing
        writer.write(b"From: app@example.com\r\nTo: boss@corp.test\r\nSubject: report\r\n\r\n")
        writer.flush()
        app = ConsoleApp(config, clock=lambda: T0)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("1")
            await pilot.pause()
            pane = app.dashboard.panes[PICKUP]
            assert column(pane, "to") == ["boss@corp.test"]
            assert column(pane, "state") == ["… writing"]


def low_contrast_text(app) -> list[tuple[float, str]]:
    """Every run of text on screen (letters or digits) whose colours are below WCAG AA, as
    the screen draws it: over a dialog, only the dialog (what is behind it is dimmed on
    purpose). Dim text counts as halfway to its background."""
    from textual.color import Color

    from tui.theme import contrast

    dialog = next(iter(app.screen.query(".dialog")), None)
    region = dialog.region if dialog is not None else app.screen.region
    low = []
    for y, strip in enumerate(app.screen._compositor.render_strips()):
        x = 0
        for segment in strip:
            text, style, x0 = segment.text, segment.style, x
            x += segment.cell_length
            if not (style and region.contains(x0, y) and any(c.isalnum() for c in text)):
                continue
            fg, bg = (Color.from_rich_color(c) for c in (style.color, style.bgcolor))
            if style.reverse:
                fg, bg = bg, fg
            ratio = contrast(bg.blend(fg, 0.5) if style.dim else fg, bg)
            if ratio < 4.5:
                low.append((round(ratio, 2), text.strip()))
    return low


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
async def test_every_text_on_every_screen_meets_wcag_aa(busy, size):
    """Not a list of colour pairs but the screen itself: tabs, titles, placeholders, hints,
    cells, key bars, on the dashboard and every screen an operator opens from it."""
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    seen = {}
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for name, keys, back in [
                ("queue", ["2"], []), ("badmail", ["4"], []), ("filter", ["2", "/"], ["escape"]),
                ("inspector", ["4", "enter"], []), ("raw", ["v"], ["escape", "escape"]),
                ("route", ["2", "enter", "w"], ["escape", "escape"]),
                ("by domain", ["b"], ["escape"]), ("settings", ["c"], ["escape"]),
                ("domains", ["e"], ["escape"]), ("help", ["question_mark"], ["escape"]),
                ("confirm", ["2", "h"], ["n"])]:
            await pilot.press(*keys)
            await pilot.pause()
            seen[name] = (type(app.screen).__name__, low_contrast_text(app))
            await pilot.press(*back)
            await pilot.pause()
    assert len({screen for screen, _ in seen.values()}) >= 8, seen  # each key opened its screen
    assert {name: low for name, (_, low) in seen.items() if low} == {}


@pytest.mark.parametrize("size", [(60, 20), (80, 24)])
async def test_every_tab_shows_its_count_whole(busy, size):
    """At 60x20 Hold's and Trash's counts were cut: under 80 columns the tabs leave out their
    keys (the help lists 1-6) rather than a count."""
    root, config = busy
    app = ConsoleApp(config, clock=lambda: T0)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        tabs = list(app.dashboard.query("Tab"))
        assert len(tabs) == 6
        for tab in tabs:
            assert tab.region.right <= size[0], (str(tab.label), tab.region)
        labels = [str(t.label) for t in tabs]
        assert labels[1].endswith("Queue 50") and labels[-1].endswith("Trash 0")
