"""The store's durable commit under concurrency."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from pathlib import Path

import pytest

import relay.core.fileops
import relay.core.spares
import relay.core.store
from relay.core.store import QUEUE, Envelope, Mailroot, Recipient, Unlink, Write
from tests.conftest import wait_for


def test_concurrent_commits_to_one_folder_all_complete(tmp_path: Path) -> None:
    """Directory fsyncs are shared between concurrent commits (group commit); every commit
    still returns, with its files in place, and none waits forever."""
    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                store.commit([Write(store.path(QUEUE, f"w{n}-{i}", ".eml"), b"x" * 100)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(list((tmp_path / "mailroot" / QUEUE).glob("*.eml"))) == 200
    assert not list((tmp_path / "mailroot" / "tmp").iterdir())


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failed_write_of_a_lone_commit_leaves_nothing_in_place_or_in_tmp(
        tmp_path: Path, failing: int, monkeypatch) -> None:
    """A commit alone in its process writes its files at once (the second by a pool thread,
    so the fsyncs overlap); either write failing (here a bad mtime, where a full disk would
    fail it) raises that error, and neither file is in Queue nor a written copy in tmp/."""
    store = Mailroot(tmp_path, ready_files=4)
    store.ensure()
    writers: list[str] = []  # the thread that wrote each file
    real = Mailroot._write_tmp
    monkeypatch.setattr(Mailroot, "_write_tmp", lambda self, op: (
        writers.append(threading.current_thread().name), real(self, op))[1])
    writes = [Write(store.path(QUEUE, "A", ".eml"), b"data\r\n" * 100),
              Write(store.path(QUEUE, "A", ".env"), b"{}")]
    writes[failing].mtime = math.nan
    with pytest.raises(ValueError):
        store.commit(writes)
    assert list(store.folder(QUEUE).iterdir()) == []
    assert [p.name for p in store.tmp.iterdir() if p.stat().st_size] == []
    writers.clear()
    store.commit([Write(store.path(QUEUE, "B", ".eml"), b"x\r\n"),
                  Write(store.path(QUEUE, "B", ".env"), b"{}")])  # and the next one works
    assert sorted(p.name for p in store.folder(QUEUE).iterdir()) == ["B.eml", "B.env"]
    assert writers[0] == threading.current_thread().name and writers[1].startswith("fsync")


def test_a_commit_writes_into_files_made_ahead_and_a_one_shot_store_leaves_none(
        tmp_path: Path) -> None:
    """A running relay's store keeps empty files ready in tmp/ (made by a pool thread) and
    its commits write into those instead of creating files; they are refilled, and removed
    at a clean stop. A store made without ready files (a command) leaves tmp/ empty."""
    store = Mailroot(tmp_path / "mailroot", ready_files=4)
    store.ensure()

    def ready() -> dict[int, Path]:
        return {p.stat().st_ino: p for p in store.tmp.glob("*.ready")}

    def commit(n: int) -> Envelope:
        envelope = Envelope(id=relay.core.store.new_id(), sender="a@example.com",
                            recipients=[Recipient(f"r{n}@remote.test")], received=time.time())
        store.commit(store.enqueue_ops(QUEUE, envelope, f"message {n}\r\n".encode()))
        return envelope

    commit(0)  # the first commit has none yet (a process asks at its start), and asks
    made = wait_for(lambda: len(ready()) == 4 and ready())
    second = commit(1)
    used = {store.path(QUEUE, second.id, ext).stat().st_ino for ext in (".eml", ".env")}
    assert used <= set(made) and len(used) == 2
    assert store.read_message(QUEUE, second.id) == b"message 1\r\n"
    assert store.read_envelope(QUEUE, second.id).recipients[0].address == "r1@remote.test"
    for n in range(2, 6):
        commit(n)
    wait_for(lambda: len(ready()) >= 2)  # made again as they are used
    assert not list(store.tmp.glob("*.tmp"))
    store.discard_ready()
    assert not list(store.tmp.iterdir())

    command = Mailroot(tmp_path / "mailroot")
    envelope = Envelope(id=relay.core.store.new_id(), sender="", recipients=[Recipient("x@r.test")],
                        received=time.time())
    command.commit(command.enqueue_ops(QUEUE, envelope, b"once\r\n"))
    assert not list(store.tmp.iterdir())
    assert len(list(store.folder(QUEUE).glob("*.env"))) == 7


def test_a_delivered_messages_files_are_emptied_and_reused_by_the_next_commits(
        tmp_path: Path, monkeypatch) -> None:
    """A running relay keeps the files of a delivered message as empty spares (once the
    Queue directory without their old names is on disk), and the next ready files (in this
    or another process) are made from them, so mail flowing through neither frees nor
    creates files; a file with another name elsewhere is never emptied; a one-shot store
    and a clean stop leave no spare."""
    root = tmp_path / "mailroot"
    queue_manager, receiver = Mailroot(root, ready_files=2), Mailroot(root, ready_files=2)
    queue_manager.ensure()
    once = Mailroot(root)  # a command: keeps no ready files, and no spares
    body = b"Subject: delivered\r\n\r\n" + b"x" * 5000 + b"\r\n"
    done = Envelope(id=relay.core.store.new_id(), sender="a@example.com",
                    recipients=[Recipient("b@remote.test")], received=time.time())
    once.commit(once.enqueue_ops(QUEUE, done, body))
    inodes = {queue_manager.path(QUEUE, done.id, ext).stat().st_ino for ext in (".eml", ".env")}
    queue_manager.retire_delivered(done.id)
    assert [p.name for p in root.joinpath(QUEUE).iterdir()] == [f"{done.id}.delivered"]
    synced: list[tuple[str, int]] = []  # (directory, spares at its fsync)
    real = relay.core.fileops.fsync_dir
    monkeypatch.setattr(relay.core.fileops, "fsync_dir", lambda d: (
        synced.append((d.name, len(list(queue_manager.tmp.glob("spare-*"))))), real(d)))
    queue_manager.dispose_retired([done.id])
    assert synced == [(QUEUE, 0)]
    failing = Envelope(id=relay.core.store.new_id(), sender="a@example.com",
                       recipients=[Recipient("f@remote.test")], received=time.time())
    once.commit(once.enqueue_ops(QUEUE, failing, body))
    queue_manager.retire_delivered(failing.id)

    def broken_disk(directory: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(relay.core.fileops, "fsync_dir", broken_disk)
    queue_manager.dispose_retired([failing.id])  # not durable: removed, not reused
    assert not list(queue_manager.tmp.glob(f"{failing.id}.*"))
    assert not list(root.joinpath(QUEUE).iterdir())
    monkeypatch.setattr(relay.core.fileops, "fsync_dir", real)
    spares = list(queue_manager.tmp.glob("spare-*"))
    assert {p.stat().st_ino for p in spares} == inodes
    assert all(not p.read_bytes().strip(b"\0") for p in spares)  # nothing of it stays

    receiver.top_up()
    wait_for(lambda: len(list(receiver.tmp.glob("*.ready"))) == 2)
    assert not list(receiver.tmp.glob("spare-*"))
    fresh = Envelope(id=relay.core.store.new_id(), sender="a@example.com",
                     recipients=[Recipient("c@remote.test")], received=time.time())
    receiver.commit(receiver.enqueue_ops(QUEUE, fresh, b"next\r\n"))
    assert {receiver.path(QUEUE, fresh.id, ext).stat().st_ino
            for ext in (".eml", ".env")} == inodes
    assert receiver.read_message(QUEUE, fresh.id) == b"next\r\n"

    kept = receiver.tmp / "kept.spent"  # a file that has a name elsewhere too
    kept.write_bytes(b"still wanted")
    os.link(kept, root / "Drop" / "kept.eml")
    queue_manager.recycle(kept)
    assert (root / "Drop" / "kept.eml").read_bytes() == b"still wanted"
    assert not kept.exists() and not list(receiver.tmp.glob("spare-*"))

    (once.tmp / "x.spent").write_bytes(b"y")
    once.recycle(once.tmp / "x.spent")
    assert not list(once.tmp.glob("spare-*")) and not (once.tmp / "x.spent").exists()

    (queue_manager.tmp / "spare-07").touch()
    receiver.commit(receiver.enqueue_ops(QUEUE, dataclasses.replace(fresh, id=relay.core.store.new_id()),
                                         b"again\r\n"))
    receiver.discard_ready()
    queue_manager.discard_ready()
    assert not list(root.joinpath("tmp").iterdir())


def test_with_every_spare_slot_taken_files_are_only_unlinked_for_a_while(
        tmp_path: Path, monkeypatch) -> None:
    """More files come back than commits take (a backlog draining): once the slots tried
    are all taken, the next files are unlinked without being emptied or linked, even into a
    slot freed meanwhile, until SLOTS_FULL_PAUSE has passed."""
    monkeypatch.setattr(relay.core.spares, "SLOTS_FULL_PAUSE", 0.3)
    store = Mailroot(tmp_path, ready_files=2)
    store.ensure()
    for slot in range(relay.core.spares.SPARE_SLOTS):
        (store.tmp / f"spare-{slot:02d}").touch()
    zeroed: list[int] = []
    real = relay.core.spares.zero_out
    monkeypatch.setattr(relay.core.spares, "zero_out",
                        lambda fd, size: (zeroed.append(size), real(fd, size)))

    def spent(name: str) -> Path:
        path = store.tmp / f"{name}.spent"
        path.write_bytes(b"delivered\r\n")
        return path

    store.recycle(spent("a"))  # every slot tried is taken: emptied in vain, unlinked
    assert zeroed == [11] and not (store.tmp / "a.spent").exists()
    for slot in range(relay.core.spares.SPARE_SLOTS):
        (store.tmp / f"spare-{slot:02d}").unlink()  # taken by commits meanwhile
    store.recycle(spent("b"))
    assert zeroed == [11] and not list(store.tmp.glob("spare-*"))  # not tried
    time.sleep(0.35)
    store.recycle(spent("c"))
    assert zeroed == [11, 11] and len(list(store.tmp.glob("spare-*"))) == 1


def test_a_spare_that_is_not_a_plain_file_is_never_written_through(tmp_path: Path) -> None:
    """Anything else named like a spare in tmp/ (a link, a FIFO, a directory) is passed over:
    a commit neither follows it nor waits on it."""
    root = tmp_path / "mailroot"
    store = Mailroot(root, ready_files=4)
    store.ensure()
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    (store.tmp / "spare-01").symlink_to(outside)
    os.mkfifo(store.tmp / "spare-02")
    (store.tmp / "spare-03").mkdir()
    store.top_up()
    wait_for(lambda: len(store._ready) == 4)
    for n in range(4):
        envelope = Envelope(id=relay.core.store.new_id(), sender="a@example.com",
                            recipients=[Recipient(f"r{n}@remote.test")], received=time.time())
        store.commit(store.enqueue_ops(QUEUE, envelope, f"message {n}\r\n".encode()))
        assert store.read_message(QUEUE, envelope.id) == f"message {n}\r\n".encode()
    assert outside.read_bytes() == b"untouched"
    assert all(p.is_file() and not p.is_symlink() for p in (root / QUEUE).iterdir())


def test_a_taken_pickup_files_removal_costs_no_directory_fsync(tmp_path: Path,
                                                               monkeypatch) -> None:
    """The destination's directory is fsynced before the commit returns; the directory of a
    source removed with durable=False is not (its return after a crash repeats the same id)."""
    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    taken = store.tmp / "pickup" / "x.eml"
    taken.parent.mkdir()
    kept = store.tmp / "pickup" / "y.eml"
    taken.write_bytes(b"x")
    kept.write_bytes(b"y")
    synced: list[Path] = []
    real = relay.core.fileops.fsync_dir
    monkeypatch.setattr(relay.core.fileops, "fsync_dir", lambda d: (synced.append(d), real(d)))
    store.commit([Write(store.path(QUEUE, "a", ".eml"), b"a"), Unlink(taken, durable=False)])
    assert synced == [store.folder(QUEUE)] and not taken.exists()
    store.commit([Write(store.path(QUEUE, "b", ".eml"), b"b"), Unlink(kept)])
    assert synced[1:] == [store.folder(QUEUE), kept.parent] and not kept.exists()


def test_recover_keeps_the_later_of_a_message_committed_in_two_folders(tmp_path: Path) -> None:
    """A delete (Queue -> Trash) killed after Trash was committed but before the Queue copy
    went: start-up keeps Trash and removes the Queue copy; an undelete the other way round.
    The later copy is the one whose envelope counts one move more, whatever the mtimes say
    (a Queue envelope's mtime is its next attempt, hours ahead)."""
    from relay.core.store import TRASH, Envelope, Recipient

    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    for mid, later in (("0000000000000001", TRASH), ("0000000000000002", QUEUE)):
        envelope = Envelope(mid, "a@x.test", [Recipient("b@y.test")], time.time(), size=1)
        earlier = QUEUE if later == TRASH else TRASH
        envelope.next_attempt = time.time() + 3600
        store.commit(store.enqueue_ops(earlier, envelope, b"x"))
        moved = store.move_ops(earlier, later, envelope)
        store.commit(moved[:2])  # the destination committed, the source not yet removed
        assert envelope.moves == 1 and len(store.copies(mid)) == 2
    actions = list(store.recover())
    assert sorted(store.ids(TRASH)) == ["0000000000000001"]
    assert sorted(store.ids(QUEUE)) == ["0000000000000002"]
    assert not list((tmp_path / "mailroot" / QUEUE).glob("0000000000000001.*"))
    assert not list((tmp_path / "mailroot" / TRASH).glob("0000000000000002.*"))
    assert len(actions) == 2


def test_an_envelope_is_the_same_json_as_before_and_takes_any_text() -> None:
    """Written by orjson, byte for byte what json wrote for ASCII text; a name that is not
    UTF-8 (a lone surrogate from os.listdir) is escaped by json instead of failing intake."""
    env = Envelope(id="0123456789ABCDEF", sender="app@yourdomain.com",
                   recipients=[Recipient("x@remote.example")], received=1796168379.3664184,
                   origin="Pickup/a.eml", size=2300, crc32=12345, subject="hello",
                   next_attempt=1796168379.5)
    assert env.to_json() == json.dumps(dataclasses.asdict(env), separators=(",", ":")).encode()
    assert Envelope.from_json(env.to_json()) == env
    odd = dataclasses.replace(env, origin="Pickup/caf\udce9.eml", subject="caf\u00e9")
    assert b"\\udce9" in odd.to_json()
    assert Envelope.from_json(odd.to_json()) == odd


def test_a_delivered_message_leaves_queue_and_a_cut_removal_is_finished(tmp_path: Path) -> None:
    store = Mailroot(tmp_path)
    store.ensure()
    done, cut, back = (Envelope(id=relay.core.store.new_id(), sender="a@b.example",
                                recipients=[Recipient("c@d.example")], received=time.time())
                       for _ in range(3))
    for env in (done, cut, back):
        store.commit(store.enqueue_ops(QUEUE, env, b"Subject: x\r\n\r\nbody\r\n"))
    store.retire_delivered(done.id)
    store.dispose_retired([done.id])
    assert not store.has(QUEUE, done.id) and not list(store.tmp.iterdir())
    assert not list((tmp_path / QUEUE).glob(f"{done.id}.*"))
    for env in (cut, back):  # a kill after the envelope became the delivered marker
        (tmp_path / QUEUE / f"{env.id}.env").rename(tmp_path / QUEUE / f"{env.id}.delivered")
    assert store.ids(QUEUE) == []  # delivered: no scan takes either for a message to send
    store.commit(store.enqueue_ops(QUEUE, back, b"Subject: x\r\n\r\nbody\r\n"))  # again since
    assert [(f, m) for f, m, _ in store.recover()] == [(QUEUE, cut.id)]
    assert not list((tmp_path / QUEUE).glob(f"{cut.id}.*")) and not list(store.tmp.iterdir())
    assert sorted(p.name for p in (tmp_path / QUEUE).glob(f"{back.id}.*")) == [
        f"{back.id}.eml", f"{back.id}.env"]
