"""Issue 14: `mailroot probe` against a real aiosmtpd next hop with STARTTLS (trustme)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading

import pytest
import trustme
from cryptography import x509

from relay.cli import main
from tests.test_delivery import REMOTE, delivery_config

PASSWORD = "s3cret-Probe-pw"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def lines_of(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


class Leaf:
    """A server certificate with a subject CN and a known expiry, and its facts as the probe
    should state them (read from the certificate, not from the probe's output)."""

    def __init__(self, ca: trustme.CA, name: str, days: int = 90) -> None:
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days, hours=1)
        cert = ca.issue_cert(name, common_name=name, not_after=expires)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.context)
        parsed = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
        issuer = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
        assert parsed.issuer == issuer and name in parsed.subject.rfc4514_string()
        self.subject = parsed.subject.rfc4514_string()  # CN=name,OU=Testing cert #...,O=...
        self.issuer = issuer.rfc4514_string()  # OU=Testing CA #...,O=trustme ...
        self.facts = (f"subject {self.subject}; issuer {self.issuer}; "
                      f"expires {expires:%Y-%m-%d} ({days} days left)")


class Commands:
    """Every SMTP command the hop is sent, by name, recorded as its server reads it; with
    hold="RCPT" the hop answers RCPT only once `release` is set (a slow next hop)."""

    def __init__(self, hop, hold: str | None = None) -> None:
        self.seen: list[str] = []
        self.hold = hold
        self.release = threading.Event()
        make = hop.controller.factory

        def factory():
            server = make()
            for name, method in list(server._smtp_methods.items()):
                server._smtp_methods[name] = self._recorded(name, method)
            return server

        hop.controller.factory = factory

    def _recorded(self, name: str, method):
        async def run(arg):
            self.seen.append(name)
            if name == self.hold:
                await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 20)
            return await method(arg)

        return run


def client_lines(out: list[str]) -> list[str]:
    """The commands of a transcript, as sent: `[  0.012s] C:  EHLO relay.test` -> EHLO..."""
    return [line.split("] C:", 1)[1].strip() for line in out if "] C:" in line]


def test_probe_runs_each_step_shows_the_certificate_and_sends_no_data(
        write_config, dns_server, sink, ca, tmp_path, capsys) -> None:
    leaf = Leaf(ca, f"mx.{REMOTE}")
    hop = sink(tls=leaf.context)
    commands = Commands(hop)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = write_config(delivery_config(dns_server, hop.port, ca_file=str(tmp_path / "ca.pem")))
    assert main(["probe", "-c", str(config), f"someone@{REMOTE}"]) == 0
    out = lines_of(capsys)
    text = "\n".join(out)
    order = ["first hop mx.remote.example[127.0.0.1]", "S:  220 ", "C:  EHLO relay.test",
             "C:  STARTTLS", "] TLS ", "C:  MAIL FROM:<postmaster@yourdomain.com>",
             f"C:  RCPT TO:<someone@{REMOTE}>", "C:  QUIT", "== "]
    positions = [next(i for i, line in enumerate(out) if want in line) for want in order]
    assert positions == sorted(positions), text
    cert = next(line for line in out if "] TLS " in line)
    assert f"; {leaf.facts}  — verifies" in cert, cert
    assert leaf.subject.startswith(f"CN=mx.{REMOTE},")
    assert "the server would take mail for this address" in text
    assert "no DATA was sent" in text and " ms)" in text
    sent = client_lines(out)
    assert [c.split()[0] for c in sent] == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "QUIT"]
    assert not any(c.startswith("DATA") for c in sent)
    assert commands.seen == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "QUIT"]  # no DATA
    assert hop.messages == []  # nothing was sent


