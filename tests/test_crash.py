"""No mail lost when the relay is killed: a real `mailroot serve` under Pickup load, killed with
SIGKILL at random moments and restarted; and what a kill can leave behind is cleared or
quarantined at start, never delivered blindly."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

from relay.bounce import read_reason
from relay.store import Envelope, damage, new_id
from tests.conftest import RelayProcess, wait_for

TOKEN = re.compile(rb"^X-Crash-Token: (t\d+)\r?$", re.M)
MESSAGES = 400
KILLS = 5
BURST = 20


def message(number: int, remote: bool) -> bytes:
    rcpt = f"user{number}@remote.example" if remote else f"user{number}@yourdomain.com"
    return (f"From: app@yourdomain.com\r\nTo: {rcpt}\r\nSubject: crash {number}\r\n"
            f"X-Crash-Token: t{number}\r\n\r\n" + "body line\r\n" * (number % 40 + 1)).encode()


class Writer(threading.Thread):
    """Puts `count` messages into Pickup (written aside, then renamed in) in bursts, so the
    relay is busy when it is killed; one in five for a remote domain; bounded in count and
    time."""

    def __init__(self, root: Path, count: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.root, self.count, self.seconds = root, count, seconds
        self.written: list[str] = []

    def run(self) -> None:
        staging = self.root.parent / "staging"
        staging.mkdir(exist_ok=True)
        pause = self.seconds * BURST / self.count
        deadline = time.monotonic() + self.seconds * 3
        for number in range(self.count):
            if time.monotonic() > deadline:
                break
            aside = staging / f"m{number}.eml"
            aside.write_bytes(message(number, remote=number % 5 == 0))
            os.rename(aside, self.root / "Pickup" / f"m{number}.eml")
            self.written.append(f"t{number}")
            if number % BURST == BURST - 1:
                time.sleep(pause)


def tokens_in(path: Path) -> list[str]:
    return [t.decode() for t in TOKEN.findall(path.read_bytes())]


def in_flight(root: Path) -> set[str]:
    """Tokens of files the relay had taken but maybe not finished when it died."""
    found: set[str] = set()
    for path in (root / "tmp" / "pickup").glob("*"):
        found.update(tokens_in(path))
    return found


def tally(root: Path) -> tuple[Counter, list[str]]:
    """Where each token ended up (committed entries only), and problems found on the way."""
    seen: Counter = Counter()
    problems = []
    for eml in (root / "Drop").glob("*.eml"):
        seen.update(tokens_in(eml))
    for env_path in (root / "Queue").glob("*.env"):
        eml = env_path.with_suffix(".eml")
        envelope = Envelope.from_json(env_path.read_bytes())
        data = eml.read_bytes()
        if reason := damage(envelope, data):
            problems.append(f"Queue/{eml.name}: {reason}")
        seen.update(tokens_in(eml))
    for bad in (root / "Badmail").glob("*.BAD"):
        if not read_reason(bad):
            problems.append(f"Badmail/{bad.name} has no reason")
        seen.update(tokens_in(bad.with_suffix(".eml")))
    for eml in (root / "Queue").glob("*.eml"):
        if not eml.with_suffix(".env").exists():
            problems.append(f"Queue/{eml.name} is an uncommitted leftover after a clean stop")
    return seen, problems


def test_sigkill_under_pickup_load_loses_nothing(write_config, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    config = write_config({"pickup": {"rescan": "1s", "settle": "1s"}})
    root = tmp_path / "mailroot"
    relay = RelayProcess(config, root).start()
    writer = Writer(root, MESSAGES, seconds=6.0)
    writer.start()
    flying: set[str] = set()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 1.2))
            relay.kill()
            flying |= in_flight(root)
            relay.start(timeout=20)
        writer.join(timeout=30)
        assert not writer.is_alive()
        wait_for(lambda: not any((root / "Pickup").iterdir())
                 and not any((root / "tmp" / "pickup").iterdir()), timeout=30, interval=0.1)
    finally:
        relay.stop()
    seen, problems = tally(root)
    lost = [t for t in writer.written if seen[t] == 0]
    duplicates = {t: n for t, n in seen.items() if n > 1}
    report = (f"seed={seed} written={len(writer.written)} lost={len(lost)} "
              f"duplicates={len(duplicates)} in-flight-at-kills={len(flying)}")
    print(report)
    assert len(writer.written) == MESSAGES, report
    assert not lost, f"{report}: {lost[:10]}"
    assert set(duplicates) <= flying, f"{report}: duplicated but not in flight: " \
                                      f"{sorted(set(duplicates) - flying)[:10]}"
    assert all(n <= 1 + KILLS for n in duplicates.values()), report
    assert not problems, f"{report}: {problems[:10]}"
    assert set(seen) == set(writer.written), report
    remote = [t for t in writer.written if int(t[1:]) % 5 == 0]
    queued = Counter()
    for eml in (root / "Queue").glob("*.eml"):
        queued.update(tokens_in(eml))
    assert all(queued[t] >= 1 for t in remote), "remote mail is committed in Queue"


def committed(root: Path, folder: str, mid: str, data: bytes, **changes) -> Envelope:
    """Write a committed Queue/Hold entry directly (as a relay would have left it)."""
    from relay.store import Recipient, checksum

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
