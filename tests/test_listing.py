"""The match expression, the reason classes, and `mailroot ... --match` over whole folders."""

from __future__ import annotations

import json
import re

import pytest

from relay.core import config_loader
from relay.core.bounce import read_reason
from relay.core.folderstats import human_size
from relay.core.store import BADMAIL, DROP, HOLD, QUEUE, Mailroot
from relay.ops.admin import Admin
from relay.ops.listing import MatchError, compile_match, entry_of, matching, reason_class
from tests.admin_support import cli
from tests.bulk_support import fill_queue
from tests.busy_fixture import build_busy


@pytest.mark.parametrize("reason, klass", [
    ("expired after 2d without delivery (last: 421 4.4.2 timeout)", "expired"),
    ("delivery failed for <a@b.example>: 550 5.1.1 user unknown", "5.1.1"),
    ("delivery failed for <a@b.example>: 452 4.2.2 mailbox full", "4.2.2"),
    ("delivery failed for <a@b.example>: 554 rejected", "5xx"),
    ("no MX record for b.example (NXDOMAIN)", "DNS"),
    ("STARTTLS required by policy but not offered", "TLS"),
    ("message of 9000000 bytes is over the size limit of 2097152", "too-big"),
    ("no recipients", "no-rcpt"),
    ("hop count exceeded: 31 Received: headers, more than 30", "loop"),
    ("bad sender address 'x@': missing domain", "bad-file"),
    ("something nobody expected", "other"),
])
def test_reason_class(reason, klass):
    assert reason_class(reason) == klass


def test_terms_combine_with_and_and_bad_terms_name_themselves(tmp_path, write_config):
    admin = Admin(config_loader.load(write_config()))
    fill_queue(tmp_path / "mailroot", 40, domains=4, size_of=lambda n: 100 * n)
    entries = [entry_of(r) for r in admin.list_folder(QUEUE)]

    def count(expr: str) -> int:
        test = compile_match(expr)
        return sum(1 for e in entries if test(e))

    assert count("") == 40
    assert count("domain:d1.example") == 10
    assert count("domain:example") == 0 and count("domain:.example") == 40
    assert count("domain:d1.example size>2KB") == len([n for n in range(1, 40, 4)
                                                       if 100 * n + 60 > 2048])
    assert count("to:u7@") == 1 and count("U7@D3") == 1  # words ignore case
    assert count("reason:greylisted") == 40 and count("attempts>0") == 40 and count("attempts>=2") == 0
    assert count("older:1h") == 0 and count("newer:1h") == 40
    assert count('"subject:report 3"') == 11  # 3, 30..39
    for bad, named in (("size>lots", "size>lots"), ("colour:red", "colour"),
                       ("older:soon", "older:soon")):
        with pytest.raises(MatchError, match=named):
            compile_match(bad)


