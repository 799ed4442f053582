"""Operator API and CLI on messages, with a real `mailroot serve` on the same mailroot."""

from __future__ import annotations

import json
import time

from relay.core.config_loader import load
from relay.core.store import QUEUE, Envelope, Mailroot, Recipient, new_id
from relay.ops.admin import Admin
from relay.ops.qshape import AGE_BUCKETS
from tests.admin_support import cli, fail_delivery, submit
from tests.conftest import drop_file, wait_for


def envelope(r, folder: str, mid: str) -> Envelope:
    return Envelope.from_json((r.folder(folder) / f"{mid}.env").read_bytes())


def first_try_done(r, ids: list[str]) -> None:
    """Wait for each message's first attempt (no DNS answers here: each is deferred after the
    1 s lookup timeout), so what is listed is settled, not racing the attempt."""
    wait_for(lambda: set(ids) <= {e["id"] for e in r.events() if e["event"] == "deferred"})


def test_queue_lists_oldest_first_as_text_and_json(relay) -> None:
    r = relay()
    ids = submit(r, "user@remote.example", 3)
    first_try_done(r, ids)
    out = cli(r.config, "queue", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [row["id"] for row in rows] == sorted(ids)  # ids sort by arrival: oldest first
    ids = sorted(ids)
    assert rows[0]["recipients"] == [{"address": "user@remote.example", "state": "deferred",
                                      "status": "4.4.3",
                                      "reply": "DNS lookup of remote.example MX timed out"}]
    assert sorted(row["subject"] for row in rows) == ["m-token-0", "m-token-1", "m-token-2"]
    assert rows[0]["sender"] == "app@yourdomain.com"
    text = cli(r.config, "queue").stdout
    assert text.index(ids[0]) < text.index(ids[1]) < text.index(ids[2])
    assert "<user@remote.example> deferred 4.4.3" in text and "3 messages in Queue" in text
    assert "0 messages in Hold" in cli(r.config, "queue", "--folder", "hold").stdout


def test_show_and_raw(relay) -> None:
    r = relay()
    [mid] = submit(r, "user@remote.example")
    first_try_done(r, [mid])
    shown = cli(r.config, "show", mid)
    assert shown.returncode == 0, shown.stderr
    assert f"Id:        {mid}" in shown.stdout and "<user@remote.example> deferred" in shown.stdout
    assert "Subject: m-token-0" in shown.stdout
    raw = cli(r.config, "show", mid, "--raw", binary=True)
    assert raw.stdout == (r.folder("Queue") / f"{mid}.eml").read_bytes()
    missing = cli(r.config, "show", "0000000000000000")
    assert missing.returncode == 1 and "0000000000000000" in missing.stderr


def test_badmail_requeue_restores_the_original_envelope_due_now(relay) -> None:
    r = relay()
    [mid] = submit(r, "user@remote.example")
    fail_delivery(r.root, mid)
    assert cli(r.config, "queue", "--folder", "badmail").stdout.count("no such user") >= 1
    before = time.time()
    out = cli(r.config, "requeue", mid, "--reason", "mailbox created")
    assert out.returncode == 0, out.stderr
    env = envelope(r, "Queue", mid)
    assert [(x.address, x.state, x.status) for x in env.recipients] == [
        ("user@remote.example", "pending", None)]
    assert env.attempts[-1].reply.startswith("550") and env.reason == ""  # history kept
    assert env.queued_at >= before and env.next_attempt <= time.time()
    assert not list(r.folder("Badmail").glob(f"{mid}.*"))
    again = cli(r.config, "requeue", mid)  # now queued: routed again, still remote
    assert again.returncode == 0 and (r.folder("Queue") / f"{mid}.env").exists()


def test_requeue_of_an_intake_refusal_goes_through_intake_again_under_its_id(relay) -> None:
    r = relay({"smtp": {"max_message_size": "100B"}})
    drop_file(r.folder("Pickup"), "big.eml", b"From: a@yourdomain.com\r\nTo: u@remote.example"
              b"\r\nSubject: big\r\n\r\n" + b"x" * 200 + b"\r\n")
    bad = wait_for(lambda: r.files("Badmail", "*.BAD"))[0]
    assert cli(r.config, "settings", "set", "smtp.max_message_size", "2MiB").returncode == 0
    wait_for(lambda: any(e["event"] == "config-reloaded" for e in r.events()), timeout=2)
    out = cli(r.config, "requeue", bad.stem)
    assert out.returncode == 0, out.stderr
    queued = wait_for(lambda: r.files("Queue", "*.env"))
    assert b"u@remote.example" in queued[0].read_bytes() and queued[0].stem == bad.stem
    assert not r.files("Badmail")


def attempts(r, mid: str) -> int:
    return len(envelope(r, "Queue", mid).attempts)


def deferred(r, ids: list[str]) -> None:
    """Wait until the relay has tried each message once (DNS does not answer: deferred)."""
    wait_for(lambda: all(attempts(r, mid) >= 1 for mid in ids), timeout=20)


HOUR_RETRY = {"delivery": {"retry": ["1h", "1h", "1h", "1h"]}}


def noted_dues(r) -> dict[str, float]:
    """The next attempt each Queue and Hold envelope's mtime notes (Mailroot.envelope_write),
    checked against the envelope: a note still to come must be the envelope's own."""
    noted = {}
    for path in r.files("Queue", "*.env") + r.files("Hold", "*.env"):
        mtime, next_attempt = path.stat().st_mtime, json.loads(path.read_bytes())["next_attempt"]
        if mtime > time.time():
            assert abs(mtime - next_attempt) < 0.001, path
            noted[path.stem] = mtime
    return noted


def test_retry_hold_release_delete_undelete(relay) -> None:
    r = relay(HOUR_RETRY)
    a, b = submit(r, "user@remote.example", 2)
    deferred(r, [a, b])
    assert envelope(r, "Queue", a).next_attempt > time.time() + 3000
    assert set(noted_dues(r)) == {a, b}  # deferred: each due time is in the file's stat
    assert cli(r.config, "retry", a).returncode == 0
    wait_for(lambda: attempts(r, a) >= 2, timeout=5)  # the relay acted on it at once
    assert attempts(r, b) == 1

    assert cli(r.config, "hold", a).returncode == 0
    assert (r.folder("Hold") / f"{a}.env").exists() and not (r.folder("Queue") / f"{a}.eml").exists()
    assert envelope(r, "Hold", a).held_at is not None
    held = json.loads(cli(r.config, "queue", "--folder", "hold", "--json").stdout)
    assert held["id"] == a and held["held"] is True
    refused = cli(r.config, "retry", a, b)
    assert refused.returncode == 1 and f"{a}: wrong state: held" in refused.stderr
    assert f"due now: {b}" in refused.stdout
    time.sleep(0.2)
    assert a in noted_dues(r)  # held: its due time goes with it
    assert cli(r.config, "release", a).returncode == 0
    env = envelope(r, "Queue", a)
    assert env.held_at is None and env.held_total >= 0.2 and env.next_attempt <= time.time()
    assert a not in noted_dues(r)  # due now: nothing in its stat says otherwise

    asked = cli(r.config, "delete", a, stdin="n\n")
    assert asked.returncode == 1 and "Delete 1 message" in asked.stderr
    assert (r.folder("Queue") / f"{a}.env").exists()
    assert cli(r.config, "delete", a, "--yes").returncode == 0
    assert not (r.folder("Queue") / f"{a}.env").exists()
    assert a in cli(r.config, "queue", "--folder", "trash").stdout
    assert "already deleted" in cli(r.config, "delete", a, "--yes").stderr
    assert cli(r.config, "undelete", a).returncode == 0
    assert envelope(r, "Queue", a).recipients[0].address == "user@remote.example"
    noted_dues(r)

    unknown = cli(r.config, "hold", "0000000000000000", b)
    assert unknown.returncode == 1 and "0000000000000000: not found" in unknown.stderr
    assert (r.folder("Hold") / f"{b}.env").exists()
    assert cli(r.config, "retry").returncode == 2


def test_retry_all_by_domain(relay) -> None:
    r = relay(HOUR_RETRY)
    one = submit(r, "user@one.example", 2, "one")
    two = submit(r, "user@two.example", 1, "two")
    deferred(r, one + two)
    out = cli(r.config, "retry", "--domain", "one.example")
    assert out.returncode == 0 and sorted(out.stdout.split()[2::3]) == sorted(one)
    wait_for(lambda: all(attempts(r, mid) >= 2 for mid in one), timeout=5)
    assert attempts(r, two[0]) == 1
    assert envelope(r, "Queue", two[0]).next_attempt > time.time() + 3000
    assert cli(r.config, "retry", "--all").stdout.count("due now:") == 3


def test_add_local_domain_then_requeue_lands_in_drop(relay) -> None:
    r = relay()
    [mid] = submit(r, "user@example.org")
    out = cli(r.config, "domains", "add-local", "example.org")
    assert out.returncode == 0, out.stderr
    assert cli(r.config, "requeue", "--all", "--folder", "queue").returncode == 0
    dropped = (r.folder("Drop") / f"{mid}.eml").read_bytes()
    assert dropped.startswith(b"X-Sender: app@yourdomain.com\r\nX-Receiver: user@example.org\r\n")
    assert b"body m-token-0" in dropped
    assert not r.files("Queue")


def test_requeue_from_drop_after_a_domain_stops_being_local(relay) -> None:
    r = relay()
    [mid] = submit(r, "user@alias.test")
    assert (r.folder("Drop") / f"{mid}.eml").exists()
    assert cli(r.config, "domains", "remove", "alias.test").returncode == 0
    out = cli(r.config, "requeue", "--all", "--folder", "drop", "--domain", "alias.test")
    assert out.returncode == 0, out.stderr
    env = envelope(r, "Queue", mid)
    assert [x.address for x in env.recipients] == ["user@alias.test"]
    assert not (r.folder("Queue") / f"{mid}.eml").read_bytes().startswith(b"X-Sender")
    assert not (r.folder("Drop") / f"{mid}.eml").exists()


def test_summary_by_domain_age_and_badmail_reason(relay) -> None:
    r = relay({"smtp": {"max_recipients": 1}})
    one = submit(r, "user@one.example", 2, "one")
    submit(r, "user@two.example", 1, "two")
    fail_delivery(r.root, one[0])
    drop_file(r.folder("Pickup"), "many.eml",
              b"From: a@yourdomain.com\r\nTo: a@x.example, b@x.example\r\n\r\nhi\r\n")
    wait_for(lambda: len(r.files("Badmail", "*.BAD")) == 2)
    shape = Admin(load(r.config)).summary()
    assert [(row.name, row.counts[0]) for row in shape.domains] == [
        ("one.example", 1), ("two.example", 1)]
    assert shape.total().total == 2
    classes = sorted(row.name for row in shape.badmail)
    assert classes == ["5.1.1", "bad-file"]  # as the console's class column names them
    text = cli(r.config, "summary").stdout
    assert "minutes up to" in text and "one.example" in text and "5.1.1" in text


def test_summary_puts_each_message_in_its_age_column_once_per_domain(
        tmp_path, write_config) -> None:
    """Ages on both sides of each column's limit, and recipients in one domain and in two:
    a message counts once in each domain it waits for, in the column its age is under.
    Every envelope's origin names a Pickup file whose name is not UTF-8 (json's escape of a
    lone surrogate, which orjson does not read): each is still counted."""
    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    now = time.time()
    ages = [0, 299, 301, 599, 601, 19199, 19201, 86400 * 3]
    columns = [0, 0, 1, 1, 2, 6, 7, 7]
    for age in ages:
        recipients = [Recipient(a, "deferred") for a in ("a@one.example", "b@ONE.example",
                                                          "c@two.example")]
        recipients.append(Recipient("d@three.example", "delivered"))  # no longer waiting
        env = Envelope(new_id(), "app@example.com", recipients, received=now - age, size=10,
                       origin="Pickup/caf\udce9.eml")
        store.path(QUEUE, env.id, ".eml").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
        store.path(QUEUE, env.id, ".env").write_bytes(env.to_json())
    expected = [columns.count(column) for column in range(len(AGE_BUCKETS))]
    for workers in (1, 2):
        shape = Admin(load(write_config())).summary(workers=workers)
        assert [(row.name, row.counts) for row in shape.domains] == [
            ("one.example", expected), ("two.example", expected)]
        assert shape.messages == len(ages)


def test_trash_is_purged_after_retention(relay) -> None:
    r = relay({"admin": {"trash_retention": "1s"}})
    a, b = submit(r, "user@remote.example", 2)
    admin = Admin(load(r.config))
    assert admin.delete([a]).done == [a]
    time.sleep(1.1)
    assert admin.delete([b]).done == [b]
    assert admin.store.ids("Trash") == [b]
    assert admin.undelete([a]).problems == {a: "not found"}


def test_audit_log_names_user_action_and_ids(relay) -> None:
    r = relay()
    a, b = submit(r, "user@remote.example", 2)
    cli(r.config, "hold", a, b)
    cli(r.config, "settings", "set", "delivery.retry", "[1m, 2m, 3m, 4m]")
    entries = Admin(load(r.config)).audit()
    assert [(e.action, e.ids) for e in entries] == [("hold", [a, b]), ("settings-set", [])]
    assert entries[1].detail == {"changes": {"delivery.retry": "[1m, 2m, 3m, 4m]"}}
    text = cli(r.config, "audit").stdout.splitlines()
    assert f"hold  {a} {b}" in text[0] and entries[0].user in text[0]
