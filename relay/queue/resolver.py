"""Where to deliver a remote domain's mail: MX lookup with dnspython, asynchronously.

RFC 5321 section 5.1 and RFC 7505: MX hosts in preference order (equal preferences shuffled),
no MX means the domain itself (implicit MX), a null MX (`MX 0 .`) means the domain takes no
mail, and an MX host that doesn't resolve is skipped, never replaced by the domain's own
address.  Answers are cached within their TTL; failures are not cached, so a SERVFAIL is
retried on the next attempt.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from relay.core.config import Config

NEGATIVE_TTL = 60.0  # how long "this name has no such records" is remembered


class DnsFailure(Exception):
    """No place to deliver to: `permanent` ones fail the recipients, the others defer them."""

    def __init__(self, reason: str, status: str) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")

    @property
    def unknown_domain(self) -> bool:
        """DNS says the domain does not exist, or gives it no MX and no address (5.1.2)."""
        return self.status == "5.1.2"


@dataclass(frozen=True)
class Target:
    """One address of one MX host, in the order to try."""

    host: str  # the MX host name (for TLS name checks and reports)
    address: str  # the IP address to connect to
    preference: int


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Resolver:
    """MX and address lookups through the configured (or the system's) name servers."""

    def __init__(self, config: Config) -> None:
        self.hostname = config.fqdn.lower().rstrip(".")
        dns_config = config.dns
        if dns_config.nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(dns_config.nameservers)
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = ["127.0.0.1"]
        resolver.port = dns_config.port
        resolver.timeout = float(dns_config.timeout)
        resolver.lifetime = float(dns_config.timeout)
        self.resolver = resolver
        self.cache: dict[tuple[str, str], tuple[float, list]] = {}

    async def query(self, name: str, rdtype: str) -> list:
        """The records of one type (empty if the name exists without them).

        Raises dns.resolver.NXDOMAIN, or DnsFailure (temporary) on SERVFAIL or timeout.
        """
        key = (name.lower(), rdtype)
        cached = self.cache.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            answer = await self.resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NoAnswer:
            self.cache[key] = (time.monotonic() + NEGATIVE_TTL, [])
            return []
        except dns.resolver.NXDOMAIN:
            raise
        except dns.resolver.NoNameservers as exc:
            raise DnsFailure(f"DNS lookup of {name} {rdtype} failed (SERVFAIL): {exc}",
                             "4.4.3") from None
        except dns.exception.Timeout:
            raise DnsFailure(f"DNS lookup of {name} {rdtype} timed out", "4.4.3") from None
        except dns.exception.DNSException as exc:
            raise DnsFailure(f"DNS lookup of {name} {rdtype} failed: {exc}", "4.4.3") from None
        records = list(answer)
        self.cache[key] = (time.monotonic() + (answer.rrset.ttl if answer.rrset else 0),
                           records)
        return records

    async def addresses(self, host: str) -> list[str]:
        """IPv6 then IPv4 addresses of a host ([] if it has none or doesn't exist)."""
        if _is_ip(host):
            return [host]
        found: list[str] = []
        for rdtype in ("AAAA", "A"):
            try:
                found += [r.address for r in await self.query(host, rdtype)]
            except dns.resolver.NXDOMAIN:
                return []
        return found

    async def mx_targets(self, domain: str) -> list[Target]:
        """Addresses to try for a domain, best first; raises DnsFailure."""
        domain = domain.lower().rstrip(".")
        try:
            records = await self.query(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise DnsFailure(f"the domain {domain} does not exist (NXDOMAIN)", "5.1.2") from None
        if not records:
            addresses = await self._implicit(domain)
            return [Target(domain, a, 0) for a in addresses]
        mx = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in records]
        if any(r.exchange == dns.name.root for r in records):
            raise DnsFailure(f"the domain {domain} accepts no mail (null MX)", "5.1.10")
        own = [pref for pref, host in mx if host == self.hostname]
        if own:
            mx = [(pref, host) for pref, host in mx if pref < min(own)]
            if not mx:
                raise DnsFailure(f"mail for {domain} loops back to myself ({self.hostname} is "
                                 "its best MX host)", "5.4.6")
        random.shuffle(mx)
        mx.sort(key=lambda pair: pair[0])  # stable: equal preferences stay shuffled
        targets: list[Target] = []
        for pref, host in mx:
            targets += [Target(host, a, pref) for a in await self.addresses(host)]
        if not targets:
            names = ", ".join(host for _, host in mx)
            raise DnsFailure(f"no MX host of {domain} resolves to an address ({names})", "4.4.3")
        return targets

    async def _implicit(self, domain: str) -> list[str]:
        """The domain's own addresses, when it has no MX records."""
        addresses = await self.addresses(domain)
        if not addresses:
            raise DnsFailure(f"the domain {domain} has no MX and no address records", "5.1.2")
        return addresses
