"""`mailroot route ADDRESS`: what the relay would do with mail to one address, and why.

The answer uses the same rules as delivery (`relay.core.router`), asks DNS now through the
configured resolver (no cache, so what it shows is what the name servers say this moment,
with their TTLs), looks a smart host's name up as delivery does (the system's resolver), and
reads the Queue and Hold folders for mail already waiting for the address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.resolver

from relay.core.address import AddressError, parse_address
from relay.core.config import Config, RemoteDomain
from relay.core.router import Route, Router
from relay.core.store import HOLD, QUEUE, WAITING
from relay.ops.queries import Queries
from relay.queue.resolver import DnsFailure, Resolver

RECENT_ATTEMPTS = 3  # the last attempts for the domain `route` shows


@dataclass
class MxHost:
    preference: int
    host: str
    addresses: list[str]
    ttl: int | None  # of the MX record set (None for the implicit MX)
    problem: str = ""  # why this host has no address


@dataclass
class Waiting:
    """Mail for the address already in Queue or Hold."""

    id: str
    folder: str
    state: str
    attempts: int
    next_attempt: float | None
    reply: str
    signed_by: list[str] = field(default_factory=list)  # its DKIM signatures, "" if none


@dataclass
class Recent:
    """What delivery has seen lately for the address's domain, from the Queue: how many of
    its recipients wait, and the last attempts made for them (newest first)."""

    waiting: int = 0
    attempts: list[dict] = field(default_factory=list)  # time, host, reply

    @property
    def stalled(self) -> str:
        """Why delivery to the domain is not getting through, if its last attempt left its
        recipients waiting ("" if it is not, or nothing was tried yet)."""
        if not self.waiting or not self.attempts:
            return ""
        last = self.attempts[0]
        when = time.strftime("%H:%M:%S", time.localtime(last["time"]))
        return (f"the last attempt ({when}, {last['host'] or 'no host reached'}) got "
                f"{last['reply']}; {self.waiting} recipient(s) waiting")


@dataclass
class Explanation:
    address: str
    domain: str
    kind: str  # local | remote
    rule: str  # which setting decided it
    destination: str  # Drop, or where the mail goes first
    tls: str = ""
    tls_source: str = ""
    smarthost: str = ""
    smarthost_rule: str = ""
    mx: list[MxHost] = field(default_factory=list)
    implicit_mx: bool = False
    dns: str = ""  # the DNS answer in words when it is not a list of hosts
    limits: dict[str, str] = field(default_factory=dict)
    waiting: list[Waiting] = field(default_factory=list)
    recent: Recent = field(default_factory=Recent)
    fails: str = ""  # why mail to the address would fail now ("" when it would not)

    @property
    def verdict(self) -> str:
        if self.fails:
            return f"would fail now: {self.fails}"
        if stalled := self.recent.stalled:
            return f"routed, but not getting through: {stalled}"
        return "deliverable now"

    @property
    def deliverable(self) -> bool:
        return not self.fails and not self.recent.stalled

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "verdict": self.verdict}


class BadAddress(ValueError):
    """Not an address the relay would take."""


async def explain(config: Config, address: str) -> Explanation:
    try:
        address = parse_address(address.strip().strip("<>"))
    except AddressError as exc:
        raise BadAddress(str(exc)) from None
    router = Router(config)
    if router.is_local(address):
        result = _local(config, router.local_address(address))
    else:
        result = await _remote(config, router, address)
    result.waiting, result.recent = _waiting(config, address, result.kind == "remote")
    return result


def _local(config: Config, address: str) -> Explanation:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    if domain == config.default_domain:
        rule = (f"domains.local.default is {domain}" if config.domains.local.default
                else f"{domain} is the hostname, the default local domain when "
                     "domains.local.default is not set")
    else:
        rule = f"{domain} is in domains.local.aliases"
    return Explanation(address, domain, "local", rule, "Drop (local delivery: a file in "
                       f"{config.root / 'Drop'})")


async def _remote(config: Config, router: Router, address: str) -> Explanation:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    route = router.route(domain)
    delivery = config.delivery
    own = config.domains.remote.get(domain)
    result = Explanation(address, domain, "remote", "not a local domain: delivered remotely",
                         "")
    result.tls = route.tls
    result.tls_source = (f"domains.remote.{domain}.tls" if own is not None
                         else f"the default for remote domains ({RemoteDomain().tls})")
    result.limits = {
        "port": _ports(route, delivery.port),
        "connections in all": str(delivery.max_connections),
        "connections to this domain": str(delivery.max_connections_per_domain),
        "messages per connection": str(delivery.messages_per_connection),
        "timeout per step": str(delivery.timeout),
    }
    resolver = Resolver(config)
    if route.smarthost is not None:
        host, port = route.smarthost.with_default(delivery.port)
        result.smarthost = f"{host}:{port}"
        result.smarthost_rule = (
            f"domains.remote.{domain}.smarthost" if own is not None and own.smarthost
            else "delivery.smarthost, after the MX hosts (delivery.attempt_direct_first)"
            if route.direct_first else "delivery.smarthost (all remote mail)")
        if route.smarthost_for_unknown:
            result.smarthost_rule += (", and for a domain DNS does not know "
                                      "(delivery.smarthost_for_unknown_domains)")
        if route.auth.username:
            result.smarthost_rule += f"; AUTH as {route.auth.username}"
        if not route.direct_first:
            result.destination = f"smart host {result.smarthost}"
            addresses, problem = await _system_addresses(host, port)
            result.mx = [MxHost(0, host, addresses, None, problem)]
            if not addresses:
                result.fails = f"the smart host {host} {problem}"
            return result
    await _mx(resolver, domain, result)
    if result.fails and route.smarthost is not None and not result.fails.startswith("5"):
        result.fails = ""  # a temporary DNS failure falls back to the smart host
        result.destination = f"smart host {result.smarthost} (the MX lookup failed)"
    elif result.fails.startswith("5.1.2") and route.smarthost_for_unknown:
        result.fails = ""  # as delivery does: DnsFailure.unknown_domain
        result.destination = (f"smart host {result.smarthost} (DNS does not know the domain: "
                              "delivery.smarthost_for_unknown_domains)")
    return result


async def _mx(resolver: Resolver, domain: str, result: Explanation) -> None:
    try:
        answer = await resolver.resolver.resolve(domain, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        result.dns = f"NXDOMAIN: the domain {domain} does not exist"
        result.fails = f"5.1.2 {result.dns}; mail to it fails at once"
        return
    except dns.resolver.NoAnswer:
        result.implicit_mx = True
        addresses, problem = await _addresses(resolver, domain)
        result.dns = ("no MX records: the domain itself is the mail host (implicit MX)"
                      + (f", but it {problem}" if problem else ""))
        result.mx = [MxHost(0, domain, addresses, None, problem)]
        if not addresses:
            result.fails = f"5.1.2 {domain} has no MX and no address records"
        else:
            result.destination = f"{domain} (implicit MX)"
        return
    except dns.resolver.NoNameservers:
        result.dns = f"SERVFAIL: no name server answered for {domain} MX"
        result.fails = f"4.4.3 {result.dns}; the mail waits in Queue and is retried"
        return
    except dns.exception.Timeout:
        result.dns = f"timeout: no DNS answer for {domain} MX"
        result.fails = f"4.4.3 {result.dns}; the mail waits in Queue and is retried"
        return
    ttl = answer.rrset.ttl if answer.rrset is not None else None
    records = sorted(answer, key=lambda r: (r.preference, r.exchange.to_text()))
    if any(r.exchange == dns.name.root for r in records):
        result.dns = f"null MX (MX 0 .): {domain} accepts no mail (RFC 7505)"
        result.fails = f"5.1.10 {result.dns}"
        return
    for record in records:
        host = record.exchange.to_text(omit_final_dot=True).lower()
        addresses, problem = await _addresses(resolver, host)
        result.mx.append(MxHost(record.preference, host, addresses, ttl, problem))
    usable = [m for m in result.mx if m.addresses]
    if not usable:
        result.fails = f"4.4.3 no MX host of {domain} has an address"
    else:
        result.destination = f"MX {usable[0].host} (preference {usable[0].preference})"


async def _addresses(resolver: Resolver, host: str) -> tuple[list[str], str]:
    """The host's addresses, or [] and why."""
    try:
        found = await resolver.addresses(host)
    except DnsFailure as exc:
        return [], f"has no address now ({exc.reason})"
    return found, "" if found else "has no address records"


