"""`mailroot import-iis`: an IIS SMTP virtual server's settings as a commented mailroot config.

Property names, meanings and units are those of Microsoft's IIS 6 metabase property reference
(Windows Server 2003 "Metabase Property Reference"): the retry intervals and expiry times are in
minutes, sizes in bytes, timeouts in seconds.  Values that equal mailroot's defaults (the IIS
dialog defaults) are not written.  Whatever is found and not mapped is listed, with the
reason, in the file's header and on stderr; what matters for mail flow or security and could
not be imported is a problem (exit 1), and for the relay list nothing is imported then.

This module maps a virtual server's properties and domains to config keys; the RouteAction
bits are relay/cli/iis_route_action.py, and the config's text relay/cli/iis_render.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relay.cli import metabase
from relay.cli.iis_route_action import (
    AUTH_BITS,
    DIVERTING,
    KNOWN_BITS,
    ROUTE_BITS,
    SMTP_ALIAS,
    SMTP_DEFAULT,
    SMTP_DROP,
    SMTP_ETRN_CMD,
    SMTP_SMARTHOST,
    SMTP_SSL,
)
from relay.cli.metabase import Metabase, RelayListError, SmtpServer, dword
from relay.core.config import Duration, HostPort, Size

# "No limit": 0, 0xFFFFFFFF (-1), and the 2000000000 the IIS dialogs write for "unlimited".
UNLIMITED = {0, 2000000000, 0xFFFFFFFF}

# AuthFlags (MD_AUTH_*): written as a number or as names joined by "|".
AUTH_ANONYMOUS, AUTH_BASIC, AUTH_NTLM = 0x1, 0x2, 0x4
AUTH_NAMES = {"authanonymous": 0x1, "authbasic": 0x2, "authntlm": 0x4, "authmd5": 0x10,
              "authpassport": 0x40}

# Properties of the service and server only named in the report, with the reason.
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
    ("SmtpRemoteNDRExpireMinutes", "delivery.expiration", _minutes, False),
    ("SmtpLocalDelayExpireMinutes", "delivery.local.delay_notification", _minutes, False),
    ("SmtpLocalNDRExpireMinutes", "delivery.local.expiration", _minutes, False),
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
# The properties of a service or server the import knows (in the schema's spelling).
SERVER_PROPERTIES = HANDLED | set(NOT_MAPPED)
# The properties of a domain the import knows: None for those it reads, else what IIS did with
# it (listed under NEEDS ATTENTION: mailroot has none of them per domain).
DOMAIN_PROPERTIES: dict[str, str | None] = {
    "RouteAction": None, "RouteActionString": None, "RouteUserName": None,
    "RoutePassword": None, "DropDirectory": None,
    "AuthTurnList": "IIS let these accounts collect the domain's queued mail with TURN/ATRN "
                    "(KB 183476); mailroot has no TURN",
    "CSideEtrnDomains": "IIS used it for client-side ETRN (its name only: Microsoft documents "
                        "no more); mailroot sends no ETRN",
    "RelayIpList": "IIS applied a relay restriction list to this domain alone; mailroot's "
                   "relay list (smtp.relay.allow) is for the whole relay",
    "RelayForAuth": "IIS let authenticated clients relay to this domain alone; mailroot's "
                    "setting (smtp.relay.allow_authenticated) is for the whole relay",
}


def import_server(mb: Metabase, number: str | None = None) -> Imported:
    """Map one virtual server; raises LookupError when there is no such server."""
    server = mb.server(number)
    result = Imported(server.key.location)
    props = server.properties
    if not mb.service.location:
        result.skip(metabase.SERVICE, "", "not in this file: the service's defaults apply "
                                          "(IIS's, which are mailroot's)")
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
    """SmartHostType, as Microsoft's SmartHostType page (cc739348, ms525300) says: 0 the smart
    host is not used; 1 "direct delivery through DNS lookup first; if DNS fails to look up the
    domains of the recipients, the smart host ... is used"; 2 always, without DNS."""
    host = props.get("SmartHost", "").strip()
    kind = _number("SmartHostType", props.get("SmartHostType", "").strip(), result)
    if kind is None:
        return
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
        result.set("delivery.smarthost_for_unknown_domains", True, source)


def _outbound(props: dict[str, str], result: Imported) -> None:
    """The server's RouteAction: its Outbound Security (TLS, credentials for the next hop)."""
    text = props.get("RouteAction", "").strip()
    action = _route_action("RouteAction", text, result)
    user = props.get("RouteUserName", "").strip()
    if action is None:
        return
    if action & AUTH_BITS and user:
        if "delivery.smarthost" in result.values:
            result.set("delivery.auth.username", user, f"RouteUserName={user}")
        else:
            result.skip("RouteUserName", user, "mailroot sends credentials to smart hosts "
                                               "only, and no SmartHost is set")
    elif user:
        result.skip("RouteUserName", user, "RouteAction has no SMTP_SASL: IIS did not "
                                           "authenticate to the next hop")
    if action & SMTP_SSL:
        result.problem("RouteAction", text, "TLS for all outbound mail: mailroot sets TLS per "
                       "remote domain (domains.remote.<domain>.tls: require)")
    _unmapped_bits("RouteAction", text, action & ~(AUTH_BITS | SMTP_SSL), result)


def _route_action(name: str, text: str, result: Imported) -> int | None:
    """A RouteAction value, its bits outside IIS's table listed; None if not a number."""
    action = _number(name, text, result)
    if action is None:
        return None
    unknown = action & ~KNOWN_BITS
    if unknown:
        result.problem(name, text, f"bits 0x{unknown:x} are not in IIS's RouteAction table: "
                                   "what IIS did with them is not known")
    return action


