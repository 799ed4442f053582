"""IIS's RouteAction bits: each one's name, what IIS did with it, and what mailroot does
instead, so `mailroot import-iis` accounts for every bit a server or domain sets."""

from __future__ import annotations

from dataclasses import dataclass

# RouteAction (IIsSmtpService, IIsSmtpServer, IIsSmtpDomain) is a set of bits.  Microsoft's
# RouteAction page (Metabase Property Reference, technet cc757175) names none; the names and
# hex values below are the table in that page's community content (SMTP_NO_ACTION 0 ...
# SMTP_USE_HELO 0x400000).  What IIS did with a bit is documented for few of them:
# SMTP_ETRN_CMD by KB 183476 ("Set RouteAction to the value 514 to enable authenticated TURN
# support", with the accounts in AuthTurnList) and KB 256655 ("Queue messages for remote
# triggered delivery"); the TLS bit by the IIS 4 SMTP Service metabase reference (AlwaysUseSsl:
# "turn on the TLS bit in the RouteAction metabase property").  For the others the text below
# matches the bit's name to the option of that name in the remote domain and Outbound
# Security dialogs (KB 303668 "Configure Remote Domains": forward all mail to smart host, TLS
# encryption; the SMTP Server help: "Allow incoming mail to be relayed to this domain", "Send
# HELO instead of EHLO", basic / integrated Windows authentication), and says "its name only"
# where there is no such option.
SMTP_DROP, SMTP_SMARTHOST, SMTP_SSL, SMTP_SASL = 0x1, 0x2, 0x4, 0x8
SMTP_ALIAS, SMTP_DEFAULT = 0x10, 0x40
SMTP_AUTH_CLEARTEXT, SMTP_ETRN_CMD = 0x100, 0x200
ONLY_ITS_NAME = "did what the bit's name says; Microsoft documents no more of it"
NO_EQUIVALENT = "mailroot has no equivalent"


@dataclass(frozen=True)
class RouteBit:
    """One RouteAction bit: its name, what IIS did with it, what mailroot does instead."""

    value: int
    name: str
    iis: str
    mailroot: str = NO_EQUIVALENT


ROUTE_BITS = [
    RouteBit(0x1, "SMTP_DROP", "put the domain's mail into a Drop folder (a local domain)",
             "mailroot drops mail for domains.local.default and .aliases only: add the domain "
             "there if its mail belongs in Drop"),
    RouteBit(0x2, "SMTP_SMARTHOST", "forwarded the domain's mail to the host in "
             "RouteActionString (\"Forward all mail to smart host\")"),
    RouteBit(0x4, "SMTP_SSL", "required TLS for the next hop (Outbound Security: TLS "
             "encryption)", "set tls: require per remote domain (domains.remote.<domain>.tls)"),
    RouteBit(0x8, "SMTP_SASL", "authenticated to the next hop (Outbound Security)"),
    RouteBit(0x10, "SMTP_ALIAS", "took the domain's mail as local, an alias of the default "
             "domain"),
    RouteBit(0x20, "SMTP_DELIVER", ONLY_ITS_NAME),
    RouteBit(0x40, "SMTP_DEFAULT", "took the domain's mail as local: the default domain"),
    RouteBit(0x80, "SMTP_AUTH_NTLM", "authenticated to the next hop with integrated Windows "
             "authentication", "not supported: mailroot authenticates with AUTH PLAIN/LOGIN"),
    RouteBit(0x100, "SMTP_AUTH_CLEARTEXT", "authenticated to the next hop with basic "
             "(clear-text) authentication"),
    RouteBit(0x200, "SMTP_ETRN_CMD", "held the domain's mail until its server collected it "
             "(\"Queue messages for remote triggered delivery\": ETRN, or TURN/ATRN by the "
             "accounts in AuthTurnList; RouteAction 514 with SMTP_SMARTHOST, KB 183476)",
             "mailroot holds no mail for collection: it delivers to the domain's MX hosts (a "
             "mail loop if they point at this relay) unless you set "
             "domains.remote.<domain>.smarthost; the domain is not imported"),
    RouteBit(0x400, "SMTP_IP_RELAY", ONLY_ITS_NAME),
    RouteBit(0x800, "SMTP_AUTH_RELAY", ONLY_ITS_NAME),
    RouteBit(0x1000, "SMTP_DOMAIN_RELAY", "let every client relay to the domain (\"Allow "
             "incoming mail to be relayed to this domain\")", "no mailroot equivalent: "
             "clients need smtp.relay.allow or AUTH to relay to it"),
    RouteBit(0x2000, "SMTP_CSIDE_TURN", ONLY_ITS_NAME),
    RouteBit(0x4000, "SMTP_CSIDE_ETRN", ONLY_ITS_NAME),
    RouteBit(0x8000, "SMTP_DISABLE_ETRN", ONLY_ITS_NAME),
    RouteBit(0x10000, "SMTP_CHUNKING", ONLY_ITS_NAME),
    RouteBit(0x20000, "SMTP_DISABLE_CHUNK", ONLY_ITS_NAME),
    RouteBit(0x40000, "SMTP_DISABLE_BMIME", ONLY_ITS_NAME),
    RouteBit(0x80000, "SMTP_DISABLE_DSN", ONLY_ITS_NAME),
    RouteBit(0x100000, "SMTP_DISABLE_PIPELINE", ONLY_ITS_NAME),
    RouteBit(0x200000, "SMTP_AUTH_KERBEROS", "authenticated to the next hop with Kerberos",
             "not supported: mailroot authenticates with AUTH PLAIN/LOGIN"),
    RouteBit(0x400000, "SMTP_USE_HELO", "said HELO instead of EHLO to the domain (\"Send "
             "HELO instead of EHLO\")", "mailroot says EHLO, and HELO only when EHLO is "
             "refused"),
]
KNOWN_BITS = sum(bit.value for bit in ROUTE_BITS)
# Bits that, set and not imported, change where the mail goes: the domain is not imported.
DIVERTING = SMTP_DROP | SMTP_SMARTHOST | SMTP_ETRN_CMD
# Outbound authentication: SMTP_SASL with basic authentication is imported as the user name.
AUTH_BITS = SMTP_SASL | SMTP_AUTH_CLEARTEXT
