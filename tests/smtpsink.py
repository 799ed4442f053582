"""Real aiosmtpd next hops on loopback, scripted per test, recording what they receive.

    sink = Sink()                                   # 250 for everything, STARTTLS if tls given
    sink.rcpt_replies["bad@p.test"] = "550 5.1.1 no such user"
    sink.data_reply = "451 4.3.0 try later"
    sink.hang = "DATA"                              # never answer DATA
    sink.data_delay = 0.2                           # answer DATA late (sink.peak: concurrency)
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    login: str | None
    options: list[str]
    at: float  # when it was accepted (time.time())


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.sink.ehlo_names.append(hostname)
        if not self.sink.eight_bit:
            responses = [r for r in responses if "8BITMIME" not in r]
        if self.sink.pipelining:  # aiosmtpd reads pipelined commands as they come anyway
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, options):
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.sink.rcpt_replies.get(address, "250 OK")
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.sink.hang == "DATA":
            await asyncio.sleep(3600)
        self.sink.active += 1
        self.sink.peak = max(self.sink.peak, self.sink.active)
        await asyncio.sleep(self.sink.data_delay)
        self.sink.active -= 1
        reply = self.sink.data_reply() if callable(self.sink.data_reply) else self.sink.data_reply
        if reply.startswith("2"):
            login = session.auth_data.login.decode() if session.authenticated else None
            with self.sink.lock:
                self.sink.messages.append(Received(
                    envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                    self.sink.implicit_tls or session.ssl is not None, login, list(envelope.mail_options), time.time()))
        return reply


class _Controller(Controller):
    """Listens on a free port chosen by the system (port 0), or on the port given."""

    async def _bind(self):
        server = await self.loop.create_server(self._factory_invoker, host=self.hostname,
                                               port=self.port or 0, ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        return server

    def _create_server(self):
        return self._bind()


class Sink:
    def __init__(self, *, tls: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 users: dict[str, str] | None = None, eight_bit: bool = True,
                 smtputf8: bool = False, host: str = "127.0.0.1", port: int = 0,
                 pipelining: bool = False) -> None:
        self.messages: list[Received] = []
        self.ehlo_names: list[str] = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply: str | Callable[[], str] = "250 OK queued"
        self.hang: str | None = None
        self.data_delay = 0.0  # seconds before answering DATA (without blocking others)
        self.active = self.peak = 0  # transactions in DATA now, and at most
        self.eight_bit = eight_bit
        self.pipelining = pipelining  # offered in EHLO, as real MXes do
        self.implicit_tls = implicit_tls
        self.lock = threading.Lock()
        self.users = users or {}
        self.logins: list[tuple[str, bool]] = []
        kwargs: dict = {"decode_data": False, "enable_SMTPUTF8": smtputf8}
        if implicit_tls:
            kwargs["ssl_context"] = tls
        elif tls is not None:
            kwargs["tls_context"] = tls
        if users is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=not implicit_tls)
        self.controller = _Controller(_Handler(self), hostname=host, port=port, **kwargs)
        self.controller.start()
        self.port: int = self.controller.port

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((mechanism, self.implicit_tls or session.ssl is not None))
        return AuthResult(success=self.users.get(login) == password, auth_data=auth_data)

    def stop(self) -> None:
        self.controller.stop()
