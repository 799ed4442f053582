"""The parts of an SMTP transaction to the next hop: the outgoing message as the server can
take it, the server's replies, DATA with the message, and the whole transaction in one write
(PIPELINING). The client (relay/queue/smtp_client.py) keeps the
connection, its TLS and AUTH, the choice of host, and the commands sent one at a time.

The message is kept as CRLF text; for a server without 8BITMIME an 8-bit message is re-encoded
as quoted-printable, and one with non-ASCII addresses or header fields goes only to a server
that offers SMTPUTF8.

Where the next hop offers PIPELINING (RFC 2920), MAIL FROM, every RCPT TO and DATA go out
together, and the replies are read back in order, each matched to its command: one round trip
instead of two plus one per recipient, which over the internet (20-200 ms a trip) is most of a
delivery's time. aiosmtplib keeps the connection, STARTTLS and AUTH; for the transaction its
protocol object is set aside for a `ReplyReader` (aiosmtplib's drops a reply it is not waiting
for), and put back after.

A server whose replies don't fit the commands sent (one more reply than commands, a 354
to anything but DATA) is out of step: the transaction fails as a temporary error and the
caller stops pipelining to that host.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import quopri
import re
from collections import deque
from dataclasses import dataclass, field
from email.generator import BytesGenerator

import aiosmtplib
from aiosmtplib.email import quote_address

from relay.core.message import MAX_LINE, Message, MessageError, normalize_line_ends, stuff

ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_REPLY_LINE = 4096


@dataclass(frozen=True)
class Reply:
    """A server's answer (`code` set) or the relay's own reason for a result (`code` None)."""

    code: int | None
    text: str
    status: str

    @classmethod
    def remote(cls, code: int, message: str) -> Reply:
        text = " ".join(message.split())
        match = ENHANCED.match(text)
        return cls(code, text, match[0] if match else f"{code // 100}.0.0")

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")

    @property
    def ok(self) -> bool:
        return self.status.startswith("2")

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


class Unsendable(Exception):
    """The message can't be sent to this server as it is (8-bit, SMTPUTF8)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


# --- the message as it goes on the wire ------------------------------------------------------

def _needs_utf8(sender: str, recipients: list[str], data: bytes) -> str | None:
    if not sender.isascii() or not all(r.isascii() for r in recipients):
        return "5.6.7"
    head = data.split(b"\r\n\r\n", 1)[0]
    return None if head.isascii() else "5.6.9"


