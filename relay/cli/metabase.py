"""Read the SMTP part of an IIS 6 MetaBase.xml: the service, its virtual servers, their domains.

MetaBase.xml (`%windir%\\System32\\inetsrv\\MetaBase.xml`) holds one element per metabase key,
named by its IIS Admin Object type, with the key's path in `Location` and its properties as
attributes; properties the schema doesn't name are `<Custom Name= Value=>` children.  The
SMTP keys are `IIsSmtpService` (/LM/SMTPSVC), `IIsSmtpServer` (/LM/SMTPSVC/n) and
`IIsSmtpDomain` (/LM/SMTPSVC/n/Domain/name).  Properties marked INHERIT in the metabase
schema pass from the service to its servers, so a server's effective value is its own or
else the service's.  Metabase property names are not case-sensitive: every name is read
case-insensitively and handed on in the schema's spelling.
"""

from __future__ import annotations

import codecs
import ipaddress
import re
import struct
import xml.parsers.expat
from dataclasses import dataclass, field
from pathlib import Path

SERVICE, SERVER, DOMAIN = "IIsSmtpService", "IIsSmtpServer", "IIsSmtpDomain"
KEY_TYPES = {name.lower(): name for name in (SERVICE, SERVER, DOMAIN)}

# The SMTP properties the import knows, in the metabase schema's spelling, with the key types
# each can be set on ("Configurable Locations").  Names, spellings and locations are those of
# Microsoft's Metabase Property Reference for IIS 6 (Windows Server 2003: learn.microsoft.com
# /previous-versions/windows/it-pro/windows-server-2003/, e.g. cc739348 SmartHostType,
# cc757175 RouteAction, cc780293 RelayIpList, cc778501 RelayForAuth; the IIS 6.0 SDK pages,
# e.g. ms525067 SmtpRemoteNDRExpireMinutes, ms525481 SmtpLocalNDRExpireMinutes) and of the
# IIsSmtpDomainSetting WMI class (ms524761: AuthTurnList, CSideEtrnDomains, RouteActionString).
# AllowVerify, AllowExpand and AlwaysUseSsl are named by the SMTP Service's own metabase
# reference of IIS 4 (Option Pack, "Microsoft SMTP Service maintains the metabase properties
# listed below"); SendNdrTo by Microsoft's IIsSmtpServiceSetting WMI samples.
SERVICE_AND_SERVER = frozenset({SERVICE, SERVER})
EVERYWHERE = frozenset({SERVICE, SERVER, DOMAIN})
DOMAIN_ONLY = frozenset({DOMAIN})
SCHEMA: dict[str, frozenset[str]] = {
    **dict.fromkeys((
        "FullyQualifiedDomainName", "SmtpRemoteDelayExpireMinutes",
        "SmtpRemoteNDRExpireMinutes", "SmtpLocalDelayExpireMinutes",
        "SmtpLocalNDRExpireMinutes", "SmtpRemoteProgressiveRetry", "HopCount",
        "RemoteSmtpPort", "MaxOutConnections", "MaxOutConnectionsPerDomain",
        "MaxBatchedMessages", "RemoteTimeout", "SendNdrTo", "MasqueradeDomain",
        "MaxMessageSize", "MaxSessionSize", "MaxRecipients", "MaxConnections",
        "ConnectionTimeout", "SmartHost", "SmartHostType", "DefaultDomain", "ServerBindings",
        "AuthFlags", "PickupDirectory", "QueueDirectory", "BadMailDirectory", "AllowVerify",
        "AllowExpand", "EnableReverseDnsLookup", "AlwaysUseSsl", "LogFileDirectory",
        "LogType", "ServerComment", "SmtpInboundCommandSupportOptions",
        "SmtpOutboundCommandSupportOptions"), SERVICE_AND_SERVER),
    **dict.fromkeys(("RouteAction", "RouteUserName", "RoutePassword", "RelayIpList",
                     "RelayForAuth", "DropDirectory"), EVERYWHERE),
    **dict.fromkeys(("RouteActionString", "AuthTurnList", "CSideEtrnDomains"), DOMAIN_ONLY),
}
SPELLING = {name.lower(): name for name in SCHEMA}


def schema_name(name: str) -> str:
    """A property name in the schema's spelling (names the import doesn't know: as written)."""
    name = name.strip()
    return SPELLING.get(name.lower(), name)


class NotAMetabase(Exception):
    """The file is not a MetaBase.xml with an SMTP service; names the line."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.line = line


@dataclass
class Key:
    """One metabase key: its type, path, line and properties (as written in the XML)."""

    kind: str
    location: str
    line: int
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.location.rstrip("/").rpartition("/")[2]


@dataclass
class SmtpServer:
    """A virtual server with the service's inherited properties folded in."""

    key: Key
    properties: dict[str, str]
    own: set[str]  # the properties the server sets itself
    domains: list[Key]


