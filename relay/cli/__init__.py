"""The `mailroot` command: `serve` starts the relay (relay.supervisor), `console` the console
(tui), and the other verbs go to the operator API (relay.ops); IIS import and the systemd
install are commands of their own here. May import every package of the relay.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from relay.cli import admin as cli_admin
from relay.cli import dkim as cli_dkim
from relay.cli import health as cli_health
from relay.cli import iis as cli_iis
from relay.cli import service as cli_service
from relay.core import config_loader
from relay.core.config import Config, ConfigError
from relay.core.pickup_file import write_pickup
from relay.core.store import Mailroot

DEFAULT_CONFIG = "mailroot.yaml"


def login_name() -> str:
    """Who runs the command; a uid with no name (a container, a service user without a
    passwd entry) is `uidN`."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def load_config(path: str | None) -> Config:
    """-c FILE, else ./mailroot.yaml if present, else the defaults."""
    if path is None and Path(DEFAULT_CONFIG).is_file():
        path = DEFAULT_CONFIG
    return config_loader.load(path)


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    import uvloop  # like the imports below: not loaded by the commands that only read

    from relay.core.relay_lock import AlreadyRunning
    from relay.receiver.connection import ListenError
    from relay.supervisor.supervisor import serve

    if args.workers is not None and args.workers < 1:
        print("mailroot serve: --workers takes 1 or more", file=sys.stderr)
        return 2
    try:
        uvloop.run(serve(config, args.workers))
    except (AlreadyRunning, ListenError, ConfigError) as exc:  # ConfigError: a DKIM key
        print(f"mailroot: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_console(args: argparse.Namespace, config: Config) -> int:
    from tui.app import run_console  # imported here: the relay itself never needs textual

    return run_console(config, readonly=getattr(args, "readonly", False))


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from relay.core.dkim import load_keys
    from relay.ops.config_keys import describe

    try:
        load_keys(config)  # read and try every DKIM key, as the relay does at start
    except ConfigError as exc:
        print(f"mailroot: config error: {exc}", file=sys.stderr)
        return 2
    print(f"# {config.source or 'defaults (no config file)'}: OK")
    rows = describe(config)
    width = max(len(key) for key, _, _ in rows)
    for key, value, doc in rows:
        print(f"{key:<{width}}  {value:<24}  # {doc}" if doc else f"{key:<{width}}  {value}")
    return 0


def build_message(args: argparse.Namespace, config: Config) -> bytes:
    """An RFC 5322 message from the send options (Bcc kept: Pickup takes it as envelope)."""
    from email.message import EmailMessage  # the email package: loaded by `send` alone
    from email.utils import formatdate, make_msgid

    msg = EmailMessage()
    sender = args.sender or f"{login_name()}@{config.default_domain}"
    msg["From"] = sender
    for name, values in (("To", args.to), ("Cc", args.cc), ("Bcc", args.bcc)):
        if values:
            msg[name] = ", ".join(values)
    msg["Subject"] = args.subject or ""
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=config.default_domain)
    body = Path(args.body_file).read_text() if args.body_file else (args.body or "")
    msg.set_content(body)
    return msg.as_bytes()


def cmd_send(args: argparse.Namespace, config: Config) -> int:
    if not (args.to or args.cc or args.bcc):
        print("mailroot send: give at least one --to, --cc or --bcc", file=sys.stderr)
        return 2
    store = Mailroot(config.root)
    store.ensure()
    name = write_pickup(store, build_message(args, config))
    print(f"Pickup/{name}")
    return 0


def cmd_passwd(args: argparse.Namespace, config: Config) -> int:
    """Add or change an SMTP AUTH user in smtp.auth.users_file (the password is hashed)."""
    from relay.receiver.users import UsersFileError, set_password

    if not config.smtp.auth.users_file:
        print("mailroot passwd: set smtp.auth.users_file in the config first", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {args.user}: ")
        if getpass.getpass("Again: ") != password:
            print("mailroot passwd: the passwords differ; nothing changed", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("mailroot passwd: empty password; nothing changed", file=sys.stderr)
        return 2
    path = Path(config.smtp.auth.users_file)
    try:
        added = set_password(path, args.user, password)
    except UsersFileError as exc:
        print(f"mailroot passwd: {exc}", file=sys.stderr)
        return 2
    print(f"{'added' if added else 'changed'} {args.user} in {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    config_help = f"config file (default: ./{DEFAULT_CONFIG} if present)"
    # -c may come before or after the command: the command's own -c only counts when given,
    # so `mailroot -c FILE check` is not undone by check's default
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                        help=config_help)
    top = argparse.ArgumentParser(prog="mailroot",
                                  description="A mail relay built around the IIS mailroot.")
    top.add_argument("-c", "--config", metavar="FILE", help=config_help)
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    console = sub.add_parser("console", parents=[common],
                             help="the operator console (the default with no command)")
    console.add_argument("--readonly", action="store_true",
                         help="watch only: hide and refuse every action that changes anything")
    serve = sub.add_parser("serve", parents=[common], help="run the relay (no console)")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="SMTP receiver processes (default: smtp.workers; 1: the whole "
                            "relay in one process)")
    sub.add_parser("check", parents=[common], help="validate the config, print the settings")
    send = sub.add_parser("send", parents=[common], help="write a message into Pickup")
    send.add_argument("--from", dest="sender", metavar="ADDR")
    send.add_argument("--to", action="append", default=[], metavar="ADDR")
    send.add_argument("--cc", action="append", default=[], metavar="ADDR")
    send.add_argument("--bcc", action="append", default=[], metavar="ADDR")
    send.add_argument("--subject", default="")
    body = send.add_mutually_exclusive_group()
    body.add_argument("--body")
    body.add_argument("--body-file", metavar="FILE")
    passwd = sub.add_parser("passwd", parents=[common],
                            help="add or change an SMTP AUTH user (password from the terminal "
                                 "or the first line of stdin)")
    passwd.add_argument("user")
    cli_admin.add_parsers(sub, common)
    cli_iis.add_parsers(sub, common)
    cli_dkim.add_parsers(sub, common)
    cli_service.add_parser(sub, common)
    cli_health.add_parser(sub, common)
    return top


COMMANDS = {"console": cmd_console, "serve": cmd_serve, "check": cmd_check, "send": cmd_send,
            "passwd": cmd_passwd, "dkim": cli_dkim.cmd_dkim}


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, unknown = top.parse_known_args(argv)
    if unknown:
        message = f"unrecognized arguments: {' '.join(unknown)}"
        if args.command == "health":
            cli_health.usage_error(top, message)
        top.error(message)
    if args.command in cli_iis.STANDALONE:
        return cli_iis.STANDALONE[args.command](args)
    if args.command == "service":
        return cli_service.run(args)
    if args.command == "health":
        return cli_health.run(args, load_config)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mailroot: config error: {exc}", file=sys.stderr)
        return 2
    command = args.command or "console"
    if command in ("console", "serve"):
        return COMMANDS[command](args, config)
    try:  # a listing cut short by its reader (`mailroot queue | head`) ends quietly, as ls does
        code = run_command(command, args, config)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141  # as a command ended by SIGPIPE


def run_command(command: str, args: argparse.Namespace, config: Config) -> int:
    if command in cli_iis.COMMANDS:
        return cli_iis.COMMANDS[command](args, config)
    if command in cli_admin.COMMANDS:
        try:
            return cli_admin.run(command, args, config)
        except ConfigError as exc:
            print(f"mailroot: config error: {exc}", file=sys.stderr)
            return 2
    return COMMANDS[command](args, config)

