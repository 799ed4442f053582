"""DKIM signing at intake, checked at a real next hop with dkimpy's own verifier against the
records the loopback DNS server serves; keys, `mailroot dkim keygen/check` and config errors."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import dkim
import dns.resolver
import pytest

from relay.core.config import DKIM_ALGORITHMS
from relay.core.message import Message
from relay.ops import dkim_keys
from tests.conftest import drop_file, wait_for
from tests.test_delivery import delivery_config, events, message

DOMAIN = "example.com"


def make_key(tmp_path: Path, algorithm: str, selector: str) -> tuple[Path, str]:
    """A fresh key file and the TXT value that publishes it."""
    private = dkim_keys.generate(algorithm)
    path = tmp_path / f"{selector}.key"
    dkim_keys.write_private(path, private)
    return path, dkim_keys.record_value(algorithm, private)


def dkim_block(path: Path, selector: str, algorithm: str) -> dict:
    return {"selector": selector, "key_file": str(path), "algorithm": algorithm}


def verifier(dns_server):
    """dkimpy's dnsfunc, asking the loopback DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], dns_server.port

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(next(iter(answer)).strings)
    return txt


def verified(data: bytes, dns_server, index: int = 0) -> bool:
    """dkimpy's verdict on the index-th signature (a hash mismatch is a no, not an error)."""
    try:
        return dkim.DKIM(data).verify(idx=index, dnsfunc=verifier(dns_server))
    except dkim.ValidationError:
        return False


def signature_tags(data: bytes) -> list[dict[str, str]]:
    head = re.sub(r"\r\n[ \t]", " ", data.split(b"\r\n\r\n", 1)[0].decode())  # unfolded
    fields = [f.split(":", 1)[1] for f in head.split("\r\n")
              if f.lower().startswith("dkim-signature:")]
    return [dict(t.split("=", 1) for t in re.sub(r"\s+", "", f).split(";") if "=" in t)
            for f in fields]


