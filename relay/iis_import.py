"""`mailroot import-iis`: an IIS SMTP virtual server's settings as a commented mailroot config.

Property names, meanings and units are those of Microsoft's IIS 6 metabase property reference
(Windows Server 2003 "Metabase Property Reference"): the retry intervals and expiry times are in
minutes, sizes in bytes, timeouts in seconds.  Values that equal mailroot's defaults (the IIS
dialog defaults) are not written.  Whatever is found and not mapped is listed, with the
reason, in the file's header and on stderr; what matters for mail flow or security and could
not be imported is a problem (exit 1), and for the relay list nothing is imported then.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from relay import config as configmod
from relay import metabase, settings
from relay.config import Config, ConfigError, Duration, HostPort, Size
from relay.metabase import Metabase, RelayListError, SmtpServer, dword

# "No limit": 0, 0xFFFFFFFF (-1), and the 2000000000 the IIS dialogs write for "unlimited".
UNLIMITED = {0, 2000000000, 0xFFFFFFFF}

# RouteAction bits, as published with Microsoft's RouteAction metabase property page.
SMTP_DROP, SMTP_SMARTHOST, SMTP_SSL, SMTP_SASL = 0x1, 0x2, 0x4, 0x8
SMTP_ALIAS, SMTP_DELIVER, SMTP_DEFAULT = 0x10, 0x20, 0x40
SMTP_AUTH_NTLM, SMTP_AUTH_CLEARTEXT = 0x80, 0x100
SMTP_DOMAIN_RELAY = 0x1000
ROUTE_BITS = {
    0x1: "SMTP_DROP", 0x2: "SMTP_SMARTHOST", 0x4: "SMTP_SSL", 0x8: "SMTP_SASL",
    0x10: "SMTP_ALIAS", 0x20: "SMTP_DELIVER", 0x40: "SMTP_DEFAULT", 0x80: "SMTP_AUTH_NTLM",
    0x100: "SMTP_AUTH_CLEARTEXT", 0x200: "SMTP_ETRN_CMD", 0x400: "SMTP_IP_RELAY",
    0x800: "SMTP_AUTH_RELAY", 0x1000: "SMTP_DOMAIN_RELAY", 0x2000: "SMTP_CSIDE_TURN",
    0x4000: "SMTP_CSIDE_ETRN", 0x8000: "SMTP_DISABLE_ETRN", 0x10000: "SMTP_CHUNKING",
    0x20000: "SMTP_DISABLE_CHUNK", 0x40000: "SMTP_DISABLE_BMIME", 0x80000: "SMTP_DISABLE_DSN",
    0x100000: "SMTP_DISABLE_PIPELINE", 0x200000: "SMTP_AUTH_KERBEROS",
    0x400000: "SMTP_USE_HELO",
}
# Bits of a local domain that need nothing more in mailroot (its mail goes to Drop anyway).
LOCAL_BITS = SMTP_DROP | SMTP_ALIAS | SMTP_DEFAULT | SMTP_DELIVER

# AuthFlags (MD_AUTH_*): written as a number or as names joined by "|".
AUTH_ANONYMOUS, AUTH_BASIC, AUTH_NTLM = 0x1, 0x2, 0x4
AUTH_NAMES = {"authanonymous": 0x1, "authbasic": 0x2, "authntlm": 0x4, "authmd5": 0x10,
              "authpassport": 0x40}

# Properties read by the import, with those only named in the report.
NOT_MAPPED = {
    "AllowVerify": "VRFY is never offered",
    "AllowExpand": "EXPN is never offered",
    "EnableReverseDnsLookup": "mailroot does no reverse DNS lookup of clients",
    "AlwaysUseSsl": "set tls: require per remote domain (domains.remote.<domain>.tls)",
    "RoutePassword": "passwords are never imported: put it in a file and set "
                     "delivery.auth.password_file",
    "LogFileDirectory": "mailroot logs events to log/events.jsonl in the mailroot",
    "LogType": "mailroot logs events to log/events.jsonl in the mailroot",
    "ServerComment": "a label only",
    "SmtpInboundCommandSupportOptions": "mailroot offers its own fixed set of extensions",
    "SmtpOutboundCommandSupportOptions": "mailroot uses what the next hop offers",
}
# The IIS default folders; others are reported (mailroot keeps its folders under `mailroot`).
FOLDERS = {"PickupDirectory": "pickup", "QueueDirectory": "queue",
           "BadMailDirectory": "badmail", "DropDirectory": "drop"}


@dataclass
class Imported:
    """The import's result: settings by key path, where each came from, and the report."""

    server: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    not_imported: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # comments for the header (raw values)

    def set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.sources[key] = source

    def skip(self, name: str, value: str, reason: str) -> None:
        self.not_imported.append(_entry(name, value, reason))

    def problem(self, name: str, value: str, reason: str) -> None:
        self.problems.append(_entry(name, value, reason))


