"""`mailroot health`: the health check as a Nagios/Icinga plugin (exit 0/1/2/3)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import NoReturn

from relay.core.config import Config, ConfigError, Duration
from relay.core.store import Mailroot


def _duration(text: str) -> float:
    try:
        return float(Duration.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    check = sub.add_parser("health", parents=[common],
                           help="health check for monitoring (exit 0 OK, 1 WARNING, "
                                "2 CRITICAL, 3 UNKNOWN)")
    check.add_argument("--warn-age", type=_duration, default="1h", metavar="DURATION",
                       help="oldest queued message older than this: WARNING (default 1h)")
    check.add_argument("--crit-age", type=_duration, default="4h", metavar="DURATION",
                       help="... CRITICAL (default 4h)")
    for what in ("queue", "badmail"):
        check.add_argument(f"--warn-{what}", type=int, metavar="N",
                           help=f"{what} holding N or more messages: WARNING")
        check.add_argument(f"--crit-{what}", type=int, metavar="N",
                           help=f"{what} holding N or more messages: CRITICAL")
    check.add_argument("--expect-relay", action="store_true",
                       help="CRITICAL when no relay runs on the mailroot")
    check.error = functools.partial(usage_error, check)  # type: ignore[method-assign]


def usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """A usage error is UNKNOWN (3), as Nagios plugins report it: exit 2 would read as
    CRITICAL and page someone about a typo in a check's arguments."""
    from relay.ops import health

    print(f"MAILROOT UNKNOWN - usage: {message} (see {parser.prog} --help)")
    sys.exit(health.UNKNOWN)


def run(args: argparse.Namespace, load_config: Callable[[str | None], Config]) -> int:
    """Runs before the usual config handling: a broken config is UNKNOWN (3), not usage (2)."""
    from relay.ops import health

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"MAILROOT UNKNOWN - config error: {exc}")
        return health.UNKNOWN
    limits = health.Thresholds(
        warn_age=args.warn_age, crit_age=args.crit_age, warn_queue=args.warn_queue,
        crit_queue=args.crit_queue, warn_badmail=args.warn_badmail,
        crit_badmail=args.crit_badmail, expect_relay=args.expect_relay)
    code, line = health.check(Mailroot(config.root), limits)
    print(line)
    return code
