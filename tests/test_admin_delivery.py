"""Operator actions against real delivery: a real relay, loopback DNS, an aiosmtpd next hop."""

from __future__ import annotations

import time

import pytest

from relay.core.store import Envelope
from tests.admin_support import cli, submit
from tests.conftest import wait_for
from tests.test_delivery import delivery_config


def test_550_bounce_then_requeue_is_delivered_once_to_the_original_recipients(
        relay, dns_server, sink) -> None:
    hop = sink()
    hop.rcpt_replies["user@remote.example"] = "550 5.1.1 <user@remote.example>: no such user"
    r = relay(delivery_config(dns_server, hop.port))
    [mid] = submit(r, "user@remote.example")
    wait_for(lambda: (r.folder("Badmail") / f"{mid}.BAD").exists())
    assert "no such user" in (r.folder("Badmail") / f"{mid}.BAD").read_text(errors="replace")
    assert not hop.messages
    hop.rcpt_replies.clear()  # the mailbox now exists
    out = cli(r.config, "requeue", mid)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: hop.messages)
    time.sleep(1.5)  # a second delivery would show up by now (retries are 1 s apart)
    assert len(hop.messages) == 1
    got = hop.messages[0]
    assert got.recipients == ["user@remote.example"] and got.sender == "app@yourdomain.com"
    assert b"m-token-0" in got.data
    assert not r.files("Queue") and not r.files("Badmail", f"{mid}.*")


@pytest.mark.alone  # a time bound
def test_retry_all_attempts_200_deferred_messages_within_2s(relay, dns_server, sink) -> None:
    hop = sink()
    hop.data_reply = "451 4.3.0 try again later"
    config = delivery_config(dns_server, hop.port)
    config["delivery"]["retry"] = ["1h", "1h", "1h", "1h"]
    r = relay(config)
    ids = submit(r, "user@remote.example", 200, "d")

    def attempts(mid: str) -> int:
        return len(Envelope.from_json((r.folder("Queue") / f"{mid}.env").read_bytes()).attempts)

    wait_for(lambda: all(attempts(mid) == 1 for mid in ids), timeout=30, interval=0.2)
    hop.data_reply = "250 OK"
    start = time.monotonic()
    out = cli(r.config, "retry", "--all")
    assert out.returncode == 0 and out.stdout.count("due now:") == 200
    wait_for(lambda: len(hop.messages) == 200, timeout=max(0.1, 2.0 - (time.monotonic() - start)))
    assert sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0] for m in hop.messages) == \
        sorted(f"d-token-{i}".encode() for i in range(200))