def _entry(name: str, value: str, reason: str, limit: int = 60) -> str:
    value = " ".join(value.split())
    value = value if len(value) <= limit else value[:limit] + "…"
    return f"{name}={value} — {reason}" if value else f"{name} — {reason}"


def _minutes(text: str) -> str:
    return str(Duration(dword(text) * 60))


def _seconds(text: str) -> str:
    return str(Duration(dword(text)))


def _bytes(text: str) -> str:
    return str(Size(dword(text)))


def _count(text: str) -> int:
    return dword(text)


# (IIS property, mailroot key, conversion, True if 0 and 0xFFFFFFFF mean "no limit")
SCALARS: list[tuple[str, str, Callable[[str], Any], bool]] = [
    ("FullyQualifiedDomainName", "hostname", str.strip, False),
    ("SmtpRemoteDelayExpireMinutes", "delivery.delay_notification", _minutes, False),
    ("SmtpRemoteNdrExpireMinutes", "delivery.expiration", _minutes, False),
    ("SmtpLocalDelayExpireMinutes", "delivery.local.delay_notification", _minutes, False),
    ("SmtpLocalNdrExpireMinutes", "delivery.local.expiration", _minutes, False),
    ("HopCount", "delivery.max_hop_count", _count, False),
    ("RemoteSmtpPort", "delivery.port", _count, False),
    ("MaxOutConnections", "delivery.max_connections", _count, True),
    ("MaxOutConnectionsPerDomain", "delivery.max_connections_per_domain", _count, True),
    ("MaxBatchedMessages", "delivery.messages_per_connection", _count, True),
    ("RemoteTimeout", "delivery.timeout", _seconds, False),
    ("SendNdrTo", "delivery.ndr_copy_to", str.strip, False),
    ("MasqueradeDomain", "delivery.masquerade_domain", str.strip, False),
    ("MaxMessageSize", "smtp.max_message_size", _bytes, True),
    ("MaxSessionSize", "smtp.max_session_size", _bytes, True),
    ("MaxRecipients", "smtp.max_recipients", _count, True),
    ("MaxConnections", "smtp.max_connections", _count, True),
    ("ConnectionTimeout", "smtp.timeout", _seconds, False),
]
HANDLED = {name for name, *_ in SCALARS} | {
    "SmtpRemoteProgressiveRetry", "SmartHost", "SmartHostType", "DefaultDomain",
    "ServerBindings", "RelayIpList", "RelayForAuth", "AuthFlags", "RouteAction",
    "RouteUserName", *FOLDERS}


def import_server(mb: Metabase, number: str | None = None) -> Imported:
    """Map one virtual server; raises LookupError when there is no such server."""
    server = mb.server(number)
    result = Imported(server.key.location)
    props = server.properties
    for name, key, convert, limit in SCALARS:
        if name not in props or not props[name].strip():
            continue
        try:
            value = convert(props[name])
        except ValueError:
            result.problem(name, props[name], "not a number")
            continue
        if limit and dword(props[name]) in UNLIMITED:
            result.skip(name, props[name], "no limit in IIS; mailroot keeps a limit "
                                           f"({key} stays at its default)")
            continue
        result.set(key, value, f"{name}={props[name].strip()}")
    _retry(props, result)
    _smarthost(props, result)
    _outbound(props, result)
    _bindings(props, result)
    _relay(props, result)
    _auth(props, result)
    _folders(props, result)
    _domains(server, result)
    for name in sorted(set(props) - HANDLED):
        shown = "" if "password" in name.lower() else props[name]  # never a secret, anywhere
        result.skip(name, shown, NOT_MAPPED.get(name, "no mailroot setting"))
    for other in mb.servers:
        if other is not server.key:
            result.skip(f"IIsSmtpServer {other.location}", "", "another virtual server: import "
                        f"it into a config of its own with --server {other.name}")
    return result


