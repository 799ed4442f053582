"""PIPELINING (RFC 2920): the relay's client against real next hops on loopback that offer it
and that don't: the commands in one write, each reply matched to its command, mixed
recipient results, late replies, a connection dropped mid-pipeline, a server out of step;
and through a real relay, a drop mid-pipeline marks nothing delivered."""

from __future__ import annotations

import ssl

import pytest
import trustme

from relay.core.store import Envelope
from tests.conftest import wait_for
from tests.pipelining_sink import PipeliningSink
from tests.test_delivery_client import client_for, send

MESSAGE = (b"From: app@yourdomain.com\r\nTo: a@remote.example\r\nSubject: piped\r\n\r\n"
           b"body\r\n.a dotted line\r\n")
A, B, C = "a@remote.example", "b@remote.example", "c@remote.example"


@pytest.fixture
def next_hop():
    started: list[PipeliningSink] = []

    def start(**options) -> PipeliningSink:
        started.append(PipeliningSink(**options))
        return started[-1]

    yield start
    for one in started:
        one.stop()


TRANSACTION = ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]


async def test_the_transaction_goes_in_one_write_with_mixed_recipient_results(
        dns_server, next_hop) -> None:
    """MAIL, three RCPTs and DATA reach the server in one write; each recipient gets its
    own reply (250, 450, 550), the accepted one the reply to the message, worded as without
    PIPELINING."""
    hop = next_hop(reply_delay=0.05)
    hop.rcpt_replies.update({B: "450 4.2.1 mailbox busy", C: "550 5.1.1 no such user"})
    result = await send(client_for(dns_server, hop.port), MESSAGE, [A, B, C])
    assert TRANSACTION in hop.segments
    replies = result.replies
    assert str(replies[A]) == "250 2.0.0 queued"
    assert str(replies[B]) == "450 4.2.1 mailbox busy (in reply to RCPT TO)"
    assert replies[B].status == "4.2.1" and not replies[B].permanent
    assert str(replies[C]) == "550 5.1.1 no such user (in reply to RCPT TO)"
    assert replies[C].permanent
    [got] = hop.messages
    assert got.recipients == [A] and got.data == MESSAGE.replace(b"\r\n.a", b"\r\n..a")


async def test_without_pipelining_each_command_waits_for_its_reply(dns_server,
                                                                   next_hop) -> None:
    hop = next_hop(pipelining=False, reply_delay=0.02)
    result = await send(client_for(dns_server, hop.port), MESSAGE, [A, B])
    assert result.replies[A].ok and result.replies[B].ok
    assert all(len(segment) == 1 for segment in hop.segments), hop.segments


async def test_late_replies_to_rcpt_are_waited_for_and_matched(dns_server, next_hop) -> None:
    """A server slow to answer (0.3 s a reply, the client's timeout 1 s): every reply is
    still read and matched to its command."""
    hop = next_hop(reply_delay=0.3)
    hop.rcpt_replies[B] = "452 4.5.3 too many recipients"
    result = await send(client_for(dns_server, hop.port), MESSAGE, [A, B])
    assert result.replies[A].ok
    assert str(result.replies[B]) == "452 4.5.3 too many recipients (in reply to RCPT TO)"


async def test_a_connection_dropped_mid_pipeline_delivers_no_one(dns_server, next_hop) -> None:
    hop = next_hop(close_after="RCPT")
    result = await send(client_for(dns_server, hop.port), MESSAGE, [A, B])
    for reply in result.replies.values():
        assert not reply.ok and not reply.permanent, reply
        assert "MAIL FROM, RCPT TO, DATA" in str(reply)
    assert not hop.messages