def test_cli_queue_match_counts_and_bulk_hold_with_dry_run(tmp_path, write_config):
    path = write_config()
    ids = fill_queue(tmp_path / "mailroot", 60, domains=3)
    out = cli(path, "queue", "--match", "domain:d2.example", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 20 and all(r["recipients"][0]["address"].endswith("@d2.example")
                                   for r in rows)
    dry = cli(path, "hold", "--match", "domain:d2.example", "--dry-run")
    assert dry.returncode == 0 and "20 messages in Queue would be held" in dry.stdout
    admin = Admin(config_loader.load(path))
    assert len(admin.store.ids(HOLD)) == 0  # a dry run changes nothing
    done = cli(path, "hold", "--match", "domain:d2.example")
    assert done.returncode == 0, done.stderr
    assert set(admin.store.ids(HOLD)) == {ids[n] for n in range(2, 60, 3)}
    assert len(admin.store.ids(QUEUE)) == 40
    bad = cli(path, "hold", "--match", "size>huge")
    assert bad.returncode == 2 and "size>huge" in bad.stderr
    assert cli(path, "release", "--match", "to:u2@").returncode == 0
    assert ids[2] in admin.store.ids(QUEUE)


def test_a_bulk_command_prints_its_total_and_the_audit_keeps_the_match(tmp_path,
                                                                        write_config):
    """As postsuper does, a total after the ids; the audit records the expression and
    reads as one short line however many messages it moved (`--ids` lists them)."""
    path = write_config()
    ids = fill_queue(tmp_path / "mailroot", 600, domains=3)
    done = cli(path, "hold", "--match", "domain:d2.example")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("held ") == 200
    assert done.stderr.splitlines()[-1] == "mailroot: held 200 messages"
    held = sorted(ids[n] for n in range(2, 600, 3))
    again = cli(path, "hold", held[0], "0000000000000000")
    assert again.stderr.splitlines()[-1] == "mailroot: held 0 messages; 2 were not (named above)"
    [entry] = [line for line in cli(path, "audit").stdout.splitlines() if " hold " in line]
    assert 'match="domain:d2.example"' in entry
    assert f"200 messages ({held[0]} … {held[-1]})" in entry and len(entry) < 160
    listed = cli(path, "audit", "--ids").stdout.splitlines()
    assert [line.strip() for line in listed[1:]] == held


def test_trash_listing_shows_origin_and_size(tmp_path, write_config):
    path = write_config()
    ids = fill_queue(tmp_path / "mailroot", 3, domains=1, size_of=lambda n: 1000 * (n + 1))
    admin = Admin(config_loader.load(path))
    admin.delete(ids[:2])
    rows = admin.list_folder("Trash")
    assert [(r.id, r.deleted_from, r.size) for r in rows] == [
        (ids[0], QUEUE, admin.store.path(QUEUE, ids[2], ".eml").stat().st_size - 2000),
        (ids[1], QUEUE, admin.store.path(QUEUE, ids[2], ".eml").stat().st_size - 1000)]
    listed = cli(path, "queue", "--folder", "trash")
    assert listed.stdout.count("(deleted from Queue)") == 2
    assert cli(path, "undelete", "--match", f"to:{rows[0].recipients[0].address}"
               ).returncode == 0
    assert ids[0] in admin.store.ids(QUEUE)
    assert [r.id for r in matching(admin, BADMAIL, "")] == []


def listed_sizes(path, folder: str) -> dict[str, str]:
    """{id: size} as `mailroot queue --folder FOLDER` prints them."""
    out = cli(path, "queue", "--folder", folder)
    assert out.returncode == 0, out.stderr
    return {m[1]: m[2] for m in re.finditer(r"^(\S{16})[ !]\s+(\d+)\s", out.stdout, re.M)}


def test_trash_listing_shows_each_originals_size_and_origin_on_the_command_line(
        tmp_path, write_config):
    """From every folder, with an envelope or without one (Drop, a file refused at intake):
    Trash prints the size its folder printed, the original's, and where it was deleted from."""
    path = write_config()
    store = Mailroot(tmp_path / "mailroot")
    build_busy(store.root)
    admin = Admin(config_loader.load(path))
    queued = store.ids(QUEUE)[0]
    [dropped] = store.ids(DROP)
    bounced = next(m for m in store.ids(BADMAIL) if store.path(BADMAIL, m, ".env").exists())
    refused = next(m for m in store.ids(BADMAIL) if "size limit" in read_reason(
        store.path(BADMAIL, m, ".BAD")))
    origin = {queued: QUEUE, dropped: DROP, bounced: BADMAIL, refused: BADMAIL}
    before = {**listed_sizes(path, "queue"), **listed_sizes(path, "drop"),
              **listed_sizes(path, "badmail")}
    sizes = {mid: str(store.path(folder, mid, ".eml").stat().st_size)
             for mid, folder in origin.items() if folder != QUEUE}
    sizes[queued] = str(store.read_envelope(QUEUE, queued).size)
    assert {mid: before[mid] for mid in origin} == sizes
    assert int(sizes[refused]) > 6000  # the 6 KB original, not its short report
    assert set(admin.delete(list(origin)).done) == set(origin)
    out = cli(path, "queue", "--folder", "trash")
    assert listed_sizes(path, "trash") == sizes
    for mid, folder in origin.items():
        entry = out.stdout.split(mid, 1)[1].split("\n\n", 1)[0]
        assert f"(deleted from {folder})" in entry, entry
    on_disk = sum(p.stat().st_size for p in (store.root / "Trash").iterdir())
    assert f"-- {human_size(on_disk)} on disk in 4 messages in Trash" in out.stdout