def test_probe_authenticates_with_the_domains_credentials_after_starttls(
        write_config, dns_server, sink, ca, tmp_path, capsys) -> None:
    leaf = Leaf(ca, "127.0.0.1")  # the smart host is named by its address
    hop = sink(tls=leaf.context, users={"relayuser": PASSWORD})
    commands = Commands(hop)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    extra = delivery_config(dns_server, 25, ca_file=str(tmp_path / "ca.pem"))
    extra["domains"] = {"remote": {"partner.example": {
        "smarthost": f"127.0.0.1:{hop.port}",
        "auth": {"username": "relayuser", "password_file": str(tmp_path / "pw")}}}}
    assert main(["probe", "-c", str(write_config(extra)), "someone@partner.example"]) == 0
    out = lines_of(capsys)
    text = "\n".join(out)
    assert PASSWORD not in text
    assert f"first hop 127.0.0.1:{hop.port} for partner.example" in text
    auth = next(i for i, line in enumerate(out) if "C:  AUTH (as relayuser, password not "
                "shown)" in line)
    assert "S:  235 " in out[auth + 1] and "— authenticated" in out[auth + 1], text
    tls = next(i for i, line in enumerate(out) if "] TLS " in line)
    mail = next(i for i, line in enumerate(out) if "C:  MAIL FROM:" in line)
    assert tls < auth < mail
    assert f"; {leaf.facts}  — verifies" in out[tls]
    assert [tls for _, tls in hop.logins] == [True]  # the hop was asked once, over TLS
    assert commands.seen == ["EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "QUIT"]


def test_probe_says_when_the_certificate_does_not_verify(
        write_config, dns_server, sink, ca, capsys) -> None:
    leaf = Leaf(ca, f"mx.{REMOTE}", days=30)
    hop = sink(tls=leaf.context)  # from a CA the system store does not know
    config = write_config(delivery_config(dns_server, hop.port))
    assert main(["probe", "-c", str(config), f"someone@{REMOTE}"]) == 0
    out = lines_of(capsys)
    text = "\n".join(out)
    assert "the certificate does not verify" in text
    cert = next(line for line in out if "] TLS " in line and "subject" in line)
    assert cert.endswith(f"; {leaf.facts}  — not verified"), cert
    assert "the first hop would take it" in text


def test_probe_with_tls_verify_stops_at_an_unverified_certificate(
        write_config, dns_server, sink, ca, capsys) -> None:
    hop = sink(tls=Leaf(ca, f"mx.{REMOTE}").context)
    extra = delivery_config(dns_server, hop.port)
    extra["domains"] = {"remote": {REMOTE: {"tls": "verify"}}}
    assert main(["probe", "-c", str(write_config(extra)), f"someone@{REMOTE}"]) == 1
    assert "with tls: verify the relay would not send" in capsys.readouterr().out
    assert hop.messages == []


def test_probe_shows_a_refused_recipient_in_words(write_config, dns_server, sink,
                                                   capsys) -> None:
    hop = sink()
    hop.rcpt_replies[f"nobody@{REMOTE}"] = "550 5.1.1 no such user"
    config = write_config(delivery_config(dns_server, hop.port))
    assert main(["probe", "-c", str(config), f"nobody@{REMOTE}"]) == 1
    text = "\n".join(lines_of(capsys))
    assert "S:  550 5.1.1 no such user" in text
    assert "permanent" in text and "no such mailbox" in text
    assert "with tls: may the relay sends in clear" in text


def test_probe_send_follows_the_message_until_delivered(relay, dns_server, sink, ca,
                                                         capsys) -> None:
    hop = sink(tls=Leaf(ca, f"mx.{REMOTE}").context)
    r = relay(delivery_config(dns_server, hop.port))
    assert main(["probe", "-c", str(r.config), "--send", f"someone@{REMOTE}",
                 "--timeout", "20"]) == 0
    text = "\n".join(lines_of(capsys))
    assert "wrote Pickup/" in text and "taken as " in text
    assert "==  delivered by mx.remote.example[127.0.0.1]" in text
    assert hop.messages[0].recipients == [f"someone@{REMOTE}"]


def test_probe_send_ends_with_the_reply_when_deferred(relay, dns_server, sink,
                                                      capsys) -> None:
    hop = sink()
    hop.rcpt_replies[f"later@{REMOTE}"] = "451 4.2.2 mailbox busy"
    r = relay(delivery_config(dns_server, hop.port))
    assert main(["probe", "-c", str(r.config), "--send", f"later@{REMOTE}",
                 "--timeout", "20"]) == 1
    text = "\n".join(lines_of(capsys))
    assert "==  deferred by mx.remote.example[127.0.0.1]:" in text
    assert "451 4.2.2 mailbox busy (in reply to RCPT TO)" in text


def test_probe_send_ends_with_badmail_and_the_reason(relay, dns_server, sink, capsys) -> None:
    hop = sink()
    hop.rcpt_replies[f"gone@{REMOTE}"] = "550 5.1.1 no such user here"
    r = relay(delivery_config(dns_server, hop.port))
    assert main(["probe", "-c", str(r.config), "--send", f"gone@{REMOTE}",
                 "--timeout", "20"]) == 1
    out = lines_of(capsys)
    end = out[-1]
    assert "==  Badmail: delivery failed for <gone@remote.example>: " in end, out
    assert "550 5.1.1 no such user here" in end
    assert "NDR " in end and "to postmaster@yourdomain.com" in end
    assert r.files("Badmail", "*.BAD") and hop.messages == []


def test_probe_send_without_a_running_relay_writes_nothing(write_config, tmp_path,
                                                           capsys) -> None:
    assert main(["probe", "-c", str(write_config()), "--send", "a@yourdomain.com"]) == 1
    assert "no relay is running" in capsys.readouterr().out
    assert not (tmp_path / "mailroot" / "Pickup").exists() or not list(
        (tmp_path / "mailroot" / "Pickup").iterdir())
