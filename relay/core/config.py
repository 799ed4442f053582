"""The relay's settings: the value types the YAML is written in (durations, sizes, host:port,
domains, networks, addresses) and the typed schema of every section, with its defaults.

Every setting has the IIS dialog default where IIS has one.  Every process holds a Config (a
child gets its own pickled from the supervisor), so this module is all a process loads of the
config: reading a file into it, with its checks, is relay/core/config_loader.py, and the key
paths and described values the operator sees are relay/ops/config_keys.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TlsPolicy = Literal["none", "may", "require", "verify"]
DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]
DKIM_ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}  # by keygen's short names


class ConfigError(Exception):
    """A config problem, located by file, line and key path."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.file, self.line, self.key, self.reason = file, line, key, message
        where = file or "<config>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


# --- value types ------------------------------------------------------------------------------

class Duration(float):
    """Seconds, written in the config as 30s, 15m, 12h or 2d."""

    UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    @classmethod
    def parse(cls, text: str) -> Duration:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", str(text))
        if not match:
            raise ValueError(f"bad duration {text!r} (write it as 30s, 15m, 12h or 2d)")
        return cls(float(match[1]) * cls.UNITS[match[2]])

    def __str__(self) -> str:
        for unit in ("d", "h", "m"):
            size = self.UNITS[unit]
            if self >= size and self % size == 0:
                return f"{int(self // size)}{unit}"
        return f"{self:g}s"


class Size(int):
    """Bytes, written as 2MiB, 2048KiB, 512B (KB/MB are read as KiB/MiB, as IIS does)."""

    UNITS = {"b": 1, "kib": 1024, "kb": 1024, "k": 1024, "mib": 1024**2, "mb": 1024**2,
             "m": 1024**2, "gib": 1024**3, "gb": 1024**3, "g": 1024**3}

    @classmethod
    def parse(cls, text: str) -> Size:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
        unit = match[2].lower() if match else ""
        if not match or (unit and unit not in cls.UNITS):
            raise ValueError(f"bad size {text!r} (write it as 2MiB, 2048KiB or 512B)")
        return cls(int(match[1]) * cls.UNITS.get(unit, 1))

    def __str__(self) -> str:
        for unit, size in (("MiB", 1024**2), ("KiB", 1024)):
            if self >= size and self % size == 0:
                return f"{self // size}{unit}"
        return f"{int(self)}B"


@dataclass(frozen=True)
class HostPort:
    """`host:port`, `[v6]:port` or a bare host (port from the context's default)."""

    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> HostPort:
        text = str(text).strip()
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]\s]+)(?::(\d+))?", text)
        if not match:
            raise ValueError(f"bad address {text!r} (write it as host:port)")
        host = match[1] or match[3]
        port_text = match[2] or match[4]
        port = int(port_text) if port_text else None
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"bad port in {text!r}")
        return cls(host, port)

    def with_default(self, port: int) -> tuple[str, int]:
        return self.host, self.port if self.port is not None else port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


