"""`mailroot service unit|install|uninstall`: the relay as a systemd service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay.cli import install
from relay.core.config import ConfigError


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    service = sub.add_parser("service", parents=[common],
                             help="print, install or uninstall the systemd unit")
    service.add_argument("action", choices=["unit", "install", "uninstall"])
    service.add_argument("--user", default=install.DEFAULT_USER,
                         help=f"the system user the relay runs as (default {install.DEFAULT_USER})")
    service.add_argument("--group", default=install.SUBMIT_GROUP,
                         help="the group whose members may write into Pickup "
                              f"(default {install.SUBMIT_GROUP})")
    service.add_argument("--root", default="/", metavar="DIR",
                         help="install into the system under DIR (an image being built)")
    service.add_argument("--purge", action="store_true",
                         help="uninstall: also remove the mailroot and the config")


def run(args: argparse.Namespace) -> int:
    """Runs before any config is loaded: install may be the one to write it."""
    plan = install.Plan(user=args.user, group=args.group, root=Path(args.root),
                        config=Path(args.config).absolute() if args.config
                        else install.CONFIG_PATH)
    try:
        if args.action == "unit":
            try:
                mailroot = install.configured_mailroot(plan)
            except ConfigError:
                if plan.on_disk(plan.config).exists():
                    raise
                mailroot = install.SPOOL
            print(install.unit_text(plan, mailroot), end="")
        elif args.action == "install":
            install.install(plan)
        else:
            install.uninstall(plan, purge=args.purge)
    except ConfigError as exc:
        print(f"mailroot: config error: {exc}", file=sys.stderr)
        return 2
    except (install.InstallError, PermissionError) as exc:
        print(f"mailroot service {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
