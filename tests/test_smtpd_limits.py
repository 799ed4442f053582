"""Issue: SMTP receive — limits and their reply codes: SIZE, oversize data, recipients, hop
count, session size, connections, idle and trickling clients."""

from __future__ import annotations

import smtplib
import time

import pytest

from tests.conftest import wait_for
from tests.smtpd_support import LOCAL, RawClient, code, live_smtp, message, wait_files


def start_message(client: RawClient, *rcpts: str, mail: str = f"MAIL FROM:<a@{LOCAL}>") -> None:
    assert code(client.command(mail)) == 250
    for rcpt in rcpts or (f"user@{LOCAL}",):
        assert code(client.command(f"RCPT TO:<{rcpt}>")) == 250
    assert code(client.command("DATA")) == 354


def send_body(client: RawClient, size: int) -> str:
    client.send(message(body="x" * (size - 60) + "\r\n") + b".\r\n")
    return client.reply()


@pytest.fixture
def small(write_config):
    limits = {"max_message_size": "3KiB", "max_session_size": "5KiB", "max_recipients": 3}
    with live_smtp(write_config, {"smtp": limits, "delivery": {"max_hop_count": 3}}) as server:
        yield server


def test_size_over_the_limit_is_refused_at_mail(small) -> None:
    with smtplib.SMTP("127.0.0.1", small.port) as client:
        client.ehlo("c.test")
        got = client.mail(f"a@{LOCAL}", ["SIZE=3073"])
        assert got[0] == 552 and got[1].startswith(b"5.3.4")
        assert client.mail(f"a@{LOCAL}", ["SIZE=3072"])[0] == 250


def test_oversize_data_without_size_is_read_then_refused_and_session_goes_on(small) -> None:
    client = RawClient(small.port)
    client.command("EHLO c.test")
    start_message(client)
    assert send_body(client, 4000).startswith("552 5.3.4")
    start_message(client)
    assert code(send_body(client, 1000)) == 250
    assert len(wait_files(small, "Drop", 1)) == 1


def test_recipients_beyond_the_limit_get_452(small) -> None:
    client = RawClient(small.port)
    client.command("EHLO c.test")
    client.command(f"MAIL FROM:<a@{LOCAL}>")
    replies = [client.command(f"RCPT TO:<u{i}@{LOCAL}>") for i in range(5)]
    assert [code(r) for r in replies] == [250, 250, 250, 452, 452]
    assert replies[3].startswith("452 4.5.3")
    assert code(client.command("DATA")) == 354
    assert code(send_body(client, 500)) == 250
    assert wait_files(small, "Drop", 1)[0].read_bytes().count(b"X-Receiver:") == 3


def test_hop_count_over_the_limit_is_a_loop(small) -> None:
    with smtplib.SMTP("127.0.0.1", small.port) as client:
        hops = "".join(f"Received: from hop{i}.test by hop{i + 1}.test; "
                       "Mon, 1 Jan 2024 00:00:00 +0000\r\n" for i in range(4))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(f"a@{LOCAL}", [f"user@{LOCAL}"], hops.encode() + message())
        assert refused.value.smtp_code == 554 and refused.value.smtp_error.startswith(b"5.4.6")
        three = hops.split("\r\n", 1)[1]
        client.sendmail(f"a@{LOCAL}", [f"user@{LOCAL}"], three.encode() + message())
    assert len(wait_files(small, "Drop", 1)) == 1


def test_session_size_limit(small) -> None:
    client = RawClient(small.port)
    client.command("EHLO c.test")
    start_message(client)
    assert code(send_body(client, 3000)) == 250
    assert client.command(f"MAIL FROM:<a@{LOCAL}> SIZE=2500").startswith("452 4.3.4")
    start_message(client)
    assert send_body(client, 2500).startswith("452 4.3.4")
    fresh = RawClient(small.port)
    fresh.command("EHLO c.test")
    start_message(fresh)
    assert code(send_body(fresh, 2500)) == 250


def test_connections_beyond_the_limit_get_a_clean_421(write_config) -> None:
    with live_smtp(write_config, {"smtp": {"max_connections": 2}}) as server:
        first, second = RawClient(server.port), RawClient(server.port)
        assert first.greeting.startswith("220") and second.greeting.startswith("220")
        third = RawClient(server.port)
        assert third.greeting.startswith("421 4.7.0")
        assert third.closed()
        assert code(second.command("NOOP")) == 250
        first.command("QUIT")
        fourth = wait_for(lambda: (c := RawClient(server.port)).greeting.startswith("220") and c)
        assert code(fourth.command("NOOP")) == 250


def test_idle_and_trickling_clients_are_timed_out(write_config) -> None:
    with live_smtp(write_config, {"smtp": {"timeout": "1s"}}) as server:
        idle = RawClient(server.port)
        idle.command("EHLO c.test")
        trickler = RawClient(server.port)
        trickler.command("EHLO c.test")
        start_message(trickler)
        with pytest.raises(OSError):  # cut off mid-DATA, although bytes keep coming
            for _ in range(60):  # a byte every 0.1 s: the timeout is 1 s for the whole DATA
                trickler.send(b"x")
                time.sleep(0.1)
        assert idle.reply().startswith("421 4.4.2")
        assert idle.closed()
