"""systemd's readiness protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines to the
socket named in NOTIFY_SOCKET. Thirty lines of stdlib, so no library: with no NOTIFY_SOCKET
(not under systemd, or Type= is not notify) every call does nothing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping


class Notifier:
    """Tells the service manager READY, STATUS and WATCHDOG; silent outside systemd."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace: its name starts with a NUL byte
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog = watchdog_interval(environ)

    def send(self, **fields: str | int) -> bool:
        """One datagram (READY=1, STATUS=..., WATCHDOG=1); False if nobody listens."""
        if not self.address:
            return False
        text = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(text.encode(), self.address)
        except OSError:
            return False  # the manager went away: the relay goes on
        return True


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """How often to send WATCHDOG=1: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises; None when no watchdog is set or it is meant for another process."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


async def supervise(notifier: Notifier, status: Callable[[], str],
                    every: float = 10.0) -> None:
    """Until cancelled: WATCHDOG=1 at the watchdog interval (from the event loop, so a stuck
    loop misses it and systemd restarts the relay) and STATUS= every `every` seconds, or less
    often when working it out takes long (it runs in a thread, at most 1% of the time, so a
    long queue neither delays the watchdog nor costs the relay). Nothing outside systemd."""
    if not notifier.address:
        return
    tasks = [asyncio.create_task(_tell_status(notifier, status, every))]
    if notifier.watchdog:
        tasks.append(asyncio.create_task(_ping(notifier, notifier.watchdog)))
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _ping(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.send(watchdog=1)
        await asyncio.sleep(interval)


async def _tell_status(notifier: Notifier, status: Callable[[], str], every: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            text = await asyncio.to_thread(status)
        except OSError as exc:  # an unreadable folder is worth saying, never worth stopping for
            text = f"cannot read the mailroot: {exc.strerror or exc}"
        notifier.send(status=text)
        await asyncio.sleep(max(every, 100 * (loop.time() - started)))