@dataclass
class Metabase:
    path: str
    service: Key
    servers: list[Key]
    domains: list[Key]

    def server(self, number: str | None = None) -> SmtpServer:
        """Virtual server `number` (default: the lowest numbered one); raises LookupError."""
        servers = sorted(self.servers, key=lambda k: (len(k.name), k.name))
        if not servers:
            raise LookupError("the metabase has no IIsSmtpServer (/LM/SMTPSVC/n)")
        chosen = servers[0] if number is None else next(
            (k for k in servers if k.name == str(number)), None)
        if chosen is None:
            raise LookupError(f"no SMTP virtual server {number} (there are: "
                              f"{', '.join(k.name for k in servers)})")
        prefix = chosen.location.rstrip("/").lower() + "/domain/"
        domains = [d for d in self.domains if d.location.lower().startswith(prefix)]
        return SmtpServer(chosen, {**self.service.properties, **chosen.properties},
                          set(chosen.properties), domains)


def parse(path: str | Path) -> Metabase:
    """The SMTP keys of a MetaBase.xml; raises NotAMetabase (naming the line) or OSError.

    A file holding virtual servers without the service's own key is read with the service's
    defaults (an empty IIsSmtpService)."""
    data = _utf8(str(path), Path(path).read_bytes())
    keys: list[Key] = []
    stack: list[Key | None] = []
    root: list[str] = []
    parser = xml.parsers.expat.ParserCreate("utf-8")  # whatever the declaration says

    def start(name: str, attrs: dict[str, str]) -> None:
        if not root:
            root.append(name)
        kind = KEY_TYPES.get(name.lower())
        if kind is not None:
            location, props, written = "", {}, {}
            for attr, value in attrs.items():
                if attr.strip().lower() == "location":
                    location = value
                    continue
                name = schema_name(attr)
                if name in props:
                    raise NotAMetabase(str(path), parser.CurrentLineNumber, f"{name} is set "
                                       f"twice on this key (as {written[name]} and {attr}): "
                                       "property names are not case-sensitive")
                props[name], written[name] = value, attr
            key = Key(kind, location.strip(), parser.CurrentLineNumber, props)
            keys.append(key)
            stack.append(key)
            return
        parent = stack[-1] if stack else None
        custom = {k.lower(): v for k, v in attrs.items()}
        if name.lower() == "custom" and parent is not None and "name" in custom:
            parent.properties.setdefault(schema_name(custom["name"]), custom.get("value", ""))
        stack.append(None)

    def end(name: str) -> None:
        stack.pop()

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise NotAMetabase(str(path), exc.lineno, "not XML: "
                           f"{xml.parsers.expat.ErrorString(exc.code)}") from None
    if not root or root[0] != "configuration":
        raise NotAMetabase(str(path), 1, f"the root element is <{root[0] if root else ''}>, "
                                         "not a MetaBase.xml <configuration>")
    services = [k for k in keys if k.kind == SERVICE]
    servers = [k for k in keys if k.kind == SERVER]
    if not services and not servers:
        raise NotAMetabase(str(path), 1, "no IIsSmtpService (/LM/SMTPSVC) or IIsSmtpServer "
                                         "(/LM/SMTPSVC/n) element: the SMTP service is not in "
                                         "this metabase")
    service = services[0] if services else Key(SERVICE, "", 0)
    return Metabase(str(path), service, servers, [k for k in keys if k.kind == DOMAIN])


DECLARED = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def declared_encoding(data: bytes) -> str:
    """The encoding the file says it is in: its byte order mark, its XML declaration, or
    UTF-8 (XML's default)."""
    if data.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    match = DECLARED.match(data)
    return match[1].decode("ascii").lower() if match else "utf-8"


def _utf8(path: str, data: bytes) -> bytes:
    """The file as UTF-8, read in the encoding it declares (so windows-1252 and UTF-16 files
    are read too); a file that is not in that encoding is refused naming the line and saying
    how to convert it."""
    encoding = declared_encoding(data)
    try:
        return data.decode(encoding).encode("utf-8")
    except LookupError:
        raise NotAMetabase(path, 1, f"the file declares an encoding mailroot does not know "
                                    f"({encoding})") from None
    except UnicodeDecodeError as bad:
        line = data[:bad.start].decode(encoding, "replace").count("\n") + 1
        raise NotAMetabase(path, line, f"the file is not in the encoding it declares "
                           f"({encoding}): byte 0x{data[bad.start]:02X} is not {encoding}. "
                           "Convert it from the encoding it was written in, e.g. for "
                           f"Windows-1252: iconv -f cp1252 -t utf-8 {path} > MetaBase-utf8.xml"
                           ) from None


# --- value forms --------------------------------------------------------------------------

def dword(text: str) -> int:
    """A DWORD as MetaBase.xml writes it: decimal, or 0x hex; -1 is 4294967295."""
    text = text.strip()
    value = int(text, 16) if text.lower().startswith("0x") else int(text)
    return value & 0xFFFFFFFF


def boolean(text: str) -> bool:
    return text.strip().upper() in ("TRUE", "1", "-1")


