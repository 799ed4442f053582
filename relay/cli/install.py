"""Run the relay as a systemd service: the unit file, and `mailroot service install` /
`uninstall`, which create the system user, the submit group, the config and the mailroot
with their owners, and enable the unit.

Everything can be done under another root directory (`--root`, as for an image being
built): users and groups go into ROOT/etc/passwd through useradd's --prefix, the unit is
enabled with `systemctl --root`, and paths written into files are those the installed system
will see.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from relay.core import config_loader
from relay.core.config import ConfigError
from relay.core.store import PICKUP, Mailroot

UNIT_NAME = "mailroot.service"
UNIT_DIR = Path("/etc/systemd/system")
CONFIG_PATH = Path("/etc/mailroot/mailroot.yaml")
SPOOL = Path("/var/spool/mailroot")
DEFAULT_USER = "mailroot"
SUBMIT_GROUP = "mailroot-submit"

STARTER_CONFIG = """\
# mailroot as a service; every key and its default: config.example.yaml in the source.
# Check after an edit with: mailroot check -c {config}
mailroot: {spool}
smtp:
  listen: [127.0.0.1:25]      # add this host's public address to receive mail from outside
"""


class InstallError(Exception):
    """A step of install or uninstall failed; the message says which and why."""


@dataclass(frozen=True)
class Plan:
    """What to install where. `root` is the filesystem being installed into ("/" normally)."""

    user: str = DEFAULT_USER
    group: str = SUBMIT_GROUP
    config: Path = CONFIG_PATH
    root: Path = Path("/")
    executable: Path | None = None  # the `mailroot` command; default: the one running

    def on_disk(self, path: Path) -> Path:
        """Where a path of the installed system is from here."""
        return self.root / path.relative_to("/")

    def seen_from_inside(self, path: Path) -> Path:
        """The path the installed system sees for a file here (drops the root prefix)."""
        path = path.absolute()
        if self.root != Path("/") and path.is_relative_to(self.root.absolute()):
            return Path("/") / path.relative_to(self.root.absolute())
        return path

    def command(self) -> Path:
        if self.executable:
            return self.seen_from_inside(self.executable)
        found = Path(sys.executable).parent / "mailroot"
        return self.seen_from_inside(found if found.exists()
                                     else Path(shutil.which("mailroot") or found))


def unit_text(plan: Plan, mailroot: Path) -> str:
    """The systemd unit: Type=notify with a watchdog, a dedicated user, a read-only system
    but for the mailroot, and only the two capabilities the relay uses."""
    return f"""\
[Unit]
Description=mailroot mail relay (IIS-style Pickup, Queue, Drop, Badmail)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={plan.command()} serve -c {plan.config}
User={plan.user}
Group={plan.user}
SupplementaryGroups={plan.group}
UMask=0027
Restart=on-failure
RestartSec=5s
WatchdogSec=60s
TimeoutStopSec=15s
LimitNOFILE=65536
# port 25 without root; read leases on Pickup files written by other users
AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_LEASE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_LEASE
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={mailroot}
PrivateTmp=yes
PrivateDevices=yes
ProtectHome=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
# AF_NETLINK: glibc's getaddrinfo asks the kernel which address families are configured
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SyslogIdentifier=mailroot

