"""Load and validate the relay's YAML configuration.

Every setting has the IIS dialog default where IIS has one.  Errors name the file, the key path
and the line, so an operator can fix a broken config without guessing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

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


# --- loading ----------------------------------------------------------------------------------

class _Loader:
    """Walk a composed YAML node tree against the dataclass schema, keeping line numbers."""

    def __init__(self, file: str | None) -> None:
        self.file = file
        self.lines: dict[str, int] = {}  # key path -> line, for cross-key errors

    def error(self, node: yaml.Node | None, key: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, line=line, key=key)

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, "expected a single value, not a list or mapping")
        return yaml.SafeLoader("").construct_object(node)  # type: ignore[arg-type]

    def convert(self, node: yaml.Node, tp: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (types.UnionType, typing.Union):
            inner = next(a for a in args if a is not type(None))
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return None
            return self.convert(node, inner, key)
        if dataclasses.is_dataclass(tp) and tp not in PARSED_TYPES:
            return self.section(node, tp, key)
        if origin is list:
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return []
            if isinstance(node, yaml.MappingNode) and dataclasses.is_dataclass(args[0]):
                return [self.section(node, args[0], key)]  # one section: a list of one
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(node, key, "expected a list")
            for i, item in enumerate(node.value):
                self.lines[f"{key}[{i}]"] = item.start_mark.line + 1
            return [self.convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(node.value)]
        if origin is dict:
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return {}
            pairs = self.pairs(node, key)
            result: dict = {}
            for name, (knode, vnode) in pairs.items():
                try:
                    dkey = args[0].parse(name)
                except ValueError as exc:
                    raise self.error(knode, f"{key}.{name}", str(exc)) from None
                result[dkey] = self.convert(vnode, args[1], f"{key}.{name}")
            return result
        value = self.scalar(node, key)
        if origin is Literal:
            if value not in args:
                raise self.error(node, key, f"must be one of {', '.join(map(str, args))}, "
                                            f"not {value!r}")
            return value
        if tp in PARSED_TYPES:
            if tp is Domain and value is None:
                raise self.error(node, key, "a domain name is required")
            try:
                return tp.parse(value if isinstance(value, str) else str(value))
            except ValueError as exc:
                raise self.error(node, key, str(exc)) from None
        if tp is bool:
            if not isinstance(value, bool):
                raise self.error(node, key, f"expected true or false, not {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self.error(node, key, f"expected a whole number >= 0, not {value!r}")
            return value
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise self.error(node, key, f"expected text, not {value!r}")
            return str(value)
        raise AssertionError(f"unhandled type {tp!r}")

    def pairs(self, node: yaml.Node, key: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key or "(top level)", "expected a mapping of keys")
        pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = str(self.scalar(knode, key))
            path = f"{key}.{name}" if key else name
            self.lines.setdefault(path, knode.start_mark.line + 1)
            if name in pairs:
                what = "a second default domain" if path == "domains.local.default" else \
                    "duplicate key"
                raise self.error(knode, path, f"{what} (first given on line "
                                              f"{pairs[name][0].start_mark.line + 1})")
            pairs[name] = (knode, vnode)
        return pairs

    def section(self, node: yaml.Node, cls: type, key: str) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return cls()
        pairs = self.pairs(node, key)
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        values = {}
        for name, (knode, vnode) in pairs.items():
            path = f"{key}.{name}" if key else name
            if name not in known:
                raise self.error(knode, path, "unknown key (known here: "
                                              f"{', '.join(sorted(known))})")
            values[name] = self.convert(vnode, hints[name], path)
        return cls(**values)


def parse(text: str, file: str | None = None) -> Config:
    """Parse config text; raise ConfigError naming file, line and key."""
    loader = _Loader(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=file,
                          line=mark.line + 1 if mark else None) from None
    config = Config(source=file) if root is None else loader.section(root, Config, "")
    config = dataclasses.replace(config, source=file)
    check(config, loader.lines, file)
    return config


def check(config: Config, lines: dict[str, int] | None = None, file: str | None = None) -> None:
    """Cross-key rules that a single value can't express."""
    lines = lines or {}

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=file, line=lines.get(key), key=key)

    seen = {config.default_domain}
    for i, domain in enumerate(config.domains.local.aliases):
        if domain in seen:
            raise fail(f"domains.local.aliases[{i}]", f"{domain} is already a local domain")
        seen.add(domain)
    written = {k.lower().rstrip("."): k for k in lines}  # as typed, for the line number
    for domain in config.domains.remote:
        if domain in seen:
            key = f"domains.remote.{domain}"
            raise fail(written.get(key, key), f"{domain} is both a local and a remote domain")
    if len(config.delivery.retry) != 4:
        raise fail("delivery.retry", "give four intervals: first, second, third, subsequent")
    if bool(config.smtp.tls.cert) != bool(config.smtp.tls.key):
        raise fail("smtp.tls", "set both cert and key, or neither")
    if config.smtp.tls.require and not config.smtp.tls.cert:
        raise fail("smtp.tls.require", "STARTTLS can't be required without smtp.tls.cert/key")
    for key in ("stress_timeout", "greeting_timeout"):
        if not getattr(config.smtp, key):
            raise fail(f"smtp.{key}", "must be longer than 0s (0 would drop every client at once)")
    for domain, keys in config.dkim.items():
        prefix = written.get(f"dkim.{domain}", f"dkim.{domain}")
        if not keys:
            raise fail(prefix, "give a selector and key_file, or remove the domain")
        selectors: set[str] = set()
        for i, key in enumerate(keys):
            where = f"{prefix}[{i}]" if f"{prefix}[{i}]" in lines else prefix

            def fail_at(name: str, message: str, where: str = where) -> ConfigError:
                path = f"{where}.{name}"
                return ConfigError(message, file=file, key=path,
                                   line=lines.get(path, lines.get(where)))

            if not SELECTOR_RE.fullmatch(key.selector):
                raise fail_at("selector", "a selector (DNS labels, like mail2026) is required, "
                                          f"not {key.selector!r}")
            if key.selector.lower() in selectors:
                raise fail_at("selector", f"selector {key.selector} is given twice")
            selectors.add(key.selector.lower())
            if not key.key_file:
                raise fail_at("key_file", "the private key's file is required")
    if config.smtp.workers < 0:
        raise fail("smtp.workers", "give 0 (one per core), 1 (one process) or more")
    if config.log.keep < 1:
        raise fail("log.keep", "keep at least one rotated file")
    if config.log.max_size < 64 * 1024:
        raise fail("log.max_size", "rotate at 64KiB or more")
    if config.metrics.listen and config.metrics.listen.port is None:
        raise fail("metrics.listen", "give host:port, e.g. 127.0.0.1:9154")
    if config.queue.active_limit < 1:
        raise fail("queue.active_limit", "must be at least 1")


