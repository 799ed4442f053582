"""Issue 12: `mailroot serve` as a supervisor of processes (receivers, Pickup taker, queue
manager) — through real `mailroot serve` processes, real SMTP clients and a real next hop."""

from __future__ import annotations

import os
import pickle
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from relay.core.config_loader import load
from relay.core.store import QUEUE, READY_FILES, Envelope, Mailroot, Recipient, checksum, new_id
from tests.conftest import RelayProcess, drop_file, wait_for
from tests.smtpsink import Sink

REMOTE = "remote.example"
ROLES = {"receiver-1", "receiver-2", "pickup", "queue"}


def processes_config(sink: Sink, **smtp) -> dict:
    return {"smtp": {"workers": 2, "relay": {"allow": ["127.0.0.0/8"]}, **smtp},
            "delivery": {"smarthost": f"127.0.0.1:{sink.port}"}}


def children(r: RelayProcess) -> dict[str, int]:
    """The live pid of each child, from the latest process-started/-restarted events."""
    pids: dict[str, int] = {}
    for event in r.events():
        if event["event"] in ("process-started", "process-restarted"):
            pids[event["process"]] = event["pid"]
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def mail(token: str) -> bytes:
    return f"From: app@yourdomain.com\r\nSubject: {token}\r\nX-Token: {token}\r\n\r\nhi\r\n".encode()


def delivered_tokens(sink: Sink) -> list[str]:
    with sink.lock:
        return [m.data.split(b"X-Token: ")[1].split(b"\r\n")[0].decode() for m in sink.messages]


class SmtpLoad(threading.Thread):
    """Sends up to `count` messages over fresh sessions; keeps the tokens that got a 250
    (a session cut by a kill leaves its message unacknowledged, as a client would see it)."""

    def __init__(self, port: int, count: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.deadline = port, count, time.monotonic() + seconds
        self.accepted: list[str] = []

    def run(self) -> None:
        for n in range(self.count):
            if time.monotonic() > self.deadline:
                return
            token = f"smtp-{n}"
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                    client.sendmail("app@yourdomain.com", [f"u{n}@{REMOTE}"], mail(token))
                self.accepted.append(token)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # a receiver killed under it: the next session goes elsewhere


def test_children_start_each_with_its_role_and_mail_flows(relay, sink) -> None:
    hop = sink()
    r = relay(processes_config(hop))
    pids = children(r)
    assert set(pids) == ROLES
    assert len(set(pids.values())) == 4 and r.proc.pid not in pids.values()
    for pid in pids.values():
        assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) \
            == r.proc.pid  # the supervisor's children
    listening = [e for e in r.events() if e["event"] == "smtp-listening"]
    assert len(listening) == 1  # the supervisor binds; the receivers share the socket
    with smtplib.SMTP("127.0.0.1", r.smtp_port()) as client:
        client.sendmail("app@yourdomain.com", [f"a@{REMOTE}"], mail("smtp-a"))
    drop_file(r.folder("Pickup"), "p.eml",
              b"x-sender: app@yourdomain.com\r\nx-receiver: b@remote.example\r\n" + mail("pickup-b"))
    wait_for(lambda: sorted(delivered_tokens(hop)) == ["pickup-b", "smtp-a"])
    # the hop counts a message before its reply reaches the queue manager, which then
    # removes it from Queue: soon after, not at once
    wait_for(lambda: r.files("Queue") == [], timeout=5)


def test_queue_manager_learns_of_a_new_queue_entry_from_the_folder(relay, sink) -> None:
    """An entry committed to Queue by another process (no intake call reaches the queue
    manager) is delivered at once: well before the 30 s rescan could find it."""
    hop = sink()
    r = relay(processes_config(hop))
    store = Mailroot(r.root)
    data = mail("outside")
    mid = new_id()
    envelope = Envelope(id=mid, sender="app@yourdomain.com", recipients=[Recipient(f"c@{REMOTE}")],
                        received=time.time(), origin="test", size=len(data),
                        crc32=checksum(data), next_attempt=time.time())
    started = time.monotonic()
    store.commit(store.enqueue_ops(QUEUE, envelope, data))
    wait_for(lambda: delivered_tokens(hop) == ["outside"], timeout=20)
    assert time.monotonic() - started < 20  # (the rescan runs every 30 s)


