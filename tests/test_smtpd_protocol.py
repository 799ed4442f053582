"""Issue: SMTP receive — the protocol: EHLO, end of data, smuggling, dot-stuffing, line ends,
the Received header and the log, command lines, bad commands."""

from __future__ import annotations

import asyncio
import re
import smtplib
import socket
import time

import pytest
import uvloop

from relay.receiver.connection import read_data
from tests.smtpd_support import LOCAL, RawClient, code, live_smtp, message, wait_files

BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")

# Every bare-CR/bare-LF look-alike of <CRLF>.<CRLF> (the SMTP smuggling family).
SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n.\r",
             b"\r.\n", b"\r\n.\r\r\n", b"\r\r\n.\r\r\n", b"\r\n\r.\r\n", b"\n\n.\n\n",
             b"\r\n .\r\n", b"\r\n.\x00\r\n"]


@pytest.fixture
def smtpd(write_config):
    with live_smtp(write_config) as server:
        yield server


async def read_all(stream: bytes, pieces: int) -> tuple[tuple[bytes, int] | None, bytes]:
    """read_data over a real StreamReader fed in `pieces`-byte pieces; plus what stays unread."""
    reader = asyncio.StreamReader(limit=1001)
    task = asyncio.ensure_future(read_data(reader, 10_000))
    for i in range(0, len(stream), pieces):
        reader.feed_data(stream[i:i + pieces])
        await asyncio.sleep(0)
    reader.feed_eof()
    got = await task
    return got, await reader.read()


@pytest.mark.parametrize("pieces", [1, 2, 3, 5, 4096])
async def test_data_ends_only_at_crlf_dot_crlf_however_it_arrives(pieces) -> None:
    after = b"QUIT\r\n"
    for body in [b"", b"\r\n", b"a\r\n", b"Subject: x\r\n\r\nline.\r\n..\r\n" + b"y" * 3000 + b"\r\n",
                 b"\r\n\r\n", *(b"x" + fake + b"y\r\n" for fake in SMUGGLING)]:
        got, rest = await read_all(body + b".\r\n" + after, pieces)
        assert got == (body, len(body)), (body, pieces)
        assert rest == after


async def test_data_over_the_limit_is_read_to_the_end_and_dropped() -> None:
    reader = asyncio.StreamReader(limit=1001)
    reader.feed_data(b"z" * 20_000 + b"\r\n.\r\nQUIT\r\n")
    assert await read_data(reader, 10_000) == (b"", 20_002)
    assert await reader.readuntil(b"\r\n") == b"QUIT\r\n"


async def test_these_tests_run_on_uvloop_as_the_receivers_do(smtpd) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)  # tests/conftest.py's hook
    assert isinstance(smtpd.loop, uvloop.Loop)  # the listener's own, in its thread


def test_ehlo_offers_size_8bitmime_pipelining_smtputf8_and_no_auth_without_tls(smtpd) -> None:
    with smtplib.SMTP("127.0.0.1", smtpd.port) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == str(2048 * 1024)
        for name in ("8bitmime", "pipelining", "smtputf8"):
            assert name in client.esmtp_features
        assert "starttls" not in client.esmtp_features and "auth" not in client.esmtp_features


