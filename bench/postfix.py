"""Postfix as the reference relay: a private, loopback-only instance the bench starts and stops.

Install once (Debian/Ubuntu, as root; the package's own service is not needed and can stay
stopped):

    python -m bench.postfix install   # DEBIAN_FRONTEND=noninteractive apt-get install -y postfix

The instance lives in its own directory (config, queue, data, log): nothing in /etc/postfix is
changed and the system's Postfix, if running, is not touched.  Its configuration:
- smtpd listens on 127.0.0.1:<port> only (inet_interfaces=loopback-only, inet_protocols=ipv4);
- every message goes to `relayhost = [127.0.0.1]:<hop port>` (the bench's SMTP sink, or the
  proxy that adds a round trip in front of it), with
  no DNS at all (smtp_dns_support_level=disabled, disable_dns_lookups=yes);
- mydestination is empty (nothing is delivered locally), no aliases, no TLS, no chroot;
- mynetworks is 127.0.0.0/8, the only clients allowed to relay.

Try it by hand: `python -m bench.postfix try --count 20` starts a sink, the instance, sends 20
messages with smtp-source and 5 with its sendmail (pickup path), and checks the sink got them.
Running the bench needs root (Postfix's daemons run as the `postfix` user).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.load import RECIPIENT, SENDER

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       1       1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {home}/spool
data_directory = {home}/data
maillog_file = {home}/maillog
maillog_file_prefixes = {home}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtputf8_enable = no
biff = no
notify_classes =
message_size_limit = 20480000
default_process_limit = 100
"""


def available() -> str | None:
    """Why Postfix can't be benchmarked here, or None if it can."""
    for tool in ("postfix", "smtp-source", "sendmail", "postconf"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/lib/postfix"):
            return ("postfix is not installed (python -m bench.postfix install, or "
                    "apt-get install postfix)")
    if os.geteuid() != 0:
        return "Postfix needs root to run its daemons as the postfix user"
    return None


def tool(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin") or name


def install() -> int:
    """apt-get install postfix, non-interactively, without starting the system's service."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    return subprocess.run(["apt-get", "install", "-y", "postfix"], env=env).returncode


class Postfix:
    """One private Postfix instance: configure(), start(), sendmail(), stop()."""

    name = "postfix"

    def __init__(self, sink_port: int, smtp_port: int, home: Path | None = None) -> None:
        self.home = home or Path(tempfile.mkdtemp(prefix="bench-postfix-"))
        self.conf = self.home / "etc"
        self.smtp_port = smtp_port
        self.sink_port = sink_port

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([tool("postfix"), "-c", str(self.conf), *args], check=check,
                              capture_output=True, text=True, timeout=60)

    def _write_config(self) -> None:
        self.home.chmod(0o755)  # the postfix user must reach its queue
        (self.conf / "main.cf").write_text(MAIN_CF.format(home=self.home,
                                                          sink_port=self.sink_port))
        (self.conf / "master.cf").write_text(MASTER_CF.format(
            listen=f"127.0.0.1:{self.smtp_port}"))

    def configure(self) -> None:
        for sub in ("etc", "spool", "data"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        shutil.chown(self.home / "data", "postfix")
        self._postfix("set-permissions", check=False)  # creates the queue directories
        self._postfix("check")

    def clone(self, template: Path) -> None:
        """Configure like `template`, an instance configured once and never started: copy its
        tree with owners and modes (seconds faster than set-permissions and check), then
        write this instance's own config files."""
        subprocess.run(["cp", "-a", f"{template}/.", str(self.home)], check=True, timeout=60)
        self._write_config()

    def start(self) -> None:
        self._postfix("start")
        deadline = time.monotonic() + 15
        while not (self.home / "spool" / "public" / "pickup").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not start: see {self.home}/maillog")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The master process's pid (0 if it never started): every daemon is its child, so
        bench.procstat's tree of it is the CPU of the whole instance."""
        try:
            return int((self.home / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def stop(self) -> None:
        """Stop and wait until the master process has exited (its pid file stays behind)."""
        pid = self.pid
        self._postfix("stop", check=False)
        deadline = time.monotonic() + 15
        while pid and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)

    def sendmail(self, message: bytes) -> None:
        """Submit through Postfix's sendmail -> postdrop -> maildrop (its pickup path)."""
        subprocess.run([tool("sendmail"), "-C", str(self.conf), "-f", SENDER, "-i", RECIPIENT],
                       input=message, check=True, timeout=30, capture_output=True)

    def queued(self) -> int:
        """Messages still in the instance's queues (files, not a showq round trip)."""
        return sum(len(files) for sub in ("maildrop", "incoming", "active", "deferred")
                   for _, _, files in os.walk(self.home / "spool" / sub))

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def try_it(count: int) -> int:
    """Start a sink and an instance, send `count` messages by SMTP and 5 by sendmail."""
    from bench.load import free_port, message, smtp_load
    from bench.sink import Sink

    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return 1
    with Sink() as sink:
        postfix = Postfix(sink.port, free_port())
        postfix.configure()
        postfix.start()
        try:
            smtp_load(postfix.smtp_port, count, sessions=2, size=2000)
            for number in range(5):
                postfix.sendmail(message(number, 2000))
            ok = sink.wait(count + 5, timeout=60)
        finally:
            postfix.stop()
            postfix.remove()
    print(f"sink received {sink.count} of {count + 5}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.postfix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="apt-get install -y postfix (non-interactive)")
    trial = sub.add_parser("try", help="check a private instance relays to a sink")
    trial.add_argument("--count", type=int, default=20)
    args = parser.parse_args(argv)
    return install() if args.command == "install" else try_it(args.count)


if __name__ == "__main__":
    sys.exit(main())
