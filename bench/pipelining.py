"""The delivery client's transaction with and without PIPELINING, on loopback and over a
simulated round trip: `python -m bench.pipelining [--messages 300] [--rtt 20] [--runs 3]`.

The relay's own SMTP client (relay.queue.smtp_client.Client, one connection reused, as the queue
manager reuses it for a destination) sends N messages of 2 KB, each to three recipients, to
an aiosmtpd next hop that offers PIPELINING or does not (the hop's EHLO says so), either
directly or through a proxy on 127.0.0.1 that holds every chunk `--rtt`/2 ms each way (the
internet case: a round trip of 20-200 ms). Runs are interleaved; each figure is the median,
with its ratio to the same path without PIPELINING measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import yaml

from bench.roundtrip import proxy
from bench.sink import Counting, serve
from relay.core.config_loader import parse
from relay.core.router import Router
from relay.queue.resolver import Resolver
from relay.queue.smtp_client import Client
from relay.queue.smtp_transaction import Outgoing

RECIPIENTS = ["a@remote.example", "b@remote.example", "c@remote.example"]
MESSAGE = (b"From: app@yourdomain.com\r\nTo: a@remote.example\r\nSubject: bench\r\n\r\n"
           + (b"x" * 76 + b"\r\n") * 26)


async def one_run(pipelining: bool, rtt: float, messages: int) -> float:
    """Messages per second through the client to a fresh next hop."""
    hop = Counting(pipelining)
    server = await serve(hop)
    port = server.sockets[0].getsockname()[1]
    relay_proxy = await proxy(port, rtt / 2) if rtt else None
    if relay_proxy is not None:
        port = relay_proxy.sockets[0].getsockname()[1]
    config = parse(yaml.safe_dump({
        "hostname": "relay.bench.test", "dns": {"nameservers": ["127.0.0.1"], "port": 9},
        "delivery": {"smarthost": f"127.0.0.1:{port}", "timeout": "30s",
                     "messages_per_connection": messages + 1}}))
    client = Client(config, Resolver(config))
    route = Router(config).route("remote.example")
    began = time.monotonic()
    for _ in range(messages):
        result = await client.deliver(route, Outgoing("app@yourdomain.com", MESSAGE),
                                      RECIPIENTS)
        assert all(reply.ok for reply in result.replies.values()), result.replies
    took = time.monotonic() - began
    await client.close()
    for each in (server, relay_proxy):
        if each is not None:
            each.close()
    assert hop.count == messages
    return messages / took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipelining", description=__doc__)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rtt", type=float, default=20.0, help="milliseconds")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    cases = [(pipelining, rtt) for rtt in (0.0, args.rtt / 1000) for pipelining in (False, True)]
    figures: dict[tuple[bool, float], list[float]] = {case: [] for case in cases}
    for _ in range(args.runs):
        for pipelining, rtt in cases:  # interleaved
            count = args.messages if not rtt else max(20, args.messages // 10)
            figures[(pipelining, rtt)].append(asyncio.run(one_run(pipelining, rtt, count)))
    print(f"{'next hop':<34} {'msg/s (median, min-max)':>26} {'ratio':>7}")
    for pipelining, rtt in cases:
        runs = figures[(pipelining, rtt)]
        base = statistics.median(figures[(False, rtt)])
        name = (f"{'PIPELINING' if pipelining else 'no PIPELINING'}, "
                f"{'loopback' if not rtt else f'{rtt * 1000:.0f} ms round trip'}")
        print(f"{name:<34} {statistics.median(runs):>12.1f} ({min(runs):.1f}-{max(runs):.1f})"
              f" {statistics.median(runs) / base:>6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