def crlf_text(data: bytes) -> bytes:
    """CRLF line ends only, the last line ended too: what send_data puts on the wire."""
    data = normalize_line_ends(data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _too_long(data: bytes) -> bool:
    return len(data) > MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE


def seven_bit(data: bytes) -> bytes:
    """The message with every 8-bit or over-long body part re-encoded as quoted-printable."""
    policy = email.policy.compat32.clone(max_line_length=None, linesep="\r\n")
    msg = email.message_from_bytes(data, policy=policy)
    for part in msg.walk():
        if part.is_multipart():
            continue
        raw = part.get_payload(decode=True) or b""
        payload = part.get_payload()
        if isinstance(payload, str) and payload.isascii() and not _too_long(payload.encode()):
            continue
        if part.get("Content-Type") is None:
            try:
                raw.decode("utf-8")
                charset = "utf-8"
            except UnicodeDecodeError:
                charset = "unknown-8bit"
            part["Content-Type"] = f"text/plain; charset={charset}"
            if msg.get("MIME-Version") is None:
                msg["MIME-Version"] = "1.0"
        del part["Content-Transfer-Encoding"]
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part.set_payload(quopri.encodestring(raw).decode("ascii"))
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
    return crlf_text(out.getvalue())


def masquerade(sender: str, data: bytes, domain: str | None) -> tuple[str, bytes]:
    """The envelope sender and the From: addresses with `domain` in place of theirs."""
    if not domain:
        return sender, data
    if "@" in sender:
        sender = f"{sender.rpartition('@')[0]}@{domain}"
    message = Message.parse(normalize_line_ends(data))
    for i, line in enumerate(message.fields):
        if Message.name_of(line) != "from":
            continue
        try:
            addresses = Message([line], b"").addresses("from")
        except MessageError:
            continue
        for address in addresses:
            local = address.rpartition("@")[0]
            line = line.replace(address.encode(), f"{local}@{domain}".encode())
        message.fields[i] = line
    return sender, message.to_bytes()


@dataclass
class Outgoing:
    """A message ready to send: CRLF only; re-encoded for a server when it must be."""

    sender: str
    data: bytes
    eight_bit: bool = field(init=False)
    seven_bit_data: bytes | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data = crlf_text(self.data)
        self.eight_bit = not self.data.isascii()
        if _too_long(self.data):
            self.data = seven_bit(self.data)

    def for_server(self, smtp: aiosmtplib.SMTP, recipients: list[str]
                   ) -> tuple[bytes, list[str], str]:
        """(data, MAIL FROM options, address encoding) for this server; raises Unsendable."""
        utf8 = _needs_utf8(self.sender, recipients, self.data)
        options: list[str] = []
        if utf8:
            if not smtp.supports_extension("smtputf8"):
                what = "addresses" if utf8 == "5.6.7" else "header fields"
                raise Unsendable(Reply(None, f"the message has non-ASCII {what} (SMTPUTF8) and "
                                             "the server does not offer SMTPUTF8", utf8))
            options.append("SMTPUTF8")
        if not self.eight_bit:
            return self.data, options, "utf-8" if utf8 else "ascii"
        if smtp.supports_extension("8bitmime"):
            return self.data, [*options, "BODY=8BITMIME"], "utf-8" if utf8 else "ascii"
        if utf8:  # UTF-8 headers can't be made 7-bit
            raise Unsendable(Reply(None, "8-bit message to a server without 8BITMIME", "5.6.3"))
        if self.seven_bit_data is None:
            self.seven_bit_data = seven_bit(self.data)
        return self.seven_bit_data, options, "ascii"


# --- the transaction -------------------------------------------------------------------------

async def send_data(smtp: aiosmtplib.SMTP, data: bytes) -> aiosmtplib.SMTPResponse:
    """DATA, then the message (CRLF text, as Outgoing keeps it), dot-stuffed with
    bytes.replace: aiosmtplib's own data() runs two regexes over the whole message, which
    was two thirds of the delivery process's CPU at 100 KB. Raises as data() does."""
    start = await smtp.execute_command(b"DATA")
    if start.code != 354:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    try:
        smtp.protocol.write(stuff(data) + b".\r\n")
        answer = await smtp.protocol.read_response(timeout=smtp.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        smtp.close()  # as data() does: the reply, if late, must not answer a later command
        raise
    if answer.code != 250:
        raise aiosmtplib.SMTPDataError(answer.code, answer.message)
    return answer


class OutOfStep(aiosmtplib.SMTPException):
    """The next hop's replies don't match the pipelined commands."""


@dataclass(frozen=True)
class Answers:
    """The replies of one pipelined transaction, each as (code, text)."""

    mail: tuple[int, str]
    rcpts: list[tuple[int, str]]
    data: tuple[int, str] | None  # the final reply to the message; None: never sent


class ReplyReader(asyncio.Protocol):
    """A connection's replies in arrival order, every one kept until it is asked for."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.lines: list[str] = []  # the lines of a multi-line reply so far
        self.replies: deque[tuple[int, str]] = deque()
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\n")) >= 0:
            line = bytes(self.buffer[:end + 1]).rstrip(b"\r\n")
            del self.buffer[:end + 1]
            try:
                code = int(line[:3])
            except ValueError:
                self.error = OutOfStep(f"a malformed reply line: {line[:80]!r}")
                break
            self.lines.append(line[4:].decode("utf-8", "surrogateescape").strip())
            if line[3:4] != b"-":
                self.replies.append((code, "\n".join(self.lines)))
                self.lines = []
        if len(self.buffer) > MAX_REPLY_LINE:
            self.error = OutOfStep("a reply line too long")
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = self.error or aiosmtplib.SMTPServerDisconnected(
            f"the connection was closed{f': {exc}' if exc else ''}")
        self._wake()

    def eof_received(self) -> bool:
        self.error = self.error or aiosmtplib.SMTPServerDisconnected("the next hop closed "
                                                                     "the connection")
        self._wake()
        return False

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def reply(self, timeout: float) -> tuple[int, str]:
        """The next reply; raises on a closed connection, a malformed reply or timeout."""
        while not self.replies:
            if self.error is not None:
                raise self.error
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, timeout)
            except TimeoutError:
                raise aiosmtplib.SMTPReadTimeoutError("no reply in time") from None
        return self.replies.popleft()

    def idle(self) -> bool:
        """Nothing more arrived than was asked for (else the server is out of step)."""
        return not self.replies and not self.lines and not self.buffer.strip()


async def pipelined(smtp: aiosmtplib.SMTP, sender: str, options: list[str],
                    recipients: list[str], data: bytes, encoding: str) -> Answers:
    """One transaction, MAIL FROM to the reply to the message, its commands in one write.
    Raises aiosmtplib's exceptions (the connection is then unusable) and OutOfStep."""
    transport = smtp.protocol.transport if smtp.protocol is not None else None
    if transport is None or transport.is_closing():
        raise aiosmtplib.SMTPServerDisconnected("the connection was closed")
    reader = ReplyReader()
    aiosmtplib_protocol = transport.get_protocol()
    transport.set_protocol(reader)
    timeout = smtp.timeout if smtp.timeout is not None else 60.0
    try:
        mail = " ".join([f"MAIL FROM:{quote_address(sender)}", *options])
        commands = [mail] + [f"RCPT TO:{quote_address(r)}" for r in recipients] + ["DATA"]
        transport.write("".join(f"{c}\r\n" for c in commands).encode(encoding))
        mail_reply = await reader.reply(timeout)
        rcpt_replies = [await reader.reply(timeout) for _ in recipients]
        data_reply = await reader.reply(timeout)
        if 354 in (mail_reply[0], *(code for code, _ in rcpt_replies)):
            raise OutOfStep("a 354 to a command other than DATA")
        if data_reply[0] != 354 and data_reply[0] // 100 not in (4, 5):
            raise OutOfStep(f"a {data_reply[0]} to DATA")  # (a 250 is another command's)
        accepted = mail_reply[0] // 100 == 2 and any(c // 100 == 2 for c, _ in rcpt_replies)
        final: tuple[int, str] | None = None
        if data_reply[0] == 354:
            # with no recipient accepted a server should refuse DATA; one that says go on
            # gets an empty message, which it must refuse in turn (RFC 2920, 3.1)
            transport.write(stuff(data) + b".\r\n" if accepted else b".\r\n")
            final = await reader.reply(timeout)
            if final[0] // 100 not in (2, 4, 5):
                raise OutOfStep(f"a {final[0]} to the message")
            if not accepted:
                final = None
        elif accepted:
            final = data_reply
        await asyncio.sleep(0)  # a reply more than the commands asked for shows by now
        if not reader.idle():
            raise OutOfStep("more replies than commands")
        return Answers(mail_reply, rcpt_replies, final)
    except BaseException:
        transport.set_protocol(aiosmtplib_protocol)
        smtp.close()  # mid-transaction, or out of step: this connection is done
        raise
    finally:
        if not transport.is_closing():
            transport.set_protocol(aiosmtplib_protocol)
