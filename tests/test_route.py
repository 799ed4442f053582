"""Issue 14: `mailroot route ADDRESS` explains each case against the loopback DNS server."""

from __future__ import annotations

import json
import time

import pytest

from relay.cli import main
from relay.core.store import QUEUE, Envelope, Mailroot, Recipient

pytestmark = pytest.mark.usefixtures("dns_server")


@pytest.fixture
def route(write_config, dns_server, capsys):
    """route(address, {...config...}) -> (exit code, the JSON explanation, the text)."""

    def run(address: str, extra: dict | None = None) -> tuple[int, dict, str]:
        config = write_config({"dns": {"port": dns_server.port}, **(extra or {})})
        code = main(["route", "-c", str(config), "--json", address])
        data = json.loads(capsys.readouterr().out)
        assert main(["route", "-c", str(config), address]) == code
        return code, data, capsys.readouterr().out

    return run


def test_default_domain_goes_to_drop(route) -> None:
    code, data, text = route("Alice@YourDomain.com")
    assert code == 0
    assert data["kind"] == "local" and data["destination"].startswith("Drop")
    assert data["rule"] == "domains.local.default is yourdomain.com"
    assert "goes to     Drop (local delivery" in text


def test_alias_domain_goes_to_drop_naming_the_rule(route, tmp_path) -> None:
    code, data, text = route("bob@alias.test")
    assert code == 0
    assert data["kind"] == "local"
    assert data["rule"] == "alias.test is in domains.local.aliases"
    drop = tmp_path / "mailroot" / "Drop"
    assert data["destination"] == f"Drop (local delivery: a file in {drop})"
    assert f"goes to     Drop (local delivery: a file in {drop})" in text


def test_remote_via_mx_with_two_preferences(route, dns_server) -> None:
    dns_server.mx("partner.test", (20, "mx2.partner.test"), (10, "mx1.partner.test"))
    dns_server.a("mx1.partner.test", "127.0.0.11")
    dns_server.a("mx2.partner.test", "127.0.0.12")
    code, data, text = route("carol@partner.test")
    assert code == 0
    assert [(m["preference"], m["host"], m["addresses"], m["ttl"]) for m in data["mx"]] == [
        (10, "mx1.partner.test", ["127.0.0.11"], 300),
        (20, "mx2.partner.test", ["127.0.0.12"], 300)]
    assert data["destination"] == "MX mx1.partner.test (preference 10)"
    assert data["tls"] == "may" and data["tls_source"].startswith("the default")
    assert data["limits"]["connections to this domain"] == "20"
    assert "10 mx1.partner.test [127.0.0.11], TTL 300s" in text
    assert "deliverable now" in text


def test_implicit_mx(route, dns_server) -> None:
    dns_server.a("bare.test", "127.0.0.21")
    code, data, text = route("dave@bare.test")
    assert code == 0
    assert data["implicit_mx"] is True
    assert data["mx"][0]["addresses"] == ["127.0.0.21"]
    assert "implicit MX" in text


def test_null_mx(route, dns_server) -> None:
    dns_server.null_mx("nomail.test")
    code, data, text = route("erin@nomail.test")
    assert code == 1
    assert data["fails"].startswith("5.1.10")
    assert "accepts no mail" in text and "would fail now" in text


def test_nxdomain(route) -> None:
    code, data, text = route("frank@missing.test")
    assert code == 1
    assert "NXDOMAIN" in data["dns"] and data["fails"].startswith("5.1.2")
    assert "does not exist" in text


def test_servfail(route, dns_server) -> None:
    dns_server.servfail("broken.test")
    code, data, text = route("gina@broken.test")
    assert code == 1
    assert data["dns"].startswith("SERVFAIL") and data["fails"].startswith("4.4.3")
    assert "retried" in text


def test_smart_host_for_all_remote_mail(route, dns_server) -> None:
    code, data, text = route("hank@partner.test", {"delivery": {"smarthost": "127.0.0.1:2600"}})
    assert code == 0
    assert data["smarthost"] == "127.0.0.1:2600"
    assert data["smarthost_rule"] == "delivery.smarthost (all remote mail)"
    assert data["destination"] == "smart host 127.0.0.1:2600"
    assert ("partner.test.", "MX") not in dns_server.queries  # no MX lookup for it
    assert "delivery.smarthost (all remote mail)" in text


def test_a_smart_host_name_is_looked_up_as_delivery_looks_it_up(route, dns_server) -> None:
    """Delivery connects to a smart host by name through the system's resolver (/etc/hosts
    first), not the configured DNS servers: route says the same, where the configured
    servers know nothing of the name."""
    code, data, text = route("kim@partner.test", {"delivery": {"smarthost": "localhost:2600"}})
    assert code == 0, text
    assert data["destination"] == "smart host localhost:2600"
    assert "127.0.0.1" in data["mx"][0]["addresses"]
    assert not [q for q in dns_server.queries if q[0].startswith("localhost")]


def test_per_domain_smart_host(route, dns_server) -> None:
    dns_server.mx("partner.test", (10, "mx1.partner.test"))
    dns_server.a("mx1.partner.test", "127.0.0.11")
    extra = {"domains": {"remote": {"partner.test": {"smarthost": "127.0.0.1:2700"}}}}
    code, data, text = route("ivy@partner.test", extra)
    assert code == 0
    assert data["smarthost"] == "127.0.0.1:2700"
    assert data["smarthost_rule"] == "domains.remote.partner.test.smarthost"
    assert data["destination"] == "smart host 127.0.0.1:2700"
    assert [(m["host"], m["addresses"]) for m in data["mx"]] == [("127.0.0.1", ["127.0.0.1"])]
    assert ("partner.test.", "MX") not in dns_server.queries  # its MX is not what counts
    assert "smart host  127.0.0.1:2700 (domains.remote.partner.test.smarthost)" in text
    assert "goes to     smart host 127.0.0.1:2700" in text
    # Another remote domain still goes to its MX.
    dns_server.mx("other.test", (10, "mx.other.test"))
    dns_server.a("mx.other.test", "127.0.0.12")
    code, data, _ = route("jo@other.test", extra)
    assert code == 0
    assert (data["smarthost"], data["destination"]) == ("", "MX mx.other.test (preference 10)")
    assert ("other.test.", "MX") in dns_server.queries


