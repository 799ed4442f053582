"""Strict mailbox parsing: what the relay accepts as an address, and nothing that re-routes.

Source routes, `%` and `!` routing, quoted local parts holding `@`, several `@`, address
literals and control characters are refused rather than interpreted: each is a classic way to
turn a relay into an open relay.
"""

from __future__ import annotations

import re

from relay.core.config import DOMAIN_RE

# RFC 5321 atext less "!" and "%" (bang paths, user%host routing), and any non-ASCII (SMTPUTF8);
# written as the characters it excludes: a range up to U+10FFFF costs milliseconds to compile
ATEXT = r'[^\x00-\x20!"%(),.:;<>@\[\\\]\x7f]'
DOT_ATOM = re.compile(rf"{ATEXT}+(?:\.{ATEXT}+)*")
QUOTED = re.compile(r'"(?:[^\x00-\x1f"@\\\x7f])*"')  # qtext and space, less "@"


class AddressError(ValueError):
    """An address the relay refuses, with the reason in words."""


def parse_address(text: str) -> str:
    """Return `local@domain` (domain lower-cased) or `postmaster`; raise AddressError."""
    addr = text.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if not addr:
        raise AddressError("empty address")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in addr):
        raise AddressError("control characters in the address")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in addr):  # undecodable octets, kept as surrogates
        raise AddressError("the address is not valid UTF-8")
    if addr.startswith("@"):
        raise AddressError("source routes (@host:) are not accepted")
    if addr.lower() == "postmaster":
        return "postmaster"
    local, sep, domain = addr.rpartition("@")
    if not sep:
        raise AddressError("the address has no domain")
    if "%" in local or "!" in local:
        raise AddressError("% and ! routing are not accepted")
    if local.startswith('"'):
        if not QUOTED.fullmatch(local):
            raise AddressError("a quoted local part may not hold @, \\ or controls")
    elif "@" in local:
        raise AddressError("more than one @ in the address")
    elif not DOT_ATOM.fullmatch(local):
        raise AddressError(f"bad local part {local!r}")
    if len(local.encode()) > 64:
        raise AddressError("the local part is longer than 64 octets")
    if domain.startswith("["):
        raise AddressError("address literals ([1.2.3.4]) are not accepted")
    try:
        ascii_domain = domain.encode("idna").decode() if not domain.isascii() else domain
    except UnicodeError:
        raise AddressError(f"bad domain {domain!r}") from None
    if not DOMAIN_RE.fullmatch(ascii_domain) or domain.endswith("."):
        raise AddressError(f"bad domain {domain!r}")
    if re.fullmatch(r"[\d.]+", domain):
        raise AddressError("a bare IP address is not a domain")
    return f"{local}@{domain.lower()}"


def domain_of(address: str) -> str:
    """The domain of a parsed address ('' for postmaster)."""
    return address.rpartition("@")[2] if "@" in address else ""