def _retry(props: dict[str, str], result: Imported) -> None:
    text = props.get("SmtpRemoteProgressiveRetry", "").strip()
    if not text:
        return
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        result.problem("SmtpRemoteProgressiveRetry", text,
                       "expected four intervals in minutes (first, second, third, subsequent)")
        return
    result.set("delivery.retry", [_minutes(p) for p in parts],
               f"SmtpRemoteProgressiveRetry={text}")


def _smarthost(props: dict[str, str], result: Imported) -> None:
    """SmartHostType: 0 none, 1 direct delivery first, 2 always (metabase reference)."""
    host = props.get("SmartHost", "").strip()
    kind = dword(props.get("SmartHostType", "0") or "0")
    source = f"SmartHost={host}, SmartHostType={kind}"
    if not host:
        if kind:
            result.skip("SmartHostType", str(kind), "no SmartHost is set")
        return
    if kind == 0:
        result.skip("SmartHost", host, "SmartHostType is 0: the smart host was not used")
        return
    if kind not in (1, 2):
        result.problem("SmartHostType", str(kind), "unknown smart host type (0, 1 or 2)")
        return
    smart = _host("SmartHost", host, result)
    if smart is None:
        return
    result.set("delivery.smarthost", smart, source)
    if kind == 1:
        result.set("delivery.attempt_direct_first", True, source)


def _outbound(props: dict[str, str], result: Imported) -> None:
    """The server's RouteAction: its Outbound Security (TLS, credentials for the next hop)."""
    text = props.get("RouteAction", "").strip()
    action = dword(text or "0")
    unknown = action & ~sum(ROUTE_BITS)
    if unknown:
        result.problem("RouteAction", text, f"unknown RouteAction bits 0x{unknown:x}")
    user = props.get("RouteUserName", "").strip()
    if action & SMTP_SASL and user:
        if "delivery.smarthost" in result.values:
            result.set("delivery.auth.username", user, f"RouteUserName={user}")
        else:
            result.skip("RouteUserName", user, "mailroot sends credentials to smart hosts "
                                               "only, and no SmartHost is set")
    if action & SMTP_SSL:
        result.problem("RouteAction", text, "TLS for all outbound mail: mailroot sets TLS per "
                       "remote domain (domains.remote.<domain>.tls: require)")
    if action & SMTP_AUTH_NTLM:
        result.problem("RouteAction", text, "Windows integrated (NTLM) authentication to the "
                       "next hop is not supported")
    _unmapped_bits("RouteAction", action & ~(SMTP_SASL | SMTP_SSL | SMTP_AUTH_NTLM
                                             | SMTP_AUTH_CLEARTEXT | unknown), result)


def _unmapped_bits(name: str, bits: int, result: Imported) -> None:
    for bit, bit_name in ROUTE_BITS.items():
        if bits & bit:
            result.skip(name, bit_name, "no mailroot setting")


def _host(name: str, text: str, result: Imported) -> str | None:
    """A smart host as IIS writes it: a name, or an address in brackets ("[10.0.0.1]")."""
    try:
        return str(HostPort.parse(text))
    except ValueError as exc:
        result.problem(name, text, str(exc))
        return None


def _bindings(props: dict[str, str], result: Imported) -> None:
    """ServerBindings are `IP:port:hostname` lines; an empty IP is every address."""
    text = props.get("ServerBindings", "")
    listen = []
    for line in metabase.multisz(text):
        parts = line.split(":")
        if len(parts) < 2 or not parts[-2].isdigit():
            result.problem("ServerBindings", line, "expected IP:port:hostname")
            return
        address = ":".join(parts[:-2])
        host = address.strip("[]") or "0.0.0.0"
        listen.append(str(HostPort(host, int(parts[-2]))))
    if listen:
        result.set("smtp.listen", listen, f"ServerBindings={' '.join(metabase.multisz(text))}")


