"""The SMTP client in-process against real aiosmtpd next hops: what goes on the wire,
8BITMIME and SMTPUTF8, timeouts, connection reuse and limits, implicit TLS."""

from __future__ import annotations

import asyncio
import ssl

import trustme
import yaml

from relay.core.config_loader import parse
from relay.core.message import stuff, unstuff
from relay.core.router import Router
from relay.queue.resolver import Resolver
from relay.queue.smtp_client import Client, Hop
from relay.queue.smtp_transaction import Outgoing, masquerade

EIGHT_BIT = (b"From: app@yourdomain.com\r\nTo: x@remote.example\r\nSubject: caf\xc3\xa9?\r\n"
             .replace(b"caf\xc3\xa9?", b"menu") + b"Content-Type: text/plain; charset=utf-8\r\n"
             b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n.a dotted line\r\n")


def client_for(dns_server, port: int, **delivery) -> Client:
    dns_server.mx("remote.example", (10, "mx.remote.example"))
    dns_server.a("mx.remote.example", "127.0.0.1")
    config = parse(yaml.safe_dump({
        "hostname": "relay.test",
        "dns": {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "1s"},
        "delivery": {"port": port, "timeout": "1s", **delivery}}))
    return Client(config, Resolver(config))


async def send(client: Client, data: bytes, rcpts: list[str], sender: str = "app@yourdomain.com"):
    route = Router(client.config).route("remote.example")
    return await client.deliver(route, Outgoing(sender, data), rcpts)


async def test_8bit_sent_as_is_with_8bitmime_converted_without(dns_server, sink):
    plain, old = sink(), sink(eight_bit=False)
    result = await send(client_for(dns_server, plain.port), EIGHT_BIT, ["x@remote.example"])
    assert result.replies["x@remote.example"].ok
    assert "BODY=8BITMIME" in plain.messages[0].options
    assert plain.messages[0].data.endswith(b"caf\xc3\xa9\r\n.a dotted line\r\n")
    result = await send(client_for(dns_server, old.port), EIGHT_BIT, ["x@remote.example"])
    assert result.replies["x@remote.example"].ok
    data = old.messages[0].data
    assert data.isascii() and b"Content-Transfer-Encoding: quoted-printable" in data
    assert b"caf=C3=A9\r\n.a dotted line\r\n" in data and b"Subject: menu\r\n" in data


async def test_lines_of_dots_arrive_as_sent_and_the_last_line_is_ended(dns_server, sink):
    """A line that is only a dot would end DATA early if it were not stuffed."""
    hop = sink()
    body = b".\r\n..\r\n.x\r\n\r\n.\r\n...three\r\nno line end"
    data = b"From: app@yourdomain.com\r\nSubject: dots\r\n\r\n" + body
    result = await send(client_for(dns_server, hop.port), data, ["x@remote.example"])
    assert result.replies["x@remote.example"].ok
    assert hop.messages[0].data == data + b"\r\n"


def test_stuffing_is_undone_by_unstuffing_for_any_leading_dots() -> None:
    for text in (b".", b".a\r\n", b"a\r\n.\r\n", b"..\r\n...\r\n", b"x\r\n.\r\n.\r\n"):
        wire = stuff(text)
        assert not wire.startswith(b".\r\n") and b"\r\n.\r\n" not in wire
        assert unstuff(wire) == text


async def test_long_lines_and_bare_line_ends_are_normalised(dns_server, sink):
    hop = sink()
    data = (b"From: app@yourdomain.com\r\nSubject: long\r\n\r\nbare\nlf and bare\rcr\r\n"
            + b"y" * 2500 + b"\r\n")
    result = await send(client_for(dns_server, hop.port), data, ["x@remote.example"])
    assert result.replies["x@remote.example"].ok
    got = hop.messages[0].data
    lines = got.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert b"\r" not in got.replace(b"\r\n", b"") and b"\n" not in got.replace(b"\r\n", b"")
    assert b"quoted-printable" in got and got.count(b"y") >= 2500


async def test_smtputf8_needed_but_not_offered_fails_with_reason(dns_server, sink):
    plain, modern = sink(), sink(smtputf8=True)
    data = b"From: app@yourdomain.com\r\nSubject: hi\r\n\r\nhello\r\n"
    result = await send(client_for(dns_server, plain.port), data, ["jos\u00e9@remote.example"])
    reply = result.replies["jos\u00e9@remote.example"]
    assert reply.permanent and reply.status == "5.6.7" and "SMTPUTF8" in reply.text
    assert not plain.messages
    result = await send(client_for(dns_server, modern.port), data, ["jos\u00e9@remote.example"])
    assert result.replies["jos\u00e9@remote.example"].ok
    assert "SMTPUTF8" in modern.messages[0].options


async def test_hanging_next_hop_times_out_as_temporary(dns_server, sink):
    hop = sink()
    hop.hang = "DATA"
    result = await send(client_for(dns_server, hop.port), b"Subject: x\r\n\r\nx\r\n",
                        ["x@remote.example"])
    reply = result.replies["x@remote.example"]
    assert not reply.permanent and not reply.ok and "timed out during DATA" in reply.text


async def test_connection_reused_up_to_messages_per_connection(dns_server, sink):
    hop = sink()
    client = client_for(dns_server, hop.port, messages_per_connection=2)
    for _ in range(3):
        await send(client, b"Subject: x\r\n\r\nx\r\n", ["x@remote.example"])
    await client.close()
    assert len(hop.messages) == 3
    assert len(hop.ehlo_names) == 2  # 2 connections for 3 messages


async def test_connections_per_domain_limited(dns_server, sink):
    hop = sink()
    hop.data_delay = 0.3
    client = client_for(dns_server, hop.port, max_connections_per_domain=2)
    await asyncio.gather(*(send(client, b"Subject: x\r\n\r\nx\r\n", [f"r{i}@remote.example"])
                           for i in range(5)))
    await client.close()
    assert len(hop.messages) == 5 and hop.peak == 2


async def test_implicit_tls_smart_host_with_auth(dns_server, sink, tmp_path):
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    hop = sink(tls=context, implicit_tls=True, users={"u": "pw-465"})
    (tmp_path / "pw").write_text("pw-465")
    client = client_for(dns_server, hop.port, ca_file=str(tmp_path / "ca.pem"), auth={
        "username": "u", "password_file": str(tmp_path / "pw")})
    creds = client.config.delivery.auth
    smart = Hop("127.0.0.1", "127.0.0.1", hop.port, "verify", "smarthost", creds,
                implicit_tls=True)
    assert await client.pool.acquire(smart.key) is None
    conn = await client.connect(smart)
    replies = await client.transaction(conn, Outgoing("a@yourdomain.com", b"Subject: s\r\n\r\n"
                                                                           b"x\r\n"),
                                       ["z@far.example"])
    client.pool.give_back(conn, True)
    await client.close()
    assert replies["z@far.example"].ok and conn.tls
    assert hop.messages[0].login == "u" and hop.messages[0].tls


def test_masquerade_sender_and_from() -> None:
    data = b"From: App <app@yourdomain.com>\r\nTo: x@remote.example\r\n\r\nbody\r\n"
    sender, out = masquerade("app@yourdomain.com", data, "example.org")
    assert sender == "app@example.org"
    assert out == data.replace(b"<app@yourdomain.com>", b"<app@example.org>")
    assert masquerade("", data, "example.org")[0] == ""


async def test_smart_host_order_direct_first_and_per_domain_override(dns_server):
    client = client_for(dns_server, 2525, smarthost="127.0.0.1:2600", attempt_direct_first=True)
    hops = await client.hops(Router(client.config).route("remote.example"))
    assert [(h.host, h.port) for h in hops] == [("mx.remote.example", 2525), ("127.0.0.1", 2600)]
    dns_server.servfail("down.example")  # direct fails for now: the smart host is still tried
    hops = await client.hops(Router(client.config).route("down.example"))
    assert [(h.host, h.port) for h in hops] == [("127.0.0.1", 2600)]
    config = parse(yaml.safe_dump({"delivery": {"smarthost": "127.0.0.1:2600"}, "domains": {
        "remote": {"own.example": {"smarthost": "127.0.0.1:2700", "tls": "require"}}}}))
    route = Router(config).route("own.example")
    hops = await Client(config, Resolver(config)).hops(route)
    assert [(h.port, h.tls) for h in hops] == [(2700, "require")]
