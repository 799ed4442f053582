"""Issue: SMTP receive — never an open relay: the open-relay testers' tricks from an untrusted,
unauthenticated client, trusted networks, STARTTLS and AUTH."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest
import trustme

from relay.core import config_loader
from relay.core.config import ConfigError
from relay.receiver.users import set_password
from tests.smtpd_support import LOCAL, RawClient, code, live_smtp, message, wait_files

REMOTE = "relaytest.example"
ME = "[127.0.0.1]"  # how the testers name the server they probe, besides its domain

# (MAIL FROM, RCPT TO) as sent by nmap's smtp-open-relay script, Metasploit's smtp_relay
# module and the DSBL relay tests, for both the server's domain and its address literal.
RELAY_TRICKS = [
    ("<antispam@example.net>", f"<relaytest@{REMOTE}>"),
    ("<>", f"<relaytest@{REMOTE}>"),
    (f"<antispam@{ME}>", f"<relaytest@{REMOTE}>"),
    (f"<antispam@{LOCAL}>", f"<relaytest@{REMOTE}>"),
    (f"<postmaster@{LOCAL}>", f"<relaytest@{REMOTE}>"),
    (f"<relaytest@{REMOTE}>", f"<relaytest@{REMOTE}>"),
    ("<>", f"relaytest@{REMOTE}"),
    ("<>", f" <relaytest@{REMOTE}>"),
    ("<>", f"<RelayTest@{REMOTE.upper()}>"),
    ("<>", f"<relaytest@{REMOTE}.>"),
    ("<>", f"<relaytest%{REMOTE}@{ME}>"),
    ("<>", f"<relaytest%{REMOTE}@{LOCAL}>"),
    ("<>", f'<"relaytest@{REMOTE}">'),
    ("<>", f'<"relaytest%{REMOTE}">'),
    ("<>", f'<"relaytest%{REMOTE}"@{LOCAL}>'),
    ("<>", f"<relaytest@{REMOTE}@{ME}>"),
    ("<>", f'<"relaytest@{REMOTE}"@{ME}>'),
    ("<>", f"<relaytest@{REMOTE}@{LOCAL}>"),
    ("<>", f'<"relaytest@{REMOTE}"@{LOCAL}>'),
    ("<>", f"<@{ME}:relaytest@{REMOTE}>"),
    ("<>", f"<@{LOCAL}:relaytest@{REMOTE}>"),
    ("<>", f"<@{LOCAL},@{ME}:relaytest@{REMOTE}>"),
    ("<>", f"<{REMOTE}!relaytest>"),
    ("<>", f"<{REMOTE}!relaytest@{ME}>"),
    ("<>", f"<{REMOTE}!relaytest@{LOCAL}>"),
    ("<>", f"<relaytest@{ME}>"),
    ("<>", "<relaytest@[IPv6:::1]>"),
    ("<>", "<relaytest@127.0.0.1>"),
    ("<>", "<relaytest>"),
    ("<>", f"<relaytest@{LOCAL}.{REMOTE}>"),
    ("<>", f"<relaytest@{REMOTE}.{LOCAL}>"),
    ("<>", f"<relaytest@evil{LOCAL}>"),
    ("<>", f"<relaytest@{REMOTE}\x00@{LOCAL}>"),
    ("<>", f"<relaytest@{REMOTE}\t@{LOCAL}>"),
    ("<>", f"<relaytest@{REMOTE}> <user@{LOCAL}>"),
    ("<>", f"<<relaytest@{REMOTE}>>"),
    ("<>", f"<relaytest@{REMOTE}>@{LOCAL}"),
    ("<>", f"<relaytest\\@{REMOTE}@{LOCAL}>"),
    ("<>", f"<postmaster@{REMOTE}>"),
]


def try_relay(port: int, mail_from: str, rcpt_to: str) -> tuple[str, str]:
    client = RawClient(port)
    client.command("EHLO relaytester.example")
    mail = client.command(f"MAIL FROM:{mail_from}")
    rcpt = client.command(f"RCPT TO:{rcpt_to}")
    data = client.command("DATA")
    if code(data) == 354:
        data = client.command(message(to=rcpt_to).decode() + ".")
    client.close()
    return mail, rcpt + " / " + data


def test_every_relay_trick_is_refused_and_local_mail_still_accepted(write_config) -> None:
    with live_smtp(write_config) as server:  # smtp.relay.allow empty: 127.0.0.1 is untrusted
        for mail_from, rcpt_to in RELAY_TRICKS:
            mail, rcpt = try_relay(server.port, mail_from, rcpt_to)
            assert code(rcpt) >= 500 and "/ 503" in rcpt, (mail_from, rcpt_to, mail, rcpt)
        assert not server.files("Queue") and not server.files("Drop")
        denied = [e for e in server.events if e["event"] == "smtp-relay-denied"]
        assert {e["client"] for e in denied} == {"127.0.0.1"}

        local = ["postmaster", "PostMaster", f"postmaster@{LOCAL}", f"user@{LOCAL.upper()}",
                 "user@alias.test"]
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            for rcpt in local:
                client.sendmail(f"someone@{REMOTE}", [rcpt], message(to=rcpt))
        wait_files(server, "Drop", len(local))
        assert not server.files("Queue")


def test_a_trusted_network_relays_but_tricks_are_still_not_rerouted(write_config) -> None:
    with live_smtp(write_config, {"smtp": {"relay": {"allow": ["127.0.0.0/8"]}}}) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.sendmail(f"app@{LOCAL}", [f"someone@{REMOTE}"], message(to=f"someone@{REMOTE}"))
        env = wait_files(server, "Queue", 1, "*.env")[0]
        assert f"someone@{REMOTE}".encode() in env.read_bytes()
        for trick in (f"<@{LOCAL}:relaytest@{REMOTE}>", f"<relaytest%{REMOTE}@{LOCAL}>"):
            assert code(try_relay(server.port, "<>", trick)[1]) == 553
        assert len(server.files("Queue", "*.env")) == 1


def test_other_networks_do_not_make_loopback_trusted(write_config) -> None:
    with live_smtp(write_config, {"smtp": {"relay": {"allow": ["10.0.0.0/8", "::1/128"]}}}) as s:
        assert try_relay(s.port, "<>", f"<relaytest@{REMOTE}>")[1].startswith("554 5.7.1")


# --- STARTTLS and AUTH ---------------------------------------------------------------------

@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    ca = trustme.CA()
    pem = tmp_path / "relay.pem"
    ca.issue_cert("127.0.0.1", "relay.test").private_key_and_cert_chain_pem.write_to_path(pem)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return pem, context


def secure_config(pem: Path, users: Path, **smtp: object) -> dict:
    return {"smtp": {"tls": {"cert": str(pem), "key": str(pem)},
                     "auth": {"users_file": str(users)}, **smtp}}


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "smtp-users"
    set_password(path, "app", "s3cret pass")
    return path


def test_auth_after_starttls_lets_the_client_relay(write_config, tls_files, users) -> None:
    pem, context = tls_files
    with live_smtp(write_config, secure_config(pem, users)) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("app.test")
            assert "starttls" in client.esmtp_features and "auth" not in client.esmtp_features
            assert client.docmd("AUTH", "PLAIN AGFwcABzM2NyZXQgcGFzcw==")[0] == 538
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail(f"app@{LOCAL}", [f"someone@{REMOTE}"], message())
            client.starttls(context=context)
            client.ehlo("app.test")
            assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("app", "wrong")
            client.login("app", "s3cret pass")
            client.sendmail(f"app@{LOCAL}", [f"someone@{REMOTE}"], message())
        eml = wait_files(server, "Queue", 1, "*.eml")[0].read_bytes()
        assert b"with ESMTPSA id" in eml
        event = next(e for e in server.events if e["event"] == "intake")
        assert event["tls"] is True and event["auth"] == "app" and event["outcome"] == "queue"
        assert any(e["event"] == "auth-failed" for e in server.events)


def test_auth_login_mechanism_and_relaying_off_for_authenticated(write_config, tls_files,
                                                                 users) -> None:
    pem, context = tls_files
    config = secure_config(pem, users, relay={"allow_authenticated": False})
    with live_smtp(write_config, config) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.starttls(context=context)
            client.ehlo("app.test")
            client.user, client.password = "app", "s3cret pass"
            assert client.auth("LOGIN", client.auth_login, initial_response_ok=False)[0] == 235
            refused = client.sendmail(f"app@{LOCAL}", [f"user@{LOCAL}", f"x@{REMOTE}"],
                                      message())
            assert refused[f"x@{REMOTE}"][0] == 554
        assert b"with ESMTPSA" in wait_files(server, "Drop", 1)[0].read_bytes()
        assert not server.files("Queue")


def test_plaintext_auth_only_when_allowed(write_config, users) -> None:
    config = {"smtp": {"auth": {"users_file": str(users), "allow_plaintext": True}}}
    with live_smtp(write_config, config) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.login("app", "s3cret pass")
            client.sendmail(f"app@{LOCAL}", [f"x@{REMOTE}"], message())
        assert b"with ESMTPA id" in wait_files(server, "Queue", 1, "*.eml")[0].read_bytes()


def test_tls_require_refuses_mail_before_starttls(write_config, tls_files) -> None:
    pem, context = tls_files
    config = {"smtp": {"tls": {"cert": str(pem), "key": str(pem), "require": True}}}
    with live_smtp(write_config, config) as server:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("app.test")
            got = client.mail(f"app@{LOCAL}")
            assert got[0] == 530 and got[1].startswith(b"5.7.0")
            client.starttls(context=context)
            client.sendmail(f"app@{LOCAL}", [f"user@{LOCAL}"], message())
        assert b"with ESMTPS id" in wait_files(server, "Drop", 1)[0].read_bytes()


def test_commands_pipelined_after_starttls_are_discarded(write_config, tls_files) -> None:
    pem, context = tls_files
    with live_smtp(write_config, {"smtp": {"tls": {"cert": str(pem), "key": str(pem)}}}) as s:
        client = RawClient(s.port)
        client.command("EHLO c.test")
        client.send(f"STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<a@{LOCAL}>\r\n"
                    f"RCPT TO:<user@{LOCAL}>\r\n")
        assert client.reply().startswith("220")
        assert client.buffer == b""
        client.sock = context.wrap_socket(client.sock, server_hostname="127.0.0.1")
        assert client.command("NOOP").startswith("250")  # not an answer to the injected EHLO
        assert client.command(f"RCPT TO:<user@{LOCAL}>").startswith("503")  # no HELO, no MAIL
        client.sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.reply()


def test_tls_require_without_a_certificate_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        config_loader.parse("smtp:\n  tls:\n    require: true\n", "relay.yaml")
    assert info.value.key == "smtp.tls.require" and info.value.line == 3