def _number(name: str, text: str, result: Imported) -> int | None:
    """A DWORD property's value (none written is 0); None, and listed, if not a number."""
    try:
        return dword(text or "0")
    except ValueError:
        result.problem(name, text, "not a number")
        return None


def _unmapped_bits(name: str, text: str, bits: int, result: Imported) -> None:
    """Every bit of the table set and not imported, with what IIS did and mailroot does."""
    for bit in ROUTE_BITS:
        if bits & bit.value:
            result.problem(name, text, f"{bit.name} (0x{bit.value:x}): IIS {bit.iis}; "
                                       f"{bit.mailroot}")


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
    if raw is not None and not raw.strip():
        result.problem("RelayIpList", '""', "empty: IIS reads it as \"all except the list "
                       "below\" with no one listed, so every client could relay; imported as "
                       "the safe choice, nobody relays by address: list the clients that "
                       "must in smtp.relay.allow")
    elif raw is not None:
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
    text = props.get("RelayForAuth", "").strip()
    allowed = _number("RelayForAuth", text, result) if text else None
    if allowed is not None:
        result.set("smtp.relay.allow_authenticated", allowed != 0, f"RelayForAuth={text}")


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
    accounts = ("AUTH used Windows accounts: add users with `mailroot passwd USER` and set "
                "smtp.auth.users_file (AUTH PLAIN/LOGIN only)")
    if not flags & AUTH_ANONYMOUS:
        result.problem("AuthFlags", text, "IIS required every client to authenticate; mailroot "
                       "takes mail for its local domains without AUTH"
                       + (f". {accounts}" if flags & (AUTH_BASIC | AUTH_NTLM) else ""))
    elif flags & (AUTH_BASIC | AUTH_NTLM):
        result.skip("AuthFlags", text, accounts)


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
        label = f"IIsSmtpDomain {key.name} (line {key.line})"
        _domain_properties(label, props, result)
        text = props.get("RouteAction", "").strip()
        action = _route_action(f"{label} RouteAction", text, result)
        if action is None or action & ~KNOWN_BITS:
            result.problem(label, "", "domain not imported: its RouteAction is not understood")
            continue
        route = props.get("RouteActionString", "").strip()
        if route and not action & SMTP_SMARTHOST:
            result.skip(f"{label} RouteActionString", route, "RouteAction has no "
                        "SMTP_SMARTHOST: IIS did not forward the domain's mail there")
        if action & (SMTP_DEFAULT | SMTP_ALIAS):
            local = SMTP_DEFAULT | SMTP_ALIAS | SMTP_DROP
            _unmapped_bits(f"{label} RouteAction", text, action & ~local, result)
            if action & SMTP_DEFAULT:
                default = name
                result.sources["domains.local.default"] = f"{label} RouteAction={text}"
                drop = props.get("DropDirectory", "").strip()
                if drop and drop.rstrip("\\").lower() != "c:\\inetpub\\mailroot\\drop":
                    result.skip(f"{label} DropDirectory", drop,
                                "mail for local domains goes to the mailroot's Drop folder")
            else:
                aliases.append(name)
        else:
            _remote(name, label, text, action, props, result)
    named = server.properties.get("DefaultDomain", "").strip().lower()
    if default is None and named:  # no key carries SMTP_DEFAULT: the server's DefaultDomain
        default = named
        result.sources["domains.local.default"] = f"DefaultDomain={named}"
        aliases = [a for a in aliases if a != named]
    if default:
        result.values["domains.local.default"] = default
    if aliases:
        result.set("domains.local.aliases", aliases, "IIsSmtpDomain entries with SMTP_ALIAS")


def _domain_properties(label: str, props: dict[str, str], result: Imported) -> None:
    """Each property of a domain that mailroot has no setting for, with what IIS did."""
    for name, value in props.items():
        if name not in DOMAIN_PROPERTIES:
            result.problem(f"{label} {name}", value, "a domain property the import does not "
                           "know: what IIS did with it is not known to mailroot")
        elif (what_iis_did := DOMAIN_PROPERTIES[name]) is not None:
            result.problem(f"{label} {name}", value, what_iis_did)


def _remote(name: str, label: str, text: str, action: int, props: dict[str, str],
            result: Imported) -> None:
    """A remote domain: its smart host, TLS and credentials; not imported when a bit that
    changes where its mail goes can't be."""
    prefix = f"domains.remote.{name}."
    route = props.get("RouteActionString", "").strip()
    smart = None
    if action & SMTP_SMARTHOST and route and not action & (SMTP_ETRN_CMD | SMTP_DROP):
        smart = _host(f"{label} RouteActionString", route, result)
        if smart is None:
            return
    elif action & SMTP_SMARTHOST and not route and not action & SMTP_ETRN_CMD:
        result.problem(f"{label} RouteAction", text, "SMTP_SMARTHOST with no host in "
                       "RouteActionString: domain not imported")
        return
    said = SMTP_SMARTHOST if smart or action & SMTP_ETRN_CMD else 0  # 514: TURN, KB 183476
    _unmapped_bits(f"{label} RouteAction", text, action & ~(SMTP_SSL | AUTH_BITS | said),
                   result)
    if action & DIVERTING and smart is None:
        return
    source = f"{label} RouteAction={text}"
    result.set(prefix + "tls", "require" if action & SMTP_SSL else "may", source)
    if smart is not None:
        result.set(prefix + "smarthost", smart, f"{label} RouteActionString={route}")
    user = props.get("RouteUserName", "").strip()
    if action & AUTH_BITS and user:
        result.set(prefix + "auth.username", user, source)
        result.skip(f"{label} RoutePassword", "", NOT_MAPPED["RoutePassword"].replace(
            "delivery.auth", prefix + "auth"))
