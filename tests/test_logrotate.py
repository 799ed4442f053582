"""Bounded logs: events.jsonl and audit.log rotate by rename at log.max_size, keeping
log.keep files; `mailroot audit` and the console read across the rotated files."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

from relay.core import config_loader
from relay.core.events import LOG_NAME, EventLog, LogFollower, read_rotated
from relay.core.logrotate import Rotation, rotated_files
from relay.ops.audit import AuditLog
from relay.supervisor.single import Relay
from tests.test_tui import SIZE, until
from tui.app import ConsoleApp
from tui.event_feed import ACTIVITY_AT_START

MiB = 1024 * 1024


def emit_many(log_dir: Path, rotation: Rotation, count: int, start: int = 0) -> None:
    """Events as the relay writes them, about 400 bytes each."""
    log = EventLog(log_dir, stream=None, rotation=rotation)
    for n in range(start, start + count):
        log.emit("deferred", id=f"{n:016d}", to=[f"user{n}@remote.example"],
                 host="mx.remote.example", seq=n,
                 reply="451 4.7.1 greylisted, please try again later " + "x" * 200)
    log.close()


def test_20000_events_leave_keep_plus_one_files_none_oversized(tmp_path: Path) -> None:
    config = config_loader.parse("log:\n  max_size: 1MiB\n")
    rotation = Rotation.of(config.log)
    assert (rotation.max_size, rotation.keep) == (MiB, 5)
    emit_many(tmp_path, rotation, 20_000)

    files = rotated_files(tmp_path / LOG_NAME)
    assert [f.name for f in files] == [f"{LOG_NAME}.{n}" for n in (5, 4, 3, 2, 1)] + [LOG_NAME]
    assert len(list(tmp_path.glob(f"{LOG_NAME}*"))) == rotation.keep + 1
    longest = max(len(line) for f in files for line in f.read_bytes().splitlines(True))
    for f in files:
        assert f.stat().st_size <= MiB + longest, f
    for f in files[:-1]:
        assert f.stat().st_size >= MiB  # rotated when full, not before

    # the readers: oldest to newest across the files, a gapless tail ending at the last event
    seqs = [e["seq"] for e in read_rotated(tmp_path / LOG_NAME)]
    assert seqs == list(range(seqs[0], 20_000)) and seqs[0] > 0  # the oldest were dropped
    newest = [e["seq"] for e in read_rotated(tmp_path / LOG_NAME, newest_first=True)]
    assert newest == seqs[::-1]
    events = list(read_rotated(tmp_path / LOG_NAME))
    since = events[-7000]["time"]
    recent = [e["seq"] for e in read_rotated(tmp_path / LOG_NAME, newest_first=True,
                                             since=since)]
    assert recent[0] == 19_999 and all(e["time"] >= since for e in events[-len(recent):])
    assert len(recent) >= 7000


def test_follower_reads_every_event_across_several_rotations(tmp_path: Path) -> None:
    rotation = Rotation(64 * 1024, 5)
    emit_many(tmp_path, rotation, 100)
    follower = LogFollower(tmp_path / LOG_NAME)
    seen = [e["seq"] for e in follower.read()]
    emit_many(tmp_path, rotation, 500, start=100)  # three rotations before the next read
    seen += [e["seq"] for e in follower.read()]
    emit_many(tmp_path, rotation, 10, start=600)
    seen += [e["seq"] for e in follower.read()]
    assert seen == list(range(610))
    follower.close()


def test_mailroot_audit_reads_across_rotated_files(write_config, tmp_path: Path) -> None:
    path = write_config({"log": {"max_size": "1MiB"}})
    config = config_loader.load(path)
    audit = AuditLog(config.root / "log", Rotation.of(config.log))
    (config.root / "log").mkdir(parents=True)
    for n in range(20_000):
        audit.append("delete", [f"{n:016d}"], reason=f"cleanup number {n} " + "y" * 100)
    files = rotated_files(config.root / "log" / "audit.log")
    assert 3 <= len(files) <= config.log.keep + 1
    out = subprocess.run([sys.executable, "-m", "relay.cli", "audit", "-c", str(path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 20_000 and "0000000000000000" in out[0]
    assert "0000000000019999" in out[-1]


async def test_console_activity_reads_across_rotation(write_config, tmp_path: Path) -> None:
    path = write_config({"log": {"max_size": "1MiB"}})
    log_dir = tmp_path / "mailroot" / "log"
    log_dir.mkdir(parents=True)
    rotation = Rotation(MiB, 5)
    emit_many(log_dir, rotation, 2_750)  # rotated once: a young events.jsonl
    young = len((log_dir / LOG_NAME).read_bytes().splitlines())
    assert len(rotated_files(log_dir / LOG_NAME)) == 2 and 0 < young < ACTIVITY_AT_START
    app = ConsoleApp(config_loader.load(path))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)
        activity = app.dashboard.query_one("#activity")

        def shown() -> list[str]:
            return [str(line) for line in activity.lines]

        start = [line for line in shown() if "id 0000" in line]
        # the latest events at start, most of them from the rotated file
        assert len(start) >= ACTIVITY_AT_START - 5
        assert "id 0000000000002749" in start[-1]
        emit_many(log_dir, rotation, 3_000, start=2_750)  # rotates again, three times
        await until(pilot, lambda: any("id 0000000000005749" in line for line in shown()),
                    timeout=10)
        followed = [int(line.rsplit("id ", 1)[1]) for line in shown() if "id 0000" in line]
        # the pane keeps its last lines: every one of them, in order, nothing skipped
        assert len(followed) >= 400 and followed == list(range(5_750 - len(followed), 5_750))


def test_a_config_reload_applies_new_log_limits(write_config) -> None:
    relay = Relay(config_loader.load(write_config()), stream=None)
    assert relay.events.rotation == Rotation(50 * MiB, 5)
    relay.apply_config(config_loader.load(write_config({"log": {"max_size": "1MiB", "keep": 2}})))
    assert relay.events.rotation == Rotation(MiB, 2)


WRITERS, PER_WRITER = 4, 1500


def _write_concurrently(target, args_of, count: int = WRITERS) -> None:
    """`count` forked processes run target(*args_of(w)) together, let go at one moment."""
    context = multiprocessing.get_context("fork")
    go = context.Event()
    procs = [context.Process(target=_after, args=(go, target, args_of(w))) for w in range(count)]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0


def _after(go, target, args) -> None:
    go.wait()
    target(*args)


def _emit(log: EventLog | None, log_dir: Path, rotation: Rotation, writer: int) -> None:
    """Events from one writer, into `log` (inherited over fork) or an EventLog of its own."""
    log = log or EventLog(log_dir, stream=None, rotation=rotation)
    for n in range(PER_WRITER):
        log.emit("deferred", id=f"{writer:04d}{n:012d}", writer=writer, seq=n,
                 reply="451 4.7.1 greylisted, please try again later " + "x" * (n % 200))
    log.close()


def _audit(log_dir: Path, rotation: Rotation, writer: int) -> None:
    audit = AuditLog(log_dir, rotation)
    for n in range(PER_WRITER):
        audit.append("delete", [f"{writer:04d}{n:012d}"], writer=writer, seq=n,
                     reason="cleanup " + "y" * (n % 200))


def check_rotated(path: Path, rotation: Rotation) -> None:
    """Every writer's every line, once, in its own order, across files none of which went
    past max_size by more than a line."""
    files = rotated_files(path)
    assert len(files) > 10  # rotated many times while they all wrote
    lines = [line for f in files for line in f.read_bytes().splitlines(True)]
    longest = max(len(line) for line in lines)
    for f in files:
        assert f.stat().st_size < rotation.max_size + longest, (f.name, f.stat().st_size)
    records = [json.loads(line) for line in lines if b'"writer":-1' not in line]
    for writer in range(WRITERS):
        assert [r["seq"] for r in records if r["writer"] == writer] == list(range(PER_WRITER))
    assert len(records) == WRITERS * PER_WRITER


def test_several_processes_write_events_across_rotations(tmp_path: Path) -> None:
    """Writers in several processes (as the relay's receivers, Pickup taker and queue manager
    are), each with its own EventLog, rotating a small log between them: nothing is lost or
    written twice, and no file grows past max_size by more than one line."""
    rotation = Rotation(16 * 1024, 1000)  # keep enough that none is dropped
    inherited = EventLog(tmp_path, stream=None, rotation=rotation)
    inherited.emit("relay-started", writer=-1, seq=0)  # its files are open when it forks
    # half the writers use the log they inherited, half one of their own
    _write_concurrently(_emit, lambda w: (inherited if w % 2 else None, tmp_path, rotation, w))
    inherited.close()
    check_rotated(tmp_path / LOG_NAME, rotation)


def test_several_processes_write_the_audit_log_across_rotations(tmp_path: Path) -> None:
    rotation = Rotation(16 * 1024, 1000)
    _write_concurrently(_audit, lambda w: (tmp_path, rotation, w))
    check_rotated(tmp_path / "audit.log", rotation)


def test_a_line_torn_by_a_kill_does_not_swallow_the_next_event(tmp_path) -> None:
    """A process killed in the middle of writing an event (a write that crossed a page stops
    there for a fatal signal) leaves a torn last line; the next event, from this process or
    another, starts a line of its own instead of being lost inside it."""
    import json

    from relay.core.events import EventLog, read_rotated
    from relay.core.logrotate import Rotation

    for rotation in (Rotation(1024 * 1024, 5), None):
        log_dir = tmp_path / f"log-{rotation is None}"
        log_dir.mkdir()
        (log_dir / "events.jsonl").write_bytes(b'{"time":1,"event":"intake","id":"A"}\n'
                                               b'{"time":2,"event":"deliv')  # torn
        events = EventLog(log_dir, None, rotation)
        events.emit("relay-started", pid=1)
        (log_dir / "events.jsonl").open("ab").write(b'{"time":3,"event":"del')  # torn again
        events.emit("relay-stopped", pid=1)
        events.close()
        lines = (log_dir / "events.jsonl").read_bytes().splitlines()
        assert lines[-1].startswith(b'{"time"') and json.loads(lines[-1])["event"] == "relay-stopped"
        assert [json.loads(line)["event"] for line in lines if line.endswith(b"}")] == [
            "intake", "relay-started", "relay-stopped"]
        assert [e["event"] for e in read_rotated(log_dir / "events.jsonl")] == [
            "intake", "relay-started", "relay-stopped"]
