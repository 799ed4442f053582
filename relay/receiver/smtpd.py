"""SMTP receive: aiosmtpd listeners that accept mail durably, within limits, never as an open
relay.

aiosmtpd runs the session (greeting, HELO, STARTTLS, AUTH exchanges, RSET, QUIT, timeouts);
this module replaces the commands where the relay needs its own rules: EHLO (what is offered),
MAIL and RCPT (strict address parsing on the raw argument, relay restrictions, limits) and
DATA (a bulk read that ends only at <CRLF>.<CRLF>, then the shared intake, whose commit is
durable before "250" is sent). The connection under the commands (admission, timeouts,
replies, who the client is) and the reading of what the client sends are
relay/receiver/connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

from relay.core.address import AddressError, parse_address
from relay.core.config import Config
from relay.core.events import EventLog
from relay.core.intake import Intake, Rejected, Submission
from relay.core.message import unstuff
from relay.core.store import DROP, QUEUE
from relay.receiver import anvil
from relay.receiver.connection import (
    LISTEN_BACKLOG,
    PRINTABLE,
    ListenError,
    SmtpConnection,
    read_data,
    split_path,
    stress_event,
)
from relay.receiver.users import check_login

SESSION_FULL = "452 4.3.4 Session data limit reached; send more in a new session"
AUTH_LOCKED = "454 4.7.0 Too many failed logins from your address, try again later"


def one_line(text: str) -> str:
    return re.sub(r"[\r\n]+", " ", text)


class SmtpSession(SmtpConnection):
    """The commands of one client connection, answered by the relay's rules."""

    server: SmtpServer  # the commands use more of it than a connection: intake, pool

    def __dir__(self) -> list[str]:
        """Only the SMTP command and AUTH mechanism methods: aiosmtpd's __init__ finds them
        with dir() and inspect.getmembers(), which reads every attribute (properties too) of
        each new session, 0.4 ms a connection; nothing else of a session is looked up so."""
        return HOOK_NAMES

    # --- commands ---

    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [f"{self.hostname} Hello {PRINTABLE.sub('?', hostname)[:64]}",
                 f"SIZE {int(self.server.config.smtp.max_message_size)}", "8BITMIME",
                 "PIPELINING", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self.server.users_file and (self._tls_protocol or not self._auth_require_tls):
            lines.append("AUTH LOGIN PLAIN")
        lines.append("HELP")
        await self.push("\r\n".join([*(f"250-{line}" for line in lines[:-1]),
                                      f"250 {lines[-1]}"]))  # one write, not one per line

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        smtp = self.server.config.smtp
        if smtp.tls.require and not self._tls_protocol:
            await self.push("530 5.7.0 Must issue a STARTTLS command first")
            return
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        try:
            path, params_text = split_path(arg, "FROM:")
            params = self.mail_params(params_text)
        except ValueError:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [SIZE=n] [BODY=8BITMIME] "
                            "[SMTPUTF8]")
            return
        if params is None:
            await self.push("555 5.5.4 MAIL parameters not recognized or not implemented")
            return
        try:
            sender = "" if path == "<>" else parse_address(path)
        except AddressError as exc:
            await self.push(f"553 5.1.7 Bad sender address: {exc}")
            return
        size = int(params.get("SIZE", 0))
        if size > smtp.max_message_size:
            await self.push(self.too_big())
            return
        if self.session_octets + size > smtp.max_session_size:
            await self.push(SESSION_FULL)
            return
        self.envelope.mail_from = sender
        self.envelope.smtp_utf8 = "SMTPUTF8" in params
        await self.push("250 2.1.0 OK")

    def too_big(self) -> str:
        return ("552 5.3.4 Message size exceeds fixed maximum message size "
                f"({int(self.server.config.smtp.max_message_size)} octets)")

    def mail_params(self, text: str) -> dict[str, str] | None:
        """MAIL parameters; None if one is unknown, ValueError if one is malformed."""
        if text and not self.session.extended_smtp:
            raise ValueError("parameters need EHLO")
        params: dict[str, str] = {}
        for item in text.split():
            name, eq, value = item.partition("=")
            name = name.upper()
            if name == "SIZE" and value.isdigit() and len(value) <= 20:
                params[name] = value
            elif name == "BODY" and value.upper() in ("7BIT", "8BITMIME"):
                params[name] = value.upper()
            elif name == "SMTPUTF8" and not eq:
                params[name] = ""
            elif name in ("SIZE", "BODY", "SMTPUTF8"):
                raise ValueError(item)
            else:
                return None
        return params

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        try:
            path, params = split_path(arg, "TO:")
        except ValueError:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if params:
            await self.push("555 5.5.4 RCPT parameters not recognized or not implemented")
            return
        if len(self.envelope.rcpt_tos) >= self.server.config.smtp.max_recipients:
            await self.push("452 4.5.3 Too many recipients")
            return
        try:
            address = parse_address(path)
        except AddressError as exc:
            await self.push(f"553 5.1.3 Bad recipient address: {exc}")
            return
        if not (self.server.intake.router.is_local(address) or self.may_relay()):
            self.server.events.emit("smtp-relay-denied", client=self.client_ip,
                                    helo=self.session.host_name, to=address)
            await self.push("554 5.7.1 Relay access denied")
            return
        self.envelope.rcpt_tos.append(address)
        await self.push("250 2.1.5 OK")

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.receiving = True
        try:
            await self.receive_data()
        finally:
            self.receiving = False
        if self.server.closing:
            await self.hang_up(f"421 4.3.2 {self.hostname} shutting down")

    async def receive_data(self) -> None:
        """DATA after its 354: read, commit, reply."""
        smtp = self.server.config.smtp
        got = await read_data(self._reader, smtp.max_message_size)
        if got is None:
            return
        data, size = got
        self._reset_timeout()
        self.committing = True  # a stopping server lets this reply go out first
        try:
            if size > smtp.max_message_size:
                reply = self.too_big()
            elif self.session_octets + size > smtp.max_session_size:
                reply = SESSION_FULL
            else:
                self.session_octets += size
                reply = await self.server.receive(self, unstuff(data))
            self._set_post_data_state()
            await self.push(reply)
        finally:
            self.committing = False

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self._tls_protocol:
            await self.push("503 5.5.1 TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    # --- AUTH: aiosmtpd runs the exchange, the password is checked here, off the loop ---

    async def smtp_AUTH(self, arg: str) -> None:
        """A locked-out address gets 454 before any credentials are read (no oracle)."""
        if self.server.anvil.locked_for(self.client_ip):
            self.server.events.emit("auth-failed", client=self.client_ip, reason="locked")
            await self.push(AUTH_LOCKED)
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self.check_credentials(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self.check_credentials(await super().auth_LOGIN(_, args))

    async def check_credentials(self, result: AuthResult) -> AuthResult:
        if not result.success or not isinstance(result.auth_data, LoginPassword):
            return result
        login, password = result.auth_data
        assert self.server.users_file is not None
        ok = await self.loop.run_in_executor(self.server.pool, check_login,
                                             self.server.users_file, login, password)
        user = login.decode("utf-8", "replace")[:100]
        events, limits = self.server.events, self.server.anvil
        if limits.locked_for(self.client_ip):  # locked out by another session meanwhile
            events.emit("auth-failed", client=self.client_ip, user=user, reason="locked")
            return AuthResult(success=False, handled=False, message=AUTH_LOCKED)
        if ok:
            return AuthResult(success=True, auth_data=user)
        failures, locked = limits.auth_failed(self.client_ip)
        events.emit("auth-failed", client=self.client_ip, user=user, failures=failures)
        if locked:
            events.emit("auth-locked", client=self.client_ip, failures=failures,
                        seconds=round(limits.locked_for(self.client_ip)))
        await asyncio.sleep(limits.tarpit(failures))  # other sessions go on meanwhile
        return AuthResult(success=False, handled=False)


HOOK_NAMES = sorted(n for n in dir(SmtpSession) if n.startswith(("smtp_", "auth_")))


class SmtpServer:
    """The listeners on every smtp.listen address, sharing limits and the intake."""

    def __init__(self, config: Config, intake: Intake, events: EventLog) -> None:
        self.config = config
        self.intake = intake
        self.events = events
        self.anvil = anvil.Anvil(config.smtp)
        self.announce_stress = True  # False in a receiver: its supervisor logs it, once
        self.reconfigure(config)
        self.tls: ssl.SSLContext | None = None
        self.servers: list[asyncio.Server] = []
        self.sessions: set[SmtpConnection] = set()
        self.closing = False
        self.names: dict[str, tuple[float, str]] = {}
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="smtp-intake")

    def reconfigure(self, config: Config) -> None:
        """Live settings: relay networks, limits, users (listeners and TLS need a restart)."""
        self.config = config
        self.users_file = Path(config.smtp.auth.users_file) if config.smtp.auth.users_file \
            else None
        self.relay_networks = [ipaddress.ip_network(n) for n in config.smtp.relay.allow]
        self.anvil.reconfigure(config.smtp)

    def follow_stress(self) -> None:
        """After a connection opened or closed (or the supervisor said the relay's stress
        state changed): enter or leave stress mode, say so, and set every untrusted session's
        idle timeout accordingly."""
        if not self.anvil.stress_changed():
            return
        stressed = self.anvil.stressed
        if self.announce_stress:
            stress_event(self.events, self.config, stressed, self.anvil.untrusted_open)
        for session in self.sessions:
            session.stress_timeout(stressed)

    def tls_context(self) -> ssl.SSLContext | None:
        tls = self.config.smtp.tls
        if not (tls.cert and tls.key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise ListenError(f"cannot load smtp.tls.cert/key ({tls.cert}, {tls.key}): "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        return context

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen on smtp.listen, or serve `sockets` already listening (a receiver process
        serves the ones its supervisor bound)."""
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # the relay logs its own events
        self.tls = self.tls_context()
        loop = asyncio.get_running_loop()
        if sockets is not None:  # (their supervisor says where it listens)
            for sock in sockets:
                self.servers.append(await loop.create_server(lambda: SmtpSession(self),
                                                             sock=sock, backlog=LISTEN_BACKLOG))
            return
        for listen in self.config.smtp.listen:
            host, port = listen.with_default(25)
            try:
                server = await loop.create_server(lambda: SmtpSession(self), host, port,
                                                  backlog=LISTEN_BACKLOG)
            except OSError as exc:
                await self.stop()
                raise ListenError(f"cannot listen on {listen} (smtp.listen): "
                                  f"{exc.strerror or exc}") from None
            self.servers.append(server)
            for sock in server.sockets:
                bound = sock.getsockname()
                self.events.emit("smtp-listening", host=bound[0], port=bound[1],
                                 tls=self.tls is not None, auth=self.users_file is not None)

    async def stop(self, grace: float = 3.0) -> None:
        """Stop listening and close every session with a 421; a session committing a message
        first answers for it (within `grace` seconds)."""
        self.closing = True
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            busy = False
            for session in list(self.sessions):
                busy |= session.committing
                if not session.committing:
                    session.close_with(f"421 4.3.2 {session.hostname} shutting down")
            if not busy or loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        self.pool.shutdown(wait=False)

    async def reverse_name(self, ip: str) -> str:
        """The client's PTR name for the Received header ('' if none), kept for a minute."""
        loop = asyncio.get_running_loop()
        cached = self.names.get(ip)
        if cached and cached[0] > loop.time():
            return cached[1]
        try:
            name = PRINTABLE.sub("?", (await loop.getnameinfo((ip, 0), socket.NI_NAMEREQD))[0])
        except (OSError, UnicodeError):
            name = ""
        if len(self.names) > 10000:
            self.names.clear()
        self.names[ip] = (loop.time() + 60, name[:255])
        return name[:255]

    async def receive(self, session: SmtpSession, message: bytes) -> str:
        """Hand one message to the intake in a thread; the reply to send for it.

        The commit runs to its end (and is logged) even if the client goes away meanwhile.
        """
        envelope = session.envelope
        client = {"client": session.client_ip, "helo": session.session.host_name,
                  "tls": session.tls_active, "auth": session.session.auth_data}
        sub = Submission(message, envelope.mail_from, list(envelope.rcpt_tos),
                         source=f"SMTP {session.client_ip}",
                         received_from=await session.received_from(),
                         protocol=session.protocol_name(), headerless_ok=True)
        future = asyncio.get_running_loop().run_in_executor(self.pool, self.accept, sub, client)
        return await asyncio.shield(future)

    def accept(self, sub: Submission, client: dict[str, Any]) -> str:
        """In a worker thread: commit through the intake, log, and say what to reply."""
        try:
            outcome = self.intake.accept(sub)
        except Rejected as exc:
            self.events.emit("intake", id=sub.message_id, source=sub.source, outcome="rejected",
                             reason=exc.reason, **client)
            return f"{exc.code} {exc.status} {one_line(exc.reason)}"
        except Exception as exc:  # OSError above all: the disk, never the client's fault
            self.discard(sub.message_id)
            self.events.emit("intake-error", id=sub.message_id, source=sub.source,
                             error=getattr(exc, "strerror", None) or repr(exc), **client)
            return "451 4.3.0 Local error in processing, try again later"
        dest = "+".join(d for d, rcpts in (("drop", outcome.local), ("queue", outcome.remote))
                        if rcpts)
        self.events.emit("intake", id=outcome.id, source=sub.source, outcome=dest,
                         size=len(sub.message), **{"from": sub.sender,
                                                   "to": outcome.local + outcome.remote},
                         **client)
        return f"250 2.0.0 OK queued as {outcome.id}"

    def discard(self, message_id: str) -> None:
        """After a failed commit the client keeps the message and will send it again: remove
        any part that did reach Drop or Queue, so it is not delivered twice."""
        store = self.intake.store
        for path in (store.path(QUEUE, message_id, ".env"), store.path(QUEUE, message_id, ".eml"),
                     store.path(DROP, message_id, ".eml")):
            with contextlib.suppress(OSError):
                path.unlink()
