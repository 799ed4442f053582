"""A busy mailroot for console snapshots and column tests: a Queue of 50 across 5 domains and
a Badmail of 10 with mixed reason classes, at fixed ids and times (T0 as the frozen now).
The `busy` fixture (registered in tests/conftest.py) yields it, attached to a "relay" holding
its lock, with the config to open a console on it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.core import config_loader
from relay.core.bounce import badmail_ops
from relay.core.config import Config
from relay.core.store import DROP, QUEUE, Attempt, Mailroot
from tests.tui_fixture import T0, envelope, fixed_id, hold_lock, message, write_config

DOMAINS = ["greylist.test", "slow.example", "partner.example", "customer.example",
           "nowhere.example"]
REPLIES = {
    "greylist.test": "451 4.7.1 greylisted, try again later",
    "slow.example": "421 4.4.2 mx.slow.example timed out after DATA",
    "partner.example": "452 4.2.2 mailbox full",
    "customer.example": "",
    "nowhere.example": "DNS lookup of nowhere.example MX failed: NXDOMAIN",
}
WITH_ENVELOPE = [  # (recipient, reason) of delivery failures
    ("gone@customer.example", "delivery failed for <gone@customer.example>: "
                              "550 5.1.1 <gone@customer.example>: no such user"),
    ("old@customer.example", "delivery failed for <old@customer.example> (and 1 more): "
                             "550 5.1.1 no such user"),
    ("full@partner.example", "delivery failed for <full@partner.example>: "
                             "552 5.2.2 mailbox full, over quota"),
    ("late@slow.example", "delivery time expired (2d); last reply for <late@slow.example>: "
                          "421 4.4.2 timed out"),
    ("x@nowhere.example", "delivery failed for <x@nowhere.example>: DNS lookup of "
                          "nowhere.example MX failed: NXDOMAIN"),
    ("y@nowhere.example", "delivery failed for <y@nowhere.example>: DNS lookup of "
                          "nowhere.example MX failed: NXDOMAIN"),
    ("tls@partner.example", "delivery failed for <tls@partner.example>: TLS required by "
                            "policy but mx.partner.example offers no STARTTLS"),
]
REFUSED = [  # (file as written, reason) of intake refusals
    (b"From: backup@corp.test\r\nTo: ops@corp.test\r\nSubject: nightly dump\r\n\r\n"
     + b"x" * 6000 + b"\r\n",
     "the file is 6080 bytes, over the size limit of 4096 bytes (smtp.max_message_size)"),
    (b"From: cron@corp.test\r\nSubject: cron output\r\n\r\nall done\r\n",
     "no recipients: no X-Receiver: lines and no To:, Cc: or Bcc: field"),
    (b"From: scanner@corp.test\r\nTo: docs@corp.test\r\nSubject: scan\r\n\r\n\x00\x01PDF\r\n",
     "the file contains NUL bytes: binary data, not a text message"),
]


def build_busy(root: Path) -> None:
    store = Mailroot(root)
    store.ensure()
    for n in range(50):
        domain = DOMAINS[n % 5]
        when = T0 - 60 * (50 - n) - 7
        mid = fixed_id(when, n)
        to = f"user{n}_{100 + n}@{domain}"
        data = message("app@example.com", to, f"Order {1000 + n} confirmation")
        reply = REPLIES[domain]
        tries = 0 if not reply else 1 + n % 4
        attempts = [Attempt(when + 60 * i, f"mx.{domain}" if "DNS" not in reply else None,
                            reply, tls=True) for i in range(tries)]
        env = envelope(mid, when, "app@example.com", [to], f"Order {1000 + n}", data,
                       attempts=attempts, next_attempt=T0 + 30 * (n % 7) if tries else T0 - 1)
        store.commit(store.enqueue_ops(QUEUE, env, data))
    for n, (to, reason) in enumerate(WITH_ENVELOPE):
        when = T0 - 3600 * (n + 1)
        mid = fixed_id(when, 100 + n)
        data = message("app@example.com", to, f"Welcome {n}")
        env = envelope(mid, when, "app@example.com", [to], f"Welcome {n}", data,
                       attempts=[Attempt(when + 60, "mx.example", reason, tls=True)])
        env.recipients[0].state = "failed"
        env.recipients[0].reply = reason.rsplit(": ", 1)[-1]
        env.recipients[0].status = "5.1.1" if "5.1.1" in reason else None
        store.commit(badmail_ops(store, mid, reason, data, source="Queue", envelope=env))
    for n, (raw, reason) in enumerate(REFUSED):
        mid = fixed_id(T0 - 600 * (n + 1), 200 + n)
        store.commit(badmail_ops(store, mid, reason, raw, source=f"Pickup/app{n}.eml"))
    null = fixed_id(T0 - 90, 300)
    store.path(DROP, null, ".eml").write_bytes(
        b"X-Sender: <>\r\nX-Receiver: it@example.com\r\n"
        + message("MAILER-DAEMON@example.com", "it@example.com", "Delivery report"))
    events = [{"time": T0 - 50 + n, "event": "deferred", "id": fixed_id(T0 - 60 * (50 - n) - 7, n),
               "to": [f"user{n}_{100 + n}@{DOMAINS[n % 5]}"], "reply": REPLIES[DOMAINS[n % 5]]}
              for n in range(0, 50, 5)]
    with (store.log_dir / "events.jsonl").open("w") as log:
        log.write("".join(json.dumps(e) + "\n" for e in events))


@pytest.fixture
def busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Config]]:
    """(root, config) of the busy mailroot, in UTC, its lock held as by a running relay."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    root = tmp_path / "mailroot"
    build_busy(root)
    fd = hold_lock(root)
    monkeypatch.chdir(tmp_path)
    yield root, config_loader.load(write_config(tmp_path, relative=True))
    os.close(fd)
    monkeypatch.undo()
    time.tzset()


def column(pane, key: str) -> list[str]:
    """The cells of one column, as the table holds them, top to bottom."""
    table = pane.table
    return [str(table.get_cell(row, key)) for row in table.rows]
