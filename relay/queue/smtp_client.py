"""Outbound SMTP: one message to one remote domain's recipients, over aiosmtplib.

Hosts are tried in turn until one takes the transaction; a host that can't be reached, or
can't meet the TLS policy, passes the turn to the next.  The answer is per recipient.
Connections are kept open briefly and reused for the same destination, within the
`delivery.max_connections*` limits.  Credentials go only over TLS and are never logged.
The transaction's parts (the message made fit for the server, DATA, PIPELINING) are in
relay/queue/smtp_transaction.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections import defaultdict
from dataclasses import dataclass

import aiosmtplib

from relay.core.config import Config, Credentials
from relay.core.router import Route
from relay.queue.resolver import DnsFailure, Resolver
from relay.queue.smtp_transaction import (
    Outgoing,
    OutOfStep,
    Reply,
    Unsendable,
    pipelined,
    send_data,
)

IMPLICIT_TLS_PORT = 465
IDLE_SECONDS = 2.0  # an unused open connection is closed after this long


class HopFailed(Exception):
    """This host didn't take the transaction; try the next one."""

    def __init__(self, reply: Reply, tls_handshake: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.tls_handshake = tls_handshake  # it failed in the STARTTLS handshake


@dataclass(frozen=True)
class Hop:
    """One way to reach a next hop."""

    host: str  # the name: for TLS certificate checks and reports
    address: str  # what to connect to
    port: int
    tls: str  # none | may | require | verify
    key: str  # the destination, for connection reuse and limits
    credentials: Credentials | None = None
    implicit_tls: bool = False  # TLS from the first byte (port 465), not STARTTLS

    def __str__(self) -> str:
        where = self.address if self.address == self.host else f"{self.host}[{self.address}]"
        return f"{where}:{self.port}"


@dataclass
class Result:
    """What one attempt to one domain came to."""

    replies: dict[str, Reply]
    host: str | None = None
    tls: bool | None = None


# --- connections ------------------------------------------------------------------------------

@dataclass(eq=False)
class Connection:
    smtp: aiosmtplib.SMTP
    hop: Hop
    tls: bool
    sent: int = 0
    idle_timer: asyncio.TimerHandle | None = None


class Pool:
    """Open connections by destination: the limits in all and per destination, and reuse.

    A connection counts against the limits from reservation until it is closed, idle or not;
    an idle one is handed to the next message for its destination, or closed to make room.
    """

    def __init__(self, total: int, per_key: int, reuse: int) -> None:
        self.total_limit, self.per_key_limit = max(1, total), max(1, per_key)
        self.reuse = max(1, reuse)
        self.open: dict[str, int] = defaultdict(int)
        self.idle: dict[str, list[Connection]] = defaultdict(list)
        self.changed = asyncio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def acquire(self, key: str) -> Connection | None:
        """An idle connection to `key`, or None: then a new one may be opened (call
        `unreserve` if it can't be)."""
        while True:
            while self.idle[key]:
                conn = self.idle[key].pop()
                if conn.idle_timer:
                    conn.idle_timer.cancel()
                if conn.smtp.is_connected:
                    return conn
                self.unreserve(key)
            if sum(self.open.values()) >= self.total_limit:
                self._close_one_idle()
            if (self.open[key] < self.per_key_limit
                    and sum(self.open.values()) < self.total_limit):
                self.open[key] += 1
                return None
            await self.changed.wait()

    def unreserve(self, key: str) -> None:
        self.open[key] -= 1
        self._notify()

    def _close_one_idle(self) -> None:
        for conns in self.idle.values():
            if conns:
                self.close(conns.pop(0))
                return

    def give_back(self, conn: Connection, healthy: bool) -> None:
        if healthy and conn.sent < self.reuse and conn.smtp.is_connected:
            self.idle[conn.hop.key].append(conn)
            conn.idle_timer = asyncio.get_running_loop().call_later(
                IDLE_SECONDS, self._expire, conn)
            self._notify()
        else:
            self.close(conn)

    def _expire(self, conn: Connection) -> None:
        if conn in self.idle[conn.hop.key]:
            self.idle[conn.hop.key].remove(conn)
            self.close(conn)

    def close(self, conn: Connection) -> None:
        if conn.idle_timer:
            conn.idle_timer.cancel()
        self.unreserve(conn.hop.key)
        if conn.smtp.is_connected:
            asyncio.get_running_loop().create_task(_quit(conn.smtp))

    async def close_all(self) -> None:
        conns = [c for conns in self.idle.values() for c in conns]
        self.idle.clear()
        for conn in conns:
            if conn.idle_timer:
                conn.idle_timer.cancel()
            self.unreserve(conn.hop.key)
        await asyncio.gather(*(_quit(c.smtp) for c in conns), return_exceptions=True)


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await asyncio.wait_for(smtp.quit(), 2)
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        smtp.close()


# --- the client -------------------------------------------------------------------------------

def tls_contexts(ca_file: str | None) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(verifying, opportunistic) client contexts."""
    verifying = ssl.create_default_context(cafile=ca_file)
    opportunistic = ssl.create_default_context()
    opportunistic.check_hostname = False
    opportunistic.verify_mode = ssl.CERT_NONE
    return verifying, opportunistic


def _answer(answer: tuple[int, str], step: str, ok: tuple[int, ...]) -> Reply:
    """A pipelined command's reply, worded as _failure words a refusal."""
    code, text = answer
    return Reply.remote(code, text if code in ok else f"{text} (in reply to {step})")


def _failure(exc: BaseException, hop: Hop, step: str) -> Reply:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Reply.remote(exc.code, f"{exc.message} (in reply to {step})")
    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, TimeoutError)):
        return Reply(None, f"{hop}: timed out during {step}", "4.4.2")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Reply(None, f"{hop}: the server's certificate was not accepted during {step}: "
                           f"{exc.verify_message}", "4.7.5")
    if isinstance(exc, ssl.SSLError):
        return Reply(None, f"{hop}: TLS failed during {step}: {exc.reason or exc}", "4.7.5")
    text = str(exc).split(": ", 1)[-1] if isinstance(exc, aiosmtplib.SMTPConnectError) else str(exc)
    return Reply(None, f"{hop}: {step} failed: {text or type(exc).__name__}", "4.4.1")


