"""Message ids and envelopes: everything about a message but its bytes, small so that
100,000 of them list quickly."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_micros = 0


def _b32(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_CROCKFORD[digit])
    return "".join(reversed(chars))


def new_id() -> str:
    """A 16-character id that sorts by creation time and is unique across processes."""
    global _last_micros
    with _id_lock:
        micros = max(time.time_ns() // 1000, _last_micros + 1)
        _last_micros = micros
    return _b32(micros, 11) + _b32(secrets.randbits(25), 5)


def id_time(message_id: str) -> float:
    """The creation time encoded in an id (seconds since the epoch)."""
    micros = 0
    for char in message_id[:11]:
        micros = micros * 32 + _CROCKFORD.index(char)
    return micros / 1e6


_ID = re.compile(f"[{_CROCKFORD}]{{16}}")


def is_id(name: str) -> bool:
    return _ID.fullmatch(name) is not None  # a regex: listing 100,000 names calls this a lot


WAITING = ("pending", "deferred")  # recipient states still to be delivered


@dataclass
class Recipient:
    address: str
    state: str = "pending"  # pending | deferred | delivered | failed
    status: str | None = None  # enhanced status code of the last answer, e.g. 5.1.1
    reply: str | None = None  # the last reply text (or local reason)
    host: str | None = None  # the host that gave it


@dataclass
class Attempt:
    time: float
    host: str | None
    reply: str
    tls: bool | None = None
    recipients: list[str] = field(default_factory=list)


def json_bytes(value: Any) -> bytes:
    """Compact JSON by orjson (a tenth of json's time), or by json, which escapes what orjson
    refuses: a lone surrogate (undecodable octets kept from a file name that is not UTF-8, or
    from a next hop's reply as aiosmtplib decodes it). A dataclass is written field by field."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return json.dumps(plain, separators=(",", ":")).encode()


def json_fields(data: bytes) -> Any:
    """JSON decoded by orjson (3x json's pace), or by json where orjson refuses what json
    wrote: an escaped lone surrogate (a file name that is not UTF-8, in an envelope's origin).
    Raises ValueError for what is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


@dataclass
class Envelope:
    """Everything about a message but its bytes; small, so 100,000 of them list quickly."""

    id: str
    sender: str  # "" is the null sender <>
    recipients: list[Recipient]
    received: float
    origin: str = ""
    size: int = 0
    crc32: int = 0
    subject: str = ""
    header_from: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    next_attempt: float = 0.0
    delay_notified: bool = False
    kind: str = "message"  # message | ndr | delay
    reason: str = ""  # why it is in Badmail
    queued_at: float = 0.0  # start of the delivery clock (arrival, or the last requeue)
    held_at: float | None = None  # when put on hold (None: not held)
    held_total: float = 0.0  # seconds spent on hold: the expiry clock stops while held
    moves: int = 0  # moves between folders so far: of two copies an interrupted move left,
    # the one with more is the later state (Mailroot.later_copy)

    @property
    def clock_start(self) -> float:
        """Delay notice and expiry count from here; time on hold does not count."""
        return (self.queued_at or self.received) + self.held_total

    @property
    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state in WAITING]

    def to_json(self) -> bytes:
        return json_bytes(self)  # 1 µs where dataclasses.asdict and json took 50

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        return cls.from_dict(json_fields(data))

    @classmethod
    def from_dict(cls, raw: dict) -> Envelope:
        raw = dict(raw)
        raw["recipients"] = [Recipient(**r) for r in raw.get("recipients", [])]
        raw["attempts"] = [Attempt(**a) for a in raw.get("attempts", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def envelope_or_none(raw: dict | None) -> Envelope | None:
    try:
        return Envelope.from_dict(raw) if raw is not None else None
    except (TypeError, KeyError):
        return None


def damage(envelope: Envelope, data: bytes) -> str | None:
    """Why a stored message file doesn't match its envelope (a crash or disk fault), if so."""
    if len(data) != envelope.size or zlib.crc32(data) != envelope.crc32:
        return (f"the stored message file is damaged: {len(data)} bytes with checksum "
                f"{zlib.crc32(data):08x}, expected {envelope.size} bytes with {envelope.crc32:08x}")
    return None


def checksum(data: bytes) -> int:
    return zlib.crc32(data)
