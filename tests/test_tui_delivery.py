"""The console's acceptance points that need real delivery: the embedded relay on a temporary
mailroot delivers to a scripted aiosmtpd next hop found through a loopback DNS server."""

from __future__ import annotations

import re
import time

from relay.core import config_loader
from relay.core.store import BADMAIL, DROP, HOLD, QUEUE
from tests.conftest import drop_file, sample
from tests.test_delivery import delivery_config
from tests.tui_fixture import until as wait_until
from tui.app import ConsoleApp
from tui.screens.confirm import Confirm
from tui.screens.inspector import Inspector

SIZE = (80, 24)
LATER = ["1h", "1h", "1h", "1h"]  # only the operator's `t` makes the next attempt


async def until(pilot, predicate, timeout: float = 8.0) -> None:
    await wait_until(pilot, predicate, timeout,
                     lambda: f"not met in time; status: {status_text(pilot.app)}")


async def confirm(pilot, app: ConsoleApp, key: str, question: str) -> None:
    """Press an action key, check the question states the scope, answer yes."""
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, Confirm))
    assert app.screen.question == question
    await pilot.press("y")
    await until(pilot, lambda: app.screen is app.dashboard)


def cell(app: ConsoleApp, folder: str, mid: str, column: str) -> str:
    return app.dashboard.panes[folder].table.get_cell(mid, column).plain


def status_text(app: ConsoleApp) -> str:
    return str(app.dashboard.query_one("#status-line").render())


async def test_451_shows_in_queue_with_attempts_t_retries_and_250_empties_queue(
        write_config, tmp_path, dns_server, sink):
    hop = sink()
    hop.data_reply = "451 4.3.0 try again later"
    app = ConsoleApp(config_loader.load(write_config(delivery_config(dns_server, hop.port,
                                                                 retry=LATER))))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)
        port = app.relay.addresses()[0][1]
        await until(pilot, lambda: f"SMTP 127.0.0.1:{port}" in status_text(app))  # not :0
        example = sample("iis-example-as-written.txt").replace(b"email@yourdomain.com",
                                                              b"email@remote.example")
        queue = app.dashboard.panes[QUEUE]
        started = time.monotonic()
        drop_file(tmp_path / "mailroot" / "Pickup", "iis.txt", example)
        await until(pilot, lambda: queue.table.row_count == 1, timeout=3)
        assert time.monotonic() - started < 1.0 + 0.5  # 1 s, with slack for a busy machine
        mid = queue.current_id()
        await until(pilot, lambda: cell(app, QUEUE, mid, "attempts") == "1")
        assert cell(app, QUEUE, mid, "next") in ("in 59m", "in 1h")
        assert cell(app, QUEUE, mid, "error").startswith("451 4.3.0")
        await until(pilot, lambda: "1m ✓0 ↻1 ✗0" in status_text(app))

        await confirm(pilot, app, "t", "Retry now 1 message in Queue?")
        await until(pilot, lambda: cell(app, QUEUE, mid, "attempts") == "2")
        assert len(hop.messages) == 0

        await confirm(pilot, app, "h", "Hold 1 message in Queue?")
        await until(pilot, lambda: app.dashboard.panes[HOLD].view.ids == [mid])
        await pilot.press("5")
        await confirm(pilot, app, "h", "Release 1 message from Hold?")
        await until(pilot, lambda: queue.view.ids == [mid])
        await until(pilot, lambda: cell(app, QUEUE, mid, "attempts") == "3")  # released: due

        hop.data_reply = "250 2.0.0 OK"
        await pilot.press("2")
        await confirm(pilot, app, "t", "Retry now 1 message in Queue?")
        await until(pilot, lambda: queue.table.row_count == 0)
        assert "Queue 0" in str(app.dashboard.query_one("#tab-queue").label)
        assert [m.recipients for m in hop.messages] == [["email@remote.example"]]
        await until(pilot, lambda: "1m ✓1 ↻3 ✗0" in status_text(app), timeout=3)


