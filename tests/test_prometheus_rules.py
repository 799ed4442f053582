"""docs/prometheus-alerts.yaml is valid (promtool check rules) and each alert fires when it
should and not before (promtool test rules on tests/prometheus/alerts-test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="promtool is not installed (Debian package prometheus)")


def test_alert_rules_check() -> None:
    done = subprocess.run(["promtool", "check", "rules",
                           str(HERE.parent / "docs" / "prometheus-alerts.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 3 rules found" in done.stdout


def test_alerts_fire_as_intended() -> None:
    done = subprocess.run(["promtool", "test", "rules", "alerts-test.yaml"],
                          cwd=HERE / "prometheus", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
