"""The store's protocol, proven step by step (docs/store-protocol.md, tests/protocol_support.py):
every sequence killed after each of its file operations, and paused at each while every
concurrent pass runs; a start-up recovery racing a commit between its two renames; readers
of recycled files; damage named as damage."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import relay.core.store
from relay.core.bounce import quarantine
from relay.core.store import BADMAIL, DROP, FOLDERS, HOLD, MOVE_FOLDERS, QUEUE, TRASH, Mailroot, Op
from relay.ops.listing import read_entry
from relay.ops.queries import NotFound
from relay.queue.recovery import Recovery
from tests.protocol_support import (
    BAD,
    LATER,
    OK,
    SEQUENCES,
    Counting,
    Sequence,
    World,
    attempt,
    check,
    crash_at,
    points_of,
    prepare,
    start_afresh,
    state_of,
    world,
)
from tui.index import FolderIndex

REPLIES = {LATER: "451 4.2.0 mailbox busy, later", BAD: "550 5.1.1 no such user"}
BY_NAME = {s.name: s for s in SEQUENCES}


@pytest.fixture
def next_hop(sink):
    hop = sink()
    hop.rcpt_replies.update(REPLIES)
    return hop


def delivered_since(hop, count: int) -> list[bytes]:
    with hop.lock:
        return [m.data for m in hop.messages[count:]]


def explore_crashes(tmp_path: Path, sequence: Sequence, hop) -> list[str]:
    """Kill the sequence after each of its points in turn, start afresh, check. Returns
    every problem found (with the point), after checking the whole run puts each message
    where it belongs."""
    whole = tmp_path / "whole"
    before = len(hop.messages)
    prepare(whole, sequence, hop.port)
    points = points_of(whole, sequence, hop.port)
    assert points, f"{sequence.name} made no file operation"
    assert not (whole_problems := check(whole, sequence, delivered_since(hop, before),
                                        exact=True)), whole_problems
    problems = []
    for number, point in enumerate(points):
        root = tmp_path / f"p{number}"
        before = len(hop.messages)
        prepare(root, sequence, hop.port)
        crash_at(root, sequence, point, hop.port)
        start_afresh(root, hop.port).close()
        problems += [f"killed after {point}: {p}"
                     for p in check(root, sequence, delivered_since(hop, before),
                                    crashed=True)]
    return problems


@pytest.mark.parametrize("sequence", SEQUENCES, ids=lambda s: s.name)
def test_a_kill_after_any_file_operation_of_a_sequence_loses_nothing(
        tmp_path: Path, sequence: Sequence, next_hop) -> None:
    """Every point of every sequence in the protocol document: killed there (SIGKILL, in a
    forked process), then a fresh relay's start: every message is committed somewhere
    with its exact bytes or was delivered, none is quarantined or said missing, nothing is
    left half-done."""
    assert explore_crashes(tmp_path, sequence, next_hop) == []


# --- concurrent passes, run to their end while a sequence waits at a point --------------------

def recovery_pass(w: World) -> None:
    """The start-up recovery of a relay (re)starting beside the sequence: the recovery
    pass (Recovery.run's steps)."""
    for folder, mid, what in w.store.recover():
        w.events.emit("recovered", id=mid, folder=folder, action=what)
    Recovery(w.config, w.store, w.events).quarantine_held()


def scan_pass(w: World) -> None:
    """The queue manager's scan: every Queue entry's due time, damaged ones quarantined."""
    w.scheduler._due_times(w.store.ids(QUEUE))


def listing_pass(w: World) -> None:
    """The operator API's readers: folder listings, counts, the summary, and each message
    shown and read whole: what they return is the message or "gone", never zeros."""
    admin = w.admin()
    admin.counts()
    admin.summary()
    for folder in (*FOLDERS, TRASH):
        for row in admin.list_folder(folder):
            if folder == relay.core.store.PICKUP:
                continue
            try:
                admin.show(row.id)
                data = admin.raw(row.id)
            except (NotFound, FileNotFoundError):
                continue
            assert b"X-Token: " in data or folder == BADMAIL, f"{folder}/{row.id} read {data[:40]!r}"


def index_pass(w: World) -> None:
    """The console's index, built whole (read_entry for each id of each folder)."""
    admin = w.admin()
    FolderIndex(admin, (*FOLDERS, TRASH)).build()
    for folder in MOVE_FOLDERS:
        for mid in admin.store.ids(folder):
            try:
                read_entry(admin, folder, mid)
            except (OSError, ValueError, LookupError):
                continue


def actions_pass(w: World) -> None:
    """An operator acting on every message meanwhile (no waiting for a claim): retry, hold,
    release, delete, undelete, requeue."""
    admin = w.admin(wait=0.0)
    ids = sorted({mid for folder in (*MOVE_FOLDERS, DROP) for mid in admin.store.ids(folder)})
    for action in ("retry", "hold", "release", "delete", "undelete", "requeue"):
        getattr(admin, action)(ids)


def readers_pass(w: World) -> None:
    """The passes that leave the outcome as it is, each run to its end in turn at the same
    point: the start-up recovery, the queue manager's scan, the operator API's listings and
    the console's index (one pause for the four: the explorer's time)."""
    for each in (recovery_pass, scan_pass, listing_pass, index_pass):
        each(w)


PASSES: dict[str, Callable[[World], None]] = {"readers": readers_pass, "actions": actions_pass}
READ_ONLY = {"readers"}  # leave the outcome as it is


def run_paused(root: Path, sequence: Sequence, point, port: int,
               during: Callable[[World], None]) -> None:
    """Run the sequence in a thread that waits at `point` while `during` runs to its end
    in objects of its own on the same mailroot (as another process would)."""
    reached, resume = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def pause() -> None:
        reached.set()
        resume.wait(30)

    probe = Counting(root, sequence, point, pause)

    def ignoring_the_pass(operation: str, path: str) -> None:
        if not reached.is_set() or resume.is_set():  # the pass's own operations don't count
            probe(operation, path)

    def body() -> None:
        w = world(root, port)
        try:
            sequence.run(w, state_of(root))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)
        finally:
            reached.set()
            w.close()

    relay.core.store.PROBES.append(ignoring_the_pass)
    thread = threading.Thread(target=body, name=f"{sequence.name}-paused")
    try:
        thread.start()
        assert reached.wait(30), f"{point} not reached"
        assert thread.is_alive() and not failure, f"{point} not reached: {failure}"
        other = world(root, port)
        try:
            during(other)
        finally:
            other.close()
            resume.set()
            thread.join(30)
    finally:
        relay.core.store.PROBES.remove(ignoring_the_pass)
    assert not failure, f"the sequence failed after the pass: {failure[0]!r}"


