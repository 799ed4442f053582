"""`mailroot dkim keygen` and `mailroot dkim check`: a signing key in one step, and proof that
its DNS record is published."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from relay.core.config import DKIM_ALGORITHMS, SELECTOR_RE, Config, ConfigError
from relay.ops.admin import Admin

MARKS = {"published": "ok", "missing": "MISSING", "different": "DIFFERENT", "unknown": "UNKNOWN"}


def cmd_keygen(args: argparse.Namespace, config: Config) -> int:
    if not config.source:
        print("mailroot dkim keygen: the key is added to the config: give it with -c FILE",
              file=sys.stderr)
        return 2
    from relay.ops.settings import domain_name

    domain = domain_name(args.domain, "dkim")
    selector = args.selector or f"mail{time.strftime('%Y')}"
    if not SELECTOR_RE.fullmatch(selector):
        print(f"mailroot dkim keygen: bad selector {selector!r} (DNS labels, like mail2026)",
              file=sys.stderr)
        return 2
    from relay.ops import dkim_keys  # crypto and DNS: loaded by this command, not by every one

    algorithm = DKIM_ALGORITHMS[args.algorithm]
    path = Path(args.out or Path(config.source).parent / f"{domain}.{selector}.key").absolute()
    private = dkim_keys.generate(algorithm, args.bits)
    try:
        dkim_keys.write_private(path, private)
    except OSError as exc:
        print(f"mailroot dkim keygen: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        Admin(config).add_dkim_key(domain, selector, str(path), algorithm)
    except ConfigError:
        path.unlink()  # nothing half-done: no key file the config does not name
        raise
    print(f"# wrote {path} (mode 0600) and added dkim.{domain} (selector {selector}, "
          f"{algorithm}) to {config.source}")
    print("# publish this record in the domain's DNS, then run: mailroot dkim check "
          f"{domain}")
    print(dkim_keys.zone_line(domain, selector, dkim_keys.record_value(algorithm, private)))
    return 0


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    if not config.dkim:
        print("mailroot dkim check: no DKIM keys are configured (see mailroot dkim keygen)",
              file=sys.stderr)
        return 1
    results = Admin(config).dkim_records(args.domain)
    for result in results:
        print(f"{MARKS[result.state]:<9} {result.domain} {result.selector} ({result.algorithm}): "
              f"{result.detail}")
    return 0 if all(r.ok for r in results) else 1


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    top = sub.add_parser("dkim", parents=[common], help="DKIM keys: generate one, check DNS")
    actions = top.add_subparsers(dest="dkim_action", metavar="ACTION", required=True)
    keygen = actions.add_parser("keygen", parents=[common],
                                help="write a new key, add it to the config, print its record")
    keygen.add_argument("domain")
    keygen.add_argument("--selector", help="the record's name part (default: mailYYYY)")
    keygen.add_argument("--algorithm", choices=list(DKIM_ALGORITHMS), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, choices=[1024, 2048, 3072, 4096],
                        help="RSA key size (default 2048)")
    keygen.add_argument("--out", metavar="FILE",
                        help="the private key's file (default: beside the config)")
    check = actions.add_parser("check", parents=[common],
                               help="is each key's record published and the same key? (exit 0)")
    check.add_argument("domain", nargs="?")


def cmd_dkim(args: argparse.Namespace, config: Config) -> int:
    command = cmd_keygen if args.dkim_action == "keygen" else cmd_check
    try:
        return command(args, config)
    except ConfigError as exc:
        print(f"mailroot: config error: {exc}", file=sys.stderr)
        return 2
