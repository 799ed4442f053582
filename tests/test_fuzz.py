"""Arbitrary bytes and mangled headers never crash the Pickup parser or intake, and every input
ends in Drop, Queue or Badmail with a reason: never silently dropped."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import config as configmod
from relay.bounce import read_reason
from relay.events import EventLog
from relay.intake import Intake, Rejected, Submission
from relay.message import MessageError
from relay.pickup import PickupWatcher, parse_pickup
from relay.store import Mailroot
from tests.conftest import wait_for

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

NAMES = st.sampled_from(["From", "To", "Cc", "Bcc", "Sender", "Subject", "Received",
                         "X-Sender", "X-Receiver", "x-receiver", "TO", "Date", "Message-ID"])
ODD_NAMES = st.text(st.characters(codec="latin-1"), min_size=0, max_size=12)
ADDRESSES = st.sampled_from([
    "a@yourdomain.com", "b@remote.example", "<c@alias.test>", "Name <d@remote.example>",
    "", "<>", "@route:x@y.test", "x%y@remote.example", "a!b@remote.example", "\"q@q\"@x.test",
    "x@[127.0.0.1]", "x@1.2.3.4", "no-at-sign", "a@@b.test", "undisclosed-recipients:;",
    "a@yourdomain.com, b@remote.example", "é@dömain.test", "postmaster", "x@-bad-.test",
])
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80)
VALUES = st.one_of(ADDRESSES, ADDRESSES, TEXT, st.text(max_size=40),
                   st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
SEPARATORS = st.sampled_from([": ", ": ", ":", " : ", ":\t", "", "::", ";"])
LINE_ENDS = st.sampled_from(["\r\n", "\n", "\r", "\r\r\n", ""])
FOLDS = st.sampled_from([" ", "\t", ""])


@st.composite
def mangled(draw) -> bytes:
    """A message-like file: header-ish lines with odd names, separators, line ends and folds,
    maybe a blank line, a body, maybe a final dot line."""
    lines = [f"From: {draw(ADDRESSES)}\r\n", f"To: {draw(ADDRESSES)}\r\n"] \
        if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.one_of(NAMES, NAMES, NAMES, ODD_NAMES))
        line = f"{name}{draw(SEPARATORS)}{draw(VALUES)}"
        if draw(st.booleans()):
            line += f"{draw(LINE_ENDS)}{draw(FOLDS)}{draw(VALUES)}"
        lines.append(line + draw(LINE_ENDS))
    text = "".join(draw(st.permutations(lines)))
    if draw(st.booleans()):
        text += "\r\n" + draw(st.one_of(TEXT, st.text(max_size=200)))
    if draw(st.booleans()):
        text += draw(st.sampled_from(["\r\n.\r\n", ".\r\n", "\r\n.", "\n..\n.\n"]))
    return text.encode("utf-8", "surrogateescape")


INPUTS = st.one_of(st.binary(max_size=600), mangled())


@FUZZ
@given(INPUTS)
def test_parse_pickup_raises_only_message_error(raw: bytes) -> None:
    try:
        parsed = parse_pickup(raw)
    except MessageError as exc:
        assert str(exc)
        return
    assert parsed.recipients
    assert parsed.message.endswith(b"\r\n")
    assert b"\r\nBcc:" not in parsed.message


def fresh_watcher(root: Path) -> PickupWatcher:
    config = configmod.parse(yaml.safe_dump({
        "mailroot": str(root), "hostname": "relay.test",
        "domains": {"local": {"default": "yourdomain.com", "aliases": ["alias.test"]}},
        "smtp": {"max_message_size": "4KiB"}}))
    store = Mailroot(root)
    store.ensure()
    watcher = PickupWatcher(config, store, Intake(config, store), EventLog(store.log_dir, None))
    watcher.claimed.mkdir(parents=True, exist_ok=True)
    return watcher


def outcome(root: Path) -> list[str]:
    """Every committed entry in the mailroot, checking Badmail ones carry a reason."""
    found = [f"Drop/{p.name}" for p in (root / "Drop").glob("*.eml")]
    found += [f"Queue/{p.name}" for p in (root / "Queue").glob("*.env")
              if p.with_suffix(".eml").exists()]
    for bad in (root / "Badmail").glob("*.BAD"):
        assert read_reason(bad), bad.read_text(errors="replace")
        found.append(f"Badmail/{bad.name}")
    return found


@FUZZ
@given(INPUTS, st.sampled_from(["m.eml", "x", "name with spaces.txt", "ü.eml", "-", "a;b"]))
def test_every_pickup_file_ends_committed_somewhere(raw: bytes, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mailroot"
        watcher = fresh_watcher(root)
        try:
            (root / "Pickup" / name).write_bytes(raw)
            os.utime(root / "Pickup" / name, (0, 0))  # settled: no writer
            assert watcher._take(name) == "done"
            assert not list((root / "Pickup").iterdir())
            assert not list(watcher.claimed.iterdir())
            assert outcome(root), "the file vanished without a trace"
        finally:
            watcher.pool.shutdown()


@FUZZ
@given(INPUTS, st.one_of(ADDRESSES, st.text(max_size=30)),
       st.lists(st.one_of(ADDRESSES, st.text(max_size=30)), max_size=4))
def test_intake_accepts_or_rejects_with_a_reason(message: bytes, sender: str,
                                                 recipients: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        watcher = fresh_watcher(Path(tmp) / "mailroot")
        try:
            accepted = watcher.intake.accept(Submission(message, sender, recipients, "fuzz"))
        except Rejected as exc:
            assert exc.reason and 400 <= exc.code < 600 and exc.status[0] in "45"
            assert not outcome(Path(tmp) / "mailroot"), "a rejected message left files"
            return
        finally:
            watcher.pool.shutdown()
        assert accepted.local or accepted.remote
        assert len(outcome(Path(tmp) / "mailroot")) == bool(accepted.local) + bool(accepted.remote)


def test_a_real_relay_files_every_fuzzed_input(relay) -> None:
    """The same inputs through a running relay: it stays up and accounts for each file."""
    r = relay({"pickup": {"rescan": "1s", "settle": "1s"}})
    inputs: list[bytes] = []

    @settings(max_examples=40, deadline=None, derandomize=True, database=None)
    @given(INPUTS)
    def collect(raw: bytes) -> None:
        inputs.append(raw)

    collect()
    staging = r.root.parent / "staging"
    staging.mkdir()
    for number, raw in enumerate(inputs):
        (staging / f"f{number}").write_bytes(raw)
        os.rename(staging / f"f{number}", r.folder("Pickup") / f"f{number}")
    wait_for(lambda: not any(r.folder("Pickup").iterdir()), timeout=20, interval=0.1)
    sources = [e["source"] for e in r.events() if e["event"] == "intake"]
    assert sorted(sources) == sorted(f"Pickup/f{n}" for n in range(len(inputs)))
    assert len(outcome(r.root)) >= len(inputs)
    assert r.proc.poll() is None
