"""Issue: abusive clients — docs/fail2ban's filter finds every refused client in the events a
real listener wrote (and nothing else), and its jail passes fail2ban's own configuration test.
Needs fail2ban's tools (Debian: apt-get install fail2ban); skipped without them."""

from __future__ import annotations

import base64
import shutil
import smtplib
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from relay.receiver.users import set_password
from tests.smtpd_support import RawClient, code, live_smtp

DOCS = Path(__file__).resolve().parent.parent / "docs" / "fail2ban"
FILTER = DOCS / "filter.d" / "mailroot.conf"
JAIL = DOCS / "jail.d" / "mailroot.conf"

pytestmark = pytest.mark.skipif(
    not (shutil.which("fail2ban-regex") and shutil.which("fail2ban-client")),
    reason="fail2ban is not installed (Debian: apt-get install fail2ban)")

# a user name that tries to pass for another client in the log line
FORGED = 'x","event":"auth-failed","client":"10.9.9.9'


def auth(port: int, source: str, user: str, password: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=15) as client:
        client.ehlo("guess.test")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {token}")[0]


def test_filter_matches_each_refused_client_and_nothing_else(write_config, tmp_path) -> None:
    users = tmp_path / "users"
    set_password(users, "app", "right")
    config = {"smtp": {"max_connections": 3, "limits": {"per_client_connections": 1},
                       "auth": {"users_file": str(users), "allow_plaintext": True,
                                "max_failures": 2, "failure_delay": "0s"}}}
    with live_smtp(write_config, config) as server:
        port = server.port
        assert [auth(port, "127.0.0.3", user, "wrong") for user in ("app", FORGED)] == [535] * 2
        assert auth(port, "127.0.0.3", "app", "right") == 454  # locked out
        assert auth(port, "127.0.0.4", "app", "right") == 235  # not refused: not matched
        held = [RawClient(port, source=source) for source in ("127.0.0.2", "127.0.0.5")]
        refused = [RawClient(port, source="127.0.0.2") for _ in range(2)]  # per client
        held.append(RawClient(port, source="127.0.0.6"))
        full = RawClient(port, source="127.0.0.7")  # the listener is full: no culprit
        assert [code(c.greeting) for c in held] == [220] * 3
        assert [code(c.greeting) for c in (*refused, full)] == [421] * 3
        log = server.store.log_dir / "events.jsonl"
        names = Counter(e["event"] for e in server.events)
        assert names["connection-refused"] == 3 and names["auth-locked"] == 1
    found = subprocess.run(["fail2ban-regex", "-o", "ip", str(log), str(FILTER)],
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert Counter(found.stdout.split()) == {"127.0.0.3": 4, "127.0.0.2": 2}


def test_jail_passes_fail2bans_configuration_test(tmp_path) -> None:
    """fail2ban's shipped configuration with only this jail enabled, its log in place."""
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    for jail in (conf / "jail.d").iterdir():
        jail.unlink()  # the distribution's own jails want logs this machine may lack
    shutil.copy(FILTER, conf / "filter.d")
    log = tmp_path / "events.jsonl"
    log.write_text("")
    text = JAIL.read_text()
    assert "logpath  = /var/lib/mailroot/log/events.jsonl" in text
    (conf / "jail.d" / "mailroot.conf").write_text(
        text.replace("/var/lib/mailroot/log/events.jsonl", str(log)))
    checked = subprocess.run(["fail2ban-client", "-c", str(conf), "-t"],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "OK" in checked.stdout + checked.stderr
