"""Requeue tells the truth: the same id, its history kept, and a refusal when intake would
refuse the message again at once."""

from __future__ import annotations

import time

from relay.core.store import Envelope
from tests.admin_support import cli, submit
from tests.conftest import drop_file, wait_for
from tests.test_delivery import delivery_config


def test_a_file_over_the_size_limit_is_refused_with_the_reason_unless_forced(relay) -> None:
    r = relay({"smtp": {"max_message_size": "100B"}})
    drop_file(r.folder("Pickup"), "big.eml", b"From: a@yourdomain.com\r\nTo: u@remote.example"
              b"\r\nSubject: big\r\n\r\n" + b"x" * 200 + b"\r\n")
    mid = wait_for(lambda: r.files("Badmail", "*.BAD"))[0].stem
    out = cli(r.config, "requeue", mid)
    assert out.returncode == 1 and "over the size limit" in out.stderr and "--force" in out.stderr
    assert "requeued" not in out.stdout
    shown = cli(r.config, "show", mid)
    assert shown.returncode == 0 and "Folder:    Badmail" in shown.stdout
    forced = cli(r.config, "requeue", "--force", mid)
    assert forced.returncode == 0, forced.stderr
    assert (r.folder("Queue") / f"{mid}.env").exists()
    assert cli(r.config, "show", mid).returncode == 0


def test_a_file_without_recipients_is_refused_even_forced(relay) -> None:
    r = relay()
    drop_file(r.folder("Pickup"), "norcpt.eml",
              b"From: cron@corp.test\r\nSubject: nightly\r\n\r\nbody\r\n")
    mid = wait_for(lambda: r.files("Badmail", "*.BAD"))[0].stem
    for extra in ([], ["--force"]):
        out = cli(r.config, "requeue", *extra, mid)
        assert out.returncode == 1 and "no recipients" in out.stderr
        assert (r.folder("Badmail") / f"{mid}.BAD").exists()


def test_a_requeued_550_keeps_its_attempts_and_sends_no_second_report(relay, dns_server,
                                                                      sink) -> None:
    hop = sink()
    hop.rcpt_replies["user@remote.example"] = "550 5.1.1 <user@remote.example>: no such user"
    r = relay(delivery_config(dns_server, hop.port))
    [mid] = submit(r, "user@remote.example")
    wait_for(lambda: (r.folder("Badmail") / f"{mid}.BAD").exists())
    reports = wait_for(lambda: r.files("Drop", "*.eml"))  # the NDR to the local sender
    assert len(reports) == 1
    first = Envelope.from_json((r.folder("Badmail") / f"{mid}.env").read_bytes()).attempts
    hop.rcpt_replies.clear()
    hop.data_reply = "451 4.3.0 try again later"  # held back once, to see the history
    assert cli(r.config, "requeue", mid).returncode == 0
    wait_for(lambda: len(Envelope.from_json(
        (r.folder("Queue") / f"{mid}.env").read_bytes()).attempts) == 2)
    history = Envelope.from_json((r.folder("Queue") / f"{mid}.env").read_bytes()).attempts
    assert history[0] == first[0] and history[1].reply.startswith("451")
    hop.data_reply = "250 OK"
    assert cli(r.config, "retry", mid).returncode == 0
    wait_for(lambda: hop.messages)
    time.sleep(1.0)
    assert len(r.files("Drop", "*.eml")) == 1  # no second report for the same recipient


def test_a_file_over_the_hop_limit_is_refused_with_the_reason_unless_forced(relay) -> None:
    r = relay({"delivery": {"max_hop_count": 3}})
    drop_file(r.folder("Pickup"), "loop.eml", b"Received: from x.test by y.test\r\n" * 4
              + b"From: a@yourdomain.com\r\nTo: u@remote.example\r\nSubject: loop\r\n\r\nhi\r\n")
    mid = wait_for(lambda: r.files("Badmail", "*.BAD"))[0].stem
    original = (r.folder("Badmail") / f"{mid}.eml").read_bytes()
    out = cli(r.config, "requeue", mid)
    assert out.returncode == 1, out.stdout
    assert "hop count exceeded" in out.stderr and "max_hop_count" in out.stderr
    assert "--force" in out.stderr and "requeued" not in out.stdout
    assert (r.folder("Badmail") / f"{mid}.BAD").exists()
    assert (r.folder("Badmail") / f"{mid}.eml").read_bytes() == original
    assert not r.files("Queue") and not r.files("Drop")
    assert "Folder:    Badmail" in cli(r.config, "show", mid).stdout
    forced = cli(r.config, "requeue", "--force", mid)
    assert forced.returncode == 0, forced.stderr
    assert (r.folder("Queue") / f"{mid}.env").exists() and not r.files("Badmail", f"{mid}.*")


def test_a_requeued_550_that_fails_again_sends_a_new_report(relay, dns_server, sink) -> None:
    hop = sink()
    hop.rcpt_replies["user@remote.example"] = "550 5.1.1 <user@remote.example>: no such user"
    r = relay(delivery_config(dns_server, hop.port))
    [mid] = submit(r, "user@remote.example")
    wait_for(lambda: (r.folder("Badmail") / f"{mid}.BAD").exists())
    [first] = wait_for(lambda: r.files("Drop", "*.eml"))  # the NDR to the local sender
    hop.rcpt_replies["user@remote.example"] = "550 5.1.1 <user@remote.example>: still no such user"
    assert cli(r.config, "requeue", mid).returncode == 0
    reports = wait_for(lambda: len(r.files("Drop", "*.eml")) == 2 and r.files("Drop", "*.eml"))
    wait_for(lambda: (r.folder("Badmail") / f"{mid}.BAD").exists())
    [second] = [p for p in reports if p != first]
    text = second.read_bytes()
    assert b"multipart/report" in text and b"user@remote.example" in text
    assert b"still no such user" in text and b"Action: failed" in text
    def bounces() -> list[dict]:  # logged just after the report is committed: wait for it
        return [e for e in r.events() if e["event"] == "bounced" and e["id"] == mid]

    wait_for(lambda: len(bounces()) == 2)
    bounced = bounces()
    assert all(e["ndr"] for e in bounced)
    assert bounced[0]["ndr"] != bounced[1]["ndr"]
    time.sleep(1.0)
    assert len(r.files("Drop", "*.eml")) == 2  # one report per failure, not more
    assert len(hop.messages) == 0
