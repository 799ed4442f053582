"""The SMTP transaction in one write where the next hop offers PIPELINING (RFC 2920).

MAIL FROM, every RCPT TO and DATA go out together, and the replies are read back in order,
each matched to its command: one round trip instead of two plus one per recipient, which
over the internet (20-200 ms a trip) is most of a delivery's time. aiosmtplib keeps the
connection, STARTTLS and AUTH; for the transaction its protocol object is set aside for a
`ReplyReader` (aiosmtplib's drops a reply it is not waiting for), and put back after.

A server whose replies don't fit the commands sent (one more reply than commands, a 354
to anything but DATA) is out of step: the transaction fails as a temporary error and the
caller stops pipelining to that host.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.email import quote_address

from relay.core.message import stuff

MAX_REPLY_LINE = 4096


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