def test_a_child_killed_mid_load_is_restarted_and_nothing_is_lost(relay, sink) -> None:
    hop = sink()
    r = relay(processes_config(hop))
    load = SmtpLoad(r.smtp_port(), count=150, seconds=25)
    load.start()
    wait_for(lambda: len(load.accepted) >= 20)
    first = children(r)
    os.kill(first["receiver-1"], signal.SIGKILL)
    wait_for(lambda: len(load.accepted) >= 50)
    os.kill(first["queue"], signal.SIGKILL)
    load.join(40)
    assert not load.is_alive()
    wait_for(lambda: {e.get("process") for e in r.events() if e["event"] == "process-restarted"}
             >= {"receiver-1", "queue"})
    exited = [e for e in r.events() if e["event"] == "process-exited"]
    assert {e["process"] for e in exited} == {"receiver-1", "queue"}
    assert all(e["restart_in"] > 0 for e in exited)
    now = children(r)
    assert now["receiver-1"] != first["receiver-1"] and now["queue"] != first["queue"]
    assert alive(now["receiver-1"]) and alive(now["queue"])
    wait_for(lambda: set(load.accepted) <= set(delivered_tokens(hop)), timeout=30)
    assert len(load.accepted) >= 50
    wait_for(lambda: r.files("Queue", "*.env") == [], timeout=10)  # nothing left to deliver
    # A queue manager killed between making a delivered message's envelope its delivered
    # marker and moving its file out leaves the file for the next queue manager to remove
    # (it may not have yet): such a file must be of a delivered message.
    for leftover in r.files("Queue", "*.eml"):
        token = leftover.read_bytes().split(b"X-Token: ")[1].split(b"\r\n")[0].decode()
        assert token in delivered_tokens(hop), leftover.name


def test_a_restarted_queue_manager_finishes_a_removal_a_kill_cut_short(relay, sink) -> None:
    """Killed after making a delivered message's envelope its delivered marker
    (Queue/<id>.delivered) and before moving its file out: the next queue manager removes
    both (a receiver's commit may be in progress beside it: that one's message file is
    locked by its writer, and left alone)."""
    hop = sink()
    r = relay(processes_config(hop))
    mid = new_id()
    (r.root / "Queue" / f"{mid}.eml").write_bytes(mail("delivered"))  # as the kill left them
    (r.root / "Queue" / f"{mid}.delivered").write_bytes(b"{}")
    os.kill(children(r)["queue"], signal.SIGKILL)
    wait_for(lambda: [e for e in r.events() if e["event"] == "recovered" and e["id"] == mid])
    assert not r.files("Queue")
    assert not hop.messages  # removed, not delivered


@pytest.mark.alone  # a time bound
def test_sigterm_stops_every_child_within_5_seconds(relay, sink) -> None:
    """...and each leaves nothing in tmp/, not even the files it kept ready for commits."""
    hop = sink()
    r = relay(processes_config(hop))
    pids = children(r)
    # each child made its ready files at its start, before any message
    wait_for(lambda: len(list((r.root / "tmp").glob("*.ready"))) == 4 * READY_FILES)
    with smtplib.SMTP("127.0.0.1", r.smtp_port(), timeout=10) as client:
        client.sendmail("app@example.com", ["a@remote.test"], b"Subject: x\r\n\r\nx\r\n")
    wait_for(lambda: len(hop.messages) == 1)
    started = time.monotonic()
    assert r.stop(signal.SIGTERM) == 0
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=5)
    assert time.monotonic() - started < 5
    stopped = {e["process"] for e in r.events() if e["event"] == "process-stopped"}
    assert stopped == ROLES  # each stopped cleanly, not killed
    assert r.events()[-1]["event"] == "relay-stopped"
    assert not [p for p in (r.root / "tmp").rglob("*") if p.is_file()]


