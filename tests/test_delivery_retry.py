"""Retries, the delay notice, expiry and per-recipient results, through a real relay."""

from __future__ import annotations

import json
import time

from tests.conftest import drop_file, wait_for
from tests.test_delivery import delivery_config, events, message


def reports(r, action: str) -> list[bytes]:
    """Reports the relay sent to the local sender (they land in Drop)."""
    found = [p.read_bytes() for p in r.files("Drop", "*.eml")]
    return [d for d in found if f"Action: {action}".encode() in d]


def test_4xx_then_accepted_on_retry_with_attempts_visible_meanwhile(relay, dns_server, sink):
    hop = sink()
    answers = iter(["451 4.3.0 greylisted, try again later"])
    hop.data_reply = lambda: next(answers, "250 OK")
    r = relay(delivery_config(dns_server, hop.port, retry=["2s", "2s", "2s", "2s"]))
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    wait_for(lambda: events(r, "deferred"))
    env = json.loads(r.files("Queue", "*.env")[0].read_bytes())
    assert len(env["attempts"]) == 1 and "greylisted" in env["attempts"][0]["reply"]
    assert env["recipients"][0]["state"] == "deferred"
    assert env["next_attempt"] >= env["attempts"][0]["time"] + 2
    assert not hop.messages
    wait_for(lambda: hop.messages, timeout=6)
    assert time.time() >= env["next_attempt"] - 0.1
    wait_for(lambda: not r.files("Queue"))
    assert len(hop.messages) == 1 and not r.files("Badmail")


def test_always_451_one_delay_notice_then_badmail_and_one_ndr(relay, dns_server, sink):
    hop = sink()
    hop.data_reply = "451 4.7.1 Service busy, mailbox unavailable right now"
    r = relay(delivery_config(dns_server, hop.port, retry=["1s", "1s", "1s", "2s"],
                              delay_notification="2s", expiration="6s"))
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    bad = wait_for(lambda: r.files("Badmail", "*.BAD"), timeout=12)
    wait_for(lambda: reports(r, "failed"))
    assert len(reports(r, "delayed")) == 1 and len(reports(r, "failed")) == 1
    text = bad[0].read_text()
    assert "451 4.7.1 Service busy, mailbox unavailable right now" in text
    assert "expired" in text.split("\n\n")[1]  # the Reason line
    assert text.count("mx.remote.example[127.0.0.1]") >= 4  # every attempt, with its host
    ndr = reports(r, "failed")[0]
    assert b"Status: 4.4.7" in ndr and b"X-Sender: <>" in ndr
    assert b"Final-Recipient: rfc822; x@remote.example" in ndr
    assert len(events(r, "delay-notice")) == 1
    # the move's last steps remove the Queue files, after the .BAD and the NDR are in place
    wait_for(lambda: not r.files("Queue"), timeout=5)


def test_delay_notice_is_sent_on_time_even_with_a_long_retry_interval(relay, dns_server, sink):
    hop = sink()
    hop.data_reply = "451 4.7.1 try later"
    r = relay(delivery_config(dns_server, hop.port, retry=["1h", "1h", "1h", "1h"],
                              delay_notification="2s"))
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    wait_for(lambda: reports(r, "delayed"), timeout=8)  # not an hour later
    wait_for(lambda: events(r, "delay-notice"))  # logged once the notice is on disk
    assert len(events(r, "delay-notice")) == 1 and r.files("Queue", "*.env")


def test_mixed_recipients_one_delivered_once_ndr_names_only_the_refused(relay, dns_server,
                                                                         sink):
    hop = sink()
    hop.rcpt_replies["bad@remote.example"] = "550 5.1.1 <bad@remote.example>: no such user"
    r = relay(delivery_config(dns_server, hop.port))
    drop_file(r.folder("Pickup"), "m.eml",
              message("good@remote.example, bad@remote.example"))
    ndr = wait_for(lambda: reports(r, "failed"))[0]
    assert [m.recipients for m in hop.messages] == [["good@remote.example"]]
    assert b"Final-Recipient: rfc822; bad@remote.example" in ndr
    assert b"good@remote.example" not in ndr.split(b"text/rfc822-headers")[0]
    assert b"Diagnostic-Code: smtp; 550 5.1.1 <bad@remote.example>: no such user" in ndr
    assert b"Status: 5.1.1" in ndr and b"Remote-MTA: dns; mx.remote.example" in ndr
    assert b"Reporting-MTA: dns; relay.test" in ndr
    assert b"Subject: test" in ndr.split(b"text/rfc822-headers")[1]  # the original headers
    time.sleep(1.5)  # a retry round would have come by now
    assert len(hop.messages) == 1 and not r.files("Queue")


def test_ndr_copy_and_undeliverable_ndr_ends_in_badmail_without_another(relay, dns_server,
                                                                         sink):
    hop = sink()
    hop.rcpt_replies["x@remote.example"] = "550 5.1.1 no such user"
    hop.rcpt_replies["sender@remote.example"] = "550 5.1.1 the sender is gone too"
    r = relay(delivery_config(dns_server, hop.port, ndr_copy_to="postmaster@yourdomain.com"))
    drop_file(r.folder("Pickup"), "m.eml",
              message("x@remote.example", sender="sender@remote.example"))
    wait_for(lambda: len(r.files("Badmail", "*.BAD")) == 2, timeout=5)
    copy = wait_for(lambda: reports(r, "failed"))
    assert len(copy) == 1 and b"X-Receiver: postmaster@yourdomain.com" in copy[0]
    kinds = sorted(json.loads(p.read_bytes())["kind"] for p in r.files("Badmail", "*.env"))
    assert kinds == ["message", "ndr"]
    time.sleep(1.0)
    assert len(r.files("Badmail", "*.BAD")) == 2 and not r.files("Queue")
    assert len(events(r, "bounced")) == 2