async def test_no_recipient_accepted_sends_no_message_and_resets(dns_server,
                                                                  next_hop) -> None:
    """All RCPTs refused: the DATA sent with them is refused too (or, if a server says 354
    anyway, ended at once with an empty message), and the connection is reset, reusable."""
    for data_reply in ("554 5.5.1 no valid recipients", "354 go ahead"):
        hop = next_hop(data_reply=data_reply)
        hop.rcpt_replies.update({A: "550 5.1.1 no", B: "550 5.1.1 no"})
        client = client_for(dns_server, hop.port)
        result = await send(client, MESSAGE, [A, B])
        assert all(r.permanent for r in result.replies.values())
        assert not hop.messages and "RSET" in hop.commands()
        hop.rcpt_replies.clear()
        hop.data_reply = "354 go ahead"
        again = await send(client, MESSAGE, [A])
        assert again.replies[A].ok and len(hop.messages) == 1


async def test_a_server_out_of_step_is_no_longer_pipelined_to(dns_server, next_hop) -> None:
    """A server that offers PIPELINING but answers MAIL twice: the transaction fails as a
    temporary error naming why, and the next one goes one command at a time."""
    hop = next_hop(extra_reply="250 2.1.0 sender ok, again")
    client = client_for(dns_server, hop.port)
    first = await send(client, MESSAGE, [A])
    assert not first.replies[A].ok and not first.replies[A].permanent
    assert "out of step" in str(first.replies[A])
    assert not hop.messages
    assert ["MAIL", "RCPT", "DATA"] in hop.segments
    hop.extra_reply = None
    hop.segments.clear()
    second = await send(client, MESSAGE, [A])
    assert second.replies[A].ok and len(hop.messages) == 1
    assert all(len(segment) == 1 for segment in hop.segments), hop.segments


async def test_pipelining_after_starttls(dns_server, next_hop, tmp_path) -> None:
    """STARTTLS, then the pipelined transaction over TLS (the reader set on the TLS
    transport), then the next message on the same connection."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("mx.remote.example").configure_cert(server)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    hop = next_hop(tls=server, reply_delay=0.02)
    client = client_for(dns_server, hop.port, ca_file=str(tmp_path / "ca.pem"))
    for _ in range(2):
        result = await send(client, MESSAGE, [A, B])
        assert result.tls and all(r.ok for r in result.replies.values())
    assert len(hop.messages) == 2
    assert hop.commands().count("STARTTLS") == 1  # one connection for both
    assert hop.segments.count(["MAIL", "RCPT", "RCPT", "DATA"]) == 2


def test_a_relay_whose_next_hop_drops_mid_pipeline_marks_no_one_delivered(
        relay, dns_server, next_hop) -> None:
    """Through a real relay: the next hop reads the pipelined commands and drops the
    connection before answering; every recipient stays to deliver (deferred), and the
    attempt says why."""
    hop = next_hop(close_after="DATA")
    r = relay({"smtp": {"relay": {"allow": ["127.0.0.0/8"]}},
               "delivery": {"smarthost": f"127.0.0.1:{hop.port}", "retry": ["1h"] * 4}})
    import smtplib

    with smtplib.SMTP("127.0.0.1", r.smtp_port(), timeout=10) as client:
        client.sendmail("app@yourdomain.com", [A, B], MESSAGE)
    env_path = wait_for(lambda: next(iter(r.files("Queue", "*.env")), None))
    envelope = wait_for(lambda: (e := Envelope.from_json(env_path.read_bytes())).attempts
                        and e)
    assert [rcpt.state for rcpt in envelope.recipients] == ["deferred", "deferred"]
    assert "MAIL FROM, RCPT TO, DATA" in envelope.attempts[0].reply
    assert not hop.messages


async def test_a_250_to_data_is_never_taken_for_a_delivery(dns_server, next_hop) -> None:
    """A server that answers DATA with a 250 (another command's reply, or a broken server)
    has not taken a message: nothing was sent. The recipient is not marked delivered."""
    hop = next_hop(data_reply="250 2.0.0 ok")
    result = await send(client_for(dns_server, hop.port), MESSAGE, [A])
    assert not result.replies[A].ok and not result.replies[A].permanent
    assert "out of step" in str(result.replies[A]) and not hop.messages
