"""No mail lost when the relay is killed: a real `mailroot serve` under Pickup and SMTP load,
delivering to a real sink, killed with SIGKILL at random moments and restarted (see
tests/crash_support.py; `python -m bench.crash` is the long run); and what a kill can leave
behind is cleared or quarantined at start, never delivered blindly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from relay.core.bounce import read_reason
from relay.core.store import Envelope, new_id
from tests.conftest import wait_for
from tests.crash_support import OPERATIONS, crash_run

KILLS = 5

def test_sigkill_under_pickup_and_smtp_load_loses_nothing(tmp_path: Path) -> None:
    """Remote mail reaches a real sink through the smart host (or Badmail and an NDR when the
    sink refuses it), local mail Drop; every message accepted (250, or a Pickup file) is found
    per recipient; duplicates only in flight."""
    report = crash_run(tmp_path, kills=KILLS, pickup=240, smtp=240, clients=3,
                       load_seconds=5.0, gap=(0.3, 1.2), drain_timeout=30)
    print(report.summary())
    assert report.accepted_pickup == 240, report.summary()
    assert report.accepted_smtp > 100, report.summary()
    assert report.bounced > 10, report.summary()  # the sink's 550s: Badmail and an NDR each
    assert not report.lost, f"{report.summary()}: {report.lost[:10]}"
    assert not report.unexplained, f"{report.summary()}: duplicated but not in flight: " \
                                   f"{report.unexplained[:10]}"
    assert all(n <= 1 + KILLS for n in report.duplicates.values()), report.summary()
    assert not report.problems, f"{report.summary()}: {report.problems[:10]}"


@pytest.mark.slow  # a kill at each of 7 file operations, each then a restart: about 20 s
@pytest.mark.timeout(240)
def test_sigkill_right_after_each_file_operation_under_load_loses_nothing(
        tmp_path: Path) -> None:
    """The kills aimed at the store's steps instead of random moments (relay/core/faults.py):
    right after renaming a message file, zeroing a spare, linking a bounce into Badmail,
    ... (every other of tests/crash_support.OPERATIONS; `python -m bench.crash --at all`
    aims at all 14), in whichever process comes to it first, one child or the whole relay."""
    aimed = OPERATIONS[::2]
    report = crash_run(tmp_path, kills=len(aimed), pickup=2000, smtp=2000, clients=3,
                       load_seconds=100, gap=(0.2, 1.5), drain_timeout=60,
                       kill_at=aimed, seed=26)
    print(report.summary())
    assert not report.not_reached, report.summary()
    assert not report.lost, f"{report.summary()}: {report.lost[:10]}"
    assert not report.unexplained, f"{report.summary()}: {report.unexplained[:10]}"
    assert not report.problems, f"{report.summary()}: {report.problems[:10]}"


@pytest.mark.slow  # three starts of the whole relay, each killed while it starts: about 25 s
@pytest.mark.timeout(180)
def test_restarts_while_mail_arrives_lose_nothing(tmp_path: Path) -> None:
    """The relay killed within 0.6 s of each start (its recovery pass, its window and the
    Pickup backlog under way) while Pickup files and SMTP mail keep coming, the Pickup
    taker slowed (0.3 s) between a commit's message file and its envelope: the window in
    which a start-up took a commit in progress for a crash's leftover. Before the store's
    ownership by lock the same run with five kills (bench.crash --startup --kills 5
    --slow-commit 0.3 --seed 264) lost 4 messages, each quarantined as missing."""
    kills = 3
    report = crash_run(tmp_path, kills=kills, pickup=3000, smtp=300, clients=3,
                       load_seconds=kills * 4.3, gap=(0.0, 0.6), drain_timeout=90,
                       startup=True, slow_commit=0.3, seed=264)
    print(report.summary())
    assert report.accepted_pickup > 100 and report.accepted_smtp > 50, report.summary()
    assert not report.lost, f"{report.summary()}: {report.lost[:10]}"
    assert not report.unexplained, f"{report.summary()}: {report.unexplained[:10]}"
    assert not report.problems, f"{report.summary()}: {report.problems[:10]}"


@pytest.mark.slow  # filling 50,000 messages takes seconds (10-30 on a loaded machine)
def test_sigkill_under_load_with_50000_queued_behind_it_loses_nothing(tmp_path: Path) -> None:
    """The same with 50,000 deferred messages parked in Queue: each restart takes mail at
    once, the load drains past them, and every parked message is still queued (the long
    run, `python -m bench.crash --queued 100000`, parks 100,000)."""
    kills = 2
    report = crash_run(tmp_path, kills=kills, pickup=60, smtp=60, clients=3,
                       load_seconds=2.0, gap=(0.4, 1.0), drain_timeout=25, queued=50_000)
    print(report.summary())
    assert report.accepted_pickup == 60 and report.accepted_smtp > 20, report.summary()
    assert not report.lost, f"{report.summary()}: {report.lost[:10]}"
    assert not report.unexplained, f"{report.summary()}: {report.unexplained[:10]}"
    assert all(n <= 1 + kills for n in report.duplicates.values()), report.summary()
    assert not report.problems, f"{report.summary()}: {report.problems[:10]}"


def committed(root: Path, folder: str, mid: str, data: bytes, **changes) -> Envelope:
    """Write a committed Queue/Hold entry directly (as a relay would have left it)."""
    from relay.core.store import Recipient, checksum

    envelope = Envelope(id=mid, sender="app@yourdomain.com",
                        recipients=[Recipient("x@remote.example")], received=time.time(),
                        size=len(data), crc32=checksum(data), next_attempt=time.time() + 3600)
    for key, value in changes.items():
        setattr(envelope, key, value)
    (root / folder / f"{mid}.eml").write_bytes(data)
    (root / folder / f"{mid}.env").write_bytes(envelope.to_json())
    return envelope


def test_half_written_leftovers_are_cleared_or_quarantined_at_start(relay, tmp_path) -> None:
    root = tmp_path / "mailroot"
    for folder in ("Queue", "Hold", "Badmail", "tmp"):
        (root / folder).mkdir(parents=True)
    data = b"From: app@yourdomain.com\r\nTo: x@remote.example\r\nSubject: s\r\n\r\nbody\r\n"
    good, partial, truncated, no_eml, bad_env, held, bad_partial = (new_id() for _ in range(7))
    committed(root, "Queue", good, data)
    (root / "Queue" / f"{partial}.eml").write_bytes(data)  # killed before its .env
    committed(root, "Queue", truncated, data)
    (root / "Queue" / f"{truncated}.eml").write_bytes(data[:20])
    committed(root, "Queue", no_eml, data)
    (root / "Queue" / f"{no_eml}.eml").unlink()
    committed(root, "Queue", bad_env, data)
    (root / "Queue" / f"{bad_env}.env").write_bytes(b'{"id": "' + bad_env.encode())
    committed(root, "Hold", held, data + b"more\r\n", size=len(data))
    (root / "Badmail" / f"{bad_partial}.eml").write_bytes(data)  # no .BAD: uncommitted
    (root / "tmp" / f"{new_id()}.tmp").write_bytes(data[:10])

    r = relay()
    # both run beside intake: the recovery pass, and the queue manager's scan
    wait_for(lambda: {"recovery-finished", "queue-scanned"} <= {e["event"] for e in r.events()})
    assert sorted(p.name for p in r.files("Queue")) == [f"{good}.eml", f"{good}.env"]
    assert not r.files("Hold")
    assert not r.files("tmp", "*.tmp")
    assert not (root / "Badmail" / f"{bad_partial}.eml").exists()
    reasons = {p.stem: read_reason(p) for p in r.files("Badmail", "*.BAD")}
    assert set(reasons) == {truncated, no_eml, bad_env, held}
    assert "damaged" in reasons[truncated] and "20 bytes" in reasons[truncated]
    assert "missing" in reasons[no_eml]
    assert "cannot be read" in reasons[bad_env]
    assert "damaged" in reasons[held]
    # what was left of the message file is kept byte for byte, with the envelope
    assert (root / "Badmail" / f"{truncated}.eml").read_bytes() == data[:20]
    assert Envelope.from_json((root / "Badmail" / f"{truncated}.env").read_bytes()).reason
    events = {(e["event"], e.get("id")) for e in r.events()}
    assert ("recovered", partial) in events and ("recovered", bad_partial) in events
    assert {("quarantined", m) for m in (truncated, no_eml, bad_env, held)} <= events
