"""Issue 14 in the console: the route screen (palette, enter on a recipient) and the probe
screen's live transcript, against the loopback DNS server and an aiosmtpd next hop."""

from __future__ import annotations

import time

import trustme

from relay.core import config_loader
from relay.core.store import QUEUE, Envelope, Mailroot, Recipient
from tests.test_delivery import REMOTE, delivery_config
from tests.test_probe import Commands, Leaf
from tests.test_tui import SIZE, until
from tui.app import ConsoleApp
from tui.screens.help import Help
from tui.screens.inspector import Inspector
from tui.screens.probe import ProbeScreen
from tui.screens.route import RouteScreen


def queued(root, *recipients: str) -> str:
    store = Mailroot(root)
    store.ensure()
    mid = "01JBBBBBBBBBBBBB"
    data = b"From: app@yourdomain.com\r\nSubject: s\r\n\r\nx\r\n"
    store.commit(store.enqueue_ops(QUEUE, Envelope(
        mid, "app@yourdomain.com", [Recipient(r) for r in recipients], time.time(),
        size=len(data), next_attempt=time.time() + 600), data))
    return mid


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


def log_text(screen) -> str:
    log = screen.query_one("#probe-log")
    return "".join("".join(segment.text for segment in line) for line in log.lines)


async def test_palette_route_and_enter_on_a_recipient_explains_it(write_config, dns_server,
                                                                  tmp_path):
    dns_server.mx(REMOTE, (10, f"mx.{REMOTE}"), (20, f"mx2.{REMOTE}"))
    dns_server.a(f"mx.{REMOTE}", "127.0.0.1")
    dns_server.a(f"mx2.{REMOTE}", "127.0.0.2")
    path = write_config({"dns": {"port": dns_server.port}})
    queued(tmp_path / "mailroot", "alice@alias.test", f"bob@{REMOTE}")
    app = ConsoleApp(config_loader.load(path), readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: app.dashboard.panes[QUEUE].table.row_count == 1)
        await pilot.press("colon")
        await pilot.press(*"explain route")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, RouteScreen))
        screen = app.screen
        assert screen.recipients == ["alice@alias.test", f"bob@{REMOTE}"]
        await pilot.press("enter")  # the first recipient
        await until(pilot, lambda: "verdict" in text_of(screen, "#route-text"))
        assert "alias.test is in domains.local.aliases" in text_of(screen, "#route-text")
        await pilot.press("down", "enter")
        await until(pilot, lambda: "TTL" in text_of(screen, "#route-text"))
        text = text_of(screen, "#route-text")
        assert f"10 mx.{REMOTE} [127.0.0.1], TTL 300s" in text
        assert "01JBBBBBBBBBBBBB in Queue: pending" in text
        await pilot.press("escape")
        assert app.screen is app.dashboard


async def test_w_in_the_inspector_lists_the_recipients_and_enter_explains_one(
        write_config, dns_server, tmp_path):
    dns_server.mx(REMOTE, (10, f"mx.{REMOTE}"))
    dns_server.a(f"mx.{REMOTE}", "127.0.0.1")
    path = write_config({"dns": {"port": dns_server.port}})
    mid = queued(tmp_path / "mailroot", "alice@alias.test", f"bob@{REMOTE}")
    app = ConsoleApp(config_loader.load(path), readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: app.dashboard.panes[QUEUE].table.row_count == 1)
        await pilot.press("enter")  # a Queue row opens the inspector
        await until(pilot, lambda: isinstance(app.screen, Inspector))
        inspector = app.screen
        await pilot.press("question_mark")  # the help lists the key
        await until(pilot, lambda: isinstance(app.screen, Help))
        assert any(a.keys == "w" and a.title == "Where does it go" for a in app.screen.acts)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is inspector)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, RouteScreen))
        screen = app.screen
        assert screen.recipients == ["alice@alias.test", f"bob@{REMOTE}"]
        await pilot.press("down", "enter")  # the second recipient
        await until(pilot, lambda: "verdict" in text_of(screen, "#route-text"))
        text = text_of(screen, "#route-text")
        assert text.startswith(f"bob@{REMOTE}\n")
        assert f"10 mx.{REMOTE} [127.0.0.1], TTL 300s" in text
        assert f"{mid} in Queue: pending" in text
        await pilot.press("escape")  # back to the message it came from
        assert app.screen is inspector


async def test_probe_screen_shows_the_transcript_live_and_sends_no_data(
        write_config, dns_server, sink, tmp_path):
    ca = trustme.CA()
    hop = sink(tls=Leaf(ca, f"mx.{REMOTE}").context)
    commands = Commands(hop, hold="RCPT")  # the hop answers RCPT once the test has looked
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    path = write_config(delivery_config(dns_server, hop.port, ca_file=str(tmp_path / "ca.pem")))
    app = ConsoleApp(config_loader.load(path), readonly=True)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            app.push_screen(RouteScreen(f"someone@{REMOTE}"))
            await until(pilot, lambda: isinstance(app.screen, RouteScreen))
            await pilot.press("ctrl+t")
            await until(pilot, lambda: isinstance(app.screen, ProbeScreen))
            screen = app.screen
            # While the hop holds its answer to RCPT, the lines up to RCPT are on screen.
            await until(pilot, lambda: "C:  RCPT TO:" in log_text(screen))
            await pilot.pause(0.2)
            partial = log_text(screen)
            assert "C:  EHLO relay.test" in partial and "verifies" in partial
            assert partial.rstrip().endswith(f"C:  RCPT TO:<someone@{REMOTE}>"), partial
            assert "finished" not in partial and "QUIT" not in partial
            commands.release.set()
            await until(pilot, lambda: "finished" in log_text(screen))
            text = log_text(screen)
            for step in ("C:  EHLO relay.test", "C:  STARTTLS", "verifies", "C:  RCPT TO:",
                         "the server would take mail for this address", "C:  QUIT",
                         "no DATA was sent"):
                assert step in text, text
            assert text.index("STARTTLS") < text.index("RCPT TO")
            assert "C:  DATA" not in text
            assert commands.seen == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "QUIT"]
            assert hop.messages == []
            assert screen.check_action("send", ()) is False  # read-only: no test message
    finally:
        commands.release.set()