def run(*args: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay.cli", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


# the envelope (X-Sender/X-Receiver, as IIS writes them) is x@remote.example alone; the Cc is
# a header field to sign, not a recipient
WITH_EVERY_SIGNED_FIELD = (
    f"X-Sender: app@{DOMAIN}\r\nX-Receiver: x@remote.example\r\n"
    f"From: App <app@{DOMAIN}>\r\nTo: x@remote.example\r\nCc: copy@remote.example\r\n"
    f"Reply-To: help@{DOMAIN}\r\nSubject: signed\r\n"
    f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <order-42@{DOMAIN}>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 7bit\r\nX-Mailer: app 1.0\r\n\r\nthe body\r\n").encode()


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_mail_from_a_listed_domain_verifies_at_the_next_hop(relay, dns_server, sink, tmp_path,
                                                            algorithm):
    hop = sink()
    key, record = make_key(tmp_path, algorithm, "s1")
    dns_server.txt(f"s1._domainkey.{DOMAIN}", record)
    config = delivery_config(dns_server, hop.port)
    r = relay({**config, "dkim": {DOMAIN: dkim_block(key, "s1", algorithm)}})
    drop_file(r.folder("Pickup"), "a.eml", WITH_EVERY_SIGNED_FIELD)
    drop_file(r.folder("Pickup"), "b.eml", message("y@remote.example", "other",
                                                   sender="app@other.test"))
    wait_for(lambda: len(hop.messages) == 2)
    got = {m.recipients[0]: m.data for m in hop.messages}
    signed, unsigned = got["x@remote.example"], got["y@remote.example"]
    tags = signature_tags(signed)
    assert len(tags) == 1
    assert tags[0]["d"] == DOMAIN and tags[0]["s"] == "s1" and tags[0]["a"] == algorithm
    assert tags[0]["c"] == "relaxed/relaxed"
    # every field of RFC 6376 5.4.1's set that the message has, in that order (X-Mailer is
    # not one), and From once more: over-signed, so a second From: can't be added
    assert tags[0]["h"].lower().split(":") == [
        "from", "reply-to", "subject", "date", "message-id", "to", "cc", "mime-version",
        "content-type", "content-transfer-encoding", "from"]
    assert verified(signed, dns_server)
    assert signature_tags(unsigned) == []  # other.test has no key: not signed
    # the signature covers the body: one changed byte fails verification
    assert not verified(signed.replace(b"the body", b"the bodY"), dns_server)
    # and the header fields it names
    assert not verified(signed.replace(b"Subject: signed", b"Subject: signeD"), dns_server)


def test_the_from_header_domain_decides_not_the_envelope_sender(relay, dns_server, sink,
                                                                tmp_path):
    """DMARC aligns with the From: header, so that is what picks the key: a bounce address
    elsewhere still gets example.com's signature, and example.com's envelope sender does not
    sign an author of a domain without a key."""
    hop = sink()
    key, record = make_key(tmp_path, "ed25519-sha256", "s1")
    dns_server.txt(f"s1._domainkey.{DOMAIN}", record)
    config = delivery_config(dns_server, hop.port)
    config["smtp"] = {"listen": ["127.0.0.1:0"], "relay": {"allow": ["127.0.0.1"]}}
    r = relay({**config, "dkim": {DOMAIN: dkim_block(key, "s1", "ed25519-sha256")}})
    with smtplib.SMTP("127.0.0.1", r.smtp_port(), timeout=10) as client:
        client.sendmail("bounce@other.example", ["x@remote.example"],
                        message("x@remote.example", "aligned", sender=f"app@{DOMAIN}"))
        client.sendmail(f"app@{DOMAIN}", ["y@remote.example"],
                        message("y@remote.example", "unlisted", sender="x@unlisted.example"))
    wait_for(lambda: len(hop.messages) == 2)
    got = {m.recipients[0]: m for m in hop.messages}
    aligned, unlisted = got["x@remote.example"], got["y@remote.example"]
    assert (aligned.sender, unlisted.sender) == ("bounce@other.example", f"app@{DOMAIN}")
    assert [(t["d"], t["s"]) for t in signature_tags(aligned.data)] == [(DOMAIN, "s1")]
    assert verified(aligned.data, dns_server)
    assert signature_tags(unlisted.data) == []


def test_dual_signing_over_smtp_and_a_subdomain_sender(relay, dns_server, sink, tmp_path):
    hop = sink()
    rsa_key, rsa_record = make_key(tmp_path, "rsa-sha256", "r1")
    ed_key, ed_record = make_key(tmp_path, "ed25519-sha256", "e1")
    dns_server.txt(f"r1._domainkey.{DOMAIN}", rsa_record)
    dns_server.txt(f"e1._domainkey.{DOMAIN}", ed_record)
    config = delivery_config(dns_server, hop.port)
    config["smtp"] = {"listen": ["127.0.0.1:0"], "relay": {"allow": ["127.0.0.1"]}}
    r = relay({**config, "dkim": {DOMAIN: [dkim_block(rsa_key, "r1", "rsa-sha256"),
                                           dkim_block(ed_key, "e1", "ed25519-sha256")]}})
    with smtplib.SMTP("127.0.0.1", r.smtp_port(), timeout=10) as client:
        client.sendmail(f"app@news.{DOMAIN}", ["x@remote.example"],
                        message("x@remote.example", sender=f"app@news.{DOMAIN}"))
    wait_for(lambda: hop.messages)
    data = hop.messages[0].data
    tags = signature_tags(data)
    assert sorted((t["d"], t["s"], t["a"]) for t in tags) == [
        (DOMAIN, "e1", "ed25519-sha256"), (DOMAIN, "r1", "rsa-sha256")]
    assert verified(data, dns_server, 0) and verified(data, dns_server, 1)


def test_signed_once_across_sigkill_restart_and_requeue(relay, dns_server, sink, tmp_path):
    hop = sink()
    hop.data_reply = "451 4.3.0 not now"
    key, record = make_key(tmp_path, "ed25519-sha256", "s1")
    dns_server.txt(f"s1._domainkey.{DOMAIN}", record)
    config = {**delivery_config(dns_server, hop.port, retry=["1s", "1s", "1s", "1s"]),
              "dkim": {DOMAIN: dkim_block(key, "s1", "ed25519-sha256")}}
    r = relay(config)
    drop_file(r.folder("Pickup"), "a.eml", message("x@remote.example", sender=f"app@{DOMAIN}"))
    wait_for(lambda: events(r, "deferred"))
    r.stop(signal.SIGKILL)
    restarted = relay(config)
    [env] = restarted.files("Queue", "*.env")
    requeue = run("requeue", "--folder", "queue", env.stem, config=restarted.config)
    assert requeue.returncode == 0, requeue.stderr
    wait_for(lambda: len(events(restarted, "deferred")) >= 2)
    hop.data_reply = "250 OK"
    wait_for(lambda: not restarted.files("Queue"), timeout=20)
    data = hop.messages[-1].data
    assert [t["d"] for t in signature_tags(data)] == [DOMAIN]
    assert verified(data, dns_server)
    # a message that comes back in already signed for the domain is left as it is
    returned = Message.parse(data)
    returned.remove("received")
    drop_file(restarted.folder("Pickup"), "again.eml", returned.to_bytes())
    wait_for(lambda: len(hop.messages) == 2)
    again = hop.messages[-1].data
    assert [t["b"] for t in signature_tags(again)] == [t["b"] for t in signature_tags(data)]
    assert verified(again, dns_server)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keygen_then_check_against_published_and_different_records(dns_server, write_config,
                                                                   tmp_path, algorithm):
    config = write_config({"dns": {"nameservers": ["127.0.0.1"], "port": dns_server.port,
                                   "timeout": "1s"}})
    made = run("dkim", "keygen", DOMAIN, "--selector", "s1", "--algorithm", algorithm,
               config=config)
    assert made.returncode == 0, made.stderr
    key_file = tmp_path / f"{DOMAIN}.s1.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    line = made.stdout.strip().splitlines()[-1]
    name, rdata = re.fullmatch(r"(\S+) IN TXT (.+)", line).groups()
    assert name == f"s1._domainkey.{DOMAIN}."
    assert all(len(s) <= 255 for s in re.findall(r'"([^"]*)"', rdata))
    check = run("dkim", "check", config=config)
    assert check.returncode == 1 and "MISSING" in check.stdout
    dns_server.add(name, "TXT", rdata)  # published exactly as printed
    check = run("dkim", "check", DOMAIN, config=config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok")
    dns_server.clear(name)
    dns_server.txt(name, dkim_keys.record_value(*make_other_key(algorithm)))
    check = run("dkim", "check", config=config)
    assert check.returncode == 1 and "DIFFERENT" in check.stdout
    shown = run("check", config=config)  # the block written by keygen is a valid config
    assert shown.returncode == 0 and f"dkim.{DOMAIN}.selector" in shown.stdout


def make_other_key(algorithm: str) -> tuple[str, bytes]:
    full = DKIM_ALGORITHMS[algorithm]
    return full, dkim_keys.generate(full)


def test_second_key_for_a_domain_makes_a_list_and_comments_stay(write_config, tmp_path):
    config = write_config()
    config.write_text(config.read_text() + "# keep this comment\n")
    for selector, algorithm in (("r1", "rsa"), ("e1", "ed25519")):
        made = run("dkim", "keygen", DOMAIN, "--selector", selector, "--algorithm", algorithm,
                   config=config)
        assert made.returncode == 0, made.stderr
    other = tmp_path / "other.key"
    again = run("dkim", "keygen", DOMAIN, "--selector", "e1", "--out", str(other),
                config=config)
    assert again.returncode == 2 and "already has a key with selector e1" in again.stderr
    assert not other.exists()  # no key file that the config does not name
    text = config.read_text()
    assert "# keep this comment" in text
    shown = run("check", config=config)
    assert shown.returncode == 0, shown.stderr
    assert f"dkim.{DOMAIN}[1].algorithm" in shown.stdout and "ed25519-sha256" in shown.stdout


@pytest.mark.parametrize(("setup", "words"), [
    ("missing", "cannot read the DKIM key"),
    ("wrong-algorithm", "is not an RSA private key"),
    ("garbage-ed25519", "is not an ed25519 private key"),
])
def test_an_unusable_key_is_a_config_error_at_start_and_in_check(write_config, tmp_path,
                                                                 setup, words):
    algorithm = "ed25519-sha256" if setup == "garbage-ed25519" else "rsa-sha256"
    key = tmp_path / "k.key"
    if setup == "wrong-algorithm":  # an ed25519 key listed as rsa-sha256
        dkim_keys.write_private(key, dkim_keys.generate("ed25519-sha256"))
    elif setup == "garbage-ed25519":
        key.write_text("not a key\n")
    config = write_config({"dkim": {DOMAIN: dkim_block(key, "s1", algorithm)}})
    for command in ("check", "serve"):
        result = run(command, config=config)
        assert result.returncode == 2, (command, result.stderr)
        assert words in result.stderr and str(key) in result.stderr
        assert f"dkim.{DOMAIN}.key_file" in result.stderr
    assert not list((tmp_path / "mailroot" / "Queue").glob("*"))


def test_admin_show_names_the_signer(relay, dns_server, sink, tmp_path):
    from relay.core.config_loader import load
    from relay.ops.admin import Admin

    hop = sink()
    hop.data_reply = "451 4.3.0 not now"
    key, record = make_key(tmp_path, "rsa-sha256", "s1")
    r = relay({**delivery_config(dns_server, hop.port),
               "dkim": {DOMAIN: dkim_block(key, "s1", "rsa-sha256")}})
    drop_file(r.folder("Pickup"), "a.eml", message("x@remote.example", sender=f"app@{DOMAIN}"))
    drop_file(r.folder("Pickup"), "b.eml", message("x@remote.example", sender="app@other.test"))
    wait_for(lambda: len(r.files("Queue", "*.env")) == 2)
    admin = Admin(load(r.config))
    shown = {admin.show(p.stem).summary.sender: admin.show(p.stem)
             for p in r.files("Queue", "*.env")}
    [signature] = shown[f"app@{DOMAIN}"].signatures
    assert (signature.domain, signature.selector, signature.algorithm) == (
        DOMAIN, "s1", "rsa-sha256")
    assert shown["app@other.test"].signatures == []
    cli = run("show", next(p.stem for p in r.files("Queue", "*.env")
                           if admin.show(p.stem).signatures), config=r.config)
    assert f"Signed by: {DOMAIN} (selector s1, rsa-sha256)" in cli.stdout


async def test_the_inspector_says_who_signed_a_queued_message(write_config, tmp_path):
    """Two messages queued through the intake, as the relay takes them in: the one from a
    listed domain shows its signer in the inspector, the other says it is not signed."""
    from relay.core.config_loader import load
    from relay.core.intake import Intake, Submission
    from relay.core.store import QUEUE, Mailroot
    from tests.test_tui import SIZE, until
    from tui.app import ConsoleApp
    from tui.screens.inspector import Inspector

    key, _ = make_key(tmp_path, "ed25519-sha256", "mail2026")
    config = load(write_config({"dkim": {DOMAIN: dkim_block(key, "mail2026",
                                                            "ed25519-sha256")}}))
    store = Mailroot(config.root)
    store.ensure()
    intake = Intake(config, store)
    signed, unsigned = (intake.accept(Submission(
        message("x@remote.example", subject, sender=sender), sender, ["x@remote.example"],
        source="test")).id for subject, sender in (("signed", f"app@{DOMAIN}"),
                                                    ("unsigned", "app@other.test")))
    app = ConsoleApp(config, readonly=True)  # no relay: the messages stay in Queue
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        pane = app.dashboard.panes[QUEUE]
        await until(pilot, lambda: pane.table.row_count == 2)

        async def inspect(message_id: str) -> list[str]:
            """Enter on the message's row: the inspector's lines."""
            for _ in range(2):  # two rows, in whatever order the pane shows them
                if pane.current_id() != message_id:
                    await pilot.press("down" if pane.table.cursor_row == 0 else "up")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, Inspector)
                        and app.screen.message_id == message_id)
            lines = str(app.screen.query_one("#inspector-text").render()).splitlines()
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is app.dashboard)
            return lines

        assert f"signed by       {DOMAIN} (selector mail2026, ed25519-sha256)" in \
            await inspect(signed)
        assert "signed by       not DKIM-signed" in await inspect(unsigned)


