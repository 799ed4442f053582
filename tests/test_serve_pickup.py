"""Issue: relay core. Each test runs a real `mailroot serve` process on a tmp mailroot."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import drop_file, sample, wait_for


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


@pytest.mark.alone  # a time bound
def test_iis_example_local_reaches_drop_within_1s(relay) -> None:
    r = relay()
    start = time.monotonic()
    drop_file(r.folder("Pickup"), "iis.txt", sample("iis-example-as-written.txt"))
    dropped = only(wait_for(lambda: r.files("Drop"), timeout=1.0))
    assert time.monotonic() - start < 1.0
    text = dropped.read_bytes()
    assert text.startswith(b"X-Sender: blog@yourdomain.com\r\nX-Receiver: email@yourdomain.com\r\n")
    assert text.count(b"\r\nReceived: ") == 1 and b"by relay.test" in text
    assert text.endswith(b"This is the test body of the email\r\n")
    assert b"\r\n.\r\n" not in text
    wait_for(lambda: not r.files("Pickup"))


def test_iis_example_remote_goes_to_queue(relay) -> None:
    r = relay()
    raw = sample("iis-example-as-written.txt").replace(b"To: email@yourdomain.com",
                                                       b"To: email@remote.example")
    drop_file(r.folder("Pickup"), "remote.txt", raw)
    env = only(wait_for(lambda: r.files("Queue", "*.env"), timeout=10))
    assert env.with_suffix(".eml").exists()
    assert not r.files("Drop")
    assert b"email@remote.example" in env.read_bytes()


def test_dotnet_file_reaches_every_receiver(relay) -> None:
    r = relay()
    drop_file(r.folder("Pickup"), "net.eml", sample("dotnet-smtpclient-pickup.eml"))
    dropped = only(wait_for(lambda: r.files("Drop")))
    head = dropped.read_bytes().split(b"\r\nReceived:")[0]
    assert b"X-Receiver: alice@yourdomain.com" in head
    assert b"X-Receiver: audit@yourdomain.com" in head  # the Bcc receiver
    env = only(wait_for(lambda: r.files("Queue", "*.env")))
    assert b"bob@partner.example" in env.read_bytes()


def test_bcc_reaches_its_address_and_is_not_stored(relay) -> None:
    r = relay()
    drop_file(r.folder("Pickup"), "bcc.eml",
              b"From: app@yourdomain.com\r\nTo: a@yourdomain.com\r\nBcc: hidden@alias.test\r\n"
              b"Subject: bcc\r\n\r\nbody\r\n")
    dropped = only(wait_for(lambda: r.files("Drop")))
    data = dropped.read_bytes()
    assert b"X-Receiver: hidden@alias.test" in data
    assert b"\r\nBcc:" not in data


BAD_FILES = {
    "empty.eml": (b"", "empty"),
    "norcpt.eml": (b"From: a@yourdomain.com\r\nSubject: x\r\n\r\nhi\r\n", "no recipients"),
    "nul.eml": (b"From: a@yourdomain.com\r\nTo: b@yourdomain.com\r\n\r\nx\x00y\r\n", "NUL"),
    "junk.bin": (os.urandom(300).replace(b"\x00", b"\x01"), ""),
    "header.eml": (b"From: a@yourdomain.com\r\nTo: <<<@@>>>\r\n\r\nhi\r\n", "cannot be parsed"),
    "big.eml": (b"From: a@yourdomain.com\r\nTo: b@yourdomain.com\r\n\r\n" + b"x" * 500 + b"\r\n",
                "size limit"),
    "many.eml": (b"From: a@yourdomain.com\r\nTo: " + b", ".join(
        b"u%d@yourdomain.com" % i for i in range(6)) + b"\r\n\r\nhi\r\n", "recipients"),
    "loop.eml": (b"Received: from x\r\n" * 4 + b"From: a@yourdomain.com\r\n"
                 b"To: b@yourdomain.com\r\n\r\nhi\r\n", "hop count exceeded"),
}


def test_bad_files_go_to_badmail_with_reason_and_relay_keeps_going(relay) -> None:
    r = relay({"smtp": {"max_message_size": "400B", "max_recipients": 5},
               "delivery": {"max_hop_count": 3}})
    for name, (data, _) in BAD_FILES.items():
        drop_file(r.folder("Pickup"), name, data)
    wait_for(lambda: len(r.files("Badmail", "*.BAD")) == len(BAD_FILES), timeout=20)
    reports = {}
    for bad in r.files("Badmail", "*.BAD"):
        text = bad.read_bytes()
        source = next(line for line in text.splitlines() if line.startswith(b"Source:"))
        reports[source.split(b"/", 1)[1].decode()] = text
        assert text.startswith(b"This message could not be delivered")
    assert set(reports) == set(BAD_FILES)
    for name, (data, words) in BAD_FILES.items():
        reason = next(line for line in reports[name].splitlines() if line.startswith(b"Reason:"))
        assert words.encode() in reason, (name, reason)
        mid = next(line for line in reports[name].splitlines() if line.startswith(b"Id:"))
        kept = r.folder("Badmail") / f"{mid.split()[1].decode()}.eml"
        assert kept.read_bytes() == data, "the original is kept byte for byte"
        if name == "big.eml":  # too large to copy into the report: the file itself is kept
            assert b"beside this report" in reports[name]
        else:
            assert reports[name].endswith(data), "the original follows the report"

    assert r.proc.poll() is None
    drop_file(r.folder("Pickup"), "good.eml", sample("iis-example-as-written.txt"))
    wait_for(lambda: r.files("Drop"))
    assert not r.files("Pickup")


def test_links_fifos_dirs_and_hardlinks_are_never_opened(relay, tmp_path: Path) -> None:
    r = relay()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"From: a@yourdomain.com\r\nTo: thief@yourdomain.com\r\n\r\nSECRET\r\n")
    pickup = r.folder("Pickup")
    os.symlink(secret, pickup / "link.eml")
    os.mkfifo(pickup / "fifo.eml")
    (pickup / "dir.eml").mkdir()
    os.link(secret, pickup / "hard.eml")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(pickup / "sock.eml"))
    wait_for(lambda: len(r.files("Badmail", "*.BAD")) == 5, timeout=20)
    assert not r.files("Drop"), "nothing was read through a link"
    kinds = b" ".join(p.read_bytes() for p in r.files("Badmail", "*.BAD"))
    for words in (b"symbolic link", b"FIFO", b"directory", b"2 hard links", b"socket"):
        assert words in kinds
    assert secret.read_bytes().endswith(b"SECRET\r\n")
    sock.close()
    drop_file(pickup, "good.eml", sample("iis-example-as-written.txt"))
    wait_for(lambda: r.files("Drop"))


def test_slow_writer_is_not_read_early(relay) -> None:
    r = relay()
    path = r.folder("Pickup") / "slow.eml"
    with path.open("wb") as handle:
        handle.write(b"From: a@yourdomain.com\r\nTo: b@yourdomain.com\r\n")
        handle.flush()
        time.sleep(3)
        assert not r.files("Drop") and not r.files("Badmail")
        handle.write(b"Subject: slow\r\n\r\nthe whole body\r\n")
    dropped = only(wait_for(lambda: r.files("Drop")))
    assert dropped.read_bytes().endswith(b"Subject: slow\r\n\r\nthe whole body\r\n")


def test_burst_of_1000_and_files_present_at_start(relay, write_config, tmp_path: Path) -> None:
    root = tmp_path / "mailroot"
    (root / "Pickup").mkdir(parents=True)
    for i in range(200):  # present before the relay starts
        (root / "Pickup" / f"pre{i}.eml").write_bytes(
            b"From: a@yourdomain.com\r\nTo: b@yourdomain.com\r\nSubject: pre %d\r\n\r\nx\r\n" % i)
    r = relay()
    tmp = root / "tmp"

    def burst() -> None:
        for i in range(1000):
            data = (b"From: a@yourdomain.com\r\nTo: b@yourdomain.com\r\nSubject: burst %d\r\n\r\n"
                    b"x\r\n" % i)
            (tmp / f"b{i}").write_bytes(data)
            os.rename(tmp / f"b{i}", root / "Pickup" / f"burst{i}.eml")

    writer = threading.Thread(target=burst)
    writer.start()
    writer.join()
    wait_for(lambda: len(r.files("Drop")) >= 1200, timeout=45, interval=0.2)
    time.sleep(1.0)
    subjects = sorted(line for p in r.files("Drop") for line in p.read_bytes().splitlines()
                      if line.startswith(b"Subject:"))
    assert len(subjects) == 1200 and len(set(subjects)) == 1200
    assert not r.files("Pickup") and not r.files("Badmail")


def test_second_relay_refuses_and_sigterm_stops_cleanly(relay, write_config) -> None:
    r = relay()
    second = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "-c", str(r.config)],
                            capture_output=True, text=True, timeout=20)
    assert second.returncode == 2 and "already running" in second.stderr
    start = time.monotonic()
    assert r.stop(signal.SIGTERM) == 0
    assert time.monotonic() - start < 5
    assert not list((r.root / "tmp").glob("*.tmp"))


def test_intake_is_logged_one_line_each(relay) -> None:
    r = relay()
    drop_file(r.folder("Pickup"), "a.txt", sample("iis-example-as-written.txt"))
    event = wait_for(lambda: [e for e in r.events() if e["event"] == "intake"])[0]
    assert event["from"] == "blog@yourdomain.com" and event["to"] == ["email@yourdomain.com"]
    assert event["outcome"] == "drop" and event["id"] and event["time"]
    stderr = r.root.parent / "relay.stderr"
    wait_for(lambda: f"intake id={event['id']}" in stderr.read_text())


def test_send_writes_a_pickup_file_that_is_delivered(relay, tmp_path: Path) -> None:
    r = relay()
    body = tmp_path / "body.txt"
    body.write_text("Hello from a file\n")
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "send", "-c", str(r.config), "--from",
         "app@yourdomain.com", "--to", "a@yourdomain.com", "--cc", "c@alias.test", "--bcc",
         "b@yourdomain.com", "--subject", "Report", "--body-file", str(body)],
        capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    data = only(wait_for(lambda: r.files("Drop"))).read_bytes()
    for rcpt in (b"a@yourdomain.com", b"c@alias.test", b"b@yourdomain.com"):
        assert b"X-Receiver: " + rcpt in data
    assert b"Subject: Report" in data and b"Hello from a file" in data and b"\r\nBcc:" not in data


def test_a_file_taken_before_a_crash_is_committed_once(relay, tmp_path: Path) -> None:
    """Killed after the commit but before the taken file was removed: the restart rewrites
    the same entry rather than adding a second copy."""
    from relay.core.store import new_id

    root = tmp_path / "mailroot"
    (root / "tmp" / "pickup").mkdir(parents=True)
    (root / "Drop").mkdir()
    mid = new_id()
    data = sample("iis-example-as-written.txt")
    (root / "tmp" / "pickup" / f"{mid}.iis.txt").write_bytes(data)
    (root / "Drop" / f"{mid}.eml").write_bytes(b"X-Sender: blog@yourdomain.com\r\n(as committed)")
    r = relay()
    wait_for(lambda: not list((root / "tmp" / "pickup").iterdir()))
    dropped = only(r.files("Drop"))
    assert dropped.name == f"{mid}.eml"
    assert dropped.read_bytes().endswith(b"This is the test body of the email\r\n")
