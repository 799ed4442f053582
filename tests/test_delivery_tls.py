"""TLS policy and smart hosts through a real relay, with trustme certificates."""

from __future__ import annotations

import json
import ssl

import pytest
import trustme

from tests.conftest import drop_file, wait_for
from tests.test_delivery import REMOTE, delivery_config, events, message

PASSWORD = "s3cret-Smart-Host-pw"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


def test_tls_require_without_starttls_sends_nothing_in_clear(relay, dns_server, sink):
    hop = sink()  # no STARTTLS offered
    config = delivery_config(dns_server, hop.port)
    config["domains"] = {"remote": {REMOTE: {"tls": "require"}}}
    r = relay(config)
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    deferred = wait_for(lambda: events(r, "deferred"))
    assert "does not offer STARTTLS" in deferred[0]["reply"]
    assert not hop.messages and r.files("Queue", "*.env")


def test_tls_verify_checks_certificate_name(relay, dns_server, sink, ca, tmp_path):
    hop = sink(tls=server_tls(ca, "mx.remote.example"))
    config = delivery_config(dns_server, hop.port, ca_file=str(tmp_path / "ca.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    dns_server.mx("wrong.example", (10, "mx.wrong.example"))
    dns_server.a("mx.wrong.example", "127.0.0.1")  # same server, certificate for another name
    config["domains"] = {"remote": {REMOTE: {"tls": "verify"}, "wrong.example": {"tls": "verify"}}}
    r = relay(config)
    drop_file(r.folder("Pickup"), "ok.eml", message("x@remote.example"))
    drop_file(r.folder("Pickup"), "bad.eml", message("y@wrong.example"))
    got = wait_for(lambda: hop.messages)
    assert got[0].recipients == ["x@remote.example"] and got[0].tls
    deferred = wait_for(lambda: events(r, "deferred"))
    assert deferred[0]["to"] == ["y@wrong.example"]
    assert "certificate" in deferred[0]["reply"] and "mx.wrong.example" in deferred[0]["reply"]
    env = json.loads(r.files("Queue", "*.env")[0].read_bytes())
    assert "certificate" in env["recipients"][0]["reply"]
    assert len(hop.messages) == 1


def test_smart_host_with_auth_over_starttls_gets_all_remote_mail(relay, sink, ca, tmp_path):
    hop = sink(tls=server_tls(ca, "smarthost.test"), users={"relayuser": PASSWORD})
    hop.rcpt_replies["nobody@far.example"] = "550 5.1.1 no such user here"
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    r = relay({"delivery": {"smarthost": f"127.0.0.1:{hop.port}", "retry": ["1s"] * 4,
                            "auth": {"username": "relayuser",
                                     "password_file": str(tmp_path / "pw")}}})
    drop_file(r.folder("Pickup"), "a.eml", message("a@one.example"))
    drop_file(r.folder("Pickup"), "b.eml", message("b@two.example, nobody@far.example"))
    wait_for(lambda: len(hop.messages) == 2 and r.files("Badmail", "*.BAD"))
    assert sorted(r for m in hop.messages for r in m.recipients) == ["a@one.example",
                                                                    "b@two.example"]
    assert all(m.tls and m.login == "relayuser" for m in hop.messages)
    assert all(tls for _, tls in hop.logins)
    wait_for(lambda: not r.files("Queue"))
    r.stop()
    for path in [*r.root.rglob("*"), tmp_path / "relay.stderr"]:
        if path.is_file() and path.name != "pw":
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_smart_host_credentials_never_sent_in_clear(relay, sink, tmp_path):
    hop = sink(users={"relayuser": PASSWORD})  # no TLS at all
    (tmp_path / "pw").write_text(PASSWORD)
    r = relay({"delivery": {"smarthost": f"127.0.0.1:{hop.port}",
                            "auth": {"username": "relayuser",
                                     "password_file": str(tmp_path / "pw")}}})
    drop_file(r.folder("Pickup"), "a.eml", message("a@one.example"))
    deferred = wait_for(lambda: events(r, "deferred"))
    assert "only sent over TLS" in deferred[0]["reply"]
    assert not hop.logins and not hop.messages


def test_tls_may_with_a_broken_handshake_delivers_in_clear(relay, dns_server, sink):
    """STARTTLS offered but the handshake fails (a server context with no certificate): with
    the default policy `may` the message still goes, in clear, on a new connection."""
    hop = sink(tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    r = relay(delivery_config(dns_server, hop.port))
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    got = wait_for(lambda: hop.messages)
    assert got[0].recipients == ["x@remote.example"] and not got[0].tls
    assert wait_for(lambda: events(r, "delivered"))[0]["tls"] is False
    assert not events(r, "deferred")


def test_tls_require_with_a_broken_handshake_sends_nothing(relay, dns_server, sink):
    hop = sink(tls=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    config = delivery_config(dns_server, hop.port)
    config["domains"] = {"remote": {REMOTE: {"tls": "require"}}}
    r = relay(config)
    drop_file(r.folder("Pickup"), "m.eml", message("x@remote.example"))
    deferred = wait_for(lambda: events(r, "deferred"))
    assert "TLS failed" in deferred[0]["reply"] or "STARTTLS" in deferred[0]["reply"]
    assert not hop.messages
