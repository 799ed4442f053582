"""Message text as the relay stores it: CRLF lines, a header block, a body.

Works on bytes so the body is kept exactly; only the header fields the relay needs are decoded.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

FIELD_LINE = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
LINE_ENDS = re.compile(rb"\r\n|\r|\n")
MAX_LINE = 998


class MessageError(ValueError):
    """The text is not a message the relay can handle; the reason is for a person."""


def normalize_line_ends(data: bytes) -> bytes:
    """CRLF everywhere: no bare CR or LF survives into the store.

    Text already in CRLF (what SMTP clients send, and every stored message) is returned as
    it is after three counts, which cost a tenth of the regex's pass over 100 KB."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return data
    return LINE_ENDS.sub(b"\r\n", data)


@dataclass
class Message:
    """A header block (one entry per field, continuation lines kept) and the body bytes."""

    fields: list[bytes]
    body: bytes

    @classmethod
    def parse(cls, data: bytes, headerless_ok: bool = False) -> Message:
        """Split CRLF text into fields and body.

        The header block ends at an empty line or, as in messages typed by hand into Pickup,
        at the first line that is neither a field nor a continuation (that line starts the
        body).  With `headerless_ok` (SMTP, where a client may send a bare body) text without
        a header field is all body.
        """
        fields: list[bytes] = []
        pos = 0
        while pos < len(data):
            end = data.find(b"\r\n", pos)
            end = len(data) if end < 0 else end
            line = data[pos:end]
            if not line:
                pos = end + 2
                break
            if line[:1] in (b" ", b"\t"):
                if not fields and headerless_ok:
                    break
                if not fields:
                    raise MessageError("the first line is a continuation line, not a header field")
                fields[-1] += b"\r\n" + line
            elif FIELD_LINE.match(line):
                fields.append(line)
            else:
                break
            pos = end + 2
        else:
            pos = len(data)
        if not fields and headerless_ok:
            return cls([], data)
        if not fields:
            first = data.split(b"\r\n", 1)[0][:60].decode("utf-8", "replace")
            raise MessageError(f"no header fields: the first line {first!r} is not 'Name: value'")
        return cls(fields, data[pos:])

    def to_bytes(self) -> bytes:
        return b"".join(f + b"\r\n" for f in self.fields) + b"\r\n" + self.body

    @staticmethod
    def name_of(field_line: bytes) -> str:
        match = FIELD_LINE.match(field_line)
        return match[1].decode("ascii").lower() if match else ""

    def get_all(self, name: str) -> list[str]:
        """Unfolded values of every field called `name` (UTF-8, undecodable bytes replaced)."""
        name = name.lower()
        values = []
        for line in self.fields:
            if self.name_of(line) == name:
                value = line.split(b":", 1)[1]
                values.append(re.sub(rb"\r\n[ \t]", b" ", value).strip()
                              .decode("utf-8", "replace"))
        return values

    def get(self, name: str, default: str = "") -> str:
        values = self.get_all(name)
        return values[0] if values else default

    def remove(self, name: str) -> None:
        self.fields = [f for f in self.fields if self.name_of(f) != name.lower()]

    def prepend(self, name: str, value: str) -> None:
        self.fields.insert(0, f"{name}: {value}".encode())

    def count(self, name: str) -> int:
        return sum(1 for f in self.fields if self.name_of(f) == name.lower())

    def check_header(self) -> None:
        """Header lines must be text: no controls but TAB, and at most 998 octets each."""
        for number, line in enumerate(b"\r\n".join(self.fields).split(b"\r\n"), 1):
            if len(line) > MAX_LINE:
                raise MessageError(f"header line {number} is {len(line)} octets long "
                                   f"(the limit is {MAX_LINE})")
            if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line):
                raise MessageError(f"header line {number} contains control characters")

    def addresses(self, *names: str) -> list[str]:
        """Addresses from the named address fields, in order; raises on a field that
        does not parse as a list of addresses."""
        found = []
        for name in names:
            for value in self.get_all(name):
                pairs = email.utils.getaddresses([value])
                if not value.strip() or value.strip() in ("undisclosed-recipients:;",):
                    continue
                bad = [addr for _, addr in pairs if not addr or addr.count("@") != 1
                       or addr.startswith("@") or addr.endswith("@")]
                if bad or not pairs:
                    raise MessageError(f"the {name.title()}: field cannot be parsed as "
                                       f"addresses: {value[:80]!r}")
                found += [addr for _, addr in pairs]
        return found


def binary_junk(body: bytes) -> bool:
    """Control characters beyond what text mail holds (more than 1% of the body)."""
    controls = len(re.findall(rb"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]", body))
    return controls > max(2, len(body) // 100)


def stuff(data: bytes) -> bytes:
    """SMTP dot-stuffing of CRLF text (RFC 5321 4.5.2: a line's leading dot is doubled)."""
    data = data.replace(b"\r\n.", b"\r\n..")
    return b"." + data if data.startswith(b".") else data


def unstuff(data: bytes) -> bytes:
    """Undo SMTP dot-stuffing (RFC 5321 4.5.2: a line's leading dot is removed)."""
    data = data.replace(b"\r\n.", b"\r\n")  # bytes.replace: 20x a regex on 100 KB
    return data[1:] if data.startswith(b".") else data


def format_date(when: float | None = None) -> str:
    return email.utils.formatdate(when, localtime=True)


def wrap_received(parts: str) -> str:
    """Fold a Received: value before the date so the line stays short."""
    head, _, date = parts.rpartition(";")
    return f"{head};\r\n\t{date.strip()}"