def test_per_domain_tls_require(route, dns_server) -> None:
    dns_server.mx("partner.test", (10, "mx1.partner.test"))
    dns_server.a("mx1.partner.test", "127.0.0.11")
    code, data, text = route("ivy@partner.test", {"domains": {"remote": {"partner.test": {
        "tls": "require"}}}})
    assert code == 0
    assert (data["tls"], data["tls_source"]) == ("require", "domains.remote.partner.test.tls")
    assert "TLS         require (from domains.remote.partner.test.tls)" in text
    assert data["destination"] == "MX mx1.partner.test (preference 10)"
    assert data["smarthost"] == ""


def test_mail_waiting_in_queue_shows_its_state_and_next_attempt(route, tmp_path) -> None:
    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    now = time.time()
    envelope = Envelope("01JAAAAAAAAAAAAA", "app@yourdomain.com",
                        [Recipient("kim@broken.test", "deferred", "4.4.3", "451 try later")],
                        now - 60, size=5, next_attempt=now + 600)
    store.commit(store.enqueue_ops(QUEUE, envelope, b"hi\r\n"))
    signed = Envelope("01JAAAAAAAAAAAAB", "app@example.com",
                      [Recipient("kim@broken.test", "pending")], now - 30, size=0)
    store.commit(store.enqueue_ops(QUEUE, signed, (
        b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.com;\r\n"
        b" s=mail2026; h=from; bh=AAAA; b=BBBB\r\nFrom: app@example.com\r\n\r\nhi\r\n")))
    code, data, text = route("kim@broken.test")
    assert code == 1  # NXDOMAIN: broken.test is not in the zone
    assert data["waiting"][0]["state"] == "deferred"
    assert data["waiting"][0]["next_attempt"] == pytest.approx(now + 600)
    assert "01JAAAAAAAAAAAAA in Queue: deferred" in text and "451 try later" in text
    assert data["waiting"][0]["signed_by"] == []
    assert data["waiting"][1]["signed_by"] == ["example.com (selector mail2026, ed25519-sha256)"]
    assert "signed by example.com (selector mail2026, ed25519-sha256)" in text
    assert "not signed (DKIM)" in text


def test_not_an_address_is_bad_usage(write_config) -> None:
    assert main(["route", "-c", str(write_config()), "a@b@c"]) == 2


def queue_failing(tmp_path, address: str, host: str, reply: str, tries: int = 2) -> None:
    """A message for `address` in Queue whose every attempt failed with `reply`."""
    from relay.core.store import Attempt

    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    now = time.time()
    envelope = Envelope("01JAAAAAAAAAAAAC", "app@yourdomain.com",
                        [Recipient(address, "deferred", "4.0.0", reply, host)], now - 300,
                        size=4, next_attempt=now + 600,
                        attempts=[Attempt(now - 60 * (tries - n), host, reply, False, [address])
                                  for n in range(tries)])
    store.commit(store.enqueue_ops(QUEUE, envelope, b"hi\r\n"))


def test_a_smart_host_refusing_every_connection_is_not_deliverable_now(route, tmp_path) -> None:
    """Item 5 of issue 27: the route to a smart host that refuses every connection said
    "deliverable now" (exit 0) and named port 25; it says what delivery has seen, with the
    port delivery uses, and exits 1."""
    import socket

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    host = f"127.0.0.1:{port}"
    queue_failing(tmp_path, "kim@remote.example", host,
                  f"{host}: connect failed: Connection refused")
    code, data, text = route("lee@remote.example", {"delivery": {"smarthost": host}})
    assert code == 1
    assert data["limits"]["port"] == str(port) and f"port {port}," in text
    assert data["recent"]["waiting"] == 1
    assert data["verdict"].startswith("routed, but not getting through: the last attempt (")
    assert f"{host}) got {host}: connect failed: Connection refused; 1 recipient(s) waiting" \
        in data["verdict"]
    assert "deliverable now" not in text and "attempted" in text


def test_a_domain_whose_every_attempt_got_451_is_not_deliverable_now(route, dns_server,
                                                                       tmp_path) -> None:
    dns_server.mx("remote.example", (10, "mx.remote.example"))
    dns_server.a("mx.remote.example", "127.0.0.1")
    queue_failing(tmp_path, "kim@remote.example", "mx.remote.example[127.0.0.1]",
                  "451 4.3.0 try again later", tries=3)
    code, data, text = route("kim@remote.example")
    assert code == 1 and data["limits"]["port"] == "25"
    assert "451 4.3.0 try again later; 1 recipient(s) waiting" in data["verdict"]
    assert text.count("attempted") == 3
    code, data, _ = route("kim@elsewhere.example")  # another domain: nothing seen, as before
    assert data["recent"] == {"waiting": 0, "attempts": []}


def test_with_direct_delivery_first_both_ports_are_named(route, dns_server) -> None:
    dns_server.mx("remote.example", (10, "mx.remote.example"))
    dns_server.a("mx.remote.example", "127.0.0.1")
    _, data, _ = route("kim@remote.example", {"delivery": {
        "smarthost": "relay.example:2525", "attempt_direct_first": True}})
    assert data["limits"]["port"] == "25 (MX hosts), 2525 (smart host)"
