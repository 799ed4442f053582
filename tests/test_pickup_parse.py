"""The Pickup file format, as IIS and .NET producers write it."""

from __future__ import annotations

import pytest

from relay.core.message import MessageError
from relay.core.pickup_file import parse_pickup
from tests.conftest import sample


def test_iis_example_as_written() -> None:
    parsed = parse_pickup(sample("iis-example-as-written.txt"))
    assert parsed.sender == "blog@yourdomain.com"
    assert parsed.recipients == ["email@yourdomain.com"]
    assert parsed.message.endswith(b"Subject: Email test\r\n\r\nThis is the test body of the email\r\n")
    assert b"\r\n.\r\n" not in parsed.message


def test_dotnet_envelope_lines_are_the_envelope() -> None:
    parsed = parse_pickup(sample("dotnet-smtpclient-pickup.eml"))
    assert parsed.sender == "app@sender.example"
    assert parsed.recipients == ["alice@yourdomain.com", "bob@partner.example",
                                 "audit@yourdomain.com"]
    assert not parsed.message.lower().startswith(b"x-sender")
    assert b"X-Receiver" not in parsed.message


def test_bcc_is_envelope_and_removed() -> None:
    parsed = parse_pickup(b"From: a@x.test\nTo: b@y.test\nBcc: secret@z.test\nSubject: s\n\nhi\n")
    assert parsed.recipients == ["b@y.test", "secret@z.test"]
    assert b"secret" not in parsed.message and b"Bcc" not in parsed.message


def test_dot_stuffed_file_is_unstuffed() -> None:
    parsed = parse_pickup(b"From: a@x.test\r\nTo: b@y.test\r\n\r\n..leading dot\r\nx\r\n.\r\n")
    assert parsed.message.endswith(b"\r\n\r\n.leading dot\r\nx\r\n")


def test_plain_file_keeps_double_dots() -> None:
    parsed = parse_pickup(b"From: a@x.test\nTo: b@y.test\n\n..as typed\n")
    assert parsed.message.endswith(b"\r\n\r\n..as typed\r\n")


def test_bare_cr_and_lf_become_crlf() -> None:
    parsed = parse_pickup(b"From: a@x.test\rTo: b@y.test\n\nline1\rline2\nline3")
    assert b"\r\n".join(parsed.message.split(b"\r\n")) == parsed.message
    assert parsed.message.count(b"\r") == parsed.message.count(b"\n")


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "empty"),
    (b"   \r\n\r\n", "empty"),
    (b"From: a@x.test\r\nSubject: no rcpt\r\n\r\nhi\r\n", "no recipients"),
    (b"From: a@x.test\r\nTo: b@y.test\r\n\r\nhi\x00there\r\n", "NUL"),
    (b"From: a@x.test\r\nTo: b@y.test\r\n\r\n" + bytes(range(1, 32)) * 20, "binary"),
    (b"garbage line\r\nTo: b@y.test\r\n\r\n", "no header fields"),
    (b"From: a@x.test\r\nTo: <<<@@>>>\r\n\r\nhi\r\n", "To: field cannot be parsed"),
    (b" continued\r\nTo: b@y.test\r\n\r\n", "continuation"),
    (b"From: a@x.test\r\nTo: b@y.test\r\nSubject: a\x07b\r\n\r\n", "control characters"),
])
def test_bad_files_are_refused_with_a_reason(raw: bytes, words: str) -> None:
    with pytest.raises(MessageError) as info:
        parse_pickup(raw)
    assert words in str(info.value)
