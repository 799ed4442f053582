"""Issue 14: `mailroot probe` against a real aiosmtpd next hop with STARTTLS (trustme)."""

from __future__ import annotations

import pytest
import trustme

from relay.cli import main
from tests.test_delivery import REMOTE, delivery_config
from tests.test_delivery_tls import server_tls


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def lines_of(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_probe_runs_each_step_shows_the_certificate_and_sends_no_data(
        write_config, dns_server, sink, ca, tmp_path, capsys) -> None:
    hop = sink(tls=server_tls(ca, f"mx.{REMOTE}"))
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
    assert "subject" in cert and "issuer" in cert and "expires" in cert
    assert "verifies" in cert and "not verified" not in cert
    assert "the server would take mail for this address" in text
    assert "no DATA was sent" in text and " ms)" in text
    assert hop.messages == []  # nothing was sent


def test_probe_says_when_the_certificate_does_not_verify(
        write_config, dns_server, sink, ca, capsys) -> None:
    hop = sink(tls=server_tls(ca, f"mx.{REMOTE}"))  # a CA the system store does not know
    config = write_config(delivery_config(dns_server, hop.port))
    assert main(["probe", "-c", str(config), f"someone@{REMOTE}"]) == 0
    text = "\n".join(lines_of(capsys))
    assert "the certificate does not verify" in text
    assert "not verified" in text and "the first hop would take it" in text


def test_probe_with_tls_verify_stops_at_an_unverified_certificate(
        write_config, dns_server, sink, ca, capsys) -> None:
    hop = sink(tls=server_tls(ca, f"mx.{REMOTE}"))
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
    hop = sink(tls=server_tls(ca, f"mx.{REMOTE}"))
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


def test_probe_send_without_a_running_relay_writes_nothing(write_config, tmp_path,
                                                           capsys) -> None:
    assert main(["probe", "-c", str(write_config()), "--send", "a@yourdomain.com"]) == 1
    assert "no relay is running" in capsys.readouterr().out
    assert not (tmp_path / "mailroot" / "Pickup").exists() or not list(
        (tmp_path / "mailroot" / "Pickup").iterdir())