@pytest.mark.parametrize(("bits", "strings"), [(None, 2), (1024, 1), (3072, 3)])
def test_keygen_rsa_key_sizes_and_the_record_split_for_dns(write_config, tmp_path, bits,
                                                           strings):
    """--bits 1024 or 3072, 2048 without it; the printed TXT record is the key's record,
    in quoted strings of at most 255 bytes each: several for 2048 bits and more."""
    from cryptography.hazmat.primitives import serialization

    config = write_config()
    made = run("dkim", "keygen", DOMAIN, "--selector", "s1",
               *(["--bits", str(bits)] if bits else []), config=config)
    assert made.returncode == 0, made.stderr
    private = (tmp_path / f"{DOMAIN}.s1.key").read_bytes()
    key = serialization.load_pem_private_key(private, password=None)
    assert key.key_size == (bits or 2048)
    line = made.stdout.strip().splitlines()[-1]
    rdata = re.fullmatch(rf"s1\._domainkey\.{re.escape(DOMAIN)}\. IN TXT (.+)", line).group(1)
    assert re.fullmatch(r'"[^"]*"( "[^"]*")*', rdata), rdata  # quoted strings, nothing else
    parts = re.findall(r'"([^"]*)"', rdata)
    assert len(parts) == strings and all(len(p.encode()) <= 255 for p in parts)
    assert "".join(parts) == dkim_keys.record_value("rsa-sha256", private)


