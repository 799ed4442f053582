"""The `mailroot import-iis`, `route` and `probe` subcommands: leaving IIS, and answering
"where will this address go, and why didn't it arrive?" without reading logs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from relay.core.address import AddressError, parse_address
from relay.core.config import Config, ConfigError

# Each command imports what it needs when it runs: `mailroot queue` from cron stays quick.


def cmd_import(args: argparse.Namespace) -> int:
    """Exit 0 imported, 1 something needs attention (not imported, or imported more safely
    than IIS ran it), 2 not a readable metabase / usage."""
    from relay.cli import iis_import, iis_render, metabase
    from relay.ops.settings import write_atomic

    try:
        mb = metabase.parse(args.metabase)
        result = iis_import.import_server(mb, args.server)
    except metabase.NotAMetabase as exc:
        print(f"mailroot import-iis: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mailroot import-iis: cannot read {args.metabase}: {exc.strerror}",
              file=sys.stderr)
        return 2
    except LookupError as exc:
        print(f"mailroot import-iis: {args.metabase}: {exc.args[0]}", file=sys.stderr)
        return 2
    try:
        text = iis_render.render(result, str(args.metabase))
    except ConfigError as exc:  # a mapping bug: never write a config that would not load
        print(f"mailroot import-iis: the imported config does not validate: {exc}",
              file=sys.stderr)
        return 1
    out = Path(args.output)
    if args.dry_run:
        sys.stdout.write(text)
    elif out.exists() and not args.force:
        print(f"mailroot import-iis: {out} exists; give --force to replace it, or -o another "
              "file", file=sys.stderr)
        return 2
    else:
        write_atomic(out, text)
    for line in iis_render.report_lines(result):
        print(line, file=sys.stderr)
    if args.dry_run:
        print(f"imported {result.server} from {args.metabase} (dry run, nothing written)",
              file=sys.stderr)
    else:
        print(f"imported {result.server} from {args.metabase} written to {out}; check it "
              f"with: mailroot check -c {out}", file=sys.stderr)
    return 1 if result.problems else 0


def cmd_route(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 deliverable now, 1 mail to the address would fail now or is not getting
    through (its domain's last attempt left mail waiting), 2 not an address."""
    import asyncio

    from relay.ops import explain

    try:
        result = asyncio.run(explain.explain(config, args.address))
    except explain.BadAddress as exc:
        print(f"mailroot route: {args.address!r} is not an address the relay takes: {exc}",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print("\n".join(explain.render(result)))
    return 0 if result.deliverable else 1


def cmd_probe(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 when the first hop would take (or took) the mail, 1 otherwise, 2 bad usage."""
    import asyncio

    from relay.ops.probe import Probe

    try:
        address = parse_address(args.address.strip().strip("<>"))
        sender = parse_address(args.sender) if args.sender else \
            f"postmaster@{config.default_domain}"
    except AddressError as exc:
        print(f"mailroot probe: not an address: {exc}", file=sys.stderr)
        return 2
    probe = Probe(config, lambda step: print(step.line(), flush=True))
    work = probe.send(address, sender, args.timeout) if args.send else \
        probe.check(address, sender)
    return 0 if asyncio.run(work) else 1


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    imp = sub.add_parser("import-iis", parents=[common],
                         help="write a mailroot config from an IIS SMTP MetaBase.xml")
    imp.add_argument("metabase", metavar="METABASE.xml")
    imp.add_argument("-o", "--output", default="mailroot.yaml", metavar="FILE",
                     help="the config to write (default: ./mailroot.yaml)")
    imp.add_argument("--server", metavar="N", help="the SMTP virtual server number "
                                                   "(default: the first)")
    imp.add_argument("--dry-run", action="store_true",
                     help="print the config and the report; write nothing")
    imp.add_argument("--force", action="store_true", help="replace an existing output file")
    route = sub.add_parser("route", parents=[common],
                           help="explain where mail to an address goes now, and why")
    route.add_argument("address")
    route.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    probe = sub.add_parser("probe", parents=[common],
                           help="talk to the first hop for an address (no DATA), or with "
                                "--send follow a test message to its end")
    probe.add_argument("address")
    probe.add_argument("--from", dest="sender", metavar="ADDR",
                       help="the envelope sender (default: postmaster@<default domain>)")
    probe.add_argument("--send", action="store_true",
                       help="send a short test message through the relay and follow it")
    probe.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                       help="how long --send follows the message (default: 120)")


COMMANDS = {"route": cmd_route, "probe": cmd_probe}
# Commands that need no config of their own (they read another program's).
STANDALONE = {"import-iis": cmd_import}