def explore_interleavings(tmp_path: Path, sequence: Sequence, pass_name: str,
                          hop) -> list[str]:
    whole = tmp_path / "whole"
    prepare(whole, sequence, hop.port)
    problems = []
    for number, point in enumerate(points_of(whole, sequence, hop.port)):
        root = tmp_path / f"p{number}"
        before = len(hop.messages)
        prepare(root, sequence, hop.port)
        try:
            run_paused(root, sequence, point, hop.port, PASSES[pass_name])
        except AssertionError as exc:
            if pass_name in READ_ONLY:
                problems.append(f"{pass_name} at {point}: {exc}")
                continue
        problems += [f"{pass_name} at {point}: {p}" for p in check(
            root, sequence, delivered_since(hop, before), exact=pass_name in READ_ONLY)]
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("sequence", SEQUENCES, ids=lambda s: s.name)
def test_a_concurrent_pass_at_any_point_of_a_sequence_loses_nothing(
        tmp_path: Path, sequence: Sequence, pass_name: str, next_hop) -> None:
    """Every point of every sequence, with each concurrent pass (start-up recovery, the
    queue manager's scan, the operator API's listings and actions, the console's index)
    run to its end while the sequence waits there: nothing lost, quarantined or left
    half-done; after a pass that only reads or recovers, every message is where the
    sequence puts it."""
    assert explore_interleavings(tmp_path, sequence, pass_name, next_hop) == []


