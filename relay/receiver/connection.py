"""A client's connection to a receiver, under aiosmtpd: admitted or refused by the Anvil at
connect, its idle timeout (shorter under stress), every 4xx/5xx reply an event and too many
errors a hang-up, who the client is (a trusted network, its reverse name, the protocol for the
Received header); and the reading of what it sends: fixed command line limits, the DATA
reader, the path of MAIL and RCPT.

The commands a session answers on it, and the server that listens, are relay/receiver/smtpd.py.
What the supervisor shares with that server (the listen backlog, ListenError, the stress
event) is here too, so the supervisor, which binds the receivers' sockets, loads neither the
commands nor the AUTH users file.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, AuthResult

from relay.core.config import Config
from relay.core.events import EventLog
from relay.receiver import anvil

END_OF_DATA = b"\r\n.\r\n"
COMMAND_LIMIT = 512 - 2  # octets of a command line without its CRLF (RFC 5321 4.5.3.1.4)
# SIZE (RFC 1870) and SMTPUTF8 (RFC 6531) lengthen MAIL; AUTH's initial response (RFC 4954)
LONGER_COMMANDS = {"MAIL": COMMAND_LIMIT + 26 + 10, "AUTH": 998}
ERROR_LIMIT = 5  # syntax errors, unknown commands and failed AUTHs before "421" and hang-up
ERROR_REPLY = re.compile(r"50[0-4] |535 |454 ")
REJECTION = re.compile(r"[45]\d\d ")
PRINTABLE = re.compile(r"[^\x21-\x7e]")
# connections the kernel holds until accepted: a burst beyond asyncio's 100 would have its
# SYNs dropped and retried a second later (the kernel caps it at net.core.somaxconn)
LISTEN_BACKLOG = 1024
REFUSALS = {anvil.GLOBAL: "too many connections, try again later",
            anvil.PER_CLIENT: "too many connections from your address, try again later",
            anvil.PER_CLIENT_RATE: "too many connections per minute from your address, "
                                   "try again later"}


class ListenError(Exception):
    """A listener could not start (address in use, bad certificate)."""


def stress_event(events: EventLog, config: Config, stressed: bool, open_now: int) -> None:
    """Stress mode began or ended, with the open untrusted connections and the limit: logged
    once per relay (by the listener, or by the supervisor for all its receivers)."""
    events.emit("stress", state="on" if stressed else "off", open=open_now,
                limit=config.smtp.max_connections)


class _CommandLimits(dict):
    """Fixed command line limits; aiosmtpd's EHLO tries to grow them on every EHLO."""

    def __missing__(self, command: str) -> int:
        return LONGER_COMMANDS.get(command, COMMAND_LIMIT)

    def __setitem__(self, command: str, value: int) -> None:
        pass


async def read_data(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, int] | None:
    """Read DATA up to the first <CRLF>.<CRLF> (none but that sequence ends it).

    Returns (raw dot-stuffed text ending in CRLF, total octets read), the text empty when
    more than `limit` octets came (they are read and dropped), or None at end of stream.
    The data is taken in chunks of what has arrived, not line by line.
    """
    parts: list[bytes] = []
    total = 0

    def keep(chunk: bytes) -> None:
        nonlocal total
        total += len(chunk)
        if total <= limit:
            parts.append(chunk)
        else:
            parts.clear()

    try:
        # The CRLF before DATA's first line may begin the terminator: while what has been read
        # ends with a beginning of it, read just the octets that would complete it (never past
        # its end); once it can't, search the rest in bulk (what the search leaves unread can
        # never hold the start of a terminator).
        seen = b"\r\n"
        while partial := next((n for n in (4, 3, 2, 1) if seen.endswith(END_OF_DATA[:n])), 0):
            more = await reader.readexactly(len(END_OF_DATA) - partial)
            keep(more)
            seen = (seen + more)[-len(END_OF_DATA):]
            if seen == END_OF_DATA:
                break
        else:
            while True:
                try:
                    keep(await reader.readuntil(END_OF_DATA))
                    break
                except asyncio.LimitOverrunError as exc:  # no end in what has arrived yet
                    keep(await reader.read(exc.consumed))
    except asyncio.IncompleteReadError:
        return None
    data = b"".join(parts)[:-3]  # keep the CRLF that ends the last line, drop ".\r\n"
    return data, total - 3


def split_path(arg: str | None, keyword: str) -> tuple[str, str]:
    """'FROM:<a@b> SIZE=10' -> ('<a@b>', 'SIZE=10'); ValueError if it isn't that shape."""
    if arg is None or arg[:len(keyword)].upper() != keyword:
        raise ValueError(keyword)
    rest = arg[len(keyword):].lstrip(" ")
    if not rest.startswith("<"):
        path, _, params = rest.partition(" ")
        return path, params.strip()
    quoted = escaped = False
    for i, char in enumerate(rest):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return rest[:i + 1], rest[i + 1:].strip()
    raise ValueError("no closing >")


def _collect_credentials(server: SMTP, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:
    """aiosmtpd's authenticator only hands the credentials on: the password hash is checked
    in a thread (scrypt is slow on purpose and must not stall other sessions)."""
    return AuthResult(success=True, handled=False, auth_data=auth_data)


class Listener(Protocol):
    """What a connection uses of the server that accepted it (SmtpServer, in smtpd.py)."""

    config: Config
    tls: ssl.SSLContext | None
    users_file: Path | None
    events: EventLog
    anvil: anvil.Anvil
    sessions: set[SmtpConnection]
    relay_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]

    def follow_stress(self) -> None: ...

    async def reverse_name(self, ip: str) -> str: ...


