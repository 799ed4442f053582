"""SMTP AUTH users: a `user:hash` line per user, hashes never plain text.

A hash names its own scheme and parameters (`scrypt$n$r$p$salt$key`, base64 parts), so the
cost can be raised later without breaking the lines already written.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class UsersFileError(ValueError):
    """A user name or users file the relay can't use, with the reason in words."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                         dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: bytes, stored: str) -> bool:
    """True if `password` matches `stored`; False for a wrong password or an unknown scheme."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt, validate=True), n=int(n),
                             r=int(r), p=int(p), dklen=len(expected), maxmem=2**26)
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def check_user_name(user: str) -> None:
    if not user or any(c in user for c in ":\r\n") or user != user.strip():
        raise UsersFileError(f"bad user name {user!r}: no ':', line breaks or outer spaces")


def read_users(path: Path) -> dict[str, str]:
    """user -> stored hash; blank lines and # comments are skipped."""
    users: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            user, sep, stored = line.partition(":")
            if sep:
                users[user] = stored.strip()
    return users


def check_login(path: Path, user: bytes, password: bytes) -> bool:
    """Checks a login against the file as it is now, so `mailroot passwd` applies at once."""
    try:
        stored = read_users(path).get(user.decode("utf-8"))
    except (OSError, UnicodeDecodeError):
        return False
    if stored is None:
        verify_password(password, hash_password("unknown user"))  # same time as a real check
        return False
    return verify_password(password, stored)


def set_password(path: Path, user: str, password: str) -> bool:
    """Add or replace the user's line (atomically, mode 0600); True if the user was new."""
    check_user_name(user)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    entry = f"{user}:{hash_password(password)}"
    found = False
    for i, line in enumerate(lines):
        if line.partition(":")[0] == user and not line.lstrip().startswith("#"):
            lines[i], found = entry, True
    if not found:
        lines.append(entry)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, ("\n".join(lines) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return not found