async def _system_addresses(host: str, port: int) -> tuple[list[str], str]:
    """A smart host's addresses as delivery connects to it: its name is looked up by the
    system (getaddrinfo: /etc/hosts, then the system's DNS), not the configured resolver."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return [], f"has no address now ({getattr(exc, 'strerror', None) or exc})"
    return list(dict.fromkeys(str(info[4][0]) for info in infos)), ""


def _ports(route: Route, mx_port: int) -> str:
    """The port delivery connects to: the smart host's, the MX hosts', or both in turn."""
    if route.smarthost is None:
        return str(mx_port)
    smart = route.smarthost.with_default(mx_port)[1]
    return f"{mx_port} (MX hosts), {smart} (smart host)" if route.direct_first else str(smart)


def _waiting(config: Config, address: str, remote: bool) -> tuple[list[Waiting], Recent]:
    """Mail for the address in Queue and Hold, and (remote) what delivery has seen lately
    for its domain: one pass over the two folders' envelopes."""
    folders = Queries(config)
    recent = Recent()
    if not folders.store.exists():
        return [], recent
    wanted = address.lower()
    domain = "@" + wanted.rpartition("@")[2]
    found = []
    for folder in (QUEUE, HOLD):
        for row in folders.list_folder(folder):
            for rcpt in row.recipients:
                if rcpt.address.lower() == wanted:
                    signed = [str(s) for s in folders.show(row.id).signatures]
                    found.append(Waiting(row.id, folder, "held" if folder == HOLD
                                         else rcpt.state, row.attempts, row.next_attempt,
                                         rcpt.reply or "", signed))
            ours = [r.address.lower() for r in row.recipients
                    if r.address.lower().endswith(domain) and r.state in WAITING]
            if remote and folder == QUEUE and ours:
                recent.waiting += len(ours)
                recent.attempts += _attempts_for(folders, row.id, domain)
    recent.attempts = sorted(recent.attempts, key=lambda a: -a["time"])[:RECENT_ATTEMPTS]
    return found, recent