class SmtpConnection(SMTP):
    """One client connection; SmtpSession (smtpd.py) answers its commands."""

    def __init__(self, server: Listener) -> None:
        config = server.config.smtp
        super().__init__(
            None, data_size_limit=None, enable_SMTPUTF8=True, hostname=server.config.fqdn,
            ident="mailroot ESMTP", tls_context=server.tls, timeout=config.timeout,
            auth_require_tls=not config.auth.allow_plaintext,
            auth_exclude_mechanism=[] if server.users_file else ["PLAIN", "LOGIN"],
            authenticator=_collect_credentials, loop=asyncio.get_running_loop())
        self.server = server
        self.command_size_limits = _CommandLimits()
        self.command_size_limit = COMMAND_LIMIT
        self.errors = 0
        self.session_octets = 0
        self.counted = False
        self.committing = False
        self.receiving = False  # between DATA's 354 and its reply: not idle
        self.client_ip = "unknown"
        self.trusted = False  # in smtp.relay.allow when it connected
        self.rdns: asyncio.Future[str] | None = None

    # --- connection ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # the TLS layer of a connection
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else "unknown"
        self.server.events.emit("smtp-connect", client=self.client_ip)
        self.trusted = self.trusted_network
        refused = self.server.anvil.admit(self.client_ip, self.trusted)
        if refused:
            self.server.events.emit("connection-refused", client=self.client_ip,
                                    reason=refused)
            transport.write(f"421 4.7.0 {self.hostname} {REFUSALS[refused]}\r\n".encode())
            transport.close()
            return
        self.server.sessions.add(self)
        self.counted = True
        self.rdns = asyncio.ensure_future(self.server.reverse_name(self.client_ip))
        super().connection_made(transport)
        self.server.follow_stress()
        if self.server.anvil.stressed and not self.trusted:
            self._timeout_duration = self.server.config.smtp.stress_timeout
        greeting = self.server.config.smtp.greeting_timeout
        self._reset_timeout(min(greeting, self._timeout_duration))

    def connection_lost(self, error: Exception | None) -> None:
        if not self.counted:
            return  # refused at connect: aiosmtpd never saw this connection
        self.counted = False
        self.server.sessions.discard(self)
        self.server.anvil.release(self.client_ip, self.trusted)
        self.server.follow_stress()
        if self.rdns:
            self.rdns.cancel()
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        self.close_with(f"421 4.4.2 {self.hostname} timeout, closing")

    def stress_timeout(self, stressed: bool) -> None:
        """Under stress an untrusted session's idle timeout is smtp.stress_timeout: from its
        next command on, and at once if it is waiting for one now."""
        if self.trusted:
            return
        smtp = self.server.config.smtp
        self._timeout_duration = smtp.stress_timeout if stressed else smtp.timeout
        handle = self._timeout_handle
        if stressed and not self.receiving and handle is not None \
                and handle.when() - self.loop.time() > smtp.stress_timeout:
            self._reset_timeout()

    def close_with(self, reply: str) -> None:
        """Say why and close (from outside the session's own task)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply.encode() + b"\r\n")
            self.transport.close()

    async def push(self, status: str | bytes) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        if ERROR_REPLY.match(text):
            self.errors += 1
            if self.errors >= ERROR_LIMIT:
                await self.hang_up("421 4.7.0 too many errors, closing the connection")
                return
        if REJECTION.match(text):
            self.refused(text)
        await super().push(status)

    def refused(self, reply: str) -> None:
        """Every 4xx/5xx reply is an event, for the log and the metrics."""
        self.server.events.emit("smtp-rejected", client=self.client_ip, code=reply[:3],
                                reply=reply[:200])

    async def hang_up(self, reply: str) -> None:
        """Send `reply` and close; the session's task ends at its next wait."""
        self.refused(reply)
        await super().push(reply)
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()
        await asyncio.sleep(0)

    async def handle_exception(self, error: Exception) -> str:
        """Never a Python exception text to the client: log it, answer temporarily."""
        self.server.events.emit("smtp-error", client=self.client_ip, error=repr(error)[:300])
        return "451 4.3.0 local error, try again later"

    # --- state ---

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None and self.session.ssl is not None

    @property
    def trusted_network(self) -> bool:
        try:
            ip = ipaddress.ip_address(self.client_ip)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack listener
        return any(ip in net for net in self.server.relay_networks)

    def may_relay(self) -> bool:
        relay = self.server.config.smtp.relay
        return self.trusted_network or bool(relay.allow_authenticated
                                            and self.session.authenticated)

    # --- what goes into the Received header and the log ---

    def protocol_name(self) -> str:
        """RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA; SMTP after HELO."""
        if not self.session.extended_smtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.tls_active else "") + (
            "A" if self.session.authenticated else "")

    async def received_from(self) -> str:
        helo = PRINTABLE.sub("?", self.session.host_name or "")[:100] or "unknown"
        name = ""
        if self.rdns and not self.rdns.done():
            await asyncio.wait({self.rdns}, timeout=1.0)  # never holds a message up for long
        if self.rdns and self.rdns.done() and not self.rdns.cancelled():
            name = self.rdns.result()
        literal = f"IPv6:{self.client_ip}" if ":" in self.client_ip else self.client_ip
        return f"from {helo} ({name or 'unknown'} [{literal}])"
