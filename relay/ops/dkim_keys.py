"""DKIM keys for operators: generate one (file + config block + the DNS record to publish) and
check that the record published in DNS matches the configured key."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.crypto import UnparsableKeyError, parse_public_key
from dkim.util import InvalidTagValueList, parse_tag_value

from relay.core.config import Config, ConfigError
from relay.core.dkim import LoadedKey, load_keys
from relay.ops.settings import Document, domain_name
from relay.queue.resolver import DnsFailure, Resolver

KEY_TYPES = {"rsa-sha256": "rsa", "ed25519-sha256": "ed25519"}  # the record's k= tag
TXT_CHUNK = 255  # the longest character-string in a TXT record


def generate(algorithm: str, bits: int = 2048) -> bytes:
    """A new private key as dkimpy reads it: PKCS#8 PEM (rsa) or the base64 seed (ed25519)."""
    if algorithm == "rsa-sha256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    seed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(seed) + b"\n"


def public_key(algorithm: str, private: bytes) -> bytes:
    """The public key as the record's p= carries it (DER SubjectPublicKeyInfo, or raw ed25519)."""
    if algorithm == "rsa-sha256":
        key = serialization.load_pem_private_key(private, password=None)
        return key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    seed = base64.b64decode(private.strip())
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def record_name(domain: str, selector: str) -> str:
    return f"{selector}._domainkey.{domain}"


def record_value(algorithm: str, private: bytes) -> str:
    public = base64.b64encode(public_key(algorithm, private)).decode()
    return f"v=DKIM1; k={KEY_TYPES[algorithm]}; p={public}"


def zone_line(domain: str, selector: str, value: str) -> str:
    """The record as a zone file line, the value split in 255-byte strings."""
    chunks = [value[i:i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)]
    return f"{record_name(domain, selector)}. IN TXT " + " ".join(f'"{c}"' for c in chunks)


# --- keygen -----------------------------------------------------------------------------------

def write_private(path: Path, data: bytes) -> None:
    """Create the key file, readable by its owner only; never overwrite a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def add_key(domain: str, selector: str, key_file: str,
            algorithm: str) -> Callable[[Document, Config], None]:
    """The config edit adding one key to `dkim.DOMAIN` (a second key makes it a list)."""
    name = domain_name(domain, "dkim")
    block = {"selector": selector, "key_file": key_file, "algorithm": algorithm}

    def change(doc: Document, current: Config) -> None:
        existing = current.dkim.get(name, [])
        if any(k.selector.lower() == selector.lower() for k in existing):
            raise ConfigError(f"{name} already has a key with selector {selector}",
                              key=f"dkim.{name}")
        written = doc.get(["dkim", name])
        if isinstance(written, list):
            written.append(block)
        else:  # a first key is a mapping; a second one makes the domain's entry a list
            doc.set(["dkim", name], [written, block] if written else block)
    return change


# --- check ------------------------------------------------------------------------------------

@dataclass
class RecordCheck:
    """What DNS says about one configured key."""

    domain: str
    selector: str
    algorithm: str
    state: str  # published | missing | different | unknown (DNS failed)
    detail: str

    @property
    def ok(self) -> bool:
        return self.state == "published"


def _same_key(algorithm: str, ours: bytes, theirs: bytes) -> bool:
    if algorithm == "ed25519-sha256":
        return ours == theirs
    try:
        return parse_public_key(ours) == parse_public_key(theirs)  # SPKI or bare RSAPublicKey
    except UnparsableKeyError:
        return False


def compare(key: LoadedKey, texts: list[str]) -> RecordCheck:
    """Judge the TXT strings found at the key's record name against the key."""
    def result(state: str, detail: str) -> RecordCheck:
        return RecordCheck(key.domain, key.selector, key.algorithm, state, detail)

    name = record_name(key.domain, key.selector)
    records = [t for t in texts if t.replace(" ", "").startswith("v=DKIM1")] or texts
    if not records:
        return result("missing", f"no TXT record at {name}")
    ours = public_key(key.algorithm, key.private)
    for text in records:
        try:
            tags = parse_tag_value(re.sub(r"\s+", "", text).encode())
            theirs = base64.b64decode(tags.get(b"p", b""), validate=True)
        except (InvalidTagValueList, ValueError):
            continue
        if tags.get(b"k", b"rsa").decode() == KEY_TYPES[key.algorithm] and \
                _same_key(key.algorithm, ours, theirs):
            return result("published", f"{name} matches {key.key_file}")
    return result("different", f"{name} holds a different key than {key.key_file}: "
                               f"{records[0][:80]}")


async def lookup(resolver: Resolver, name: str) -> list[str] | None:
    """Each TXT record at `name` as one string (its strings joined); None if no such name."""
    try:
        answers = await resolver.query(name, "TXT")
    except dns.resolver.NXDOMAIN:
        return None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answers]


async def check_keys(config: Config, domain: str | None = None) -> list[RecordCheck]:
    """Look up every configured key's record (or those of one domain) through dns.*."""
    keys = load_keys(config)
    if domain is not None:
        wanted = domain_name(domain, "dkim")
        if wanted not in keys:
            raise ConfigError(f"no DKIM key is configured for {wanted}", key="dkim")
        keys = {wanted: keys[wanted]}
    resolver = Resolver(config)
    out = []
    for loaded in (k for ks in keys.values() for k in ks):
        name = record_name(loaded.domain, loaded.selector)
        try:
            texts = await lookup(resolver, name)
        except DnsFailure as exc:
            out.append(RecordCheck(loaded.domain, loaded.selector, loaded.algorithm, "unknown",
                                   f"{name}: {exc.reason}"))
            continue
        out.append(compare(loaded, texts or []))
    return out


def check(config: Config, domain: str | None = None) -> list[RecordCheck]:
    return asyncio.run(check_keys(config, domain))