def test_keygen_needs_a_config_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "relay.cli", "dkim", "keygen", DOMAIN],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path,
                            env={**os.environ})
    assert result.returncode == 2 and "-c FILE" in result.stderr
    assert not list(tmp_path.glob("*.key"))


async def test_settings_form_lists_keys_and_whether_each_record_is_published(
        dns_server, write_config, tmp_path):
    from relay.core.config_loader import load
    from tui.app import ConsoleApp
    from tui.screens.settings import SettingsForm

    published, record = make_key(tmp_path, "rsa-sha256", "r1")
    unpublished, _ = make_key(tmp_path, "ed25519-sha256", "e1")
    other, _ = make_key(tmp_path, "ed25519-sha256", "o1")
    dns_server.txt(f"r1._domainkey.{DOMAIN}", record)
    dns_server.txt("o1._domainkey.other.test", dkim_keys.record_value(
        "ed25519-sha256", dkim_keys.generate("ed25519-sha256")))
    config = write_config({
        "dns": {"nameservers": ["127.0.0.1"], "port": dns_server.port, "timeout": "1s"},
        "dkim": {DOMAIN: [dkim_block(published, "r1", "rsa-sha256"),
                          dkim_block(unpublished, "e1", "ed25519-sha256")],
                 "other.test": dkim_block(other, "o1", "ed25519-sha256")}})
    app = ConsoleApp(load(config))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("c")
        deadline = time.monotonic() + 10
        while not isinstance(app.screen, SettingsForm) or any(
                "checking DNS" in str(row.render()) for row in app.screen.query(".dkim-key")):
            assert time.monotonic() < deadline, "the DKIM rows were not filled in"
            await pilot.pause(0.05)
        rows = [str(row.render()) for row in app.screen.query(".dkim-key")]
    assert len(rows) == 3
    assert DOMAIN in rows[0] and "r1" in rows[0] and "✓ published" in rows[0]
    assert "e1" in rows[1] and "ed25519-sha256" in rows[1] and "✗ not published" in rows[1]
    assert "other.test" in rows[2] and "✗ DNS has another key" in rows[2]