def _attempts_for(folders: Queries, message_id: str, domain: str) -> list[dict]:
    try:
        attempts = folders.envelope_fields(QUEUE, message_id).get("attempts") or []
    except (OSError, ValueError):
        return []  # moved on meanwhile
    return [{"time": a["time"], "host": a.get("host"), "reply": a["reply"]} for a in attempts
            if any(r.lower().endswith(domain) for r in a.get("recipients") or [])]


def render(result: Explanation, now: float | None = None) -> list[str]:
    """The explanation as lines for a terminal."""
    now = time.time() if now is None else now
    lines = [result.address,
             f"  {'domain':<12}{result.domain}: {result.kind}",
             f"  {'rule':<12}{result.rule}"]
    if result.kind == "local":
        lines.append(f"  {'goes to':<12}{result.destination}")
    else:
        if result.smarthost:
            lines.append(f"  {'smart host':<12}{result.smarthost} ({result.smarthost_rule})")
        if result.dns:
            lines.append(f"  {'DNS':<12}{result.dns}")
        for mx in result.mx:
            ttl = f", TTL {mx.ttl}s" if mx.ttl is not None else ""
            where = ", ".join(mx.addresses) or mx.problem
            label = "host" if result.smarthost and not result.implicit_mx and mx.ttl is None \
                else "MX"
            lines.append(f"  {label:<12}{mx.preference:>3} {mx.host} [{where}]{ttl}")
        lines.append(f"  {'TLS':<12}{result.tls} (from {result.tls_source})")
        limits = ", ".join(f"{k} {v}" for k, v in result.limits.items())
        lines.append(f"  {'limits':<12}{limits}")
        if result.destination:
            lines.append(f"  {'goes to':<12}{result.destination}")
    for wait in result.waiting:
        due = ""
        if wait.next_attempt and wait.folder == QUEUE:
            due = f", next attempt {time.strftime('%H:%M:%S', time.localtime(wait.next_attempt))}"
            due += f" (in {max(0, int(wait.next_attempt - now))}s)"
        reply = f": {wait.reply}" if wait.reply else ""
        lines.append(f"  {'waiting':<12}{wait.id} in {wait.folder}: {wait.state}, "
                     f"{wait.attempts} attempt(s){due}{reply}")
        lines.append(f"  {'':<12}" + ("signed by " + "; ".join(wait.signed_by)
                                       if wait.signed_by else "not signed (DKIM)"))
    for attempt in result.recent.attempts:
        when = time.strftime("%H:%M:%S", time.localtime(attempt["time"]))
        lines.append(f"  {'attempted':<12}{when} {attempt['host'] or '-'}: {attempt['reply']}")
    lines.append(f"  {'verdict':<12}{result.verdict}")
    return lines