def multisz(text: str) -> list[str]:
    """A MULTISZ property of space-free values (ServerBindings): one per line of the attribute,
    which an XML parser hands over with its line breaks turned into spaces."""
    return text.split()


# --- RelayIpList ------------------------------------------------------------------------------
#
# RelayIpList is an IPSECLIST octet string, written in MetaBase.xml as hex.  Microsoft's
# metabase reference says only that it is "an octet string containing a list of IPs allowed or
# denied for relay".  Its layout is established from published scripts that write it through
# WMI (IIsSmtpServerSetting.RelayIpList) and that IIS accepts; all numbers are little-endian
# DWORDs, and every offset is self-relative to the start with its high bit (0x80000000) set:
#
#   0   offset of the deny-by-address list header
#   4   offset of the grant-by-address list header
#   8   offset of the deny-by-name list header
#   12  offset of the grant-by-name list header
#   16  1 in every published list (meaning not established)
#   20  size of the fixed part
#   list header: entry count, address count (masks not counted)
#   entry (5 DWORDs, right after its list header): address family (2 = IPv4), item count
#         (the mask and its addresses), full bytes of the mask, last partial mask byte, offset
#         of the first item; items are 4-byte IPv4 values: the mask, then the addresses.
#
# Only the part that can be read back unambiguously is imported: a grant list of IPv4
# networks with contiguous masks, with empty deny and name lists and the 1 at offset 16.
# Anything else is refused (RelayListError): mailroot then imports no relay list at all, so
# relaying is never wider than it was under IIS.

SELF_RELATIVE = 0x80000000
AF_INET = 2


class RelayListError(Exception):
    """A RelayIpList that can't be imported without guessing."""


@dataclass
class RelayList:
    grant: list[str]


def _dwords(data: bytes, offset: int, count: int) -> tuple[int, ...]:
    if offset < 0 or offset + 4 * count > len(data):
        raise RelayListError(f"it ends before offset {offset + 4 * count}")
    return struct.unpack_from(f"<{count}I", data, offset)


def _offset(value: int, data: bytes) -> int:
    if not value & SELF_RELATIVE or (value & ~SELF_RELATIVE) >= len(data):
        raise RelayListError(f"0x{value:08x} is not an offset inside the list")
    return value & ~SELF_RELATIVE


def _networks(data: bytes, header: int) -> tuple[list[str], int]:
    """The networks of one address list, and the list's address count as it states it."""
    entries, addresses = _dwords(data, header, 2)
    networks: list[str] = []
    counted = 0
    for i in range(entries):
        family, items, full, last, first = _dwords(data, header + 8 + 20 * i, 5)
        if family != AF_INET:
            raise RelayListError(f"entry {i} has address family {family}, not IPv4 (2)")
        if items < 1:
            raise RelayListError(f"entry {i} has no mask")
        start = _offset(first, data)
        raw = data[start:start + 4 * items]
        if len(raw) != 4 * items:
            raise RelayListError(f"entry {i} runs past the end of the list")
        mask = ipaddress.IPv4Address(raw[:4])
        prefix = bin(int(mask)).count("1")
        if int(mask) != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
            raise RelayListError(f"entry {i} has a mask that is not contiguous ({mask})")
        if full != prefix // 8 or last != (raw[full] if full < 4 else 0):
            raise RelayListError(f"entry {i}: mask {mask} does not match its byte counts "
                                 f"({full}, {last})")
        for j in range(1, items):
            address = ipaddress.IPv4Address(raw[4 * j:4 * j + 4])
            try:
                networks.append(str(ipaddress.IPv4Network(f"{address}/{prefix}")))
            except ValueError:
                raise RelayListError(f"entry {i}: {address} has bits outside its mask "
                                     f"{mask}") from None
        counted += items - 1
    if counted != addresses:
        raise RelayListError(f"the list says {addresses} addresses but holds {counted}")
    return networks, addresses


def relay_list(hex_text: str) -> RelayList:
    """Decode a RelayIpList value; raises RelayListError when in doubt."""
    try:
        data = bytes.fromhex(hex_text.strip())
    except ValueError:
        raise RelayListError("it is not a hex octet string") from None
    deny, grant, deny_names, grant_names, flag, _size = _dwords(data, 0, 6)
    if flag != 1:
        raise RelayListError(f"the DWORD at offset 16 is {flag}, not the 1 of every "
                             "published list")
    denied, _ = _networks(data, _offset(deny, data))
    if denied:
        raise RelayListError(f"it denies {', '.join(denied)} (\"all except the list below\"): "
                             "mailroot has no deny list")
    for what, offset in (("deny", deny_names), ("grant", grant_names)):
        entries, _ = _dwords(data, _offset(offset, data), 2)
        if entries:
            raise RelayListError(f"it has a {what} list by DNS name, which mailroot does not "
                                 "support")
    granted, _ = _networks(data, _offset(grant, data))
    return RelayList(granted)
