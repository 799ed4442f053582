"""Remote delivery through a real `mailroot serve`: loopback DNS, aiosmtpd next hops."""

from __future__ import annotations

import time

import pytest

from tests.conftest import drop_file, sample, wait_for

REMOTE = "remote.example"


def delivery_config(dns_server, port: int, **delivery) -> dict:
    """Mail for remote.example goes to mx.remote.example = 127.0.0.1:port; 1 s retries."""
    dns_server.mx(REMOTE, (10, f"mx.{REMOTE}"))
    dns_server.a(f"mx.{REMOTE}", "127.0.0.1")
    return {"dns": {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "1s"},
            "delivery": {"port": port, "retry": ["1s", "1s", "1s", "1s"], "timeout": "5s",
                         **delivery}}


def message(to: str, subject: str = "test", sender: str = "app@yourdomain.com",
            body: bytes = b"hello\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n".encode() + body)


def events(r, name: str) -> list[dict]:
    return [e for e in r.events() if e["event"] == name]


@pytest.mark.alone  # a time bound
def test_iis_example_for_remote_domain_reaches_mx_sink_within_1s(relay, dns_server, sink):
    hop = sink()
    r = relay(delivery_config(dns_server, hop.port))
    raw = sample("iis-example-as-written.txt").replace(b"email@yourdomain.com",
                                                       b"email@remote.example")
    start = time.monotonic()
    drop_file(r.folder("Pickup"), "iis.txt", raw)
    wait_for(lambda: hop.messages, timeout=5.0)
    assert time.monotonic() - start < 1.0
    got = hop.messages[0]
    assert got.sender == "blog@yourdomain.com" and got.recipients == ["email@remote.example"]
    assert got.data.endswith(b"Subject: Email test\r\n\r\nThis is the test body of the email\r\n")
    assert hop.ehlo_names[-1] == "relay.test"
    wait_for(lambda: not r.files("Queue"))
    assert wait_for(lambda: events(r, "delivered"))[0]["host"].startswith("mx.remote.example[1")


def test_first_mx_refuses_connections_second_delivers(relay, dns_server, sink):
    hop = sink()
    config = delivery_config(dns_server, hop.port)
    dns_server.clear(REMOTE)
    dns_server.mx(REMOTE, (10, "a.remote.example"), (20, "b.remote.example"))
    dns_server.a("a.remote.example", "127.0.0.2")  # nothing listens there
    dns_server.a("b.remote.example", "127.0.0.1")
    r = relay(config)
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    wait_for(lambda: hop.messages)
    delivered = wait_for(lambda: events(r, "delivered"))
    assert delivered[0]["host"].startswith("b.remote.example")


@pytest.mark.parametrize("zone, status", [("null", "5.1.10"), ("nxdomain", "5.1.2")])
def test_null_mx_and_nxdomain_go_to_badmail_with_ndr_at_once(relay, dns_server, sink, zone,
                                                              status):
    hop = sink()
    config = delivery_config(dns_server, hop.port)
    if zone == "null":
        dns_server.null_mx("gone.example")
        dns_server.a("gone.example", "127.0.0.1")  # never used instead
    r = relay(config)
    drop_file(r.folder("Pickup"), "m.eml", message("x@gone.example", sender="app@remote.example"))
    bad = wait_for(lambda: r.files("Badmail", "*.BAD"), timeout=3)
    text = bad[0].read_text()
    assert status in text and "x@gone.example" in text
    assert bad[0].with_suffix(".env").exists()  # kept for a later requeue
    ndr = wait_for(lambda: hop.messages, timeout=3)[0]  # the NDR, to app@remote.example
    assert ndr.sender == "<>" and ndr.recipients == ["app@remote.example"]
    assert b"report-type=\"delivery-status\"" in ndr.data
    assert f"Status: {status}".encode() in ndr.data and b"Action: failed" in ndr.data
    wait_for(lambda: events(r, "delivered"))
    assert len(events(r, "delivered")) == 1  # only the NDR


def test_servfail_stays_queued_then_delivered_when_dns_answers(relay, dns_server, sink):
    hop = sink()
    config = delivery_config(dns_server, hop.port)
    dns_server.servfail(REMOTE)
    r = relay(config)
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    deferred = wait_for(lambda: events(r, "deferred"), timeout=3)
    assert "SERVFAIL" in deferred[0]["reply"]
    assert r.files("Queue", "*.env") and not r.files("Badmail")
    dns_server.servfail(REMOTE, on=False)
    wait_for(lambda: hop.messages, timeout=5)
    wait_for(lambda: not r.files("Queue"))


def test_masquerade_domain_on_remote_mail(relay, dns_server, sink):
    hop = sink()
    r = relay(delivery_config(dns_server, hop.port, masquerade_domain="example.org"))
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example", sender="app@yourdomain.com"))
    got = wait_for(lambda: hop.messages)[0]
    assert got.sender == "app@example.org" and b"\r\nFrom: app@example.org\r\n" in got.data
    assert b"\r\nFrom: app@yourdomain.com" not in got.data
