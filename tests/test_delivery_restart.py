"""The Queue as the contract: a killed relay's schedule survives; other processes' changes to
Queue/ are picked up; a damaged message file is quarantined."""

from __future__ import annotations

import json
import signal
import time

import pytest

from relay.core.store import QUEUE, Envelope, Mailroot, Recipient, checksum, new_id
from tests.conftest import drop_file, wait_for
from tests.test_delivery import delivery_config, events, message


def subjects(hop) -> list[str]:
    return [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in hop.messages]


def test_sigkill_with_50_queued_keeps_schedule_and_delivers_each(relay, dns_server, sink):
    hop = sink()
    hop.data_reply = "451 4.3.0 not now"
    config = delivery_config(dns_server, hop.port, retry=["3s", "3s", "3s", "3s"])
    r = relay(config)
    for i in range(50):
        drop_file(r.folder("Pickup"), f"m{i}.eml", message(f"x{i}@remote.example", f"n{i}"))
    wait_for(lambda: len(events(r, "deferred")) == 50, timeout=15)
    queued = [json.loads(p.read_bytes()) for p in r.files("Queue", "*.env")]
    due = {env["subject"]: env["next_attempt"] for env in queued}
    subject_of = {env["id"]: env["subject"] for env in queued}
    assert len(due) == 50

    def slow_accept() -> str:
        time.sleep(0.03)
        return "250 OK"

    hop.data_reply = slow_accept
    wait_for(lambda: len(hop.messages) >= 5, timeout=10)
    r.stop(signal.SIGKILL)
    recorded = {subject_of[e["id"]] for e in events(r, "delivered")}
    restarted = relay(config)
    wait_for(lambda: not restarted.files("Queue"), timeout=20)
    got = subjects(hop)
    assert sorted(set(got)) == sorted(due)  # none lost
    first = {}
    for subject, received in zip(got, hop.messages, strict=True):
        first.setdefault(subject, received.at)
    assert all(first[s] >= due[s] - 0.05 for s in due)  # none before its stored retry time
    twice = {s for s in got if got.count(s) > 1}
    assert not twice & recorded  # only what was in flight at the kill may come twice
    assert len(got) - len(due) <= 50 - len(recorded)


def queue_directly(root, to: str, data: bytes, crc: int | None = None) -> str:
    """Put a message in Queue/ as another process (the operator CLI's requeue) does."""
    store = Mailroot(root)
    env = Envelope(new_id(), "app@yourdomain.com", [Recipient(to)], time.time(),
                   origin="test", size=len(data), next_attempt=time.time(),
                   crc32=checksum(data) if crc is None else crc)
    store.commit(store.enqueue_ops(QUEUE, env, data))
    return env.id


@pytest.mark.alone  # a time bound
def test_other_processes_queue_changes_are_picked_up_within_1s(relay, dns_server, sink):
    hop = sink()
    answers = iter(["451 4.3.0 later"])
    hop.data_reply = lambda: next(answers, "250 OK")
    r = relay(delivery_config(dns_server, hop.port, retry=["1h", "1h", "1h", "1h"]))
    data = message("x@remote.example", "first")
    mid = queue_directly(r.root, "x@remote.example", data)
    wait_for(lambda: events(r, "deferred"), timeout=3)  # a new Queue entry: tried at once
    store = Mailroot(r.root)
    with store.claim(QUEUE, mid) as claimed:  # retry-now, as the operator API does it
        assert claimed
        env = store.read_envelope(QUEUE, mid)
        assert env.next_attempt > time.time() + 3000
        env.next_attempt = time.time()
        store.update_envelope(QUEUE, env)
    wait_for(lambda: hop.messages, timeout=3)  # not an hour later (nor at a 30 s rescan)
    wait_for(lambda: not r.files("Queue"))


def test_damaged_message_file_is_quarantined_with_reason(relay, dns_server, sink):
    hop = sink()
    r = relay(delivery_config(dns_server, hop.port))
    data = message("x@remote.example", "damaged")
    mid = queue_directly(r.root, "x@remote.example", data, crc=12345)
    bad = wait_for(lambda: r.files("Badmail", f"{mid}.BAD"), timeout=3)
    assert "damaged" in bad[0].read_text().split("\n\n")[1]
    assert wait_for(lambda: events(r, "quarantined"))[0]["id"] == mid  # logged after the move
    assert not hop.messages  # nothing sent; the report went to the local sender
    wait_for(lambda: r.files("Drop"))
