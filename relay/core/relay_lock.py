"""relay.lock: one relay per mailroot. The running relay holds an exclusive flock on it (its
children inherit the descriptor) with "pid N on host" written inside; a command asks who
holds it without taking it."""

from __future__ import annotations

import fcntl
import os
import socket

from relay.core.store import Mailroot

LOCK_NAME = "relay.lock"


class AlreadyRunning(Exception):
    """Another relay holds this mailroot."""


def lock_holder(store: Mailroot) -> str | None:
    """Who holds the mailroot's relay lock ('pid 123 on host'), or None if no relay runs."""
    path = store.root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)
    return None


def take_lock(store: Mailroot) -> int:
    """Take the mailroot's relay lock for this process and write who holds it; the
    descriptor holds it until closed (children inherit it). Raises AlreadyRunning."""
    fd = os.open(store.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunning(f"another relay is already running on {store.root} "
                             f"({holder or 'unknown process'})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd
