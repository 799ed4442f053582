"""Prometheus metrics: after SMTP and Pickup traffic with deferrals and a 550, /metrics parses
with prometheus_client's own parser and every counter equals what the event log says."""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.core.store import BADMAIL, DROP, HOLD, PICKUP, QUEUE, id_time
from tests.conftest import drop_file, wait_for


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def mail(sender: str, to: list[str], subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(to), subject
    msg.set_content("hello\n")
    return msg


def test_counters_equal_the_event_log(relay, sink) -> None:
    began = time.time()
    hop = sink()
    hop.rcpt_replies = {"grey@remote.test": "451 4.7.1 greylisted, try again later",
                        "gone@remote.test": "550 5.1.1 user unknown"}
    proc = relay({"metrics": {"listen": "127.0.0.1:0"}, "pickup": {"settle": "0s"},
                  "delivery": {"smarthost": f"127.0.0.1:{hop.port}"},
                  "smtp": {"relay": {"allow": ["127.0.0.0/8"]},
                           "limits": {"trusted_connections": 1}}})
    port = wait_for(lambda: next((e["port"] for e in proc.events()
                                  if e["event"] == "metrics-listening"), None))

    refused_early = [0]  # one connection at a time: the last one may not be released yet

    def session() -> smtplib.SMTP:
        deadline = time.monotonic() + 5
        while True:
            try:
                return smtplib.SMTP("127.0.0.1", proc.smtp_port(), timeout=10)
            except smtplib.SMTPConnectError as exc:
                if exc.smtp_code != 421 or time.monotonic() > deadline:
                    raise
                refused_early[0] += 1  # counted by the relay too: a refusal like any other
                time.sleep(0.05)

    with session() as client:
        client.send_message(mail("app@yourdomain.com", ["ok@remote.test", "grey@remote.test"],
                                 "smtp one"))
        client.send_message(mail("app@yourdomain.com", ["ops@yourdomain.com"], "smtp local"))
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("app@yourdomain.com", ["not an address"], b"Subject: x\r\n\r\nx\r\n")
    with session() as client:
        client.send_message(mail("app@yourdomain.com", ["gone@remote.test", "ok2@remote.test"],
                                 "smtp two"))
    with session() as client:
        with socket.create_connection(("127.0.0.1", proc.smtp_port()), timeout=10) as second:
            assert second.recv(200).startswith(b"421 4.7.0")  # one connection at a time
        replies = [client.docmd("BOGUS")[0] for _ in range(5)]  # the fifth hangs up
    assert replies == [500, 500, 500, 500, 421]
    for n, to in enumerate(["ok@remote.test", "grey@remote.test", "gone@remote.test"]):
        drop_file(proc.folder("Pickup"), f"p{n}.eml",
                  bytes(mail("app@yourdomain.com", [to], f"pickup {n}")))

    def settled() -> bool:
        names = Counter(e["event"] for e in proc.events())
        return names["bounced"] == 2 and names["deferred"] >= 2 and names["delivered"] >= 3
    wait_for(settled, timeout=30)

    before = time.time()
    samples = scrape(port)
    after = time.time()
    events = proc.events()

    def total(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted(labels.items()))]

    intake = [e for e in events if e["event"] == "intake"
              and e["outcome"] not in ("rejected", "set-aside")]
    assert total("mailroot_received_total", source="smtp") == \
        sum(e["source"].startswith("SMTP") for e in intake) == 3
    assert total("mailroot_received_total", source="pickup") == \
        sum(e["source"].startswith("Pickup/") for e in intake) == 3
    for result in ("delivered", "deferred", "failed"):
        assert total("mailroot_delivery_attempts_total", result=result) == sum(
            len(e["to"]) for e in events if e["event"] == result), result
    assert total("mailroot_delivery_attempts_total", result="failed") == 2
    assert total("mailroot_bounces_total") == 2
    connects = sum(e["event"] == "smtp-connect" for e in events)
    assert total("mailroot_smtp_connections_total") == connects
    assert 4 <= connects <= 4 + refused_early[0]  # (a session refused early may count)
    rejected = Counter(e["code"] for e in events if e["event"] == "smtp-rejected")
    rejected["421"] += sum(e["event"] == "connection-refused" for e in events)
    # each reply as the client saw it
    assert rejected == {"553": 1, "500": 4, "421": 2 + refused_early[0]}
    for code, count in rejected.items():
        assert total("mailroot_smtp_rejections_total", code=code) == count
    delivered = sum(len(e["to"]) for e in events if e["event"] == "delivered")
    assert total("mailroot_delivery_delay_seconds_count") == delivered
    assert total("mailroot_delivery_delay_seconds_bucket", le="+Inf") == delivered
    # the delays themselves, per recipient: from the message's id (made before its commit)
    # to delivery, none longer than the test has run; and from its intake event, which a
    # receiver writes after the commit's directory fsync, while the queue manager may
    # deliver from the rename on (so a delivery may be logged a moment before its intake)
    taken_in = {e["id"]: e["time"] for e in events if e["event"] == "intake"}
    delays = [e["time"] - taken_in[e["id"]] for e in events if e["event"] == "delivered"
              for _ in e["to"]]
    by_id = sorted(e["time"] - id_time(e["id"]) for e in events if e["event"] == "delivered"
                   for _ in e["to"])
    wall = time.time() - began
    assert len(delays) == delivered and all(0 < d < wall for d in by_id), by_id
    delay_sum = total("mailroot_delivery_delay_seconds_sum")
    assert 0 < delay_sum < delivered * wall
    # the message id is made a moment before its intake event is written
    assert sum(delays) <= delay_sum <= sum(delays) + 0.5 * delivered, (delay_sum, delays)
    for le in ("0.1", "0.5", "1.0", "5.0", "15.0", "60.0"):
        assert total("mailroot_delivery_delay_seconds_bucket", le=le) == sum(
            d <= float(le) for d in by_id), le
    assert total("mailroot_delivery_delay_seconds_bucket", le="60.0") == delivered
    assert total("mailroot_up") == 1
    assert any(name == "mailroot_build_info" for name, _ in samples)

    # the folder gauges, against the folders themselves
    for folder, pattern in ((QUEUE, "*.env"), (BADMAIL, "*.BAD"), (DROP, "*.eml"),
                            (HOLD, "*.env"), (PICKUP, "*")):
        assert total("mailroot_messages", folder=folder) == len(proc.files(folder, pattern))
    assert total("mailroot_messages", folder=BADMAIL) == 2
    assert total("mailroot_bytes", folder=QUEUE) == sum(
        p.stat().st_size for p in proc.files(QUEUE))
    # the oldest queued message's age, against its message file (written once, at intake)
    oldest = min(p.stat().st_mtime for p in proc.files(QUEUE, "*.eml"))
    age = total("mailroot_oldest_message_age_seconds", folder=QUEUE)
    assert before - oldest - 0.5 < age < after - oldest + 0.5, (age, before - oldest)
    assert total("mailroot_oldest_message_age_seconds", folder=PICKUP) == 0

    # every metric the shipped alert rules use is one the relay exports
    rules = (Path(__file__).resolve().parent.parent / "docs/prometheus-alerts.yaml").read_text()
    exported = {name for name, _ in samples}
    used = set(re.findall(r"mailroot_\w+", rules))
    assert used and used <= exported, used - exported


def test_metrics_listen_taken_is_a_clear_error(write_config) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    path = write_config({"metrics": {"listen": f"127.0.0.1:{taken.getsockname()[1]}"}})
    done = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)
    taken.close()
    assert done.returncode == 2
    assert "(metrics.listen)" in done.stderr