def _relay(props: dict[str, str], result: Imported) -> None:
    raw = props.get("RelayIpList")
    if raw is not None and raw.strip():
        try:
            granted = metabase.relay_list(raw)
        except RelayListError as exc:
            result.problem("RelayIpList", raw, f"not imported, no client may relay by address "
                                               f"until you set smtp.relay.allow: {exc}")
            result.notes.append(f"RelayIpList (raw, not imported): {raw.strip()}")
        else:
            if granted.grant:
                result.set("smtp.relay.allow", granted.grant,
                           "RelayIpList (only the list below)")
    if "RelayForAuth" in props:
        allowed = dword(props["RelayForAuth"]) != 0
        result.set("smtp.relay.allow_authenticated", allowed,
                   f"RelayForAuth={props['RelayForAuth'].strip()}")


def _auth_flags(text: str) -> int:
    flags = 0
    for part in text.split("|"):
        part = part.strip()
        if part.lower() in AUTH_NAMES:
            flags |= AUTH_NAMES[part.lower()]
        elif part:
            flags |= dword(part)
    return flags


def _auth(props: dict[str, str], result: Imported) -> None:
    if "AuthFlags" not in props:
        return
    text = props["AuthFlags"]
    try:
        flags = _auth_flags(text)
    except ValueError:
        result.problem("AuthFlags", text, "not a flag set")
        return
    if not flags & AUTH_ANONYMOUS:
        result.problem("AuthFlags", text, "IIS required every client to authenticate; mailroot "
                       "takes mail for its local domains without AUTH")
    if flags & (AUTH_BASIC | AUTH_NTLM):
        result.skip("AuthFlags", text, "AUTH used Windows accounts: add users with `mailroot "
                    "passwd USER` and set smtp.auth.users_file (AUTH PLAIN/LOGIN only)")


def _folders(props: dict[str, str], result: Imported) -> None:
    for name, folder in FOLDERS.items():
        value = props.get(name, "").strip()
        if value and value.rstrip("\\").lower() != f"c:\\inetpub\\mailroot\\{folder}":
            result.skip(name, value, "mailroot keeps its folders under the `mailroot` folder; "
                                     "move or point producers there")


def _domains(server: SmtpServer, result: Imported) -> None:
    default = None
    aliases: list[str] = []
    for key in server.domains:
        name, props = key.name.lower(), key.properties
        action = dword(props.get("RouteAction", "0") or "0")
        label = f"IIsSmtpDomain {key.name} (line {key.line})"
        unknown = action & ~sum(ROUTE_BITS)
        if unknown:
            result.problem(f"{label} RouteAction", str(action),
                           f"unknown RouteAction bits 0x{unknown:x}: domain not imported")
            continue
        if action & SMTP_DEFAULT:
            default = name
            result.sources["domains.local.default"] = f"{label} RouteAction={action}"
            drop = props.get("DropDirectory", "").strip()
            if drop and drop.rstrip("\\").lower() != "c:\\inetpub\\mailroot\\drop":
                result.skip(f"{label} DropDirectory", drop,
                            "mail for local domains goes to the mailroot's Drop folder")
        elif action & SMTP_ALIAS:
            aliases.append(name)
        else:
            _remote(name, label, action, props, result)
    named = server.properties.get("DefaultDomain", "").strip().lower()
    if default is None and named:  # no key carries SMTP_DEFAULT: the server's DefaultDomain
        default = named
        result.sources["domains.local.default"] = f"DefaultDomain={named}"
        aliases = [a for a in aliases if a != named]
    if default:
        result.values["domains.local.default"] = default
    if aliases:
        result.set("domains.local.aliases", aliases, "IIsSmtpDomain entries with SMTP_ALIAS")