def test_a_config_change_reaches_every_child(relay, sink, write_config) -> None:
    hop = sink()
    r = relay(processes_config(hop))
    pids = children(r)
    path = write_config(processes_config(hop, max_message_size="1KiB"))
    applied = lambda: {e["process"]: e["pid"] for e in r.events()  # noqa: E731
                       if e["event"] == "config-applied"}
    wait_for(lambda: applied() == pids)
    wait_for(lambda: [e for e in r.events() if e["event"] == "config-reloaded"])
    reloaded = [e for e in r.events() if e["event"] == "config-reloaded"]
    assert len(reloaded) == 1  # said once, by the supervisor, after every child applied it
    assert reloaded[0]["time"] >= max(e["time"] for e in r.events()
                                      if e["event"] == "config-applied")
    assert path == r.config
    for _ in range(4):  # whichever receiver takes the session, the new limit holds
        with smtplib.SMTP("127.0.0.1", r.smtp_port()) as client:
            try:
                client.sendmail("app@yourdomain.com", [f"d@{REMOTE}"], mail("big") + b"x" * 2000)
            except smtplib.SMTPSenderRefused as exc:  # the SIZE it declared is refused
                assert exc.smtp_code == 552
            else:
                raise AssertionError("a message over the new size limit was accepted")


def test_a_config_larger_than_a_pipe_buffer_reaches_every_child(relay, sink,
                                                                write_config) -> None:
    """Thousands of per-domain settings: the config reaches a child in several reads of its
    link, which its event loop watches (and uvloop makes non-blocking)."""
    hop = sink()
    r = relay(processes_config(hop))
    pids = children(r)
    remote = {f"partner{n}.example": {"tls": "may"} for n in range(5000)}
    remote["refused.example"] = {"smarthost": "127.0.0.1:1"}  # nothing listens there
    config = {**processes_config(hop), "domains": {"remote": remote}}
    assert len(pickle.dumps(load(write_config(config)))) > 4 * 65536  # a pipe holds 64 KiB
    wait_for(lambda: {e["process"]: e["pid"] for e in r.events()
                      if e["event"] == "config-applied"} == pids)
    with smtplib.SMTP("127.0.0.1", r.smtp_port()) as client:
        client.sendmail("app@yourdomain.com", ["a@refused.example"], mail("refused"))
    wait_for(lambda: [e for e in r.events() if e["event"] == "deferred"])  # not to `hop`
    assert not hop.messages


def test_the_lock_refuses_a_second_relay_and_dies_with_the_supervisor(relay, sink) -> None:
    hop = sink()
    r = relay(processes_config(hop))
    second = subprocess.run([sys.executable, "-m", "relay.cli", "serve", "-c", str(r.config)],
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 2
    assert "another relay is already running" in second.stderr
    assert f"pid {r.proc.pid} on" in second.stderr
    pids = children(r)
    r.kill()  # the supervisor alone: its children go with it, and the lock with them
    wait_for(lambda: not any(alive(pid) for pid in pids.values()), timeout=5)
    r.start()
    with smtplib.SMTP("127.0.0.1", r.smtp_port()) as client:
        client.sendmail("app@yourdomain.com", [f"e@{REMOTE}"], mail("after"))
    wait_for(lambda: delivered_tokens(hop) == ["after"])


def test_workers_1_runs_the_whole_relay_in_one_process(relay, sink, write_config) -> None:
    hop = sink()
    path = write_config(processes_config(hop))
    r = RelayProcess(path, Path(yaml.safe_load(path.read_text())["mailroot"]),
                     args=["--workers", "1"]).start()
    try:
        assert children(r) == {}
        with smtplib.SMTP("127.0.0.1", r.smtp_port()) as client:
            client.sendmail("app@yourdomain.com", [f"f@{REMOTE}"], mail("single"))
        wait_for(lambda: delivered_tokens(hop) == ["single"])
        assert [e["pid"] for e in r.events() if e["event"] == "relay-started"] == [r.proc.pid]
    finally:
        r.stop()


async def test_the_console_embeds_the_same_processes_and_shows_their_state(
        write_config, sink) -> None:
    from relay.core import config_loader
    from relay.supervisor.supervisor import Supervisor
    from tui.app import ConsoleApp

    app = ConsoleApp(config_loader.load(write_config(processes_config(sink()))))

    def header() -> str:
        return str(app.dashboard.query_one("#header").render())

    async def until(pilot, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, header()
            await pilot.pause(0.05)

    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: app.relay is not None and app.relay.running)
        assert isinstance(app.relay, Supervisor)
        await until(pilot, lambda: "2 receivers, pickup, queue up" in header())
        queue = next(c for c in app.relay.children if c.name == "queue")
        os.kill(queue.proc.pid, signal.SIGKILL)
        await until(pilot, lambda: "queue restarting" in header()
                    or "queue starting" in header())
        await until(pilot, lambda: "queue up" in header())
        pids = [c.proc.pid for c in app.relay.children]
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5)  # quitting stops them