def test_startup_recovery_during_a_pickup_commit_between_its_renames_removes_nothing(
        tmp_path: Path, next_hop) -> None:
    """The loss seen in the field: a relay starting while a Pickup file's commit sat
    between renaming Queue/<id>.eml and Queue/<id>.env. The recovery pass (Recovery.run,
    as the queue manager runs it at the relay's start) ran meanwhile and removed the
    message file as a crash's leftover; the envelope came 9 ms later, the Pickup file was
    gone, and the scan quarantined the message as "missing". Here the commit waits at
    exactly that point while the recovery pass runs to its end."""
    sequence = BY_NAME["intake-queue"]
    root = tmp_path / "mailroot"
    prepare(root, sequence, next_hop.port)

    def start_up_recovery(w: World) -> None:
        scanned = asyncio.Event()
        scanned.set()  # Recovery.run begins once the first scan is done
        asyncio.run(Recovery(w.config, w.store, w.events).run(scanned))

    run_paused(root, sequence, ("rename Queue/<id>.eml", 1), next_hop.port, start_up_recovery)
    start_afresh(root, next_hop.port).close()  # the queue manager's scan, then a restart
    assert check(root, sequence, [], exact=True) == []


def test_the_explorers_find_a_step_put_out_of_order(tmp_path: Path, next_hop,
                                                    monkeypatch) -> None:
    """A protocol with one step moved is caught: an intake that names the envelope before
    the message file (a kill between leaves an entry whose message file is missing), and a
    move that removes the source's message file before its marker (the same, and a scan
    beside it sees it)."""
    def envelope_first(self: Mailroot, folder: str, envelope, message: bytes) -> list[Op]:
        return [self.envelope_write(folder, envelope),
                relay.core.store.Write(self.path(folder, envelope.id, ".eml"), message)]

    real_remove = Mailroot.remove_ops

    def message_file_first(self: Mailroot, folder: str, message_id: str) -> list[Op]:
        ops = real_remove(self, folder, message_id)
        return ops[-1:] + ops[:-1]

    monkeypatch.setattr(Mailroot, "enqueue_ops", envelope_first)
    found = explore_crashes(tmp_path / "intake", BY_NAME["smtp-intake"], next_hop)
    assert any("missing" in p for p in found), found
    monkeypatch.undo()
    monkeypatch.setattr(Mailroot, "remove_ops", message_file_first)
    found = explore_crashes(tmp_path / "hold", BY_NAME["hold"], next_hop)
    assert any("missing" in p or "lost" in p for p in found), found
    found = explore_interleavings(tmp_path / "held", BY_NAME["hold"], "readers", next_hop)
    assert any("quarantined" in p or "missing" in p for p in found), found


def test_a_reader_of_a_file_recycled_under_it_is_told_it_went(tmp_path: Path,
                                                             next_hop) -> None:
    """A reader (the console's inspector, `mailroot show`) opens a Queue message file; the
    message is delivered, its file zeroed and reused for the next message before the
    reader reads. It is told the message went, never given zeros or another's bytes."""
    root = tmp_path / "mailroot"
    w = world(root, next_hop.port)
    mid = queued_one(w, "first")
    reader = w.admin()
    opened, resume = threading.Event(), threading.Event()
    outcome: list[object] = []

    def probe(operation: str, path: str) -> None:
        if operation == "open" and threading.current_thread().name == "reader":
            opened.set()
            resume.wait(30)

    def read() -> None:
        try:
            outcome.append(reader.raw(mid))
        except (NotFound, FileNotFoundError) as exc:
            outcome.append(exc)

    relay.core.store.PROBES.append(probe)
    try:
        thread = threading.Thread(target=read, name="reader")
        thread.start()
        assert opened.wait(30)
        attempt(w, mid)  # delivered: its files zeroed and kept as spares
        assert list(w.store.tmp.glob("spare-*"))
        resume.set()
        thread.join(30)
    finally:
        relay.core.store.PROBES.remove(probe)
        w.close()
    assert len(next_hop.messages) == 1
    assert isinstance(outcome[0], FileNotFoundError), outcome


def queued_one(w: World, token: str) -> str:
    from tests.protocol_support import submit
    return submit(w, token, [OK])


def test_retry_of_an_entry_whose_message_file_is_missing_names_the_damage(
        tmp_path: Path, next_hop) -> None:
    """`mailroot retry ID` on a Queue entry whose .eml is gone answered "busy: it kept
    moving between folders"; it names the damage, and the entry goes to Badmail with it."""
    root = tmp_path / "mailroot"
    w = world(root, next_hop.port)
    mid = queued_one(w, "lost")
    (root / QUEUE / f"{mid}.eml").unlink()  # by hand, or a disk fault
    result = w.admin().retry([mid])
    w.close()
    assert result.problems[mid].startswith("damaged: the message file Queue/"), result.problems
    assert "missing; moved to Badmail" in result.problems[mid]
    assert not w.store.has(QUEUE, mid) and w.store.has(BADMAIL, mid)
    assert "missing" in (root / BADMAIL / f"{mid}.BAD").read_text()