class Client:
    def __init__(self, config: Config, resolver: Resolver) -> None:
        self.config = config
        self.resolver = resolver
        delivery = config.delivery
        self.timeout = float(delivery.timeout)
        self.verifying, self.opportunistic = tls_contexts(delivery.ca_file)
        self.pool = Pool(delivery.max_connections, delivery.max_connections_per_domain,
                         delivery.messages_per_connection)
        self.out_of_step: set[str] = set()  # hosts that broke PIPELINING: no longer used

    async def close(self) -> None:
        await self.pool.close_all()

    async def hops(self, route: Route) -> list[Hop]:
        """Where to try, in order: MX hosts and/or the smart host; raises DnsFailure."""
        smart: list[Hop] = []
        if route.smarthost is not None:
            host, port = route.smarthost.with_default(self.config.delivery.port)
            creds = route.auth if route.auth.username else None
            smart = [Hop(host, host, port, route.tls, f"smarthost {host}:{port}", creds,
                         implicit_tls=port == IMPLICIT_TLS_PORT)]
            if not route.direct_first:
                return smart
        try:
            targets = await self.resolver.mx_targets(route.domain)
        except DnsFailure as failure:
            if smart and (not failure.permanent
                          or route.smarthost_for_unknown and failure.unknown_domain):
                return smart
            raise
        port = self.config.delivery.port
        return [Hop(t.host, t.address, port, route.tls, f"mx {route.domain}")
                for t in targets] + smart

    async def deliver(self, route: Route, outgoing: Outgoing, recipients: list[str]) -> Result:
        """Send to one domain's recipients; every recipient gets a reply."""
        try:
            hops = await self.hops(route)
        except DnsFailure as failure:
            reply = Reply(None, failure.reason, failure.status)
            return Result({r: reply for r in recipients})
        last = Reply(None, "no host to try", "4.4.4")
        last_host: str | None = None
        for hop in hops:
            conn = await self.pool.acquire(hop.key)
            if conn is None:
                try:
                    conn = await self.connect(hop)
                except HopFailed as failed:
                    if failed.tls_handshake and hop.tls == "may" and hop.credentials is None:
                        conn, failed = await self._in_clear(hop, failed)
                    if conn is None:
                        last, last_host = failed.reply, str(hop)
                        continue
            try:
                replies = await self.transaction(conn, outgoing, recipients)
            except Unsendable as unsendable:
                self.pool.give_back(conn, True)
                return Result({r: unsendable.reply for r in recipients}, str(conn.hop),
                              conn.tls)
            except HopFailed as failed:
                self.pool.give_back(conn, False)
                last, last_host = failed.reply, str(conn.hop)
                continue
            conn.sent += 1
            self.pool.give_back(conn, True)
            return Result(replies, str(conn.hop), conn.tls)
        return Result({r: last for r in recipients}, last_host)

    async def connect(self, hop: Hop) -> Connection:
        """Connect, EHLO, STARTTLS and AUTH as the hop's policy says, on a reservation
        from `pool.acquire`; raises HopFailed."""
        context = self.verifying if hop.tls == "verify" else self.opportunistic
        smtp = aiosmtplib.SMTP(hostname=hop.address, port=hop.port,
                               local_hostname=self.config.fqdn, timeout=self.timeout,
                               use_tls=hop.implicit_tls, start_tls=False,
                               tls_context=context if hop.implicit_tls else None)
        step = "connect"
        try:
            await smtp.connect()
            step = "EHLO"
            await self._hello(smtp)
            if not hop.implicit_tls and hop.tls != "none":
                if smtp.supports_extension("starttls"):
                    step = "STARTTLS"
                    await smtp.starttls(server_hostname=hop.host, tls_context=context)
                    step = "EHLO after STARTTLS"
                    await self._hello(smtp)
                elif hop.tls in ("require", "verify"):
                    raise HopFailed(Reply(None, f"{hop} does not offer STARTTLS and the TLS "
                                                f"policy is '{hop.tls}': nothing was sent",
                                          "4.7.4"))
            tls = smtp.get_transport_info("sslcontext") is not None
            if hop.credentials is not None:
                step = "AUTH"
                await self._login(smtp, hop, tls)
        except BaseException as exc:
            smtp.close()
            self.pool.unreserve(hop.key)
            if isinstance(exc, HopFailed) or not isinstance(
                    exc, (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError)):
                raise
            raise HopFailed(_failure(exc, hop, step), tls_handshake=step == "STARTTLS") from None
        return Connection(smtp, hop, tls)

    async def _in_clear(self, hop: Hop, failed: HopFailed) -> tuple[Connection | None,
                                                                      HopFailed]:
        """Opportunistic TLS whose handshake fails is no reason to keep mail waiting: as
        Postfix does with `may`, try the same host again without STARTTLS (never when
        credentials would be sent)."""
        conn = await self.pool.acquire(hop.key)
        if conn is not None:
            return conn, failed
        try:
            return await self.connect(dataclasses.replace(hop, tls="none")), failed
        except HopFailed as again:
            return None, again

    @staticmethod
    async def _hello(smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.ehlo()
        except aiosmtplib.SMTPHeloError:
            await smtp.helo()

    async def _login(self, smtp: aiosmtplib.SMTP, hop: Hop, tls: bool) -> None:
        """AUTH PLAIN or LOGIN, only over TLS; the password is read now and never shown."""
        creds = hop.credentials
        assert creds is not None and creds.username
        if not tls:
            raise HopFailed(Reply(None, f"{hop}: credentials are only sent over TLS, and the "
                                        "connection is not encrypted", "4.7.4"))
        password = creds.password()
        if password is None:
            source = (f"environment variable {creds.password_env}" if creds.password_env
                      else f"password file {creds.password_file}")
            raise HopFailed(Reply(None, f"no password for the smart host: {source} is not "
                                        "set or not readable", "4.7.8"))
        methods = smtp.server_auth_methods
        if "plain" in methods:
            await smtp.auth_plain(creds.username, password)
        elif "login" in methods:
            await smtp.auth_login(creds.username, password)
        else:
            raise HopFailed(Reply(None, f"{hop} offers neither AUTH PLAIN nor LOGIN", "4.7.8"))

    async def transaction(self, conn: Connection, outgoing: Outgoing,
                          recipients: list[str]) -> dict[str, Reply]:
        """MAIL, RCPT for each, DATA: a reply per recipient; raises HopFailed, Unsendable.
        In one write where the server offers PIPELINING, else one command at a time."""
        smtp = conn.smtp
        data, options, encoding = outgoing.for_server(smtp, recipients)
        if smtp.supports_extension("pipelining") and str(conn.hop) not in self.out_of_step:
            return await self._pipelined(conn, outgoing.sender, options, recipients, data,
                                         encoding)
        step = "MAIL FROM"
        try:
            try:
                await smtp.mail(outgoing.sender, options=options, encoding=encoding)
            except aiosmtplib.SMTPSenderRefused as refused:
                await smtp.rset()
                return dict.fromkeys(recipients, _failure(refused, conn.hop, step))
            replies: dict[str, Reply] = {}
            accepted = []
            for rcpt in recipients:
                step = "RCPT TO"
                try:
                    answer = await smtp.rcpt(rcpt, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as refused:
                    replies[rcpt] = _failure(refused, conn.hop, step)
                else:
                    replies[rcpt] = Reply.remote(answer.code, answer.message)
                    accepted.append(rcpt)
            if not accepted:
                await smtp.rset()
                return replies
            step = "DATA"
            try:
                answer = await send_data(smtp, data)
                final = Reply.remote(answer.code, answer.message)
            except aiosmtplib.SMTPDataError as refused:
                final = _failure(refused, conn.hop, step)
            for rcpt in accepted:
                replies[rcpt] = final
            return replies
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise HopFailed(_failure(exc, conn.hop, step)) from None

    async def _pipelined(self, conn: Connection, sender: str, options: list[str],
                         recipients: list[str], data: bytes, encoding: str
                         ) -> dict[str, Reply]:
        """The transaction pipelined (relay/queue/smtp_transaction.py), its replies worded as the
        one-at-a-time path words them. A host that answers out of step gets one command at
        a time from then on."""
        try:
            answers = await pipelined(conn.smtp, sender, options, recipients, data, encoding)
        except OutOfStep as exc:
            self.out_of_step.add(str(conn.hop))
            raise HopFailed(Reply(None, f"{conn.hop} answered out of step with PIPELINING "
                                        f"({exc}); it gets one command at a time from now on",
                                  "4.5.0")) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise HopFailed(_failure(exc, conn.hop, "MAIL FROM, RCPT TO, DATA")) from None
        mail = _answer(answers.mail, "MAIL FROM", (250,))
        if not mail.ok:
            await self._reset(conn)
            return dict.fromkeys(recipients, mail)
        replies = {rcpt: _answer(answer, "RCPT TO", (250, 251))
                   for rcpt, answer in zip(recipients, answers.rcpts, strict=True)}
        accepted = [rcpt for rcpt, reply in replies.items() if reply.ok]
        if answers.data is None:
            await self._reset(conn)
            return replies
        final = _answer(answers.data, "DATA", (250,))
        return {**replies, **dict.fromkeys(accepted, final)}

    @staticmethod
    async def _reset(conn: Connection) -> None:
        """RSET after a transaction that sent no message; raises HopFailed."""
        try:
            await conn.smtp.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise HopFailed(_failure(exc, conn.hop, "RSET")) from None