def test_running_relay_keeps_its_last_good_key_and_takes_a_new_one_live(relay, dns_server,
                                                                        sink, tmp_path):
    hop = sink()
    key, record = make_key(tmp_path, "ed25519-sha256", "s1")
    dns_server.txt(f"s1._domainkey.{DOMAIN}", record)
    r = relay({**delivery_config(dns_server, hop.port),
               "dkim": {DOMAIN: dkim_block(key, "s1", "ed25519-sha256")}})
    good = r.config.read_text()
    r.config.write_text(good.replace(str(key), str(tmp_path / "gone.key")))
    error = wait_for(lambda: events(r, "config-error"))[-1]["error"]
    assert "gone.key" in error and f"dkim.{DOMAIN}.key_file" in error
    drop_file(r.folder("Pickup"), "a.eml", message("x@remote.example", sender=f"app@{DOMAIN}"))
    wait_for(lambda: hop.messages)
    assert verified(hop.messages[0].data, dns_server)  # still signed, with the last good key
    r.config.write_text(good)
    wait_for(lambda: events(r, "config-reloaded"))
    made = run("dkim", "keygen", "other.test", "--selector", "o1", "--algorithm", "ed25519",
               config=r.config)
    assert made.returncode == 0, made.stderr
    name, rdata = re.fullmatch(r"(\S+) IN TXT (.+)", made.stdout.strip().splitlines()[-1]).groups()
    dns_server.add(name, "TXT", rdata)
    wait_for(lambda: len(events(r, "config-reloaded")) >= 2)
    drop_file(r.folder("Pickup"), "b.eml", message("y@remote.example", sender="app@other.test"))
    wait_for(lambda: len(hop.messages) == 2)
    data = hop.messages[1].data
    assert [(t["d"], t["s"]) for t in signature_tags(data)] == [("other.test", "o1")]
    assert verified(data, dns_server)


@pytest.mark.parametrize(("text", "key", "line", "words"), [
    ("dkim:\n  a.test:\n    key_file: /k\n", "dkim.a.test.selector", 2, "selector"),
    ("dkim:\n  a.test:\n    selector: s1\n", "dkim.a.test.key_file", 2, "is required"),
    ("dkim:\n  a.test:\n    selector: s1\n    key_file: /k\n    algorithm: rsa\n",
     "dkim.a.test.algorithm", 5, "must be one of rsa-sha256, ed25519-sha256"),
    ("dkim:\n  a.test:\n    - {selector: s1, key_file: /k}\n    - {selector: S1, key_file: /j}\n",
     "dkim.a.test[1].selector", 4, "given twice"),
    ("dkim:\n  a.test:\n    selector: s1\n    key_file: /k\n    bits: 2048\n",
     "dkim.a.test.bits", 5, "unknown key"),
])
def test_dkim_config_errors_name_key_and_line(text, key, line, words):
    from relay.core.config import ConfigError
    from relay.core.config_loader import parse

    with pytest.raises(ConfigError) as caught:
        parse(text, "m.yaml")
    assert (caught.value.key, caught.value.line) == (key, line)
    assert words in caught.value.reason
