"""A next hop on loopback that offers PIPELINING (aiosmtpd does not), scripted per test.

    sink = PipeliningSink()                       # 250 for all, PIPELINING offered
    sink.rcpt_replies["x@p.test"] = "450 4.2.0 busy"
    sink.reply_delay = 0.2                        # every reply waits: what arrived meanwhile
    sink.close_after = "RCPT"                     # the connection drops after reading a RCPT
    sink.extra_reply = "250 2.0.0 and again"      # one more reply after MAIL's: out of step
    sink.pipelining = False                       # not offered

`segments` holds the commands of each read from the connection (one write of the client's
arrives in one read on loopback): with PIPELINING, MAIL, every RCPT and DATA in one.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from dataclasses import dataclass, field


@dataclass
class Delivered:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class PipeliningSink:
    tls: ssl.SSLContext | None = None
    pipelining: bool = True
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_reply: str = "250 2.1.0 sender ok"
    data_reply: str = "354 go ahead"
    final_reply: str = "250 2.0.0 queued"
    reply_delay: float = 0.0
    close_after: str | None = None  # a command after whose reading the connection drops
    extra_reply: str | None = None  # sent after MAIL's reply, answering nothing
    messages: list[Delivered] = field(default_factory=list)
    segments: list[list[str]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shut() -> None:
            self.server.close()
            sessions = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for session in sessions:
                session.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def commands(self) -> list[str]:
        with self.lock:
            return [verb for segment in self.segments for verb in segment]

    async def _reply(self, writer: asyncio.StreamWriter, line: str) -> None:
        if self.reply_delay:
            await asyncio.sleep(self.reply_delay)
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender, rcpts = "", []
        buffer = bytearray()

        async def read_line() -> bytes:
            while b"\r\n" not in buffer:
                chunk = await asyncio.wait_for(reader.read(65536), 30)
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(buffer), None)
                with self.lock:
                    self.segments.append([_verb(c) for c in chunk.split(b"\r\n") if c])
                buffer.extend(chunk)
            line, _, rest = bytes(buffer).partition(b"\r\n")
            buffer[:] = rest
            return line

        async def read_message() -> bytes:
            while b"\r\n.\r\n" not in b"\r\n" + buffer:
                chunk = await asyncio.wait_for(reader.read(65536), 30)
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(buffer), None)
                buffer.extend(chunk)
            data, _, rest = (b"\r\n" + bytes(buffer)).partition(b"\r\n.\r\n")
            buffer[:] = rest
            return data[2:] + b"\r\n" if data[2:] else b""

        try:
            writer.write(b"220 sink.test ESMTP\r\n")
            while True:
                command = (await read_line()).decode(errors="replace").strip()
                verb = _verb(command.encode())
                if self.close_after and verb == self.close_after:
                    break
                if verb in ("EHLO", "HELO"):
                    offers = ["sink.test", "8BITMIME", "SIZE 10485760"]
                    offers += ["PIPELINING"] * self.pipelining + ["STARTTLS"] * bool(self.tls)
                    writer.write("".join(f"250{'-' if n < len(offers) - 1 else ' '}{o}\r\n"
                                         for n, o in enumerate(offers)).encode())
                elif verb == "STARTTLS" and self.tls:
                    writer.write(b"220 go ahead\r\n")
                    await writer.drain()
                    await writer.start_tls(self.tls)
                elif verb == "MAIL":
                    sender, rcpts = command.partition(":")[2].split(">")[0].strip("< "), []
                    await self._reply(writer, self.mail_reply)
                    if self.extra_reply:
                        await self._reply(writer, self.extra_reply)
                elif verb == "RCPT":
                    address = command.partition(":")[2].strip().strip("<>")
                    answer = self.rcpt_replies.get(address, "250 2.1.5 ok")
                    if answer.startswith("2"):
                        rcpts.append(address)
                    await self._reply(writer, answer)
                elif verb == "DATA":
                    await self._reply(writer, self.data_reply)
                    if self.data_reply.startswith("354"):
                        data = await read_message()
                        if rcpts:
                            with self.lock:
                                self.messages.append(Delivered(sender, rcpts, data))
                        await self._reply(writer, self.final_reply if rcpts
                                          else "554 5.5.1 no valid recipients")
                elif verb == "RSET":
                    sender, rcpts = "", []
                    await self._reply(writer, "250 2.0.0 reset")
                elif verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    await self._reply(writer, "250 2.0.0 ok")
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()


def _verb(line: bytes) -> str:
    return line.split(b" ", 1)[0].split(b":", 1)[0].decode(errors="replace").upper()
