"""Issue: abusive clients — per-client connection and rate limits, AUTH failure throttling per
address, stress mode, the greeting timeout, and the events that name every refused client.

Clients come from 127.0.0.2 (the abuser) and 127.0.0.3 (everyone else) by binding the client
socket's source address; the listener is on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import select
import signal
import smtplib
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from relay.core import config_loader
from relay.core.config import ConfigError
from relay.receiver.users import set_password
from tests.conftest import wait_for
from tests.smtpd_support import (
    LOCAL,
    RawClient,
    clients_of,
    code,
    live_smtp,
    message,
    process_tree,
    pss_kib,
    receiver_pids,
    sessions_in,
    wait_files,
)

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


# A real `mailroot serve` as installed: one receiver process per core (at least two here, so
# what the receivers share is what is tested)
RECEIVERS: dict = {} if (os.cpu_count() or 1) >= 2 else {"workers": 2}


def stress_events(r) -> list[dict]:
    return [e for e in r.events() if e["event"] == "stress"]


@pytest.mark.slow
@pytest.mark.alone  # a time bound
def test_1000_idle_connections_stress_mode_serves_another_address(relay) -> None:
    """No per-client limit here: 1,000 idle connections from one address fill the listener;
    stress mode shortens their idle timeout, so another client is served within
    stress_timeout + 2 s of stress mode beginning (the relay's `stress` event: from then on
    every idle session has that timeout), wherever a loaded machine puts that moment.

    The relay's memory is that of all its processes (the supervisor, two receivers as on a
    2-core host, pickup and the queue manager), summed as PSS: a page private to one process
    counted once, a page shared between them (the interpreter and libraries, what a fork left
    in common) split among those mapping it, so no page is counted twice as summed RSS
    would. A page also shared with processes outside the relay counts only in part."""
    r = relay({"smtp": {"workers": 2, "limits": {"per_client_connections": 0},
                        "stress_timeout": "2s", "max_connections": 1000, "timeout": "10m"}})
    port = r.smtp_port()
    assert len(receiver_pids(r)) == 2

    def memory() -> int:
        nonlocal peak
        processes = process_tree(r.proc.pid)
        assert len(processes) == 5, processes  # supervisor, 2 receivers, pickup, queue
        peak = max(peak, pss_kib(processes))
        return peak

    peak = 0
    memory()
    flood: list[socket.socket] = []
    try:
        for i in range(1000):  # connect and never say a word
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=10,
                                                  source_address=(ABUSER, 0)))
            if i % 100 == 0:
                memory()
        on = wait_for(lambda: next((e for e in stress_events(r) if e["state"] == "on"), None),
                      timeout=10)
        assert on["limit"] == 1000 and on["open"] > 800
        memory()

        def served() -> float | None:
            memory()
            try:
                send_one(port, OTHER)
            except (smtplib.SMTPException, OSError):
                return None
            return time.time()

        served_at = wait_for(served, timeout=2 + 2 + 5, interval=0.2)  # bounded beyond...
        assert served_at - on["time"] <= 2 + 2, "not served within stress_timeout + 2 s"
        memory()
        assert peak < 200 * 1024, f"the relay's processes reached {peak} KiB (summed PSS)"
        wait_for(lambda: len(stress_events(r)) == 2, timeout=10)  # and it says when it ends
        assert [e["state"] for e in stress_events(r)] == ["on", "off"]
    finally:
        for sock in flood:
            sock.close()
    assert len(wait_files(r, "Drop", 1)) == 1


@pytest.mark.alone  # a time bound
def test_stress_mode_is_logged_once_and_every_receiver_follows_it(relay) -> None:
    """Stress mode is the relay's, counted over every receiver's connections: one `stress`
    event when it begins and one when it ends (not one per receiver), and the idle sessions
    of a receiver that admitted nothing since it began are cut to stress_timeout too."""
    r = relay({"smtp": {**RECEIVERS, "max_connections": 20, "stress_timeout": "1s",
                        "greeting_timeout": "30s", "timeout": "10m",
                        "limits": {"per_client_connections": 0}}})
    port = r.smtp_port()
    receivers = receiver_pids(r)
    assert len(receivers) >= 2
    idle = [RawClient(port, source=ABUSER) for _ in range(16)]  # 80 % of 20: not yet stress
    assert [code(c.greeting) for c in idle] == [220] * 16
    held = {name: sessions_in(pid, port) for name, pid in receivers.items()}
    assert sum(held.values()) == 16 and all(held.values()), held  # the kernel spread them
    assert not stress_events(r)
    last = RawClient(port, source=ABUSER)  # the 17th, on one receiver: stress for all
    [on] = wait_for(lambda: stress_events(r))
    assert (on["state"], on["open"], on["limit"]) == ("on", 17, 20)
    for client in [*idle, last]:  # every receiver's sessions, not just the 17th's
        assert client.closed(timeout=max(0.1, on["time"] + 1 + 2 - time.time())), \
            "an idle session outlived stress_timeout + 2 s"
        assert client.buffer.decode().splitlines()[-1].startswith("421 4.4.2")
    [_, off] = wait_for(lambda: stress_events(r)[1:] and stress_events(r))
    assert off["state"] == "off" and off["open"] <= 12
    time.sleep(0.5)  # nothing more comes, from any receiver
    assert [e["state"] for e in stress_events(r)] == ["on", "off"]


def test_a_supervised_relays_receivers_share_the_per_client_limit(relay) -> None:
    """The 51st connection from 127.0.0.2 gets 421 although the 50 before it are spread over
    the receiver processes; meanwhile 127.0.0.3 is served."""
    r = relay({"smtp": RECEIVERS})
    port = r.smtp_port()
    receivers = receiver_pids(r)
    assert len(receivers) >= 2
    clients = [RawClient(port, source=ABUSER) for _ in range(60)]
    assert [code(c.greeting) for c in clients] == [220] * 50 + [421] * 10
    def held() -> dict[str, int]:  # (a refused session may take a moment to close)
        return {name: sessions_in(pid, port) for name, pid in receivers.items()}

    wait_for(lambda: sum(held().values()) == 50, timeout=5)
    assert all(held().values()), held()  # spread over the receivers, and counted together
    send_one(port, OTHER)
    assert len(wait_files(r, "Drop", 1)) == 1
    refusals = [e for e in r.events() if e["event"] == "connection-refused"]
    assert [(e["client"], e["reason"]) for e in refusals] == \
        [(ABUSER, "per-client-connections")] * 10


def test_an_application_is_admitted_by_its_receiver_alone_up_to_its_share(relay) -> None:
    """A client in relay.allow costs no round trip to the supervisor: with the supervisor
    stopped, its connections still get their greeting. Each of the two receivers admits
    its half of trusted_connections from one address; beyond both halves, 421."""
    r = relay({"smtp": {"workers": 2, "relay": {"allow": [f"{ABUSER}/32"]},
                        "limits": {"trusted_connections": 8}}})
    port = r.smtp_port()
    receivers = receiver_pids(r)
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:  # four connections: no receiver can hold more than its four
        apps = [RawClient(port, source=ABUSER, timeout=5) for _ in range(4)]
        assert [code(app.greeting) for app in apps] == [220] * 4
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    apps += [RawClient(port, source=ABUSER, timeout=5) for _ in range(30)]
    assert Counter(code(app.greeting) for app in apps) == {220: 8, 421: 26}
    wait_for(lambda: [sessions_in(pid, port) for pid in receivers.values()] == [4, 4],
             timeout=5)
    refusals = [e for e in r.events() if e["event"] == "connection-refused"]
    assert [(e["client"], e["reason"]) for e in refusals] == \
        [(ABUSER, "per-client-connections")] * 26
    for app in apps:
        app.sock.close()


def test_a_closing_connection_does_not_wait_for_the_supervisor(relay) -> None:
    """A receiver tells the shared Anvil of a closed connection and goes on: with the
    supervisor stopped, the receiver still answers its other sessions after one closes."""
    r = relay({"smtp": RECEIVERS})
    port = r.smtp_port()
    clients = [RawClient(port, source=OTHER) for _ in range(8)]
    assert [code(c.greeting) for c in clients] == [220] * 8
    served = {name: clients_of(pid, port) for name, pid in receiver_pids(r).items()}
    mine = next(held for held in served.values() if len(held) >= 2)
    leaving, staying = [c for c in clients if c.sock.getsockname() in mine][:2]
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        assert code(leaving.command("QUIT")) == 221
        assert leaving.closed()
        staying.sock.settimeout(3)
        assert code(staying.command("NOOP")) == 250  # not held up by the release
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    assert code(staying.command("QUIT")) == 221


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


def test_a_supervised_relays_receivers_share_the_auth_lockout(relay, users) -> None:
    """Failed AUTHs from 127.0.0.2, each in its own session, whichever receiver process serves
    it, count together: from the 6th session on, 454, also with the right password, in a
    receiver that saw fewer than 5 of the failures itself; 127.0.0.3 logs in at once."""
    r = relay({"smtp": {**RECEIVERS, **auth_config(users)["smtp"]}})
    port = r.smtp_port()
    receivers = receiver_pids(r)
    assert len(receivers) >= 2

    def session(password: str) -> tuple[int, str]:
        """One session from 127.0.0.2, one AUTH: its reply code and the receiver serving it."""
        with smtplib.SMTP("127.0.0.1", port, source_address=(ABUSER, 0), timeout=15) as client:
            me = client.sock.getsockname()
            receiver = next(name for name, pid in receivers.items()
                            if me in clients_of(pid, port))
            client.ehlo("guess.test")
            return client.docmd("AUTH", plain(password))[0], receiver

    sessions = [session(f"guess {i}") for i in range(10)]
    assert [code for code, _ in sessions] == [535] * 5 + [454] * 5
    failed_in = Counter(receiver for _, receiver in sessions[:5])
    # a refusal where this receiver's own failures could not have locked the address out
    shared = [receiver for _, receiver in sessions[5:] if failed_in[receiver] < 5]
    while not shared and len(sessions) < 40:  # all 5 failures in one receiver: the other's
        sessions.append(session(PASSWORD))
        assert sessions[-1][0] == 454
        shared += [sessions[-1][1]] if failed_in[sessions[-1][1]] < 5 else []
    assert shared, sessions
    assert session(PASSWORD)[0] == 454  # no oracle
    assert auth_once(port, OTHER, PASSWORD) == 235
    locked = [e for e in r.events() if e["event"] == "auth-locked"]
    assert [(e["client"], e["failures"]) for e in locked] == [(ABUSER, 5)]


@pytest.mark.alone  # a time bound
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
    with pytest.raises(ConfigError) as info:
        config_loader.parse(f"smtp:\n  max_connections: 10\n  {key}: 0s\n", "relay.yaml")
    assert info.value.key == f"smtp.{key}" and info.value.line == 3