DOMAIN_RE = re.compile(r"(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


SELECTOR_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


class Domain(str):
    """A DNS domain name, kept lower-case without a trailing dot."""

    @classmethod
    def parse(cls, text: str) -> Domain:
        if not isinstance(text, str) or not DOMAIN_RE.fullmatch(text.strip()):
            raise ValueError(f"bad domain name {text!r}")
        return cls(text.strip().lower().rstrip("."))


class Network(str):
    """An IP network in CIDR form (a bare address is a /32 or /128)."""

    @classmethod
    def parse(cls, text: str) -> Network:
        try:
            return cls(str(ipaddress.ip_network(str(text).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"bad network {text!r} (write it as 10.0.0.0/8 or 127.0.0.1)") from None


class Address(str):
    """An e-mail address (local@domain)."""

    @classmethod
    def parse(cls, text: str) -> Address:
        if not isinstance(text, str) or not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", text.strip()):
            raise ValueError(f"bad e-mail address {text!r}")
        return cls(text.strip())


PARSED_TYPES = (Duration, Size, HostPort, Domain, Network, Address)


# --- the settings -----------------------------------------------------------------------------

def setting(default: Any = None, doc: str = "", **kw: Any) -> Any:
    """A dataclass field carrying its one-line description (shown by `mailroot check`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass(frozen=True)
class Credentials:
    username: str | None = setting(None, "user name for AUTH PLAIN/LOGIN")
    password_file: str | None = setting(None, "file holding the password (first line)")
    password_env: str | None = setting(None, "environment variable holding the password")

    def password(self) -> str | None:
        """The password, read when needed so it is never kept in the YAML."""
        if self.password_env:
            return os.environ.get(self.password_env)
        if self.password_file:
            return Path(self.password_file).read_text().splitlines()[0] if Path(
                self.password_file).exists() else None
        return None


@dataclass(frozen=True)
class RemoteDomain:
    tls: TlsPolicy = setting("may", "STARTTLS policy: none, may, require or verify")
    smarthost: HostPort | None = setting(None, "send this domain's mail through host:port")
    auth: Credentials = setting(Credentials(), "credentials for this domain's smart host")


@dataclass(frozen=True)
class LocalDomains:
    default: Domain | None = setting(None, "the default local domain (defaults to hostname)")
    aliases: list[Domain] = setting([], "alias domains, also delivered to Drop")


@dataclass(frozen=True)
class Domains:
    local: LocalDomains = setting(LocalDomains())
    remote: dict[Domain, RemoteDomain] = setting({}, "per-remote-domain settings")


@dataclass(frozen=True)
class LocalDelivery:
    delay_notification: Duration = setting(Duration(12 * 3600), "delay notice for local mail")
    expiration: Duration = setting(Duration(2 * 86400), "expiry for local mail")


@dataclass(frozen=True)
class Delivery:
    retry: list[Duration] = setting(
        [Duration(900), Duration(1800), Duration(3600), Duration(14400)],
        "first, second, third and subsequent retry intervals")
    delay_notification: Duration = setting(Duration(12 * 3600),
                                           "send one delay notice after this long")
    expiration: Duration = setting(Duration(2 * 86400), "give up (Badmail + NDR) after this long")
    local: LocalDelivery = setting(LocalDelivery())
    max_hop_count: int = setting(15, "more Received: headers than this is a mail loop")
    port: int = setting(25, "outbound SMTP port")
    smarthost: HostPort | None = setting(None, "send all remote mail through host:port")
    attempt_direct_first: bool = setting(False, "try MX first, then the smart host")
    smarthost_for_unknown_domains: bool = setting(
        False, "with attempt_direct_first: a domain DNS does not know (NXDOMAIN, no MX nor "
        "address) goes to the smart host too (IIS SmartHostType=1)")
    auth: Credentials = setting(Credentials(), "credentials for the smart host")
    ca_file: str | None = setting(None, "CA bundle for tls: verify (default: system store)")
    max_connections: int = setting(1000, "outbound connections in all")
    max_connections_per_domain: int = setting(20, "outbound connections per remote domain")
    messages_per_connection: int = setting(20, "messages sent over one connection")
    timeout: Duration = setting(Duration(600), "timeout for each SMTP step")
    ndr_copy_to: Address | None = setting(None, "send a copy of every NDR here")
    masquerade_domain: Domain | None = setting(None, "replace the sender's domain on remote mail")


@dataclass(frozen=True)
class RelayAccess:
    allow: list[Network] = setting([], "networks allowed to relay to remote domains")
    allow_authenticated: bool = setting(True, "authenticated sessions may relay")


@dataclass(frozen=True)
class SmtpTls:
    cert: str | None = setting(None, "certificate (PEM) for STARTTLS")
    key: str | None = setting(None, "private key (PEM) for STARTTLS")
    require: bool = setting(False, "refuse MAIL before STARTTLS")


@dataclass(frozen=True)
class SmtpAuth:
    users_file: str | None = setting(None, "one user:hash per line (see mailroot passwd)")
    allow_plaintext: bool = setting(False, "offer AUTH before STARTTLS")
    max_failures: int = setting(5, "failed AUTHs from one address before it is locked out")
    failure_window: Duration = setting(Duration(600), "count an address's failures this long")
    lockout: Duration = setting(Duration(900), "refuse AUTH (454) from a locked-out address")
    failure_delay: Duration = setting(Duration(1), "a failed AUTH is answered after this "
                                      "times the address's failure count (at most 10x)")


@dataclass(frozen=True)
class SmtpLimits:
    per_client_connections: int = setting(50, "concurrent connections from one address "
                                          "(0: no limit)")
    per_client_rate: int = setting(0, "connections per minute from one address (0: no limit)")
    trusted_connections: int = setting(1000, "concurrent connections from one address in "
                                       "smtp.relay.allow, shared out evenly among the "
                                       "receivers (0: no limit)")


@dataclass(frozen=True)
class Smtp:
    listen: list[HostPort] = setting([HostPort("127.0.0.1", 2525)], "host:port to listen on")
    relay: RelayAccess = setting(RelayAccess())
    max_message_size: Size = setting(Size(2048 * 1024), "largest message accepted")
    max_session_size: Size = setting(Size(10240 * 1024), "most data accepted per connection")
    max_recipients: int = setting(100, "most recipients per message")
    max_connections: int = setting(1000, "concurrent inbound connections")
    timeout: Duration = setting(Duration(600), "idle/slow client timeout")
    tls: SmtpTls = setting(SmtpTls())
    auth: SmtpAuth = setting(SmtpAuth())
    limits: SmtpLimits = setting(SmtpLimits())
    stress_timeout: Duration = setting(Duration(10), "idle timeout while over 80% of "
                                       "max_connections are open")
    greeting_timeout: Duration = setting(Duration(30), "drop a client silent this long after "
                                         "the banner")
    workers: int = setting(0, "SMTP receiver processes (0: one per core; 1: the whole relay "
                              "in one process)")


@dataclass(frozen=True)
class Dns:
    nameservers: list[str] = setting([], "resolver addresses; empty = system resolver")
    port: int = setting(53, "resolver port")
    timeout: Duration = setting(Duration(5), "DNS timeout per query")


@dataclass(frozen=True)
class Pickup:
    rescan: Duration = setting(Duration(10), "rescan Pickup this often as a safety net")
    settle: Duration = setting(Duration(5), "when a writer can't be seen, wait until unchanged")


@dataclass(frozen=True)
class Admin:
    trash_retention: Duration = setting(Duration(7 * 86400), "keep deleted messages this long")


@dataclass(frozen=True)
class DkimKey:
    selector: str = setting("", "the key's DNS record is SELECTOR._domainkey.DOMAIN")
    key_file: str = setting("", "the private key (PEM for rsa, base64 seed for ed25519)")
    algorithm: DkimAlgorithm = setting("rsa-sha256", "rsa-sha256 or ed25519-sha256")


@dataclass(frozen=True)
class Log:
    max_size: Size = setting(Size(50 * 1024**2), "rotate events.jsonl and audit.log at this size")
    keep: int = setting(5, "rotated files kept (events.jsonl.1 is the newest)")


@dataclass(frozen=True)
class Metrics:
    listen: HostPort | None = setting(None, "serve Prometheus /metrics on host:port (off: null)")


@dataclass(frozen=True)
class QueueManager:
    active_limit: int = setting(20000, "queued messages kept in memory (the earliest due)")


@dataclass(frozen=True)
class Config:
    mailroot: str = setting("./mailroot", "the mailroot folder")
    hostname: str | None = setting(None, "FQDN for EHLO, Received and Reporting-MTA")
    domains: Domains = setting(Domains())
    delivery: Delivery = setting(Delivery())
    smtp: Smtp = setting(Smtp())
    dns: Dns = setting(Dns())
    pickup: Pickup = setting(Pickup())
    admin: Admin = setting(Admin())
    log: Log = setting(Log())
    metrics: Metrics = setting(Metrics())
    dkim: dict[Domain, list[DkimKey]] = setting(
        {}, "DKIM signing keys by sender domain (a mapping, or a list of them to dual-sign)")
    queue: QueueManager = setting(QueueManager())
    source: str | None = field(default=None, compare=False, metadata={"internal": True})

    @property
    def fqdn(self) -> str:
        return self.hostname or socket.getfqdn() or "localhost"

    @property
    def default_domain(self) -> str:
        return self.domains.local.default or self.fqdn.lower()

    @property
    def local_domains(self) -> frozenset[str]:
        return frozenset([self.default_domain, *self.domains.local.aliases])

    @property
    def root(self) -> Path:
        return Path(self.mailroot)
