"""Arbitrary bytes and mangled headers never crash the Pickup parser, intake or the SMTP
listener, and every input ends in Drop, Queue or Badmail with a reason (at the sink once
delivered), or is refused with a proper SMTP reply: never silently dropped."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core import config_loader
from relay.core.bounce import read_reason
from relay.core.events import EventLog
from relay.core.intake import Intake, Rejected, Submission
from relay.core.message import MessageError
from relay.core.pickup_file import parse_pickup
from relay.core.store import Mailroot
from relay.pickup.watcher import PickupWatcher
from tests.conftest import wait_for
from tests.smtpd_support import RawClient, live_smtp

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
    config = config_loader.parse(yaml.safe_dump({
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
    expected = sorted(f"Pickup/f{n}" for n in range(len(inputs)))

    def sources() -> list[str]:  # a file's event follows its commit, after it left Pickup
        return sorted(e["source"] for e in r.events() if e["event"] == "intake")

    wait_for(lambda: len(sources()) >= len(expected), timeout=10, interval=0.1)
    assert sources() == expected
    assert len(outcome(r.root)) >= len(inputs)
    assert r.proc.poll() is None


# --- the SMTP listener: fuzzed DATA content, mangled commands and addresses ---

SMTP_FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow])
REPLY = re.compile(r"[2-5]\d\d([ -].*)?\Z", re.S)
QUEUED_AS = re.compile(r"^250 2\.0\.0 OK queued as (\w+)\Z")
RCPT_SETS = st.sampled_from([["u@yourdomain.com"], ["r@remote.example"],
                             ["u@yourdomain.com", "r@remote.example"]])
VERBS = st.sampled_from(["HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP",
                         "VRFY", "EXPN", "HELP", "AUTH", "STARTTLS", "BDAT", "QUIT", "mail from:",
                         "rcpt to: ", "MAIL FROM: ", "Rcpt To:", "MAIL", "RCPT", "", "\x00"])
PATHS = st.one_of(ADDRESSES.map(lambda a: f"<{a}>"), ADDRESSES,
                  st.sampled_from(["<u@yourdomain.com>", "<r@remote.example>"]))
PARAMS = st.sampled_from(["", "", " SIZE=100", " SIZE=abc", " SIZE=999999999999999999999999",
                          " BODY=8BITMIME", " BODY=9BIT", " SMTPUTF8", " SMTPUTF8=x", " X=Y",
                          " NOTIFY=NEVER", " AUTH=<>", "  SIZE=1"])


def one_line(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").replace(b"\r", b"").replace(b"\n", b"")


GREETINGS = st.sampled_from([b"EHLO fuzz.test", b"HELO fuzz.test", b"ehlo [127.0.0.1]"])
LONG_LINE = st.integers(500, 1100).map(lambda n: b"MAIL FROM:<" + b"a" * n + b"@x.test>")
MANGLED_LINES = st.one_of(
    st.builds(lambda v, sep, p, q: one_line(f"{v}{sep}{p}{q}"), VERBS,
              st.sampled_from(["", " ", "  ", "\t"]), PATHS, PARAMS),
    st.builds(lambda v, t: one_line(f"{v} {t}"), VERBS, TEXT),
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), LONG_LINE)
MAIL_OK = st.sampled_from([b"MAIL FROM:<app@yourdomain.com>", b"MAIL FROM:<>"])
RCPT_OK = st.sampled_from([b"RCPT TO:<u@yourdomain.com>", b"RCPT TO:<r@remote.example>"])
MAIL_LINES = st.one_of(st.builds(lambda p, q: one_line(f"MAIL FROM:{p}{q}"), PATHS, PARAMS),
                       MANGLED_LINES)
RCPT_LINES = st.one_of(st.builds(lambda p, q: one_line(f"RCPT TO:{p}{q}"), PATHS, PARAMS),
                       MANGLED_LINES)


@st.composite
def sessions(draw) -> list[bytes]:
    """A session's usual shape (greeting, MAIL, RCPTs, DATA, more), about one step in four
    mangled."""

    def step(good, bad) -> bytes:
        return draw(bad) if draw(st.integers(1, 4)) == 2 else draw(good)

    lines = [step(GREETINGS, MANGLED_LINES), step(MAIL_OK, MAIL_LINES)]
    lines += [step(RCPT_OK, RCPT_LINES) for _ in range(draw(st.integers(1, 3)))]
    lines.append(step(st.just(b"DATA"), st.sampled_from([b"DATA x", b"data", b"RSET"])))
    return lines + draw(st.lists(st.one_of(MANGLED_LINES, MAIL_LINES), max_size=3))


MESSAGES = st.one_of(st.binary(max_size=600), mangled(), mangled())


def stuffed(content: bytes) -> bytes:
    """DATA as a client sends it: dot-stuffed, ending with <CRLF>.<CRLF>."""
    body = re.sub(rb"(\A|\r\n)\.", rb"\1..", content)
    return body + (b"" if body.endswith(b"\r\n") or not body else b"\r\n") + b".\r\n"


def kept(root: Path, mid: str, rcpts: list[str]) -> bool:
    """The message a 250 named is committed where its recipients say, or in Badmail with
    a reason."""
    bad = root / "Badmail" / f"{mid}.BAD"
    if bad.exists():
        return bool(read_reason(bad))
    local = any(r.endswith("@yourdomain.com") for r in rcpts)
    remote = any(not r.endswith("@yourdomain.com") for r in rcpts)
    return ((root / "Drop" / f"{mid}.eml").exists() or not local) and \
        ((root / "Queue" / f"{mid}.env").exists() or not remote)


def check_reply(reply: str) -> int:
    assert all(REPLY.match(line) for line in reply.split("\n")), reply
    return int(reply[:3])


def send_data(client: RawClient, content: bytes) -> str:
    client.send(stuffed(content))
    return client.reply()


def test_smtp_fuzzed_data_is_kept_or_refused_with_a_code(write_config) -> None:
    with live_smtp(write_config, {"smtp": {"relay": {"allow": ["127.0.0.0/8"]},
                                           "max_message_size": "4KiB"}}) as server:
        accepted: list[str] = []

        @SMTP_FUZZ
        @given(MESSAGES, RCPT_SETS)
        def send(content: bytes, rcpts: list[str]) -> None:
            client = RawClient(server.port)
            try:
                assert client.command("EHLO fuzz.test").startswith("250")
                assert client.command("MAIL FROM:<app@yourdomain.com>").startswith("250")
                for rcpt in rcpts:
                    assert client.command(f"RCPT TO:<{rcpt}>").startswith("250")
                assert client.command("DATA").startswith("354")
                reply = send_data(client, content)
                code = check_reply(reply)
                if code == 250:
                    mid = QUEUED_AS.match(reply).group(1)
                    assert kept(server.store.root, mid, rcpts), f"{reply}: not kept"
                    accepted.append(mid)
                else:
                    assert 400 <= code < 600 and re.match(r"\d{3} [45]\.\d+\.\d+ ", reply), reply
                assert client.command("NOOP").startswith("250")  # the session goes on
            finally:
                client.close()

        send()
        assert accepted, "no fuzzed message was accepted at all"
        assert not [e for e in server.events if e["event"] in ("smtp-error", "intake-error")]


def test_smtp_mangled_commands_get_a_reply_and_never_hang(write_config) -> None:
    with live_smtp(write_config, {"smtp": {"relay": {"allow": ["127.0.0.0/8"]},
                                           "max_message_size": "4KiB"}}) as server:

        @SMTP_FUZZ
        @given(sessions(), MESSAGES)
        def session(lines: list[bytes], content: bytes) -> None:
            client = RawClient(server.port, timeout=10)  # a hang fails on the read timeout
            try:
                assert client.greeting.startswith("220")
                for line in lines:
                    client.send(line + b"\r\n")
                    reply = client.reply()
                    code = check_reply(reply)
                    if code == 354:  # a mangled envelope still got this far: send a message
                        code = check_reply(reply := send_data(client, content))
                        if code == 250:
                            mid = QUEUED_AS.match(reply).group(1)
                            assert any((server.store.root / f).glob(f"{mid}.*")
                                       for f in ("Drop", "Queue", "Badmail")), reply
                    if code in (221, 421):
                        assert client.closed(), f"{reply} but the connection stays open"
                        return
            finally:
                client.close()

        session()
        after = RawClient(server.port)  # still serving, and a clean message still goes through
        assert after.command("EHLO ok.test").startswith("250")
        assert after.command("MAIL FROM:<app@yourdomain.com>").startswith("250")
        assert after.command("RCPT TO:<u@yourdomain.com>").startswith("250")
        assert after.command("DATA").startswith("354")
        assert send_data(after, b"Subject: ok\r\n\r\nok\r\n").startswith("250")
        after.close()
        assert not [e for e in server.events if e["event"] in ("smtp-error", "intake-error")]


LONG_LINES = st.integers(990, 3000).map(
    lambda n: b"From: app@yourdomain.com\r\nSubject: long\r\n\r\n" + b"x" * n + b"\r\n")
RELAY_ID = re.compile(rb"\(mailroot\)\s+with\s+\S+\s+id\s+(\w+)")


def test_a_real_relay_delivers_or_files_every_250_message(relay, sink) -> None:
    """Fuzzed DATA to a real relay: every 250 ends in Drop, at the next hop (through the smart
    host), or in Badmail with a reason; the relay stays up."""
    hop = sink()
    r = relay({"smtp": {"relay": {"allow": ["127.0.0.0/8"]}},
               "delivery": {"smarthost": f"127.0.0.1:{hop.port}", "retry": ["1s"] * 4,
                            "timeout": "5s"}})
    inputs: list[tuple[bytes, list[str]]] = []

    @settings(max_examples=80, deadline=None, derandomize=True, database=None)
    @given(st.one_of(MESSAGES, LONG_LINES), RCPT_SETS)
    def collect(content: bytes, rcpts: list[str]) -> None:
        inputs.append((content, rcpts))

    collect()
    accepted: dict[str, list[str]] = {}
    client = RawClient(r.smtp_port())
    assert client.command("EHLO fuzz.test").startswith("250")
    for content, rcpts in inputs:
        assert client.command("MAIL FROM:<app@yourdomain.com>").startswith("250")
        for rcpt in rcpts:
            assert client.command(f"RCPT TO:<{rcpt}>").startswith("250")
        assert client.command("DATA").startswith("354")
        reply = send_data(client, content)
        if check_reply(reply) == 250:
            accepted[QUEUED_AS.match(reply).group(1)] = rcpts
        else:
            assert client.command("RSET").startswith("250")
    client.close()
    assert accepted
    wait_for(lambda: not r.files("Queue"), timeout=20, interval=0.1)
    delivered = {m.group(1).decode() for got in hop.messages
                 if (m := RELAY_ID.search(got.data))}
    for mid, rcpts in accepted.items():
        if any(not x.endswith("@yourdomain.com") for x in rcpts):
            bad = r.root / "Badmail" / f"{mid}.BAD"
            assert mid in delivered or (bad.exists() and read_reason(bad)), mid
        if any(x.endswith("@yourdomain.com") for x in rcpts):
            assert (r.root / "Drop" / f"{mid}.eml").exists(), mid
    assert r.proc.poll() is None
    assert not [e for e in r.events() if e["event"] in ("smtp-error", "delivery-error")]