def test_each_smuggling_variant_gives_exactly_one_message(smtpd) -> None:
    for i, fake in enumerate(SMUGGLING):
        client = RawClient(smtpd.port)
        client.send(b"EHLO smuggler.test\r\nMAIL FROM:<a@" + LOCAL.encode() + b">\r\n"
                    b"RCPT TO:<user@" + LOCAL.encode() + b">\r\nDATA\r\n")
        replies = [client.reply() for _ in range(4)]
        assert [code(r) for r in replies] == [250, 250, 250, 354]
        client.send(b"Subject: variant " + str(i).encode() + b"\r\n\r\nbody" + fake +
                    b"MAIL FROM:<evil@" + LOCAL.encode() + b">\r\nRCPT TO:<postmaster>\r\n"
                    b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n")
        replies = client.replies_until_closed()
        assert [code(r) for r in replies] == [250, 221], (fake, replies)
        client.close()
    stored = wait_files(smtpd, "Drop", len(SMUGGLING))
    for path in stored:
        data = path.read_bytes()
        assert b"Subject: smuggled" in data  # stayed inside the first message's body
        assert data.count(b"X-Receiver:") == 1
        assert not BARE.search(data), data


def test_dot_stuffing_is_undone_and_body_kept(smtpd) -> None:
    body = ".starts with a dot\r\n..two dots\r\n.\r\nnot the end\r\nlast.\r\n"
    with smtplib.SMTP("127.0.0.1", smtpd.port) as client:
        client.sendmail(f"app@{LOCAL}", [f"user@{LOCAL}"], message(body=body))
    data = wait_files(smtpd, "Drop", 1)[0].read_bytes()
    assert data.endswith(b"\r\n\r\n" + body.encode())


def test_empty_message_and_header_only_message(smtpd) -> None:
    client = RawClient(smtpd.port)
    for line in ("EHLO c.test", f"MAIL FROM:<a@{LOCAL}>", f"RCPT TO:<user@{LOCAL}>"):
        assert code(client.command(line)) == 250
    assert code(client.command("DATA")) == 354
    assert client.command(".").startswith("554 5.6.0")
    for line in (f"MAIL FROM:<a@{LOCAL}>", f"RCPT TO:<user@{LOCAL}>", "DATA"):
        client.command(line)
    assert code(client.command("Subject: only a header\r\n.")) == 250
    assert wait_files(smtpd, "Drop", 1)[0].read_bytes().endswith(b"Subject: only a header\r\n\r\n")


def test_a_body_without_header_fields_is_accepted_as_a_body(smtpd) -> None:
    client = RawClient(smtpd.port)
    for line in ("EHLO c.test", f"MAIL FROM:<a@{LOCAL}>", f"RCPT TO:<user@{LOCAL}>", "DATA"):
        client.command(line)
    assert code(client.command("just some text, no headers\r\n second line\r\n.")) == 250
    data = wait_files(smtpd, "Drop", 1)[0].read_bytes()
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"\r\nReceived: " in head
    assert body == b"just some text, no headers\r\n second line\r\n"


def test_received_header_and_event_name_the_client(smtpd) -> None:
    try:
        name = socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)[0]
    except OSError:
        name = "unknown"  # no PTR name for 127.0.0.1 on this machine
    with smtplib.SMTP("127.0.0.1", smtpd.port) as client:
        client.ehlo("app-server.test")
        time.sleep(0.2)  # the connection's reverse lookup has its answer before DATA
        client.sendmail("", [f"user@{LOCAL}"], message())
    data = wait_files(smtpd, "Drop", 1)[0].read_bytes()
    received = re.search(rb"Received: (.*?\r\n\t.*?)\r\n", data)[1].decode()
    assert received.startswith(f"from app-server.test ({name} [127.0.0.1])")
    assert "[127.0.0.1]) by relay.test (mailroot) with ESMTP id " in received
    assert f"for <user@{LOCAL}>;" in received
    event = next(e for e in smtpd.events if e["event"] == "intake")
    assert event["client"] == "127.0.0.1" and event["helo"] == "app-server.test"
    assert event["tls"] is False and event["auth"] is None
    assert event["from"] == "" and event["outcome"] == "drop"


def test_pipelined_commands_get_replies_in_order(smtpd) -> None:
    client = RawClient(smtpd.port)
    client.send(f"EHLO c.test\r\nMAIL FROM:<a@{LOCAL}>\r\nRCPT TO:<user@{LOCAL}>\r\n"
                f"RCPT TO:<x@remote.example>\r\nRCPT TO:<postmaster>\r\nDATA\r\n"
                "Subject: p\r\n\r\nbody\r\n.\r\nRSET\r\nQUIT\r\n")
    assert [code(r) for r in client.replies_until_closed()] == [
        250, 250, 250, 554, 250, 354, 250, 250, 221]
    assert b"X-Receiver: postmaster@" in wait_files(smtpd, "Drop", 1)[0].read_bytes()


def test_command_line_over_512_octets_is_refused(smtpd) -> None:
    client = RawClient(smtpd.port)
    client.command("EHLO c.test")
    assert code(client.command("NOOP " + "x" * (510 - 5))) == 250  # 512 with CRLF
    assert client.command("NOOP " + "x" * (511 - 5)).startswith("500")
    assert client.command("RCPT TO:<" + "a" * 2000 + f"@{LOCAL}>").startswith("500")
    assert code(client.command("NOOP")) == 250


def test_too_many_bad_commands_get_421_and_hang_up(smtpd) -> None:
    client = RawClient(smtpd.port)
    client.send("EHLO c.test\r\nFOO\r\nMAIL FROM:<unclosed\r\nBAR\r\nDATA\r\nBAZ\r\nNOOP\r\n")
    replies = client.replies_until_closed()
    assert [code(r) for r in replies] == [250, 500, 501, 500, 503, 421]
    assert replies[-1].startswith("421 4.7.0")
