"""A restart with a large queue takes mail at once: with 50,000 deferred messages in Queue
(written in the store's format by tests/queue_fill.py), Pickup and SMTP work within a second
of the process starting, a message due now is tried within 2 s, and an interrupted move is
resolved before the id is delivered or listed."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relay.core.config import ConfigError
from relay.core.config_loader import load
from relay.core.store import HOLD, LISTING_SORTED_UP_TO, QUEUE, Mailroot
from relay.ops.admin import Admin
from tests.admin_support import cli
from tests.conftest import RelayProcess, wait_for
from tests.queue_fill import fill_queue, queued_message

QUEUED = 50_000
LOCAL = "user@yourdomain.com"

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def place_in_pickup(root: Path, name: str, data: bytes) -> Path:
    """A file renamed into Pickup from outside the mailroot (tmp/ is cleared at start)."""
    aside = root.parent / name
    aside.write_bytes(data)
    os.rename(aside, root / "Pickup" / name)
    return root / "Pickup" / name


def drop_files(root: Path) -> list[Path]:
    return list((root / "Drop").glob("*.eml"))


@pytest.mark.slow  # filling 50,000 messages takes seconds
@pytest.mark.alone  # a time bound
def test_pickup_and_smtp_work_within_a_second_of_start_with_50000_queued(
        write_config, tmp_path: Path) -> None:
    root = tmp_path / "mailroot"
    fill_queue(root, QUEUED)
    place_in_pickup(root, "waiting.eml", queued_message(LOCAL))
    port = free_port()
    relay = RelayProcess(write_config({"smtp": {"listen": [f"127.0.0.1:{port}"]}}), root)
    os.sync()  # a restart finds its queue written out long ago, not still being flushed
    began, began_wall = time.monotonic(), time.time()
    # one process: a supervisor's children each start an interpreter (1.4-2.4 s to the first
    # 250 on a loaded 2-core machine), which this second does not cover
    relay.proc = subprocess.Popen([sys.executable, "-m", "relay.cli", "serve", "-c",
                                   str(relay.config), "--workers", "1"], stderr=subprocess.DEVNULL)
    try:
        answered = None
        while answered is None and time.monotonic() - began < 10:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                    client.sendmail("app@yourdomain.com", [LOCAL], queued_message(LOCAL))
                answered = time.monotonic() - began
            except ConnectionRefusedError:
                time.sleep(0.005)
        assert answered is not None and answered < 1.0, f"SMTP 250 after {answered} s"
        first = wait_for(lambda: drop_files(root), timeout=10)
        taken = min(p.stat().st_ctime for p in first) - began_wall
        assert taken < 1.0, f"the Pickup file reached Drop {taken:.2f} s after start"
        assert not (root / "Pickup" / "waiting.eml").exists()
    finally:
        relay.proc.terminate()  # most likely in the middle of its first scan: it stops at once
        code = relay.proc.wait(10)
    assert code == 0
    assert "relay-stopped" in {e["event"] for e in relay.events()}
    assert len(Mailroot(root).ids(QUEUE)) == QUEUED  # nothing of the queue was lost


@pytest.mark.slow  # filling 50,000 messages takes seconds
@pytest.mark.alone  # a time bound
def test_message_due_now_among_50000_not_due_is_tried_within_2_s(
        write_config, sink, tmp_path: Path) -> None:
    root = tmp_path / "mailroot"
    fill_queue(root, QUEUED // 2)
    (due,) = fill_queue(root, 1, due_in=-60, recipient="due@remote.example")
    fill_queue(root, QUEUED // 2)
    os.sync()  # a restart finds its queue written out long ago, not still being flushed
    hop = sink()
    # one process, as above: the queue manager's own interpreter start is not in the 2 s
    relay = RelayProcess(write_config({"delivery": {"smarthost": f"127.0.0.1:{hop.port}"}}),
                         root, args=["--workers", "1"])
    began_wall = time.time()
    relay.start(timeout=30)
    try:
        wait_for(lambda: hop.messages, timeout=10)
        assert hop.messages[0].recipients == ["due@remote.example"]
        assert hop.messages[0].at - began_wall < 2.0, \
            f"tried {hop.messages[0].at - began_wall:.2f} s after start"
        wait_for(lambda: not Mailroot(root).has(QUEUE, due))
        time.sleep(0.5)
        assert len(hop.messages) == 1  # the others are not due
    finally:
        relay.stop()


@pytest.mark.slow  # filling 50,000 messages takes seconds
def test_interrupted_move_is_resolved_before_the_id_is_delivered_or_listed(
        write_config, sink, tmp_path: Path) -> None:
    """`held` was being put on hold (Queue -> Hold) and `released` released (Hold -> Queue)
    when a crash came: each is committed in both folders, both copies due now.  The later
    state wins: `held` is never delivered and lists only in Hold; `released` is delivered
    once and lists only in Queue; on disk the stale copies go."""
    root = tmp_path / "mailroot"
    fill_queue(root, QUEUED)
    store = Mailroot(root)
    held, released = (fill_queue(root, 1, due_in=-60, recipient=f"{name}@remote.example")[0]
                      for name in ("held", "released"))
    for mid, stale in ((held, QUEUE), (released, HOLD)):  # as move_ops leaves them: the
        os.link(store.path(QUEUE, mid, ".eml"), store.path(HOLD, mid, ".eml"))  # later copy
        envelope = store.read_envelope(QUEUE, mid)  # counts one move more
        store.path(HOLD, mid, ".env").write_bytes(envelope.to_json())
        envelope.moves += 1
        later = HOLD if stale == QUEUE else QUEUE
        store.path(later, mid, ".env").write_bytes(envelope.to_json())
    hop = sink()
    config = write_config({"delivery": {"smarthost": f"127.0.0.1:{hop.port}"}})
    admin = Admin(load(config))
    listed = {row.id for row in admin.iter_folder(QUEUE, ordered=False)}
    assert released in listed and held not in listed and len(listed) == QUEUED + 1
    assert [row.id for row in admin.list_folder(HOLD)] == [held]
    relay = RelayProcess(config, root).start(timeout=30)
    try:
        wait_for(lambda: hop.messages, timeout=10)
        time.sleep(1.0)
        assert [m.recipients for m in hop.messages] == [["released@remote.example"]]
        wait_for(lambda: not store.path(QUEUE, held, ".eml").exists())
        assert not store.path(QUEUE, held, ".env").exists() and store.has(HOLD, held)
        assert not any(store.path(HOLD, released, ext).exists() for ext in (".eml", ".env"))
        def recovered() -> set:  # each logged just after its stale copy went
            return {(e["id"], e["folder"]) for e in relay.events() if e["event"] == "recovered"}

        wait_for(lambda: {(held, QUEUE), (released, HOLD)} <= recovered(), timeout=5)
    finally:
        relay.stop()


def test_an_envelope_the_scan_only_skimmed_is_quarantined_when_it_cannot_be_read(
        write_config, sink, tmp_path: Path) -> None:
    """The scan reads `size` and `next_attempt` without decoding the envelope; one that
    has them but is not JSON goes to Badmail with the reason when it comes due."""
    root = tmp_path / "mailroot"
    (mid,) = fill_queue(root, 1, due_in=-60, recipient="x@remote.example")
    path = Mailroot(root).path(QUEUE, mid, ".env")
    path.write_bytes(path.read_bytes().replace(b'"sender":', b'"sender" '))
    hop = sink()
    relay = RelayProcess(write_config({"delivery": {"smarthost": f"127.0.0.1:{hop.port}"}}),
                         root).start()
    try:
        bad = wait_for(lambda: list((root / "Badmail").glob(f"{mid}.BAD")))
        assert "cannot be read" in bad[0].read_text()
        wait_for(lambda: not Mailroot(root).has(QUEUE, mid), timeout=5)  # unlinked after .BAD
        assert not hop.messages
    finally:
        relay.stop()


def test_a_window_of_4_still_delivers_30_messages_due_at_different_times(
        write_config, sink, tmp_path: Path) -> None:
    """Only `queue.active_limit` due times are held in memory; the rest wait on disk and are
    found by further scans as the earliest of them comes due."""
    root = tmp_path / "mailroot"
    ids = [mid for step in range(5)
           for mid in fill_queue(root, 6, due_in=0.5 * step - 0.5, recipient=f"s{step}@r.example")]
    hop = sink()
    relay = RelayProcess(write_config({"delivery": {"smarthost": f"127.0.0.1:{hop.port}"},
                                       "queue": {"active_limit": 4}}), root).start()
    try:
        wait_for(lambda: len(hop.messages) >= len(ids), timeout=20)
        wait_for(lambda: not Mailroot(root).ids(QUEUE))
        assert sorted(r for m in hop.messages for r in m.recipients) == sorted(
            f"s{n // 6}@r.example" for n in range(30))
        scans = [e for e in relay.events() if e["event"] == "queue-scanned"]
        assert len(scans) > 1 and all(s["window"] <= 5 for s in scans)  # 4 and a quarter
    finally:
        relay.stop()


def test_a_scan_keeps_the_earliest_due_in_its_window_whatever_the_directory_order(
        write_config, tmp_path: Path) -> None:
    """400 deferred entries in four due groups, interleaved in directory order, and a window
    of 50: the window the scan saves is 50 of the earliest group, and nothing is tried."""
    root = tmp_path / "mailroot"
    fill_queue(root, 100, due_in=3 * 86400)
    fill_queue(root, 100, due_in=2 * 86400)
    earliest = set(fill_queue(root, 100, due_in=86400))
    fill_queue(root, 100, due_in=4 * 86400)
    relay = RelayProcess(write_config({"queue": {"active_limit": 50}}), root).start()
    try:
        wait_for(lambda: any(e["event"] == "queue-scanned" for e in relay.events()))
        saved = [line.split()[1] for line in (root / "queue.window").read_text().splitlines()]
        assert len(saved) == 50 and set(saved) <= earliest
        assert not any(e["event"] == "deferred" for e in relay.events())
    finally:
        relay.stop()


def test_an_active_limit_below_1_is_refused_naming_the_key(write_config) -> None:
    with pytest.raises(ConfigError) as refused:
        load(write_config({"queue": {"active_limit": 0}}))
    assert refused.value.key == "queue.active_limit" and "at least 1" in str(refused.value)


def test_queue_listing_oldest_first_or_unsorted_lists_every_message_once(
        write_config, tmp_path: Path) -> None:
    root = tmp_path / "mailroot"
    ids = fill_queue(root, 40)
    config = write_config()
    oldest_first = cli(config, "queue", "--json")
    unsorted = cli(config, "queue", "--json", "--unsorted")
    text = cli(config, "queue")
    assert [json.loads(line)["id"] for line in oldest_first.stdout.splitlines()] == ids
    assert sorted(json.loads(line)["id"] for line in unsorted.stdout.splitlines()) == ids
    assert text.stdout.splitlines()[-1].startswith("-- ") and "in 40 messages in Queue" in text.stdout


def test_a_queue_over_the_sorting_limit_is_listed_at_once_in_directory_order(
        write_config, tmp_path: Path) -> None:
    """Up to LISTING_SORTED_UP_TO the listing is oldest first; one more and it comes in
    directory order as read (stderr says so), every message once; --sort still sorts."""
    root = tmp_path / "mailroot"
    ids = fill_queue(root, LISTING_SORTED_UP_TO)
    config = write_config()

    def listed(*args: str) -> tuple[list[str], str]:
        done = cli(config, "queue", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["id"] for line in done.stdout.splitlines()], done.stderr

    assert listed() == (ids, "")
    ids += fill_queue(root, 1)
    rows, said = listed()
    assert sorted(rows) == ids and len(rows) == len(ids)
    assert said.startswith(f"mailroot queue: over {LISTING_SORTED_UP_TO:,} in Queue: listed "
                           "in directory order")
    assert listed("--sort") == (ids, "")
    assert listed("--unsorted")[1] == ""  # asked for: nothing to say


@pytest.mark.slow  # filling 50,000 messages takes seconds
def test_a_restart_takes_up_the_window_the_last_scan_saved_before_scanning_again(
        write_config, sink, tmp_path: Path) -> None:
    """40 messages due soonest among 25,000: the first run's scan notes them (the window, by
    due time); once they are due, a restart tries them all before its own scan of the 25,000
    has ended, wherever they are in the directory order."""
    root = tmp_path / "mailroot"
    fill_queue(root, QUEUED // 2)
    soon = fill_queue(root, 40, due_in=3600, recipient="soon@remote.example")
    hop = sink()
    config = write_config({"delivery": {"smarthost": f"127.0.0.1:{hop.port}"}})
    first = RelayProcess(config, root).start(timeout=30)
    wait_for(lambda: any(e["event"] == "queue-scanned" for e in first.events()), timeout=40)
    first.stop()
    store = Mailroot(root)
    for mid in soon:  # the hour has passed
        envelope = store.read_envelope(QUEUE, mid)
        envelope.next_attempt = time.time() - 1
        store.update_envelope(QUEUE, envelope)
    offset = len(first.events())
    second = RelayProcess(config, root).start(timeout=30)
    try:
        def restored_and_delivered() -> list[dict] | None:
            events = second.events()[offset:]
            delivered = {e["id"] for e in events if e["event"] == "delivered"}
            restored = any(e["event"] == "queue-window-restored" for e in events)
            return events if restored and set(soon) <= delivered else None

        later = wait_for(restored_and_delivered, timeout=30)
        names = [e["event"] for e in later]
        scanned = names.index("queue-scanned") if "queue-scanned" in names else len(names)
        assert max(i for i, name in enumerate(names) if name == "delivered") < scanned
    finally:
        second.stop()
