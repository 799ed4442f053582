"""Issue: abusive clients — per-client connection and rate limits, AUTH failure throttling per
address, stress mode, the greeting timeout, and the events that name every refused client.

Clients come from 127.0.0.2 (the abuser) and 127.0.0.3 (everyone else) by binding the client
socket's source address; the listener is on 127.0.0.1."""

from __future__ import annotations

import base64
import select
import smtplib
import socket
import time
from pathlib import Path

import pytest

from relay import config as configmod
from relay.users import set_password
from tests.conftest import wait_for
from tests.smtpd_support import LOCAL, RawClient, code, live_smtp, message, wait_files

ABUSER, OTHER = "127.0.0.2", "127.0.0.3"
PASSWORD = "s3cret pass"


def plain(password: str, user: str = "app") -> str:
    return "PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def refused(server, client: str, reason: str | None = None) -> list[dict]:
    return [e for e in server.events if e["event"] == "connection-refused"
            and e["client"] == client and (reason is None or e["reason"] == reason)]


def send_one(port: int, source: str, subject: str = "test") -> None:
    """A whole SMTP transaction from `source`; raises unless every step is accepted."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        client.sendmail(f"app@{LOCAL}", [f"user@{LOCAL}"], message(subject=subject))


def test_the_51st_connection_from_one_address_gets_421_others_are_served(write_config) -> None:
    with live_smtp(write_config) as server:  # the default smtp.limits.per_client_connections
        clients = [RawClient(server.port, source=ABUSER) for _ in range(60)]
        greetings = [code(c.greeting) for c in clients]
        assert greetings == [220] * 50 + [421] * 10
        assert clients[50].greeting.startswith("421 4.7.0")
        assert all(c.closed() for c in clients[50:])
        send_one(server.port, OTHER)  # meanwhile: connects, sends and gets 250
        assert len(wait_files(server, "Drop", 1)) == 1
        assert len(refused(server, ABUSER, "per-client-connections")) == 10
        assert not refused(server, OTHER)
        assert code(clients[0].command("NOOP")) == 250  # those admitted are served too
        clients[0].command("QUIT")
        again = wait_for(lambda: (c := RawClient(server.port, source=ABUSER)).greeting
                         .startswith("220") and c)  # a slot freed is a slot to use
        assert code(again.command("NOOP")) == 250


def test_connections_per_minute_from_one_address(write_config) -> None:
    with live_smtp(write_config, {"smtp": {"limits": {"per_client_rate": 3}}}) as server:
        for _ in range(3):
            client = RawClient(server.port, source=ABUSER)
            assert code(client.greeting) == 220
            client.command("QUIT")
        fourth = RawClient(server.port, source=ABUSER)
        assert fourth.greeting.startswith("421 4.7.0") and "per minute" in fourth.greeting
        assert code(RawClient(server.port, source=OTHER).greeting) == 220
        assert len(refused(server, ABUSER, "per-client-rate")) == 1


def test_a_silent_client_is_dropped_after_the_greeting_timeout(write_config) -> None:
    config = {"smtp": {"greeting_timeout": "1s", "timeout": "10m"}}
    with live_smtp(write_config, config) as server:
        silent = RawClient(server.port, source=ABUSER)
        talking = RawClient(server.port, source=OTHER)
        assert code(talking.command("EHLO app.test")) == 250
        assert silent.reply().startswith("421 4.4.2")  # not 10 minutes
        assert silent.closed()
        assert code(talking.command("NOOP")) == 250  # after a command, smtp.timeout holds


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:")))


@pytest.mark.slow
def test_1000_idle_connections_stress_mode_serves_another_address(relay) -> None:
    """No per-client limit here: 1,000 idle connections from one address fill the listener;
    stress mode shortens their idle timeout so another client is served within it."""
    r = relay({"smtp": {"limits": {"per_client_connections": 0}, "stress_timeout": "2s",
                        "max_connections": 1000, "timeout": "10m"}})
    port = r.smtp_port()
    peak = rss_kib(r.proc.pid)
    flood: list[socket.socket] = []
    try:
        for i in range(1000):  # connect and never say a word
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10,
                                                  source_address=(ABUSER, 0)))
            if i % 100 == 0:
                peak = max(peak, rss_kib(r.proc.pid))
        flooded = time.monotonic()
        wait_for(lambda: any(e["event"] == "stress" and e["state"] == "on" for e in r.events()),
                 timeout=10)

        def served() -> bool:
            nonlocal peak
            peak = max(peak, rss_kib(r.proc.pid))
            try:
                send_one(port, OTHER)
            except (smtplib.SMTPException, OSError):
                return False
            return True

        wait_for(served, timeout=2 + 2 + 5, interval=0.2)  # bounded well beyond the claim...
        assert time.monotonic() - flooded <= 2 + 2, "not served within stress_timeout + 2 s"
        assert peak < 200 * 1024, f"relay RSS reached {peak} KiB"
        stress = wait_for(lambda: [e for e in r.events() if e["event"] == "stress"])
        assert stress[0]["state"] == "on" and stress[0]["limit"] == 1000
        wait_for(lambda: any(e["event"] == "stress" and e["state"] == "off"
                             for e in r.events()), timeout=10)  # and it says when it ends
    finally:
        for sock in flood:
            sock.close()
    assert len(wait_files(r, "Drop", 1)) == 1


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-users"
    set_password(path, "app", PASSWORD)
    return path


def auth_config(users: Path, **auth: object) -> dict:
    return {"smtp": {"auth": {"users_file": str(users), "allow_plaintext": True,
                              "failure_delay": "0s", **auth}}}


def auth_once(port: int, source: str, password: str) -> int:
    """One session, one AUTH PLAIN: its reply code."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=15) as client:
        client.ehlo("app.test")
        return client.docmd("AUTH", plain(password))[0]


