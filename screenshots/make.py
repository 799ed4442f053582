"""Make the README's console screenshots from a real relay run.

Runs the console with its embedded relay on a temporary mailroot, delivering to a real SMTP
next hop on 127.0.0.1 found through a loopback DNS server (the test suite's), and feeds mail
through Pickup so every folder holds some (Pickup: a file still being written; Queue: mail
the hop deferred with 451; Drop: local mail; Badmail: a recipient the hop refused with 550;
Hold: one deferred message held), then saves SVG screenshots next to this script. A second
mailroot of 3,000 queued messages shows a whole-folder filter, the Queue by domain and a bulk
hold in progress.
Usage: python screenshots/make.py
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from relay import config as configmod  # noqa: E402
from relay.store import BADMAIL, DROP, HOLD, PICKUP, QUEUE  # noqa: E402
from tests.bulk_support import fill_queue  # noqa: E402
from tests.dnsserver import DnsServer  # noqa: E402
from tests.smtpsink import Sink  # noqa: E402
from tests.tui_fixture import hold_lock  # noqa: E402
from tui.app import ConsoleApp  # noqa: E402

REMOTE = ("partner.example", "customer.example", "faraway.example")

MAIL = [
    ("report.eml", "app@example.com", "ops@partner.example", "Nightly report [prod]"),
    ("invoice.eml", "billing@example.com", "accounts@customer.example", "Invoice 2291"),
    ("quote.eml", "sales@example.com", "buyer@faraway.example", "Quote request"),
    ("alert.eml", "monitor@example.com", "it@example.com", "Disk 91% on db1"),
    ("welcome.eml", "app@example.com", "new.user@corp.example.com", "Welcome aboard"),
    ("signup.eml", "app@example.com", "nobody@customer.example", "Your account [trial]"),
    ("receipt.eml", "shop@example.com", "buyer@customer.example", "Receipt 7731"),
]


def next_hop() -> tuple[DnsServer, Sink]:
    """Every remote domain's MX is one aiosmtpd sink on 127.0.0.1: it greylists two
    recipients, refuses one for good and takes the rest."""
    dns, hop = DnsServer(), Sink()
    for domain in REMOTE:
        dns.mx(domain, (10, f"mx.{domain}"))
        dns.a(f"mx.{domain}", "127.0.0.1")
    hop.rcpt_replies.update({
        "ops@partner.example": "451 4.7.1 greylisted, try again later",
        "buyer@faraway.example": "451 4.7.1 greylisted, try again later",
        "accounts@customer.example": "452 4.2.2 mailbox full",
        "nobody@customer.example": "550 5.1.1 <nobody@customer.example>: no such user"})
    return dns, hop


def message(sender: str, to: str, subject: str) -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n{subject}.\r\n".encode()


def put(root: Path, name: str, data: bytes) -> None:
    tmp = root / "tmp" / f"make-{name}"
    tmp.write_bytes(data)
    os.rename(tmp, root / PICKUP / name)


async def until(pilot, predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("the relay did not take the mail in time")
        await pilot.pause(0.1)


def write_config(workdir: Path, dns: DnsServer, hop: Sink, mailroot: str) -> Path:
    config_path = workdir / f"{mailroot}.yaml"
    config_path.write_text(yaml.safe_dump({
        "mailroot": f"./{mailroot}", "hostname": "relay.example.com",
        "domains": {"local": {"default": "example.com", "aliases": ["corp.example.com"]},
                    "remote": {"partner.example": {"tls": "may"}}},
        "smtp": {"listen": ["127.0.0.1:0"]},
        "dns": {"nameservers": ["127.0.0.1"], "port": dns.port, "timeout": "1s"},
        "delivery": {"port": hop.port, "retry": ["10m", "30m", "1h", "4h"]},
    }, sort_keys=False))
    return config_path


async def make(workdir: Path, dns: DnsServer, hop: Sink) -> None:
    os.chdir(workdir)
    app = ConsoleApp(configmod.load(write_config(workdir, dns, hop, "mailroot")))
    root = workdir / "mailroot"
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)
        for name, sender, to, subject in MAIL:
            put(root, name, message(sender, to, subject))
        with open(root / PICKUP / "export-0917.eml", "wb") as writer:  # still being written
            writer.write(message("erp@example.com", "finance@partner.example", "Export 0917"))
            writer.flush()
            panes = app.dashboard.panes
            queue = panes[QUEUE]
            await until(pilot, lambda: len(queue.view.ids) >= 3 and panes[DROP].view.ids
                        and all(r.attempts for r in queue.view.rows.values()))
            app.admin.hold([queue.view.ids[0]])
            await until(pilot, lambda: panes[HOLD].view.ids and panes[BADMAIL].view.ids)
            await pilot.pause(1.2)
            shots = [("dashboard.svg", ()), ("badmail-inspector.svg", ("4", "enter")),
                     ("domain-editor.svg", ("escape", "e")),
                     ("settings-form.svg", ("escape", "c"))]
            for name, keys in shots:
                await pilot.press(*keys)
                await pilot.pause(0.3)
                app.save_screenshot(name, str(HERE))
            await pilot.press("escape", "2")
            await pilot.resize_terminal(80, 24)
            await pilot.pause(0.5)
            app.save_screenshot("dashboard-80x24.svg", str(HERE))


async def make_large(workdir: Path, dns: DnsServer, hop: Sink) -> None:
    """3,000 queued, 2,400 of them for one greylisting domain: filter, by domain, bulk hold.
    The console attaches (the relay lock is held here, as by a `mailroot serve`)."""
    os.chdir(workdir)
    config_path = write_config(workdir, dns, hop, "large")
    fill_queue(workdir / "large", 2400, domains=1, prefix="greylist")
    fill_queue(workdir / "large", 600, domains=6, prefix="partner")
    lock = hold_lock(workdir / "large")
    app = ConsoleApp(configmod.load(config_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.index.ready, timeout=60)
        queue = app.dashboard.panes[QUEUE]
        await pilot.press("2", "slash", *"domain:greylist0.example", "enter")
        await until(pilot, lambda: len(queue.view.ids) == 2400)
        await pilot.pause(0.5)
        app.save_screenshot("filter.svg", str(HERE))
        await pilot.press("b")
        await pilot.pause(1.0)
        app.save_screenshot("by-domain.svg", str(HERE))
        await pilot.press("escape", "asterisk", "y", "h", "y")
        label = app.dashboard.query_one("#bulk-label")

        def done() -> int:  # "Hold: 1,234 of 2,400  210 msg/s  (esc stops)"
            found = re.search(r": ([\d,]+) of", str(label.render()))
            return int(found[1].replace(",", "")) if found else 0

        await until(pilot, lambda: done() >= 300, timeout=60)
        app.save_screenshot("bulk-hold.svg", str(HERE))
        await until(pilot, lambda: app.last_result, timeout=120)
    os.close(lock)


async def make_all(workdir: Path, dns: DnsServer, hop: Sink) -> None:
    await make_large(workdir, dns, hop)  # first: the other's embedded relay stops last
    await make(workdir, dns, hop)
    print(f"screenshots written to {HERE}")


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    time.tzset()
    with tempfile.TemporaryDirectory() as tmp:
        servers = next_hop()
        try:
            asyncio.run(make_all(Path(tmp), *servers))
        finally:
            servers[1].stop()
            servers[0].close()
