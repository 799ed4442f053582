"""MX resolution against a real DNS server on loopback."""

from __future__ import annotations

import pytest

from relay.core.config_loader import parse
from relay.queue.resolver import DnsFailure, Resolver


def resolver_for(dns_server, hostname: str = "relay.test") -> Resolver:
    return Resolver(parse(f"hostname: {hostname}\ndns:\n  nameservers: [127.0.0.1]\n"
                          f"  port: {dns_server.port}\n  timeout: 1s\n"))


async def test_mx_in_preference_order_equal_ones_shuffled(dns_server) -> None:
    dns_server.mx("p.test", (20, "b.p.test"), (10, "a.p.test"), (20, "c.p.test"))
    for host, ip in (("a.p.test", "127.0.0.2"), ("b.p.test", "127.0.0.3"),
                     ("c.p.test", "127.0.0.4")):
        dns_server.a(host, ip)
    orders = set()
    for _ in range(30):
        targets = await resolver_for(dns_server).mx_targets("P.test")
        assert targets[0].host == "a.p.test" and targets[0].address == "127.0.0.2"
        orders.add(tuple(t.host for t in targets[1:]))
    assert orders == {("b.p.test", "c.p.test"), ("c.p.test", "b.p.test")}


async def test_no_mx_means_the_domain_itself(dns_server) -> None:
    dns_server.a("plain.test", "127.0.0.5")
    targets = await resolver_for(dns_server).mx_targets("plain.test")
    assert [(t.host, t.address) for t in targets] == [("plain.test", "127.0.0.5")]


@pytest.mark.parametrize("setup, status, words", [
    (lambda d: d.null_mx("null.test"), "5.1.10", "null MX"),
    (lambda d: d.clear("null.test"), "5.1.2", "does not exist"),
    (lambda d: d.servfail("null.test"), "4.4.3", "SERVFAIL"),
    (lambda d: d.silent("null.test"), "4.4.3", "timed out"),
    (lambda d: d.mx("null.test", (10, "gone.null.test")), "4.4.3", "resolves"),
])
async def test_failures_permanent_or_temporary(dns_server, setup, status, words) -> None:
    dns_server.a("null.test", "127.0.0.1")  # never used as a fallback
    setup(dns_server)
    with pytest.raises(DnsFailure) as failure:
        await resolver_for(dns_server).mx_targets("null.test")
    assert failure.value.status == status and words in failure.value.reason
    assert failure.value.permanent == status.startswith("5")


async def test_own_host_in_mx_list_keeps_only_better_ones(dns_server) -> None:
    dns_server.mx("p.test", (10, "better.p.test"), (20, "relay.test"), (30, "worse.p.test"))
    for host in ("better.p.test", "relay.test", "worse.p.test"):
        dns_server.a(host, "127.0.0.9")
    targets = await resolver_for(dns_server).mx_targets("p.test")
    assert [t.host for t in targets] == ["better.p.test"]
    dns_server.mx("q.test", (10, "relay.test"), (20, "worse.p.test"))
    with pytest.raises(DnsFailure, match="loops back"):
        await resolver_for(dns_server).mx_targets("q.test")


async def test_answers_cached_failures_not(dns_server) -> None:
    dns_server.mx("p.test", (10, "mx.p.test"))
    dns_server.a("mx.p.test", "127.0.0.7")
    resolver = resolver_for(dns_server)
    await resolver.mx_targets("p.test")
    asked = len(dns_server.queries)
    await resolver.mx_targets("p.test")
    assert len(dns_server.queries) == asked
    dns_server.servfail("s.test")
    with pytest.raises(DnsFailure):
        await resolver.mx_targets("s.test")
    dns_server.servfail("s.test", on=False)
    dns_server.a("s.test", "127.0.0.8")
    assert (await resolver.mx_targets("s.test"))[0].address == "127.0.0.8"