def test_failed_auth_is_counted_per_address_and_locks_it_out(write_config, users) -> None:
    with live_smtp(write_config, auth_config(users, lockout="3s")) as server:
        codes = [auth_once(server.port, ABUSER, f"guess {i}") for i in range(10)]
        assert codes == [535] * 5 + [454] * 5  # across 10 sessions, from the 6th on
        assert auth_once(server.port, ABUSER, PASSWORD) == 454  # the right one too: no oracle
        assert auth_once(server.port, OTHER, PASSWORD) == 235  # another address, at once
        locked = [e for e in server.events if e["event"] == "auth-locked"]
        assert [(e["client"], e["failures"]) for e in locked] == [(ABUSER, 5)]
        failed = [e for e in server.events if e["event"] == "auth-failed"]
        assert len(failed) == 11 and {e["client"] for e in failed} == {ABUSER}
        assert [e.get("reason") for e in failed].count("locked") == 6
        wait_for(lambda: auth_once(server.port, ABUSER, PASSWORD) == 235, timeout=10,
                 interval=0.5)  # the lockout ends


def test_failed_auth_is_answered_late_without_holding_up_others(write_config, users) -> None:
    with live_smtp(write_config, auth_config(users, failure_delay="3s")) as server:
        guesser = RawClient(server.port, source=ABUSER)
        guesser.command("EHLO guess.test")
        started = time.monotonic()
        guesser.send(f"AUTH {plain('wrong')}\r\n")
        assert auth_once(server.port, OTHER, PASSWORD) == 235  # served meanwhile
        assert not select.select([guesser.sock], [], [], 0)[0], "answered before the delay"
        assert code(guesser.reply()) == 535
        assert time.monotonic() - started >= 3


def test_no_limit_applies_to_an_allowed_network_below_its_trusted_limit(write_config) -> None:
    """200 concurrent connections from an address in relay.allow, each sending: all 250,
    although per-client, rate and global limits are far lower for everyone else."""
    config = {"smtp": {"relay": {"allow": ["127.0.0.2/32"]}, "max_connections": 20,
                       "limits": {"per_client_connections": 5, "per_client_rate": 5,
                                  "trusted_connections": 500}}}
    with live_smtp(write_config, config) as server:
        apps = [RawClient(server.port, source=ABUSER) for _ in range(200)]
        assert all(code(app.greeting) == 220 for app in apps)
        for n, app in enumerate(apps):
            assert code(app.command("EHLO app.test")) == 250
            assert code(app.command(f"MAIL FROM:<app@{LOCAL}>")) == 250
            assert code(app.command(f"RCPT TO:<user@{LOCAL}>")) == 250
            assert code(app.command("DATA")) == 354
            app.send(message(subject=f"burst {n}") + b".\r\n")
            assert code(app.reply()) == 250
        assert len(wait_files(server, "Drop", 200)) == 200
        assert not [e for e in server.events if e["event"] in ("connection-refused", "stress")]
        assert code(RawClient(server.port, source=OTHER).greeting) == 220  # not counted


@pytest.mark.parametrize("key", ["stress_timeout", "greeting_timeout"])
def test_a_zero_stress_or_greeting_timeout_is_a_config_error(key: str) -> None:
    with pytest.raises(configmod.ConfigError) as info:
        configmod.parse(f"smtp:\n  max_connections: 10\n  {key}: 0s\n", "relay.yaml")
    assert info.value.key == f"smtp.{key}" and info.value.line == 3
