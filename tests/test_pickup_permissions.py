"""Who may write into Pickup: members of the submit group (Pickup is theirs, mode 2770),
nobody else. The relay runs as its own unprivileged user, as the service does; writers are
other uids in child processes (no system users need to exist: CI runs as root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

import relay.supervisor.single  # noqa: F401  (imported before forking: the children may not reach it)
import relay.supervisor.supervisor  # noqa: F401  (the same)
from relay import cli
from relay.cli.install import prepare_mailroot
from tests.conftest import RelayProcess, wait_for

RELAY_UID, RELAY_GID, SUBMIT_GID = 40001, 40001, 40002
MEMBER_UID, OUTSIDER_UID, OUTSIDER_GID = 40003, 40004, 40004

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as other uids")

MESSAGE = b"From: app@yourdomain.com\r\nTo: ops@yourdomain.com\r\nSubject: %s\r\n\r\nhi\r\n"


def start_as(uid: int, gid: int, groups: list[int], action: Callable[[], int | None],
             output: Path | None = None) -> int:
    """Fork a child that drops to uid/gid/groups and runs `action` (in this interpreter:
    other uids may not be able to reach it on disk); its pid. The child exits with what
    `action` returns (0 for None), 13 on PermissionError, 1 on anything else."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if output is not None:
                fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.umask(0o027)
            code = action() or 0
        except PermissionError:
            code = 13
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def as_user(uid: int, gid: int, groups: list[int], action: Callable[[], int | None]) -> int:
    return exit_code(start_as(uid, gid, groups, action))