def test_a_command_committing_while_a_relay_starts_keeps_its_files(tmp_path: Path,
                                                                   next_hop) -> None:
    """A relay's start clears tmp/ of what a crash left, but not a file a command (a
    requeue, a hold) is writing right then: its writer holds its lock."""
    sequence = BY_NAME["hold"]
    root = tmp_path / "mailroot"
    prepare(root, sequence, next_hop.port)
    run_paused(root, sequence, ("write tmp/<id>.tmp", 1), next_hop.port,
               lambda w: w.store.clear_tmp())
    assert check(root, sequence, [], exact=True) == []
    assert [p.name for p in (root / HOLD).iterdir()] != []


def test_a_requeue_of_a_quarantined_damaged_message_is_refused_with_the_damage(
        tmp_path: Path, next_hop) -> None:
    """A message quarantined because its file was damaged would only fail again (and send
    another NDR): its requeue is refused, naming the damage, and it stays in Badmail."""
    root = tmp_path / "mailroot"
    w = world(root, next_hop.port)
    mid = queued_one(w, "hurt")
    path = root / QUEUE / f"{mid}.eml"
    path.write_bytes(path.read_bytes()[:-10])
    assert "damaged" in (quarantine(w.store, QUEUE, mid) or "")
    result = w.admin().requeue([mid])
    w.close()
    assert result.problems[mid].startswith("refused, it stays in Badmail: the stored message "
                                           "file is damaged"), result.problems
    assert w.store.has(BADMAIL, mid) and not w.store.has(QUEUE, mid)


@pytest.mark.parametrize("rule", ["kept", "broken"])
def test_recovery_and_a_retry_of_the_same_commit_never_both_win(
        tmp_path: Path, next_hop, monkeypatch, rule: str) -> None:
    """The Pickup taker killed after naming Queue/<id>.eml leaves that file and the taken
    Pickup file. At the next start the recovery pass, holding the leftover's lock, is about
    to remove it while the taker intakes the taken file again under the same id: the retry
    must not give the name a new file then (it would be removed under it, and its envelope
    would name a missing file). It locks the file the name had first, finds it held, keeps
    the Pickup file for later (an intake-error), and succeeds once the pass is done. With
    that rule broken (no lock on the replaced file) the message is lost."""
    if rule == "broken":
        monkeypatch.setattr(Mailroot, "_hold_replaced", staticmethod(lambda *a, **k: None))
    sequence = BY_NAME["intake-queue"]
    root = tmp_path / "mailroot"
    prepare(root, sequence, next_hop.port)
    crash_at(root, sequence, ("rename Queue/<id>.eml", 1), next_hop.port)
    w = world(root, next_hop.port)

    def retake(other: World) -> None:
        other.pickup._retry_claimed()

    recovering = Sequence("recovery-pass", lambda _: {}, lambda v, _: list(v.store.recover()),
                          {})
    (root / "state.yaml").write_text("{}")
    run_paused(root, recovering, ("lock Queue/<id>.eml", 1), next_hop.port, retake)
    w.pickup._retry_claimed()  # the taker's next rescan
    w.close()
    problems = check(root, sequence, [], exact=True)
    if rule == "kept":
        assert problems == []
        events = (root / "log" / "events.jsonl").read_text()
        assert '"intake-error"' in events and "tried again later" in events
    else:
        assert any("missing" in p or "lost" in p for p in problems), problems


def test_the_protocol_document_and_the_explorers_name_the_same_sequences() -> None:
    """Every sequence docs/store-protocol.md describes is explored, and every sequence
    explored is described there (by its name, in bold or as a heading)."""
    import re

    text = (Path(__file__).parent.parent / "docs" / "store-protocol.md").read_text()
    named = set(re.findall(r"^#{2,3} ([a-z-]+)[:, ]", text, re.M))
    named |= set(re.findall(r"^###? [a-z-]+, ([a-z-]+)$", text, re.M))
    named |= set(re.findall(r"\*\*([a-z]+(?:-[a-z]+)*)\*\*", text))
    assert named == set(BY_NAME), (sorted(named - set(BY_NAME)), sorted(set(BY_NAME) - named))
