"""The systemd unit and `mailroot service install|uninstall`, tried against a temporary root
(users go into ROOT/etc/passwd, the unit is enabled with systemctl --root): no systemd needs to
run, and nothing outside the temporary root changes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAILROOT = [sys.executable, "-m", "relay.cli"]
TOOLS = ("useradd", "groupadd", "usermod", "userdel", "groupdel", "systemctl")
needs_tools = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason="needs root and the shadow tools (useradd, usermod ...) and systemctl")


def verify(unit: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "mailroot.service"
    path.write_text(unit)
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=30)


def complaints(result: subprocess.CompletedProcess) -> list[str]:
    """systemd-analyze verify exits 0 for a value it cannot parse: it warns on stderr."""
    return [line for line in (result.stdout + result.stderr).splitlines()
            if "mailroot.service" in line]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = subprocess.run([*MAILROOT, "service", "unit"], capture_output=True, text=True,
                          check=True).stdout
    for line in ("Type=notify", "NoNewPrivileges=yes", "ProtectSystem=strict",
                 "ReadWritePaths=/var/spool/mailroot", "PrivateTmp=yes", "Restart=on-failure",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_LEASE", "User=mailroot"):
        assert line in unit.splitlines()
    result = verify(unit, tmp_path)
    assert result.returncode == 0 and not complaints(result), result.stderr
    # and the check does catch a broken unit
    broken = verify(unit.replace("ProtectSystem=strict", "ProtectSystem=bogus"), tmp_path)
    assert complaints(broken)


def passwd(root: Path, table: str) -> dict[str, list[str]]:
    return {f[0]: f for f in (line.split(":") for line in
                              (root / "etc" / table).read_text().splitlines())}


def empty_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    return root


def check_installed(root: Path, executable: str) -> None:
    """What install leaves behind, as the installed system will see it."""
    users, groups = passwd(root, "passwd"), passwd(root, "group")
    uid, gid = int(users["mailroot"][2]), int(groups["mailroot"][2])
    submit = int(groups["mailroot-submit"][2])
    assert users["mailroot"][6] == "/usr/sbin/nologin"
    assert "mailroot" in groups["mailroot-submit"][3].split(",")
    unit = (root / "etc/systemd/system/mailroot.service").read_text()
    assert f"ExecStart={executable} serve -c /etc/mailroot/mailroot.yaml" in unit.splitlines()
    wanted = root / "etc/systemd/system/multi-user.target.wants/mailroot.service"
    assert os.readlink(wanted) == "/etc/systemd/system/mailroot.service"
    config = (root / "etc/mailroot/mailroot.yaml").read_text()
    assert "mailroot: /var/spool/mailroot" in config
    spool = root / "var/spool/mailroot"
    info = spool.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, submit, 0o710)
    info = (spool / "Pickup").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, submit, 0o2770)
    for folder in ("Queue", "Drop", "Badmail", "Hold", "log", "tmp"):
        info = (spool / folder).stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o750)


@needs_tools
def test_install_then_uninstall_in_a_temporary_root(tmp_path: Path) -> None:
    root = empty_root(tmp_path)
    run = [*MAILROOT, "service"]
    out = subprocess.run([*run, "install", "--root", str(root)], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    check_installed(root, str(Path(sys.executable).parent / "mailroot"))
    # a second install changes nothing and does not fail
    again = subprocess.run([*run, "install", "--root", str(root)], capture_output=True,
                           text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout

    out = subprocess.run([*run, "uninstall", "--root", str(root)], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert not (root / "etc/systemd/system/mailroot.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/mailroot.service").exists()
    assert "mailroot" not in passwd(root, "passwd")
    assert "mailroot-submit" not in passwd(root, "group")
    assert (root / "var/spool/mailroot/Pickup").is_dir()  # mail is kept without --purge
    out = subprocess.run([*run, "uninstall", "--purge", "--root", str(root)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert not (root / "var/spool/mailroot").exists()
    assert not (root / "etc/mailroot/mailroot.yaml").exists()


@needs_tools
def test_install_with_its_own_user_group_and_config_file(tmp_path: Path) -> None:
    """--user, --group and -c: the names and the config the operator chose, everywhere (the
    passwd and group files, the unit, the owners of the mailroot the config names); an
    existing config is used as it is, and uninstall removes those names."""
    root = empty_root(tmp_path)
    config = root / "srv/relay/relay.yaml"
    config.parent.mkdir(parents=True)
    text = "mailroot: /srv/relay/spool\nsmtp:\n  listen: [127.0.0.1:2525]\n"
    config.write_text(text)
    names = ["--user", "relayd", "--group", "relay-writers", "-c", "/srv/relay/relay.yaml",
             "--root", str(root)]
    out = subprocess.run([*MAILROOT, "service", "install", *names], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr

    users, groups = passwd(root, "passwd"), passwd(root, "group")
    assert "mailroot" not in users and "mailroot-submit" not in groups
    uid, gid = int(users["relayd"][2]), int(groups["relayd"][2])
    submit = int(groups["relay-writers"][2])
    assert int(users["relayd"][3]) == gid and users["relayd"][6] == "/usr/sbin/nologin"
    assert groups["relay-writers"][3].split(",") == ["relayd"]
    unit = (root / "etc/systemd/system/mailroot.service").read_text().splitlines()
    for line in ("ExecStart=" + str(Path(sys.executable).parent / "mailroot")
                 + " serve -c /srv/relay/relay.yaml",
                 "User=relayd", "Group=relayd", "SupplementaryGroups=relay-writers",
                 "ReadWritePaths=/srv/relay/spool"):
        assert line in unit
    assert os.path.islink(root / "etc/systemd/system/multi-user.target.wants/mailroot.service")
    assert config.read_text() == text  # the operator's config, untouched
    assert not (root / "etc/mailroot").exists()
    spool = root / "srv/relay/spool"
    assert not (root / "var/spool/mailroot").exists()
    info = spool.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, submit, 0o710)
    info = (spool / "Pickup").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, submit, 0o2770)
    info = (spool / "Queue").stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o750)

    out = subprocess.run([*MAILROOT, "service", "uninstall", *names], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "relayd" not in passwd(root, "passwd")
    assert "relay-writers" not in passwd(root, "group")
    assert not (root / "etc/systemd/system/mailroot.service").exists()
    assert (spool / "Pickup").is_dir() and config.read_text() == text  # kept without --purge


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Install as a service", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no command block in the README's service section"
    return [line for line in block[1].splitlines() if line.strip()]


def in_root(command: str, root: Path) -> list[str]:
    """A README command as it runs against `root`. systemctl start/status need a running
    systemd: offline, the question is whether the unit they name is enabled there."""
    argv = [re.sub(r"^/(opt|etc|var)/", f"{root}/\\1/", word) for word in shlex.split(command)]
    tool = Path(argv[0]).name
    if tool == "systemctl":
        return ["systemctl", f"--root={root}", "is-enabled", argv[-1]]
    if tool in ("useradd", "usermod"):
        return [argv[0], "--prefix", str(root), *argv[1:]]
    if tool == "mailroot" and argv[1] == "service":
        return [*argv, "--root", str(root)]
    return argv


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_tools
def test_readme_install_section_on_a_clean_root(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) <= 10
    root = empty_root(tmp_path)
    for command in commands:
        argv = in_root(command, root)
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, f"{command}: {done.stderr}"
    check_installed(root, "/opt/mailroot/bin/mailroot")
    assert "alice" in passwd(root, "group")["mailroot-submit"][3].split(",")
    assert (root / "opt/mailroot/bin/mailroot").exists()