@pytest.fixture
def spool() -> Iterator[Path]:
    """A mailroot that other uids can reach (pytest's tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="mailroot-perm-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_submit_group_writes_pickup_and_nobody_else_can(spool: Path) -> None:
    root = spool / "mailroot"
    prepare_mailroot(root, RELAY_UID, RELAY_GID, SUBMIT_GID)
    config = spool / "mailroot.yaml"
    config.write_text(yaml.safe_dump({
        "mailroot": str(root), "hostname": "relay.test",
        "domains": {"local": {"default": "yourdomain.com"}},
        # one process: a child would be started from this interpreter, which lives where
        # the relay's uid cannot reach it here
        "smtp": {"listen": ["127.0.0.1:0"], "workers": 1}, "pickup": {"settle": "1s"}}))
    config.chmod(0o644)
    log = root / "log" / "events.jsonl"

    def events() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() \
            else []

    relay = start_as(RELAY_UID, RELAY_GID, [SUBMIT_GID],
                     lambda: cli.main(["serve", "-c", str(config)]), spool / "relay.stderr")
    try:
        wait_for(lambda: any(e["event"] == "relay-started" for e in events())
                 or os.waitpid(relay, os.WNOHANG) != (0, 0))
        assert any(e["event"] == "relay-started" for e in events()), \
            (spool / "relay.stderr").read_text()

        # a member writes a file the careful way (dot-file, then rename) ...
        def write_as_member() -> None:
            tmp = root / "Pickup" / ".member.tmp"
            tmp.write_bytes(MESSAGE % b"from a member")
            os.rename(tmp, root / "Pickup" / "member.eml")

        assert as_user(MEMBER_UID, MEMBER_UID, [SUBMIT_GID], write_as_member) == 0
        # ... and with `mailroot send`, as a uid with no name and no --from
        def send_as_member() -> int:
            for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
                os.environ.pop(name, None)
            return cli.main(["send", "-c", str(config), "--to", "ops@yourdomain.com",
                             "--subject", "sent by a member"])

        assert as_user(MEMBER_UID, MEMBER_UID, [SUBMIT_GID], send_as_member) == 0

        # somebody outside the group can neither write nor list Pickup
        def write_as_outsider() -> None:
            (root / "Pickup" / "outsider.eml").write_bytes(MESSAGE % b"outsider")

        assert as_user(OUTSIDER_UID, OUTSIDER_GID, [OUTSIDER_GID], write_as_outsider) == 13
        assert as_user(OUTSIDER_UID, OUTSIDER_GID, [OUTSIDER_GID],
                       lambda: os.listdir(root / "Pickup")) == 13
        assert as_user(OUTSIDER_UID, OUTSIDER_GID, [OUTSIDER_GID],
                       lambda: os.listdir(root / "Drop")) == 13

        # the relay, not root and without CAP_LEASE, takes both (after pickup.settle)
        def dropped() -> list[bytes]:
            return [p.read_bytes() for p in (root / "Drop").glob("*.eml")]

        got = wait_for(lambda: len(dropped()) == 2 and dropped(), timeout=20)
        assert any(b"Subject: from a member" in m for m in got)
        assert any(b"Subject: sent by a member" in m
                   and b"X-Sender: uid40003@yourdomain.com" in m for m in got)
        assert sorted(os.listdir(root / "Pickup")) == []
        assert not any(e["event"] == "pickup-error" for e in events())

        # a file the member kept to itself (mode 600) is named once, and taken once readable
        def write_private() -> None:
            os.umask(0o077)
            (root / "Pickup" / "private.eml").write_bytes(MESSAGE % b"private")

        assert as_user(MEMBER_UID, MEMBER_UID, [SUBMIT_GID], write_private) == 0
        wait_for(lambda: any(e["event"] == "pickup-error" for e in events()))
        time.sleep(1.0)  # five more looks at it
        errors = [e for e in events() if e["event"] == "pickup-error"]
        assert [(e["file"], e["error"]) for e in errors] == [
            ("Pickup/private.eml", "Permission denied")]
        assert as_user(MEMBER_UID, MEMBER_UID, [SUBMIT_GID],
                       lambda: os.chmod(root / "Pickup" / "private.eml", 0o640)) == 0
        wait_for(lambda: len(dropped()) == 3, timeout=20)
        for path in (root / "Drop").glob("*.eml"):
            assert path.stat().st_uid == RELAY_UID  # the relay's own copy, not the writer's
    finally:
        os.kill(relay, signal.SIGTERM)
        assert exit_code(relay) == 0, (spool / "relay.stderr").read_text()


def test_with_cap_lease_another_users_file_is_taken_once_closed(spool: Path, relay_process):
    """A relay with CAP_LEASE (here root, as the service has it) sees when another user's
    writer still has the file open, and takes it as soon as it is closed: not after
    pickup.settle (30 s here)."""
    root = spool / "mailroot"
    prepare_mailroot(root, RELAY_UID, RELAY_GID, SUBMIT_GID)
    proc = relay_process(spool, root, {"pickup": {"settle": "30s"}})
    go_on_r, go_on_w = os.pipe()
    opened_r, opened_w = os.pipe()

    def slow_writer() -> None:
        with open(root / "Pickup" / "slow.eml", "wb") as handle:  # in place, not renamed
            handle.write(b"From: app@yourdomain.com\r\nTo: ops@yourdomain.com\r\n")
            handle.flush()
            os.write(opened_w, b"!")
            os.read(go_on_r, 1)
            handle.write(b"Subject: written slowly\r\n\r\nhi\r\n")

    writer = start_as(MEMBER_UID, MEMBER_UID, [SUBMIT_GID], slow_writer)
    try:
        os.read(opened_r, 1)
        time.sleep(1.5)  # the relay looks at it several times meanwhile
        assert (root / "Pickup" / "slow.eml").exists() and not list((root / "Drop").iterdir())
        os.write(go_on_w, b"!")
        assert exit_code(writer) == 0
        closed = time.monotonic()
        got = wait_for(lambda: list((root / "Drop").glob("*.eml")), timeout=10)
        assert time.monotonic() - closed < 5  # by the lease, far within pickup.settle
        assert b"Subject: written slowly\r\n\r\nhi\r\n" in got[0].read_bytes()
    finally:
        for fd in (go_on_r, go_on_w, opened_r, opened_w):
            os.close(fd)
    assert proc.stop() == 0


@pytest.fixture
def relay_process() -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def start(spool: Path, root: Path, extra: dict) -> RelayProcess:
        config = spool / "relay-root.yaml"
        config.write_text(yaml.safe_dump({
            "mailroot": str(root), "hostname": "relay.test",
            "domains": {"local": {"default": "yourdomain.com"}},
            "smtp": {"listen": ["127.0.0.1:0"]}, **extra}))
        started.append(RelayProcess(config, root).start())
        return started[-1]

    yield start
    for proc in started:
        if proc.proc and proc.proc.poll() is None:
            proc.stop()


def test_send_under_umask_077_leaves_a_file_the_relay_can_read(spool: Path) -> None:
    """A member whose umask is 077 (common for personal accounts) still gets a Pickup file
    from `mailroot send` that the relay's uid, in the submit group only, can read."""
    root = spool / "mailroot"
    prepare_mailroot(root, RELAY_UID, RELAY_GID, SUBMIT_GID)
    config = spool / "mailroot.yaml"
    config.write_text(yaml.safe_dump({
        "mailroot": str(root), "hostname": "relay.test",
        "domains": {"local": {"default": "yourdomain.com"}}}))
    config.chmod(0o644)

    def send_with_umask_077() -> int:
        os.umask(0o077)
        return cli.main(["send", "-c", str(config), "--from", "app@yourdomain.com",
                         "--to", "ops@yourdomain.com", "--subject", "umask 077"])

    assert as_user(MEMBER_UID, MEMBER_UID, [SUBMIT_GID], send_with_umask_077) == 0
    [sent] = [p for p in (root / "Pickup").iterdir() if not p.name.startswith(".")]
    st = sent.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (MEMBER_UID, SUBMIT_GID, 0o640)
    assert as_user(RELAY_UID, RELAY_GID, [SUBMIT_GID],
                   lambda: 0 if b"Subject: umask 077" in sent.read_bytes() else 1) == 0
