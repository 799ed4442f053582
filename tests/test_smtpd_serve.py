"""Issue: SMTP receive — through a real `mailroot serve` process: the IIS example, trusted
relaying, an unwritable mailroot, many concurrent clients, start/stop, `mailroot passwd`."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import sample, wait_for
from tests.smtpd_support import LOCAL, RawClient, message, wait_files

REMOTE = "partner.example"


def iis_example(to: str = f"email@{LOCAL}") -> bytes:
    """The IIS article's example as typed (no blank line before the body), without the
    final "." line that only Pickup files carry."""
    text = sample("iis-example-as-written.txt").replace(b"email@yourdomain.com", to.encode())
    return text[:text.rindex(b".")]


def test_iis_example_over_smtp_local_to_drop_remote_to_queue(relay) -> None:
    r = relay({"smtp": {"relay": {"allow": ["127.0.0.1"]}}})
    with smtplib.SMTP("127.0.0.1", r.smtp_port()) as client:
        client.sendmail("blog@yourdomain.com", [f"email@{LOCAL}"], iis_example())
        client.sendmail("blog@yourdomain.com", [f"email@{REMOTE}"], iis_example(f"email@{REMOTE}"))
    dropped = wait_files(r, "Drop", 1)[0].read_bytes()
    assert dropped.startswith(b"X-Sender: blog@yourdomain.com\r\nX-Receiver: email@yourdomain.com")
    assert b"Subject: Email test\r\n" in dropped
    assert dropped.endswith(b"This is the test body of the email\r\n")
    env = wait_files(r, "Queue", 1, "*.env")[0]
    assert f"email@{REMOTE}".encode() in env.read_bytes()
    assert b"from [127.0.0.1] (" in env.with_suffix(".eml").read_bytes()


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """Make directories unwritable even for root (the immutable attribute)."""
    done: list[Path] = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("this filesystem can't make a directory immutable (chattr +i)")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_unwritable_mailroot_answers_451_leaves_nothing_and_recovers(relay) -> None:
    r = relay({"smtp": {"relay": {"allow": ["127.0.0.1"]}}})
    port = r.smtp_port()
    mixed = [f"user@{LOCAL}", f"someone@{REMOTE}"]
    with smtplib.SMTP("127.0.0.1", port) as client:
        with immutable(r.folder("tmp"), r.folder("Drop"), r.folder("Queue")):
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(f"app@{LOCAL}", mixed, message())
            assert refused.value.smtp_code == 451
            assert refused.value.smtp_error.startswith(b"4.3.0")
            assert b"Error" not in refused.value.smtp_error  # no exception text
        with immutable(r.folder("Queue")):  # Drop is written, then Queue fails: undo Drop
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(f"app@{LOCAL}", mixed, message())
            assert refused.value.smtp_code == 451
        assert not r.files("Drop") and not r.files("Queue")
        # (the empty files a running relay keeps ready in tmp/ for its commits may be there)
        assert not [p for p in r.folder("tmp").rglob("*")
                    if p.is_file() and (p.suffix != ".ready" or p.stat().st_size)]
        client.sendmail(f"app@{LOCAL}", mixed, message())
    wait_files(r, "Drop", 1)
    wait_files(r, "Queue", 1, "*.env")
    assert sum(e["event"] == "intake-error" for e in r.events()) == 2


def test_ten_clients_200_messages_each_none_lost(relay) -> None:
    r = relay()
    port = r.smtp_port()
    accepted: list[int] = []
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                for i in range(200):
                    smtp.sendmail(f"app{n}@{LOCAL}", [f"user@{LOCAL}"],
                                  message(subject=f"c{n}-m{i}"))
                    accepted.append(1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert not errors and len(accepted) == 2000
    stored = wait_files(r, "Drop", 2000)
    subjects = {p.read_bytes().split(b"Subject: ")[1].split(b"\r\n")[0] for p in stored}
    assert len(subjects) == 2000


def test_listening_port_in_use_is_a_clear_error(write_config) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write_config({"smtp": {"listen": [f"127.0.0.1:{busy.getsockname()[1]}"]}})
        done = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "-c", str(config)],
                              capture_output=True, text=True, timeout=20)
    assert done.returncode == 2
    assert "cannot listen on 127.0.0.1:" in done.stderr and "smtp.listen" in done.stderr


def test_stopping_the_relay_says_421_to_connected_clients(relay) -> None:
    r = relay()
    client = RawClient(r.smtp_port())
    client.command("EHLO c.test")
    assert r.stop() == 0
    assert client.reply().startswith("421 4.3.2")


def test_passwd_writes_hashes_and_the_relay_uses_them(relay, tmp_path: Path) -> None:
    users = tmp_path / "users"
    r = relay({"smtp": {"auth": {"users_file": str(users), "allow_plaintext": True}}})

    def passwd(user: str, password: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "relay.cli", "passwd", user,
                               "-c", str(r.config)], input=password + "\n", capture_output=True,
                              text=True, timeout=20)

    assert passwd("app", "first secret").returncode == 0
    assert passwd("other", "x").returncode == 0
    assert passwd("app", "second secret").stdout.startswith("changed app")
    assert passwd("bad:name", "x").returncode == 2
    text = users.read_text()
    assert "secret" not in text and text.count("app:scrypt$") == 1 and "other:scrypt$" in text
    assert users.stat().st_mode & 0o077 == 0
    with smtplib.SMTP("127.0.0.1", r.smtp_port()) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("app", "first secret")
        client.login("app", "second secret")
        client.sendmail(f"app@{LOCAL}", [f"x@{REMOTE}"], message())
    wait_for(lambda: r.files("Queue", "*.env"))
