"""Issue: abusive clients — the per-address bookkeeping over time (windows that end, lockouts
that expire, tables that do not grow without bound), on a clock the test moves."""

from __future__ import annotations

from relay.core import config_loader
from relay.receiver.anvil import GLOBAL, PER_CLIENT, PER_CLIENT_RATE, Anvil


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def anvil(text: str) -> tuple[Anvil, Clock]:
    clock = Clock()
    return Anvil(config_loader.parse(text).smtp, clock), clock


def test_rate_counts_the_last_minute_only() -> None:
    limits, clock = anvil("smtp:\n  limits:\n    per_client_rate: 2\n")
    for _ in range(2):
        assert limits.admit("192.0.2.1", trusted=False) is None
        limits.release("192.0.2.1", trusted=False)
    assert limits.admit("192.0.2.1", trusted=False) == PER_CLIENT_RATE
    assert limits.admit("192.0.2.2", trusted=False) is None
    clock.now += 61
    assert limits.admit("192.0.2.1", trusted=False) is None


def test_open_connections_per_address_and_in_all() -> None:
    limits, _ = anvil("smtp:\n  max_connections: 3\n  limits:\n    per_client_connections: 2\n"
                      "    trusted_connections: 4\n")
    assert [limits.admit("192.0.2.1", False) for _ in range(3)] == [None, None, PER_CLIENT]
    assert limits.admit("192.0.2.2", False) is None
    assert limits.admit("192.0.2.3", False) == GLOBAL  # three untrusted open
    assert [limits.admit("10.0.0.1", True) for _ in range(5)] == [None] * 4 + [PER_CLIENT]
    limits.release("192.0.2.1", False)
    assert limits.admit("192.0.2.3", False) is None


def test_failures_outside_the_window_are_forgotten_and_the_lockout_ends() -> None:
    limits, clock = anvil("smtp:\n  auth:\n    max_failures: 3\n    failure_window: 1m\n"
                          "    lockout: 15m\n")
    assert limits.auth_failed("192.0.2.1") == (1, False)
    assert limits.auth_failed("192.0.2.1") == (2, False)
    clock.now += 61  # those two are out of the window
    assert limits.auth_failed("192.0.2.1") == (1, False)
    assert limits.auth_failed("192.0.2.1") == (2, False)
    assert limits.auth_failed("192.0.2.1") == (3, True)
    assert limits.locked_for("192.0.2.1") == 900 and not limits.locked_for("192.0.2.2")
    clock.now += 900
    assert not limits.locked_for("192.0.2.1")
    assert limits.auth_failed("192.0.2.1") == (1, False)  # afresh after the lockout


def test_tarpit_grows_with_the_failures_up_to_ten_steps() -> None:
    limits, _ = anvil("smtp:\n  auth:\n    failure_delay: 0.5s\n")
    assert [limits.tarpit(n) for n in (1, 2, 4, 10, 50)] == [0.5, 1.0, 2.0, 5.0, 5.0]


def test_quiet_addresses_are_swept() -> None:
    limits, clock = anvil("smtp:\n  limits:\n    per_client_rate: 5\n")
    for n in range(1000):  # a scan: one connection from each of many addresses
        ip = f"198.51.{n // 256}.{n % 256}"
        assert limits.admit(ip, False) is None
        limits.release(ip, False)
    limits.auth_failed("192.0.2.9")
    assert len(limits.clients) == 1001
    clock.now += 601  # past the rate minute and the failure window
    limits.admit("192.0.2.1", False)
    assert list(limits.clients) == ["192.0.2.1"]


def test_stress_begins_over_80_percent_and_ends_at_60() -> None:
    limits, _ = anvil("smtp:\n  max_connections: 10\n  limits:\n    per_client_connections: 0\n")
    changes = []
    for _ in range(9):
        limits.admit("192.0.2.1", False)
        changes.append(limits.stress_changed())
    assert changes.index(True) == 8 and limits.stressed  # the 9th of 10: over 80 %
    for _ in range(2):
        limits.release("192.0.2.1", False)
        assert not limits.stress_changed() and limits.stressed  # 8, 7: still under stress
    limits.release("192.0.2.1", False)
    assert limits.stress_changed() and not limits.stressed  # 6 of 10


def test_trusted_connections_never_count_towards_stress() -> None:
    limits, _ = anvil("smtp:\n  max_connections: 10\n")
    for _ in range(50):
        limits.admit("10.0.0.1", True)
    assert not limits.stress_changed() and limits.untrusted_open == 0
    assert limits.clients["10.0.0.1"].open == 50