def load(path: str | Path | None) -> Config:
    """Load a config file; None gives the defaults (a mailroot in ./mailroot)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(path)) from None
    return parse(text, str(path))


def describe(config: Config) -> list[tuple[str, str, str]]:
    """(key path, effective value, description) for every setting, for `mailroot check`."""
    rows: list[tuple[str, str, str]] = []

    def show(value: Any) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(show(v) for v in value) + "]"
        if value is None:
            return "(none)"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            path = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value) and not isinstance(value, HostPort):
                walk(value, path + ".")
            elif isinstance(value, dict):
                if not value:
                    rows.append((path, "{}", f.metadata.get("doc", "")))
                for name, sub in value.items():
                    items = sub if isinstance(sub, list) else [sub]
                    for i, item in enumerate(items):
                        walk(item, f"{path}.{name}{f'[{i}]' if len(items) > 1 else ''}.")
            else:
                rows.append((path, show(value), f.metadata.get("doc", "")))

    walk(config, "")
    effective = {"hostname": config.fqdn, "domains.local.default": config.default_domain}
    return [(k, effective.get(k, v), d) for k, v, d in rows]


def key_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every fixed key path of the schema (remote domains are per-domain, shown as <domain>)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp) and tp not in PARSED_TYPES:
            paths += key_paths(tp, path + ".")
        elif typing.get_origin(tp) is dict:
            item = typing.get_args(tp)[1]
            if typing.get_origin(item) is list:  # dkim: one or more sections per domain
                item = typing.get_args(item)[0]
            paths += key_paths(item, path + ".<domain>.")
        else:
            paths.append(path)
    return paths
