"""Prometheus metrics (prometheus_client), served on `metrics.listen` when it is set.

The counters are fed by the relay's own events, so they say exactly what the event log says;
they start from zero with each relay process, which Prometheus's rate() and increase() take
as a counter reset. The folder gauges are read from disk at each scrape.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from relay.core.folderstats import all_usage
from relay.core.store import Mailroot, id_time

# intake to delivery: seconds for a direct delivery ... days for a long retry
DELAY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400,
                 2 * 86400, float("inf"))
NOT_RECEIVED = {"rejected", "set-aside"}  # refused at the door, or not a message at all


class CatchingUpRegistry(CollectorRegistry):
    """Runs `before_collect` at each scrape first: a supervisor feeds its children's events
    (read from the event log) to the counters then, so a scrape is as current as the log."""

    def __init__(self) -> None:
        super().__init__()
        self.before_collect: Callable[[], None] = lambda: None

    def collect(self) -> Iterator[Any]:
        self.before_collect()
        yield from super().collect()


class FolderCollector(Collector):
    """mailroot_messages, mailroot_bytes, mailroot_oldest_message_age_seconds per folder."""

    def __init__(self, store: Mailroot) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        usage = all_usage(self.store, time.time())
        families = [
            (GaugeMetricFamily("mailroot_messages", "Messages in each folder",
                               labels=["folder"]), "messages"),
            (GaugeMetricFamily("mailroot_bytes", "Bytes on disk in each folder",
                               labels=["folder"]), "bytes"),
            (GaugeMetricFamily("mailroot_oldest_message_age_seconds",
                               "Age of the oldest message in each folder (0 when empty)",
                               labels=["folder"]), "oldest_age"),
        ]
        for family, attribute in families:
            for folder, one in usage.items():
                family.add_metric([folder], getattr(one, attribute))
            yield family


class RelayMetrics:
    """The relay's metrics in their own registry; observe() is an EventLog listener."""

    def __init__(self, store: Mailroot) -> None:
        self.registry = CatchingUpRegistry()
        reg = self.registry
        self.received = Counter("mailroot_received", "Messages taken in, by source",
                                ["source"], registry=reg)
        self.attempts = Counter("mailroot_delivery_attempts",
                                "Delivery attempts per recipient, by result", ["result"],
                                registry=reg)
        self.bounces = Counter("mailroot_bounces", "Messages moved to Badmail after delivery "
                               "failed (a report goes to the sender)", registry=reg)
        self.connections = Counter("mailroot_smtp_connections", "SMTP connections accepted",
                                   registry=reg)
        self.rejections = Counter("mailroot_smtp_rejections",
                                  "SMTP replies refusing something, by reply code", ["code"],
                                  registry=reg)
        self.delay = Histogram("mailroot_delivery_delay_seconds",
                               "From intake to delivery, per delivered recipient",
                               buckets=DELAY_BUCKETS, registry=reg)
        Gauge("mailroot_up", "1 while the relay runs", registry=reg).set(1)
        Info("mailroot_build", "mailroot build", registry=reg).info(
            {"version": _version(), "python": sys.version.split()[0]})
        for source in ("smtp", "pickup"):
            self.received.labels(source)  # present at zero from the start
        for result in ("delivered", "deferred", "failed"):
            self.attempts.labels(result)
        reg.register(FolderCollector(store))
        self.server: Any = None

    def observe(self, event: dict[str, Any]) -> None:
        name = event.get("event")
        if name == "intake" and event.get("outcome") not in NOT_RECEIVED:
            source = str(event.get("source", ""))
            self.received.labels("smtp" if source.startswith("SMTP") else "pickup").inc()
        elif name in ("delivered", "deferred", "failed"):
            count = len(event.get("to") or [])
            self.attempts.labels(name).inc(count)
            if name == "delivered" and event.get("id"):
                delay = max(0.0, event["time"] - id_time(event["id"]))
                for _ in range(count):
                    self.delay.observe(delay)
        elif name == "bounced":
            self.bounces.inc()
        elif name == "smtp-connect":
            self.connections.inc()
        elif name == "smtp-rejected":
            self.rejections.labels(str(event.get("code", ""))).inc()
        elif name == "connection-refused":  # a client over its limits, told 421 at connect
            self.rejections.labels("421").inc()

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Serve /metrics in a thread; the address bound (port 0 picks one)."""
        self.server, _ = start_http_server(port, host, registry=self.registry)
        bound = self.server.socket.getsockname()
        return bound[0], bound[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _version() -> str:
    try:
        return version("mailroot")
    except PackageNotFoundError:
        return "unknown"
