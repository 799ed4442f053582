"""Local or remote: which recipients go to Drop, which to Queue, and each remote domain's
settings (TLS policy, smart host)."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.address import domain_of
from relay.core.config import Config, Credentials, HostPort, RemoteDomain


@dataclass(frozen=True)
class Route:
    """How to reach one remote domain."""

    domain: str
    tls: str
    smarthost: HostPort | None
    auth: Credentials
    direct_first: bool
    smarthost_for_unknown: bool = False  # direct first, and a domain DNS doesn't know too


class Router:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.local = config.local_domains

    def is_local(self, address: str) -> bool:
        """Local domains match whole names, case-insensitively; bare postmaster is local."""
        domain = domain_of(address).rstrip(".").lower()
        return not domain or domain in self.local

    def split(self, recipients: list[str]) -> tuple[list[str], list[str]]:
        local = [r for r in recipients if self.is_local(r)]
        remote = [r for r in recipients if not self.is_local(r)]
        return local, remote

    def local_address(self, address: str) -> str:
        """`postmaster` without a domain is postmaster of the default domain."""
        return address if "@" in address else f"{address}@{self.config.default_domain}"

    def route(self, domain: str) -> Route:
        """A remote domain's own settings win over the delivery defaults."""
        delivery = self.config.delivery
        own = self.config.domains.remote.get(domain.lower(), RemoteDomain())
        if own.smarthost:
            return Route(domain, own.tls, own.smarthost, own.auth, False)
        direct_first = delivery.attempt_direct_first and delivery.smarthost is not None
        return Route(domain, own.tls, delivery.smarthost, delivery.auth, direct_first,
                     direct_first and delivery.smarthost_for_unknown_domains)
