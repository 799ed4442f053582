"""SMTP receivers on 127.0.0.1: the sink every system relays to (the MX, the next hop), and
the two Python references (a receiver that only counts, one that writes and fsyncs each
message).

The sink runs in a thread of the bench process and records when each tokened message arrives;
it is one of the next hops in HOPS (or `[plain-]rtt<ms>`): without PIPELINING in its EHLO,
with it, or with it behind a proxy that adds a round trip. The references run as their own
processes (`python -m bench.sink count|fsync`) so they get a core of their own like the
systems they are compared with.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from bench.roundtrip import proxy

TOKEN = re.compile(rb"\nX-Bench-Token: (\S+)\r?\n")

logging.getLogger("mail.log").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Hop:
    """A next hop: the sink offering PIPELINING or not, reached directly or over a round
    trip of `round_trip_ms` (through the proxy of bench.roundtrip)."""

    name: str
    pipelining: bool
    round_trip_ms: float = 0.0

    @property
    def description(self) -> str:
        offer = "with PIPELINING" if self.pipelining else "without PIPELINING"
        path = f", {self.round_trip_ms:g} ms round trip" if self.round_trip_ms else ""
        return f"sink {offer}{path}"


PLAIN = Hop("plain", pipelining=False)
HOPS = {hop.name: hop for hop in (PLAIN, Hop("pipelining", pipelining=True),
                                  Hop("rtt20", pipelining=True, round_trip_ms=20))}


def hops(names: str) -> list[Hop]:
    """The hops named, comma-separated: a name of HOPS, `rtt<ms>` (PIPELINING behind that
    round trip) or `plain-rtt<ms>` (no PIPELINING behind it)."""
    chosen = []
    for name in filter(None, (each.strip() for each in names.split(","))):
        plain, _, rtt = name.rpartition("rtt")
        if name in (hop.name for hop in chosen):
            raise ValueError(f"next hop {name!r} named twice")
        if name in HOPS:
            chosen.append(HOPS[name])
        elif plain in ("", "plain-") and rtt.isdigit() and int(rtt) > 0:
            chosen.append(Hop(name, pipelining=not plain, round_trip_ms=int(rtt)))
        else:
            raise ValueError(f"unknown next hop {name!r}: {', '.join(HOPS)}, rtt<ms> or "
                             "plain-rtt<ms>")
    return chosen


class Counting:
    """aiosmtpd handler: counts messages and notes when each tokened one arrived; says
    PIPELINING in its EHLO if asked to (aiosmtpd reads pipelined commands as they come
    either way)."""

    def __init__(self, pipelining: bool = False) -> None:
        self.pipelining = pipelining
        self.count = 0
        self.arrivals: dict[str, float] = {}

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        match = TOKEN.search(envelope.original_content[:8192])
        if match:
            self.arrivals[match[1].decode()] = time.monotonic()
        return "250 2.0.0 OK"


class Durable(Counting):
    """Writes each message to a file, fsyncs and renames it before the 250 (fsync in the
    default thread pool, the faster of the two ways measured in BENCHMARKS.md)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.numbers = itertools.count()

    def _store(self, data: bytes, number: int) -> None:
        tmp = self.folder / f"{number}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.folder / f"{number}.eml")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._store, envelope.original_content,
                                   next(self.numbers))
        return await super().handle_DATA(server, session, envelope)


async def serve(handler: Counting, port: int = 0) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SMTP(handler, hostname="sink.bench.test"),
                                    "127.0.0.1", port)


class Sink:
    """The MX: an aiosmtpd server in a background thread, as `hop` says; `port` is where the
    systems deliver (the proxy's when the hop has a round trip); `with Sink() as sink:`."""

    def __init__(self, hop: Hop = PLAIN) -> None:
        self.hop = hop
        self.handler = Counting(hop.pipelining)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name=f"sink-{hop.name}")

    def _start(self, coroutine: Any) -> int:
        server = asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    def __enter__(self) -> Sink:
        self._thread.start()
        self.port = self._start(serve(self.handler))
        if self.hop.round_trip_ms:
            self.port = self._start(proxy(self.port, self.hop.round_trip_ms / 2000))
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    @property
    def count(self) -> int:
        return self.handler.count

    def arrived(self, token: str) -> float | None:
        return self.handler.arrivals.get(token)

    def wait(self, count: int, timeout: float, interval: float = 0.005) -> bool:
        """Wait until `count` messages in all have arrived; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.handler.count < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)
        return True


def main(argv: list[str] | None = None) -> int:
    """A reference receiver process: prints 'port N', serves until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.sink")
    parser.add_argument("mode", choices=["count", "fsync"])
    args = parser.parse_args(argv)

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-fsync-", dir=os.environ.get("TMPDIR")) \
                as folder:
            handler = Counting() if args.mode == "count" else Durable(Path(folder))
            server = await serve(handler)
            print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            server.close()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
