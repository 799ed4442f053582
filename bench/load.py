"""Load generators: messages, Pickup files, SMTP sessions (smtp-source when installed, so
every system gets the same client; a threaded smtplib client otherwise).  Loopback only;
every loop bounded in count and time."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import threading
from pathlib import Path

SENDER = "bench@bench.test"
RECIPIENT = "sink@remote.example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def message(token: int | str, size: int, recipient: str = RECIPIENT) -> bytes:
    """An RFC 5322 message of about `size` bytes carrying `X-Bench-Token`."""
    head = (f"From: {SENDER}\r\nTo: {recipient}\r\nSubject: bench {token}\r\n"
            f"X-Bench-Token: {token}\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def fill_pickup(folder: Path, count: int, size: int, recipient: str = RECIPIENT) -> None:
    """Pre-fill a Pickup folder: each file written aside, then renamed in."""
    aside = folder.parent / "bench-staging"
    aside.mkdir(exist_ok=True)
    for number in range(count):
        path = aside / f"b{number}.eml"
        path.write_bytes(message(number, size, recipient))
        os.rename(path, folder / f"b{number}.eml")


def smtp_source_path() -> str | None:
    return shutil.which("smtp-source", path=os.environ.get("PATH", "") + ":/usr/sbin")


def smtp_load(port: int, count: int, sessions: int, size: int, timeout: float = 300) -> str:
    """Send `count` messages of `size` bytes over `sessions` reused connections to
    127.0.0.1:port; returns the client used."""
    source = smtp_source_path()
    if source:
        subprocess.run([source, "-s", str(sessions), "-m", str(count), "-l", str(size), "-d",
                        "-f", SENDER, "-t", RECIPIENT, "-M", "client.bench.test",
                        f"127.0.0.1:{port}"], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL)
        return "smtp-source"
    data = message("load", size)
    errors: list[BaseException] = []

    def session(share: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
                for _ in range(share):
                    client.sendmail(SENDER, [RECIPIENT], data)
        except BaseException as exc:  # reported below, on the caller's thread
            errors.append(exc)

    shares = [count // sessions + (i < count % sessions) for i in range(sessions)]
    threads = [threading.Thread(target=session, args=(s,)) for s in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    if errors:
        raise errors[0]
    return "smtplib threads"


def smtp_one(port: int, data: bytes) -> None:
    """One message over a new connection (for latency samples)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(SENDER, [RECIPIENT], data)