def _remote(name: str, label: str, action: int, props: dict[str, str],
            result: Imported) -> None:
    prefix = f"domains.remote.{name}."
    source = f"{label} RouteAction={action}"
    result.set(prefix + "tls", "require" if action & SMTP_SSL else "may", source)
    if action & SMTP_SMARTHOST:
        text = props.get("RouteActionString", "").strip()
        smart = _host(f"{label} RouteActionString", text, result)
        if smart is not None:
            result.set(prefix + "smarthost", smart, f"{label} RouteActionString={text}")
    if action & SMTP_SASL and props.get("RouteUserName", "").strip():
        result.set(prefix + "auth.username", props["RouteUserName"].strip(), source)
        result.skip(f"{label} RoutePassword", "", NOT_MAPPED["RoutePassword"].replace(
            "delivery.auth", prefix + "auth"))
    if action & SMTP_AUTH_NTLM:
        result.problem(f"{label} RouteAction", str(action),
                       "Windows integrated (NTLM) authentication to the next hop is not "
                       "supported")
    if action & SMTP_DOMAIN_RELAY:
        result.problem(f"{label} RouteAction", str(action), "\"allow incoming mail to be "
                       "relayed to this domain\" has no mailroot equivalent; clients need "
                       "smtp.relay.allow or AUTH to relay to it")
    _unmapped_bits(f"{label} RouteAction", action & ~(
        SMTP_SMARTHOST | SMTP_SSL | SMTP_SASL | SMTP_AUTH_NTLM | SMTP_AUTH_CLEARTEXT
        | SMTP_DOMAIN_RELAY | LOCAL_BITS), result)


# --- writing ----------------------------------------------------------------------------------

def _value_of(config: Config, key: str) -> Any:
    node: Any = config
    for part in settings.split_key(key):
        node = node.get(configmod.Domain.parse(part)) if isinstance(node, dict) else getattr(
            node, part)
    return node


def _parsed(key: str, value: Any) -> Config:
    """A config holding only this one value (raises ConfigError naming the key)."""
    doc = settings.Document(CommentedMap())
    doc.set(settings.split_key(key), value)
    return configmod.parse(yaml.safe_dump(_plain(doc.root)), None)


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def settled(result: Imported) -> dict[str, Any]:
    """The values to write: each valid one that differs from mailroot's default."""
    defaults = Config()
    keep: dict[str, Any] = {}
    for key, value in result.values.items():
        try:
            parsed = _parsed(key, value)
        except ConfigError as exc:
            result.problem(result.sources.get(key, key), "", f"not a valid {key}: {exc.reason}")
            continue
        if key.startswith(("domains.", "hostname")) or _value_of(parsed, key) != _value_of(
                defaults, key):
            keep[key] = value
    return keep


def render(result: Imported, source: str) -> str:
    """The config text: a header with the report, then the settings, each with its origin."""
    values = settled(result)
    root = CommentedMap()
    doc = settings.Document(root)
    for key in _ordered(values):
        value = values[key]
        if isinstance(value, list):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            value = seq
        parts = settings.split_key(key)
        doc.set(parts, value)
        parent = doc.get(parts[:-1]) if len(parts) > 1 else root
        parent.yaml_add_eol_comment(f"IIS {result.sources.get(key, '')}", parts[-1])
    header = [f"mailroot configuration imported from {source}",
              f"(IIS SMTP virtual server {result.server}) on "
              f"{time.strftime('%Y-%m-%d %H:%M')} by mailroot import-iis.",
              "Settings equal to mailroot's defaults (the IIS dialog defaults) are not "
              "written; see config.example.yaml for every key.",
              "Check with: mailroot check -c THIS_FILE"]
    if result.problems:
        header += ["", "NEEDS ATTENTION (not imported):"] + [f"  {p}" for p in result.problems]
    if result.not_imported:
        header += ["", "Not imported:"] + [f"  {p}" for p in result.not_imported]
    header += [f"  {note}" for note in result.notes]
    if not values:
        root["mailroot"] = Config().mailroot  # an empty mapping would not be a config
    root.yaml_set_start_comment("\n".join(header) + "\n")
    text = doc.dump()
    configmod.parse(text, None)  # what `mailroot check` does: a bug here must not be written
    return text


def _ordered(values: dict[str, Any]) -> list[str]:
    """Keys in the order of config.example.yaml (the schema's order)."""
    order = {path: i for i, path in enumerate(configmod.key_paths())}

    def rank(key: str) -> tuple[int, str]:
        if key.startswith("domains.remote."):
            return order.get("domains.remote.<domain>.tls", 0), key
        return order.get(key, len(order)), key

    return sorted(values, key=rank)


def report_lines(result: Imported) -> list[str]:
    return ([f"problem: {p}" for p in result.problems]
            + [f"not imported: {p}" for p in result.not_imported])