async def test_550_in_badmail_shows_reason_requeue_delivers_once(write_config, tmp_path,
                                                                  dns_server, sink):
    hop = sink()
    hop.rcpt_replies["nobody@remote.example"] = "550 5.1.1 no such user"
    app = ConsoleApp(config_loader.load(write_config(delivery_config(dns_server, hop.port))))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)
        drop_file(tmp_path / "mailroot" / "Pickup", "m.eml",
                  b"From: app@yourdomain.com\r\nTo: nobody@remote.example\r\n"
                  b"Subject: [acct] welcome\r\n\r\nhello\r\n")
        badmail = app.dashboard.panes[BADMAIL]
        await pilot.press("4")
        await until(pilot, lambda: badmail.table.row_count == 1)
        mid = badmail.current_id()
        assert "550 5.1.1 no such user" in cell(app, BADMAIL, mid, "reason")
        # one failure, not two (the report to the sender may be delivered by then: ✓)
        await until(pilot, lambda: re.search(r"1m ✓\d+ ↻0 ✗1 ", status_text(app)))

        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, Inspector))
        text = str(app.screen.query_one("#inspector-text").render())
        assert text.lstrip().startswith("✗ Why it is in Badmail")
        assert text.index("550 5.1.1 no such user") < text.index("Envelope")
        await pilot.press("escape")

        del hop.rcpt_replies["nobody@remote.example"]
        await confirm(pilot, app, "r", "Requeue 1 message from Badmail?\n550 5.1.1 no such "
                      "user (in reply to RCPT TO): requeue will most likely fail again and "
                      "send another NDR.")
        await until(pilot, lambda: hop.messages)
        await until(pilot, lambda: not badmail.view.ids and not app.dashboard.panes[QUEUE].view.ids)
        await pilot.pause(0.5)
        assert [m.recipients for m in hop.messages] == [["nobody@remote.example"]]

        drop = app.dashboard.panes[DROP]  # the NDR for the 550, delivered locally
        await pilot.press("3")
        await until(pilot, lambda: drop.table.row_count == 1)
        await confirm(pilot, app, "d", "Delete 1 message from Drop?")
        await until(pilot, lambda: drop.table.row_count == 0)
        assert not list((tmp_path / "mailroot" / "Drop").glob("*.eml"))


async def test_the_inspector_follows_a_requeued_message_that_fails_again(write_config, tmp_path,
                                                                        dns_server, sink):
    """Badmail inspector, r, y: the question warns that the 550 will most likely come again;
    the inspector shows the message in Queue, then back in Badmail with its second attempt,
    without a key pressed."""
    hop = sink()
    hop.data_reply = "550 5.1.1 no such user"
    hop.data_delay = 1.0  # the message stays in Queue a second while it is tried again
    app = ConsoleApp(config_loader.load(write_config(delivery_config(dns_server, hop.port))))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)
        drop_file(tmp_path / "mailroot" / "Pickup", "m.eml",
                  b"From: app@yourdomain.com\r\nTo: nobody@remote.example\r\n"
                  b"Subject: welcome\r\n\r\nhello\r\n")
        badmail = app.dashboard.panes[BADMAIL]
        await pilot.press("4")
        await until(pilot, lambda: badmail.table.row_count == 1, timeout=10)
        await until(pilot, lambda: app.index.ready)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, Inspector))
        inspector = app.screen

        def page() -> str:
            return (str(inspector.query_one("#inspector-title").render()) + "\n"
                    + str(inspector.query_one("#inspector-text").render()))

        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        assert app.screen.question == (
            "Requeue 1 message from Badmail?\n550 5.1.1 no such user (in reply to DATA): "
            "requeue will most likely fail again and send another NDR.")
        await pilot.press("y")
        await until(pilot, lambda: "Queue ›" in page())
        await until(pilot, lambda: "Badmail ›" in page() and "Attempts (2)" in page(),
                    timeout=10)
        assert app.screen is inspector
