"""Settings and domains: edits keep the file's comments, bad values never reach it, and a
running relay applies a change within 2 s (a broken file leaves the last good config)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from relay.core.config import ConfigError
from relay.core.config_loader import load
from relay.ops.admin import Admin
from relay.ops.settings import write_atomic
from tests.admin_support import cli, message, submit
from tests.conftest import RelayProcess, drop_file, wait_for

COMMENTED = """\
# the relay for the shop
mailroot: {root}      # where the folders live
hostname: relay.test

domains:
  local:
    default: yourdomain.com   # our own mail
    aliases: []               # more local domains
  remote: {{}}                  # per-domain settings, e.g.:
  #  partner.example:
  #    tls: require

delivery:
  retry: [15m, 30m, 60m, 240m]  # first, second, third, then
  expiration: 2d                # give up after

smtp:
  listen: [127.0.0.1:0]
"""


@pytest.fixture
def commented(tmp_path: Path) -> Path:
    path = tmp_path / "commented.yaml"
    path.write_text(COMMENTED.format(root=tmp_path / "mailroot"))
    return path


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new), after
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


def test_bad_value_is_refused_with_its_key_and_the_file_is_untouched(commented: Path) -> None:
    before = commented.read_bytes()
    out = cli(commented, "settings", "set", "delivery.retry", "[bad]")
    assert out.returncode == 2 and "delivery.retry" in out.stderr and "bad duration" in out.stderr
    assert commented.read_bytes() == before
    with pytest.raises(ConfigError) as refused:
        Admin(load(commented)).set_many({"delivery.expiration": "1d", "delivery.nope": "1"})
    assert refused.value.key == "delivery.nope"
    assert commented.read_bytes() == before
    assert cli(commented, "settings", "set", "smtp.max_recipients", "-3").returncode == 2
    assert commented.read_bytes() == before


def test_edits_keep_comments_and_layout(commented: Path) -> None:
    before = commented.read_text()
    out = cli(commented, "settings", "set", "delivery.retry", "[1m, 2m, 3m, 4m]")
    assert out.returncode == 0, out.stderr
    assert changed_lines(before, commented.read_text()) == [
        ("  retry: [15m, 30m, 60m, 240m]  # first, second, third, then",
         "  retry: [1m, 2m, 3m, 4m]       # first, second, third, then")]
    assert cli(commented, "settings", "get", "delivery.retry").stdout.strip() == "[1m, 2m, 3m, 4m]"
    admin = Admin(load(commented))
    admin.set_many({"delivery.expiration": "3d", "domains.local.aliases": "[a.test]"})
    admin.set_remote("partner.example", tls="require", smarthost="127.0.0.1:2526")
    text = commented.read_text()
    for line in ("# the relay for the shop", "  expiration: 3d                # give up after",
                 "    aliases: [a.test]         # more local domains",
                 "  remote:                     # per-domain settings, e.g.:",
                 "  #    tls: require", "    default: yourdomain.com   # our own mail"):
        assert line in text.splitlines(), text
    assert "    partner.example:\n      tls: require\n      smarthost: 127.0.0.1:2526\n\n" \
           "delivery:" in text
    remote = load(commented).domains.remote["partner.example"]
    assert remote.tls == "require" and str(remote.smarthost) == "127.0.0.1:2526"


def test_domains_added_then_removed_leave_the_file_as_it_was(tmp_path: Path) -> None:
    """The example config as shipped: three remote domains saved one after another stay
    together above the blank line that ends the section (it moved between the first two);
    removed again, every one, the file is byte for byte what it was."""
    path = tmp_path / "mailroot.yaml"
    shipped = (Path(__file__).parent.parent / "config.example.yaml").read_text()
    path.write_text(shipped.replace("mailroot: ./mailroot", f"mailroot: {tmp_path / 'm'}", 1))
    before = path.read_text()
    admin = Admin(load(path))
    for name in ("partner.example", "other.example", "third.example"):
        admin.set_remote(name, tls="may")
    text = path.read_text()
    assert ("    partner.example:\n      tls: may\n    other.example:\n      tls: may\n"
            "    third.example:\n      tls: may\n\ndelivery:") in text, text
    assert text.count("\n\n") == before.count("\n\n")
    for name in ("other.example", "third.example", "partner.example"):
        admin.remove_domain(name)
    assert path.read_text() == before


def test_domain_verbs(commented: Path) -> None:
    admin = Admin(load(commented))
    admin.add_local("one.test")
    admin.add_alias("two.test")
    admin.set_default("three.test")
    listing = admin.domains()
    assert listing.default == "three.test"
    assert listing.aliases == ["one.test", "two.test", "yourdomain.com"]  # old default kept
    admin.rename_domain("two.test", "deux.test")
    admin.remove_domain("one.test")
    admin.set_remote("partner.example", tls="verify")
    admin.rename_domain("partner.example", "partner2.example")
    listing = admin.domains()
    assert listing.aliases == ["yourdomain.com", "deux.test"]
    assert list(listing.remote) == ["partner2.example"]
    with pytest.raises(ConfigError, match="default domain"):
        admin.remove_domain("three.test")
    with pytest.raises(ConfigError, match="already a local domain"):
        admin.add_alias("deux.test")
    with pytest.raises(ConfigError, match="both a local and a remote"):
        admin.add_alias("partner2.example")
    out = cli(commented, "domains")
    assert out.stdout.splitlines() == ["default  three.test", "alias    yourdomain.com",
                                       "alias    deux.test",
                                       "remote   partner2.example  tls=verify  smarthost=-"]
    assert "# the relay for the shop" in commented.read_text()


def reloaded(r: RelayProcess, count: int) -> bool:
    return sum(e["event"] == "config-reloaded" for e in r.events()) >= count


@pytest.mark.alone  # a time bound
def test_running_relay_applies_a_domain_change_within_2s(relay) -> None:
    r = relay()
    out = cli(r.config, "domains", "add-alias", "new.test")
    assert out.returncode == 0, out.stderr
    changed = time.monotonic()
    wait_for(lambda: reloaded(r, 1), timeout=2.0)
    assert time.monotonic() - changed < 2.0
    [mid] = submit(r, "someone@new.test")
    assert b"X-Receiver: someone@new.test" in (r.folder("Drop") / f"{mid}.eml").read_bytes()


def test_broken_config_is_reported_and_the_last_good_one_stays(relay) -> None:
    r = relay()
    write_atomic(r.config, r.config.read_text() + "delivery:\n  retry: [nonsense]\n")
    error = wait_for(lambda: [e for e in r.events() if e["event"] == "config-error"],
                     timeout=2.0)
    assert str(r.config) in error[0]["error"]
    drop_file(r.folder("Pickup"), "still.eml", message("x@alias.test", "still"))
    assert wait_for(lambda: r.files("Drop"))  # alias.test is still local
    assert r.proc.poll() is None
