"""The CLI's listings: quiet when cut short by a pipe, and every line true and within 80."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli.admin import format_row
from relay.core.bounce import badmail_ops
from relay.core.store import DROP, QUEUE, Envelope, Mailroot, Recipient, new_id
from relay.ops.queries import MessageSummary
from tests.admin_support import cli
from tests.bulk_support import fill_queue
from tests.busy_fixture import build_busy
from tests.tui_fixture import T0, build, fixed_id, message, write_config


@pytest.fixture
def mailroot(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "mailroot"
    build(root)
    return root, write_config(tmp_path)


@pytest.mark.parametrize("args", [["queue"], ["check"], ["queue", "--folder", "badmail"]])
def test_a_listing_into_a_closed_pipe_ends_without_a_traceback(mailroot, args):
    root, config = mailroot
    read, write = os.pipe()
    os.close(read)  # the reader (`head`) is gone before anything is written
    proc = subprocess.run([sys.executable, "-m", "relay.cli", *args, "-c", str(config)],
                          stdout=write, stderr=subprocess.PIPE, text=True, timeout=30)
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 141


def test_show_spaces_its_labels_and_counts_tries_in_english(mailroot):
    root, config = mailroot
    queued = fixed_id(T0 - 3600, 0)
    out = cli(config, "show", queued).stdout
    assert "Notice at: 2" in out and "notice:2" not in out
    row = MessageSummary("X", "Queue", T0, 10, "a@b.example", [], attempts=1)
    assert "1 try," in format_row(row)[0]
    assert "2 tries" in cli(config, "queue").stdout


def test_summary_fits_80_columns_with_long_intake_reasons(mailroot):
    root, config = mailroot
    store = Mailroot(root)
    reason = ("the file contains NUL bytes: binary data, not a text message, from an "
              "application that writes its spool file in place")
    mid = fixed_id(T0 - 50, 70)
    store.commit(badmail_ops(store, mid, reason, b"x\x00y", source="Pickup/app.dat"))
    out = cli(config, "summary").stdout
    assert max(len(line) for line in out.splitlines()) <= 80, out


def test_summary_lines_fit_80_columns_and_bytes_and_cut_names_stay_apart(tmp_path):
    """24 long domain names, 3,000 queued: every line is within 80 columns and 80 bytes (a
    terminal, `cut -c`, a mail body), and each domain is still told apart after the cut."""
    root = tmp_path / "mailroot"
    fill_queue(root, 3000, domains=24, prefix="a-rather-long-subdomain-name-")
    config = write_config(tmp_path)
    out = cli(config, "summary").stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert max(len(line.encode()) for line in lines) <= 80, out
    names = [line.split()[0] for line in lines if "…" in line]
    assert len(names) == len(set(names)) == 24, names
    assert all(name.endswith(".example") for name in names)


def test_queue_and_summary_give_one_size_for_one_folder(tmp_path):
    """`queue` said "16777 KiB in 18936 messages" and `summary` "29.8 MiB" for the same
    folder at the same moment: both now count the bytes its messages' files hold."""
    root = tmp_path / "mailroot"
    build_busy(root)
    fill_queue(root, 2000, domains=5, size_of=lambda n: 100 + n % 700)
    config = write_config(tmp_path)
    summary = cli(config, "summary").stdout.split("Disk used by each folder\n", 1)[1]
    for folder in ("Queue", "Badmail", "Drop"):
        footer = cli(config, "queue", "--folder", folder.lower()).stdout.splitlines()[-1]
        [line] = [line for line in summary.splitlines() if line.startswith(folder)]
        size = " ".join(line.split()[-2:])  # "1.6 MiB"
        count = int(line.split()[1])
        assert footer == f"-- {size} on disk in {count:,} message{'s' * (count != 1)} " \
                         f"in {folder}", (footer, line)


def test_the_null_sender_reads_as_angle_brackets_once(mailroot):
    root, config = mailroot
    store = Mailroot(root)
    mid = fixed_id(T0 - 30, 80)
    store.path(DROP, mid, ".eml").write_bytes(
        b"X-Sender: <>\r\nX-Receiver: it@example.com\r\n"
        + message("MAILER-DAEMON@example.com", "it@example.com", "Delivery report"))
    out = cli(config, "queue", "--folder", "drop").stdout
    assert "<<>>" not in out and "  <>\n" in out


def test_the_commands_that_read_start_without_the_relays_heavy_modules():
    """`mailroot queue`, `summary` and `health` run from cron and monitoring: they load no
    DKIM, DNS, event loop, MIME, config-editing or file-watching module (each costs tens of
    milliseconds of every run; the first listed row is due within 0.2 s)."""
    heavy = ("dkim", "dns.resolver", "asyncio", "email.mime.multipart", "ruamel.yaml",
             "watchfiles", "aiosmtpd", "aiosmtplib", "cryptography")
    probe = ("import sys, relay.cli, relay.ops.admin, relay.cli.admin; "
             f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=30, check=True).stdout.split()
    assert loaded == []


def test_a_reply_that_is_not_utf8_is_listed_as_json(mailroot):
    """A next hop's reply in Latin-1 reaches the envelope as aiosmtplib decodes it (lone
    surrogates for the undecodable octets); `queue --json` still lists the message."""
    root, config = mailroot
    store = Mailroot(root)
    env = Envelope(new_id(), "app@example.com",
                   [Recipient("x@remote.example", "deferred", "4.0.0",
                              b"451 r\xe9essayez plus tard".decode("utf-8", "surrogateescape"),
                              "mx.remote.example")],
                   received=T0, size=20, next_attempt=T0 + 3600)
    store.commit(store.enqueue_ops(QUEUE, env, b"Subject: x\r\n\r\nbody\r\n"))
    out = cli(config, "queue", "--json").stdout.splitlines()
    rows = [json.loads(line) for line in out]
    assert [r["recipients"][0]["reply"] for r in rows if r["id"] == env.id] == [
        "451 r\udce9essayez plus tard"]
