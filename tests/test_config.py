"""Config: defaults, units, and errors that name the file, key and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay.core import config as cfg
from relay.core import config_loader
from relay.ops.config_keys import key_paths

ROOT = Path(__file__).resolve().parent.parent


def run_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relay.cli", "check", "-c", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_defaults_are_the_iis_dialog_defaults() -> None:
    c = cfg.Config()
    assert c.delivery.retry == [900, 1800, 3600, 14400]
    assert c.delivery.delay_notification == 12 * 3600 and c.delivery.expiration == 2 * 86400
    assert c.delivery.max_hop_count == 15 and c.delivery.port == 25
    assert c.delivery.max_connections == 1000 and c.delivery.max_connections_per_domain == 20
    assert c.delivery.messages_per_connection == 20 and c.delivery.timeout == 600
    assert c.smtp.max_message_size == 2048 * 1024 and c.smtp.max_session_size == 10240 * 1024
    assert c.smtp.max_recipients == 100 and c.smtp.relay.allow == []
    assert c.smtp.relay.allow_authenticated is True
    assert [str(h) for h in c.smtp.listen] == ["127.0.0.1:2525"]


def test_hostile_client_defaults_are_those_safe_on_port_25() -> None:
    """Without a word in the config (and as config.example.yaml writes them): stress mode
    cuts idle sessions to 10 s, a silent client goes after 30 s, 50 connections per address,
    and 5 failed AUTHs within 10 minutes lock an address out for 15 minutes."""
    example = config_loader.load(ROOT / "config.example.yaml")
    for c in (cfg.Config(), config_loader.parse("hostname: relay.test\n", "m.yaml"), example):
        smtp = c.smtp
        assert (smtp.stress_timeout, smtp.greeting_timeout) == (10, 30)
        assert smtp.limits.per_client_connections == 50 and smtp.limits.per_client_rate == 0
        assert (smtp.auth.max_failures, smtp.auth.failure_window, smtp.auth.lockout) == (
            5, 10 * 60, 15 * 60)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("15m", 900), ("12h", 43200),
                                                ("2d", 172800)])
def test_durations(text: str, seconds: int) -> None:
    assert cfg.Duration.parse(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("2MiB", 2 << 20), ("2048KiB", 2 << 20),
                                            ("512B", 512)])
def test_sizes(text: str, size: int) -> None:
    assert cfg.Size.parse(text) == size


def test_example_config_passes_check_and_lists_every_key() -> None:
    result = run_check(ROOT / "config.example.yaml")
    assert result.returncode == 0, result.stderr
    example = (ROOT / "config.example.yaml").read_text()
    for path in key_paths():
        leaf = path.split(".")[-1]
        assert f"{leaf}:" in example, f"{path} is missing from config.example.yaml"
        if "<domain>" not in path:
            assert path in result.stdout


@pytest.mark.parametrize(("text", "key", "line", "words"), [
    ("delivery:\n  retry: [15m, 15x, 1h, 4h]\n", "delivery.retry[1]", 2, "bad duration"),
    ("smtp:\n  max_recipients: lots\n", "smtp.max_recipients", 2, "whole number"),
    ("smtp:\n  colour: red\n", "smtp.colour", 2, "unknown key"),
    ("domains:\n  local:\n    default: a.test\n    default: b.test\n", "domains.local.default", 4,
     "second default domain"),
    ("domains:\n  local:\n    default: a.test\n  remote:\n    a.test:\n      tls: may\n",
     "domains.remote.a.test", 5, "both a local and a remote"),
    ("smtp:\n  max_message_size: huge\n", "smtp.max_message_size", 2, "bad size"),
    ("domains:\n  remote:\n    b.test: {tls: sometimes}\n", "domains.remote.b.test.tls", 3,
     "must be one of"),
])
def test_config_errors_name_key_and_line(tmp_path: Path, text: str, key: str, line: int,
                                         words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError) as info:
        config_loader.load(path)
    assert (info.value.key, info.value.line) == (key, line)
    assert words in str(info.value)
    result = run_check(path)
    assert result.returncode == 2
    assert f"{path}:{line}: {key}:" in result.stderr


def test_broken_yaml_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("delivery:\n  retry: [15m\n")
    result = run_check(path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_check_prints_effective_settings(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"hostname": "mx.test", "delivery": {"retry": ["1s"] * 4}}))
    out = run_check(path).stdout
    assert "delivery.retry" in out and "[1s, 1s, 1s, 1s]" in out
    assert "domains.local.default" in out and "mx.test" in out


@pytest.mark.parametrize("order", ["before", "after"])
def test_config_option_counts_before_or_after_the_command(tmp_path: Path, order: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("delivery:\n  retry: [15m\n")
    args = ["-c", str(path), "check"] if order == "before" else ["check", "-c", str(path)]
    result = subprocess.run([sys.executable, "-m", "relay.cli", *args],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


def test_a_reloaded_config_still_hands_new_queue_entries_to_the_scheduler(
        write_config) -> None:
    from relay.supervisor.single import Relay
    config = config_loader.load(write_config())
    relay = Relay(config, stream=None)
    relay.apply_config(config_loader.load(write_config({"delivery": {"retry": ["1s"] * 4}})))
    assert relay.intake.on_queued == relay.queue.scheduler.notify