[Install]
WantedBy=multi-user.target
"""


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]} is not installed here") from None
    if done.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")


def _prefix(plan: Plan) -> list[str]:
    return [] if plan.root == Path("/") else ["--prefix", str(plan.root.absolute())]


def lookup(plan: Plan, table: str, name: str) -> int | None:
    """The uid (table "passwd") or gid ("group") of a name on the installed system."""
    if plan.root == Path("/"):
        try:
            return pwd.getpwnam(name).pw_uid if table == "passwd" else grp.getgrnam(name).gr_gid
        except KeyError:
            return None
    try:
        lines = plan.on_disk(Path("/etc") / table).read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name:
            return int(fields[2])
    return None


def configured_mailroot(plan: Plan) -> Path:
    """The mailroot the config names (an absolute path: a service has no working folder)."""
    config = config_loader.load(plan.on_disk(plan.config))
    if not Path(config.mailroot).is_absolute():
        raise ConfigError("a service needs an absolute path here", file=str(plan.config),
                          key="mailroot")
    return Path(config.mailroot)


def install(plan: Plan, say=print) -> None:
    """Group, user, config, mailroot, unit, enabled: each step only if not done already."""
    if lookup(plan, "group", plan.group) is None:
        _run(["groupadd", *_prefix(plan), "--system", plan.group])
        say(f"created group {plan.group} (its members may write into Pickup)")
    if lookup(plan, "passwd", plan.user) is None:
        _run(["useradd", *_prefix(plan), "--system", "--user-group", "--groups", plan.group,
              "--home-dir", str(SPOOL), "--no-create-home", "--shell", "/usr/sbin/nologin",
              plan.user])
        say(f"created system user {plan.user}")
    uid, gid = lookup(plan, "passwd", plan.user), lookup(plan, "group", plan.user)
    submit = lookup(plan, "group", plan.group)
    if uid is None or gid is None or submit is None:
        raise InstallError(f"user {plan.user} or group {plan.group} not found after creating")

    config_file = plan.on_disk(plan.config)
    if not config_file.exists():
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(STARTER_CONFIG.format(config=plan.config, spool=SPOOL))
        config_file.chmod(0o644)  # no secrets in it (passwords live in their own files)
        say(f"wrote {plan.config}")
    mailroot = configured_mailroot(plan)
    prepare_mailroot(plan.on_disk(mailroot), uid, gid, submit)
    say(f"prepared {mailroot} (owner {plan.user}; Pickup: group {plan.group}, mode 2770)")

    unit = plan.on_disk(UNIT_DIR / UNIT_NAME)
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(unit_text(plan, mailroot))
    say(f"wrote {UNIT_DIR / UNIT_NAME}")
    _systemctl(plan, "enable", UNIT_NAME)
    say(f"enabled {UNIT_NAME}: start it with: systemctl start mailroot")


def prepare_mailroot(path: Path, uid: int, gid: int, submit_gid: int) -> None:
    """The permission model: the relay's user owns everything; members of the submit group
    may enter the mailroot (not list it) and write into Pickup, which is setgid so their
    files stay readable by the relay's group; nobody else gets in."""
    Mailroot(path).ensure()
    for folder, _, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, f) for f in files)]:
            os.chown(name, uid, gid, follow_symlinks=False)
    for entry in path.iterdir():
        if entry.is_dir():
            entry.chmod(0o750)
    os.chown(path, uid, submit_gid)
    path.chmod(0o710)
    os.chown(path / PICKUP, uid, submit_gid)
    (path / PICKUP).chmod(0o2770)


def _systemctl(plan: Plan, *args: str) -> None:
    root = [] if plan.root == Path("/") else [f"--root={plan.root.absolute()}"]
    _run(["systemctl", *root, *args])


def uninstall(plan: Plan, purge: bool = False, say=print) -> None:
    """Disable and remove the unit, the user and the group; the mailroot and the config
    stay (they hold mail and settings) unless `purge`."""
    unit = plan.on_disk(UNIT_DIR / UNIT_NAME)
    if unit.exists():
        if plan.root == Path("/") and Path("/run/systemd/system").is_dir():
            _systemctl(plan, "stop", UNIT_NAME)
        _systemctl(plan, "disable", UNIT_NAME)
        unit.unlink()
        say(f"disabled and removed {UNIT_DIR / UNIT_NAME}")
    mailroot = configured_mailroot(plan) if plan.on_disk(plan.config).exists() else None
    if purge:
        if mailroot:
            shutil.rmtree(plan.on_disk(mailroot), ignore_errors=True)
            say(f"removed {mailroot}")
        plan.on_disk(plan.config).unlink(missing_ok=True)
        say(f"removed {plan.config}")
    elif mailroot:
        say(f"kept {mailroot} and {plan.config} (remove them with --purge)")
    if lookup(plan, "passwd", plan.user) is not None:
        _run(["userdel", *_prefix(plan), plan.user])
        say(f"removed user {plan.user}")
    if lookup(plan, "group", plan.group) is not None:
        _run(["groupdel", *_prefix(plan), plan.group])
        say(f"removed group {plan.group}")
