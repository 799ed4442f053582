"""DKIM signing at intake: mail whose From: domain (or a parent of it) has keys in the `dkim:`
section is signed before it is committed, so a requeue or a restart never signs it again.

dkimpy does the canonicalisation and the crypto; this module picks the domain, the header
fields and the keys, and turns an unusable key into a ConfigError at load time rather than
an unsigned send later. dkimpy (and the DNS resolver it brings) is imported where a key is
used or a signature read, so the relay's processes start without it when no key is set.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from pathlib import Path

from relay.core.config import Config, ConfigError, DkimKey
from relay.core.message import Message

# RFC 6376 5.4.1's recommended set, as it applies to what applications send through a relay.
SIGNED_FIELDS = ("from", "reply-to", "subject", "date", "message-id", "to", "cc",
                 "mime-version", "content-type", "content-transfer-encoding")
OVERSIGNED = ("from",)  # listed once more than present: nobody can add a second From: later
CANONICALIZE = (b"relaxed", b"relaxed")
PROBE = b"From: probe@example.invalid\r\nSubject: key check\r\n\r\nkey check\r\n"


class SigningError(Exception):
    """A message dkimpy cannot sign (the key was fine at load time)."""


@dataclass(frozen=True)
class LoadedKey:
    """One configured key, read and proved usable by signing a probe with it."""

    domain: str
    selector: str
    algorithm: str
    key_file: str
    private: bytes  # as dkimpy takes it: PEM (rsa) or the base64 seed (ed25519)


@dataclass(frozen=True)
class Signature:
    """Who signed a message, as read from one of its DKIM-Signature fields."""

    domain: str
    selector: str
    algorithm: str

    def __str__(self) -> str:
        return f"{self.domain} (selector {self.selector}, {self.algorithm or 'no algorithm'})"


def load_key(config: Config, domain: str, index: int) -> LoadedKey:
    """Read one key and sign a probe with it; ConfigError naming the file and key if unusable."""
    entry: DkimKey = config.dkim[domain][index]
    where = (f"dkim.{domain}[{index}]" if len(config.dkim[domain]) > 1 else f"dkim.{domain}") + \
        ".key_file"
    path = Path(entry.key_file)
    if not path.is_absolute() and config.source:
        path = Path(config.source).parent / path
    try:
        private = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the DKIM key {path}: {exc.strerror}",
                          file=config.source, key=where) from None
    key = LoadedKey(domain, entry.selector, entry.algorithm, str(path), private)
    import dkim

    try:
        dkim.sign(PROBE, key.selector.encode(), domain.encode(), private,
                  signature_algorithm=entry.algorithm.encode(), include_headers=[b"from"])
    except (dkim.DKIMException, ValueError) as exc:
        kind = "an RSA private key in PEM form" if entry.algorithm == "rsa-sha256" else \
            "an ed25519 private key (the base64 seed, as `mailroot dkim keygen` writes it)"
        raise ConfigError(f"{path} is not {kind} for {entry.algorithm} ({exc})",
                          file=config.source, key=where) from None
    return key


def load_keys(config: Config) -> dict[str, list[LoadedKey]]:
    """Every configured key by domain, each one proved usable (or ConfigError)."""
    return {domain: [load_key(config, domain, i) for i in range(len(keys))]
            for domain, keys in config.dkim.items()}


def signatures_in(values: list[str]) -> list[Signature]:
    """The d=, s= and a= tags of DKIM-Signature field values (unparsable ones are skipped)."""
    if not values:
        return []
    from dkim.util import InvalidTagValueList, parse_tag_value

    found = []
    for value in values:
        try:
            tags = parse_tag_value(re.sub(r"\s+", "", value).encode())
        except InvalidTagValueList:
            continue
        if b"d" in tags and b"s" in tags:
            found.append(Signature(tags[b"d"].decode("ascii", "replace").lower(),
                                   tags[b"s"].decode("ascii", "replace"),
                                   tags.get(b"a", b"").decode("ascii", "replace")))
    return found


def author_domain(message: Message) -> str | None:
    """The domain of the first From: address (the one DMARC aligns with), lower-case."""
    pairs = email.utils.getaddresses(message.get_all("from"))
    address = next((addr for _, addr in pairs if "@" in addr), None)
    return address.rsplit("@", 1)[1].lower().rstrip(".") if address else None


class Signer:
    """Signs messages with the configured keys; built once per config."""

    def __init__(self, keys: dict[str, list[LoadedKey]]) -> None:
        self.keys = keys

    def domain_for(self, message: Message) -> str | None:
        """The listed domain that signs this message: its From: domain or the nearest parent."""
        if not self.keys:  # no signing configured: not even the From: field is parsed
            return None
        author = author_domain(message)
        while author:
            if author in self.keys:
                return author
            author = author.partition(".")[2]
        return None

    def sign(self, message: Message) -> list[Signature]:
        """Prepend a DKIM-Signature per key of the message's domain, unless it already has one
        for that domain; return the signatures added."""
        domain = self.domain_for(message)
        if domain is None or any(s.domain == domain for s in
                                 signatures_in(message.get_all("dkim-signature"))):
            return []
        import dkim

        data = message.to_bytes()
        present = {Message.name_of(f) for f in message.fields}
        fields = [n.encode() for n in SIGNED_FIELDS if n in present] + \
            [n.encode() for n in OVERSIGNED]
        added = []
        for key in self.keys[domain]:
            try:
                header = dkim.sign(data, key.selector.encode(), domain.encode(), key.private,
                                   signature_algorithm=key.algorithm.encode(),
                                   canonicalize=CANONICALIZE, include_headers=fields)
            except dkim.DKIMException as exc:
                raise SigningError(f"{domain} selector {key.selector}: {exc}") from None
            added.append((header, Signature(domain, key.selector, key.algorithm)))
        for header, _ in reversed(added):
            message.fields.insert(0, header.rstrip(b"\r\n"))
        return [signature for _, signature in added]
