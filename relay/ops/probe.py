"""`mailroot probe ADDRESS`: talk to the first hop for an address as delivery would, and show it.

Without --send the probe connects to the first hop the route names (`Client.hops`, the same
list delivery uses), says EHLO, does STARTTLS as the TLS policy says (reporting the server
certificate's subject, issuer and expiry, and whether it verifies), AUTH when the route has
credentials, MAIL and RCPT, and QUITs without DATA: nothing is sent.  With --send it writes
a short test message into Pickup and follows it through the event log to its end.

Every step is handed to `on_step` as it happens, so the CLI and the console show it live.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib
from cryptography import x509

from relay.core.address import AddressError, parse_address
from relay.core.config import Config
from relay.core.events import LOG_NAME, LogFollower
from relay.core.pickup_file import write_pickup
from relay.core.relay_lock import lock_holder
from relay.core.router import Router
from relay.core.store import Mailroot
from relay.queue.resolver import DnsFailure, Resolver
from relay.queue.smtp_client import Client, Hop, tls_contexts

# What an enhanced status code says, for the codes a probe usually meets (RFC 3463).
STATUS_WORDS = {
    "2.1.0": "sender accepted", "2.1.5": "recipient accepted",
    "4.2.2": "the mailbox is full (temporary)", "4.4.1": "no answer from the host",
    "4.7.0": "refused for now by policy", "4.7.1": "refused for now by policy",
    "5.1.1": "no such mailbox", "5.1.2": "no such domain", "5.1.10": "null MX",
    "5.2.2": "the mailbox is full", "5.7.1": "refused by policy (relaying denied?)",
    "5.7.8": "the credentials were refused",
}


@dataclass
class Step:
    """One line of the transcript."""

    at: float  # seconds since the probe started
    kind: str  # info | send | reply | tls | error | event | done
    text: str
    meaning: str = ""
    took: float | None = None  # seconds the server took to answer

    def line(self) -> str:
        arrow = {"send": "C:", "reply": "S:", "tls": "TLS", "error": "!!", "event": "->",
                 "done": "=="}.get(self.kind, "..")
        took = f" ({self.took * 1000:.0f} ms)" if self.took is not None else ""
        meaning = f"  — {self.meaning}" if self.meaning else ""
        return f"[{self.at:7.3f}s] {arrow:<3} {self.text}{took}{meaning}"


def meaning_of(code: int, message: str, command: str) -> str:
    """What a reply means for delivery, in words."""
    status = next((w for w in message.split()[:1] if w[:1] in "245" and w.count(".") == 2), "")
    detail = STATUS_WORDS.get(status, "")
    if 200 <= code < 400:
        base = {"connect": "the server is ready", "EHLO": "the server speaks ESMTP",
                "STARTTLS": "go ahead with TLS", "AUTH": "authenticated",
                "MAIL": "sender accepted",
                "RCPT": "the server would take mail for this address",
                "QUIT": "closing"}.get(command, "accepted")
    elif 400 <= code < 500:
        base = "temporary: the relay would keep the mail in Queue and retry"
    else:
        base = "permanent: the relay would return the mail to its sender (Badmail + NDR)"
    return f"{base} ({detail})" if detail and detail not in base else base


def certificate_facts(der: bytes | None) -> str:
    if not der:
        return "the server sent no certificate"
    cert = x509.load_der_x509_certificate(der)
    expires = cert.not_valid_after_utc
    days = (expires - datetime.datetime.now(datetime.UTC)).days
    state = f"expired {-days} days ago" if days < 0 else f"{days} days left"
    return (f"subject {cert.subject.rfc4514_string()}; issuer {cert.issuer.rfc4514_string()}; "
            f"expires {expires:%Y-%m-%d} ({state})")


class Probe:
    def __init__(self, config: Config, on_step: Callable[[Step], None]) -> None:
        self.config = config
        self.on_step = on_step
        self.start = time.monotonic()
        self.sender = ""  # of the test message --send writes
        self.verifying, self.opportunistic = tls_contexts(config.delivery.ca_file)

    def step(self, kind: str, text: str, meaning: str = "", took: float | None = None) -> Step:
        step = Step(round(time.monotonic() - self.start, 3), kind, text, meaning, took)
        self.on_step(step)
        return step

    def _address(self, text: str) -> str:
        try:
            return parse_address(text.strip().strip("<>"))
        except AddressError as exc:
            self.step("error", f"{text!r} is not an address the relay takes: {exc}")
            return ""

    # --- the conversation without DATA ---

    async def check(self, address: str, sender: str) -> bool:
        """True when the first hop would take mail for `address` (nothing is sent)."""
        address = self._address(address)
        if not address:
            return False
        router = Router(self.config)
        if router.is_local(address):
            self.step("done", f"{address} is local: the relay delivers it to Drop itself, "
                              "there is no next hop to probe")
            return True
        domain = address.rpartition("@")[2].lower().rstrip(".")
        route = router.route(domain)
        client = Client(self.config, Resolver(self.config))
        try:
            hops = await client.hops(route)
        except DnsFailure as failure:
            self.step("error", f"no next hop for {domain}: {failure.reason}",
                      f"status {failure.status}")
            return False
        if not hops:
            self.step("error", f"no next hop for {domain}")
            return False
        hop = hops[0]
        others = f" ({len(hops) - 1} more after it)" if len(hops) > 1 else ""
        self.step("info", f"first hop {hop} for {domain}{others}; TLS policy {hop.tls}")
        try:
            return await self._converse(hop, address, sender)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.step("error", f"{hop}: {type(exc).__name__}: {exc}",
                      "temporary: the relay would try the next host or retry later")
            return False

    async def _open(self, hop: Hop) -> aiosmtplib.SMTP:
        context = self.verifying if hop.tls == "verify" else self.opportunistic
        smtp = aiosmtplib.SMTP(hostname=hop.address, port=hop.port,
                               local_hostname=self.config.fqdn,
                               timeout=float(self.config.delivery.timeout),
                               use_tls=hop.implicit_tls, start_tls=False,
                               tls_context=context if hop.implicit_tls else None)
        self.step("info", f"connecting to {hop}" + (" (TLS from the start)"
                                                    if hop.implicit_tls else ""))
        began = time.monotonic()
        reply = await smtp.connect()
        self.step("reply", f"{reply.code} {reply.message}",
                  meaning_of(reply.code, reply.message, "connect"), time.monotonic() - began)
        await self._say("EHLO", f"EHLO {self.config.fqdn}", smtp.ehlo)
        return smtp

    async def _say(self, command: str, text: str, call: Callable[[], Awaitable[
            aiosmtplib.SMTPResponse]]) -> aiosmtplib.SMTPResponse | None:
        """Send one command; the reply, or None when it was refused (shown either way)."""
        self.step("send", text)
        began = time.monotonic()
        try:
            reply = await call()
        except aiosmtplib.SMTPResponseException as exc:
            self.step("reply", f"{exc.code} {exc.message}", meaning_of(exc.code, exc.message,
                                                                       command),
                      time.monotonic() - began)
            return None
        message = " ".join(reply.message.split()) if command != "EHLO" else \
            ", ".join(reply.message.splitlines()[1:]) or reply.message
        self.step("reply", f"{reply.code} {message}", meaning_of(reply.code, reply.message,
                                                                 command),
                  time.monotonic() - began)
        return reply

    async def _starttls(self, smtp: aiosmtplib.SMTP, hop: Hop) -> aiosmtplib.SMTP | None:
        """STARTTLS as the policy says; the connection to go on with, or None to stop."""
        if hop.implicit_tls:
            self._certificate(smtp, verified=hop.tls == "verify")
            return smtp
        if hop.tls == "none":
            self.step("info", "TLS policy none: the relay does not use STARTTLS here")
            return smtp
        if not smtp.supports_extension("starttls"):
            if hop.tls in ("require", "verify"):
                self.step("error", f"no STARTTLS offered and the policy is {hop.tls}",
                          "the relay would send nothing to this host")
                return None
            self.step("info", "no STARTTLS offered: with tls: may the relay sends in clear")
            return smtp
        try:
            await self._say("STARTTLS", "STARTTLS", lambda: smtp.starttls(
                server_hostname=hop.host, tls_context=self.verifying))
        except ssl.SSLCertVerificationError as exc:
            self.step("tls", f"the certificate does not verify for {hop.host}: "
                             f"{exc.verify_message}")
            smtp.close()
            if hop.tls == "verify":
                self.step("error", "with tls: verify the relay would not send to this host")
                return None
            self.step("info", f"tls: {hop.tls} does not need a verified certificate: "
                              "connecting again to go on as the relay would")
            smtp = await self._open(hop)
            await self._say("STARTTLS", "STARTTLS", lambda: smtp.starttls(
                server_hostname=hop.host, tls_context=self.opportunistic))
            self._certificate(smtp, verified=False)
        else:
            self._certificate(smtp, verified=True)
        await self._say("EHLO", f"EHLO {self.config.fqdn}", smtp.ehlo)
        return smtp

    def _certificate(self, smtp: aiosmtplib.SMTP, verified: bool) -> None:
        ssl_object = smtp.get_transport_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        version = ssl_object.version() if ssl_object else "?"
        self.step("tls", f"{version}; {certificate_facts(der)}",
                  "verifies" if verified else "not verified")

    async def _converse(self, hop: Hop, address: str, sender: str) -> bool:
        smtp: aiosmtplib.SMTP | None = await self._open(hop)
        try:
            smtp = await self._starttls(smtp, hop)
            if smtp is None:
                return False
            if hop.credentials is not None and hop.credentials.username:
                if smtp.get_transport_info("sslcontext") is None:
                    self.step("error", "credentials are only sent over TLS, and this "
                                       "connection is not encrypted")
                    return False
                password = hop.credentials.password()
                if password is None:
                    self.step("error", "no password for the smart host (not set or readable)")
                    return False
                user = hop.credentials.username
                if await self._say("AUTH", f"AUTH (as {user}, password not shown)",
                                   lambda: smtp.login(user, password)) is None:
                    return False
            if await self._say("MAIL", f"MAIL FROM:<{sender}>",
                               lambda: smtp.mail(sender)) is None:
                return False
            accepted = await self._say("RCPT", f"RCPT TO:<{address}>",
                                       lambda: smtp.rcpt(address)) is not None
            await self._say("QUIT", "QUIT", smtp.quit)
            self.step("done", f"{address}: the first hop would take it" if accepted
                      else f"{address}: the first hop refused it", "no DATA was sent")
            return accepted
        finally:
            if smtp is not None and smtp.is_connected:
                smtp.close()

    # --- a real test message ---

    async def send(self, address: str, sender: str, timeout: float = 120.0) -> bool:
        """Send a test message through the relay (Pickup) and follow it to its end."""
        address = self._address(address)
        if not address:
            return False
        store = Mailroot(self.config.root)
        holder = lock_holder(store)
        if holder is None:
            self.step("error", f"no relay is running on {store.root}: start one (mailroot "
                               "serve) and probe again; nothing was written")
            return False
        log = LogFollower.at_end(store.log_dir / LOG_NAME)
        self.sender = sender
        try:
            name = write_pickup(store, self._test_message(address, sender))
            self.step("info", f"wrote Pickup/{name} (relay: {holder})")
            return await self._follow_test(log, f"Pickup/{name}", timeout)
        finally:
            log.close()

    async def _follow_test(self, log: LogFollower, source: str, timeout: float) -> bool:
        """Follow the test message written as `source` through the event log to its end."""
        mid = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in log.read():
                if mid is None and event.get("event") == "intake" \
                        and event.get("source") == source:
                    mid = event.get("id")
                    self.step("event", f"taken as {mid}: {event.get('outcome')}",
                              event.get("reason", ""))
                    if event.get("outcome") == "drop":
                        self.step("done", f"delivered to Drop ({mid})")
                        return True
                    if event.get("outcome") in ("badmail", "rejected"):
                        self.step("done", f"Badmail: {event.get('reason', '')}")
                        return False
                elif mid is not None and event.get("id") == mid and self._follow(event):
                    return event.get("event") == "delivered"
            await asyncio.sleep(0.05)
        self.step("error", f"no end within {timeout:.0f}s; see `mailroot show {mid}`"
                  if mid else f"the relay did not take {source} within {timeout:.0f}s")
        return False

    def _follow(self, event: dict) -> bool:
        """Show one event of the message; True when it is the end of the story."""
        kind = event.get("event")
        if kind == "delivered":
            self.step("done", f"delivered by {event.get('host')}: {event.get('reply')}",
                      "TLS" if event.get("tls") else "no TLS")
            return True
        if kind == "deferred":
            self.step("done", f"deferred by {event.get('host') or 'no host'}: "
                              f"{event.get('reply')}", "it stays in Queue and is retried")
            return True
        if kind == "bounced":  # moved to Badmail, with the reason in its .BAD file
            ndr = event.get("ndr")
            self.step("done", f"Badmail: {event.get('reason')}",
                      f"NDR {ndr} to {self.sender}" if ndr else event.get("detail", "no NDR"))
            return True
        if kind == "failed":
            self.step("event", f"failed: {event.get('reply')}")
            return False
        self.step("event", f"{kind}: {event.get('reply') or event.get('reason') or ''}")
        return False

    def _test_message(self, address: str, sender: str) -> bytes:
        stamp = email.utils.formatdate(localtime=True)
        return (f"From: {sender}\r\nTo: {address}\r\nSubject: mailroot probe {stamp}\r\n"
                f"Date: {stamp}\r\n"
                f"Message-ID: {email.utils.make_msgid(domain=self.config.default_domain)}\r\n"
                "\r\nA test message sent by mailroot probe --send. It can be deleted.\r\n"
                ).encode()
