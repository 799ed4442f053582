"""The relay the console runs or watches: the embedded relay started in-process, the relay
lock followed (a holder gone is a clean stop or a death, and a death is said and logged), and
the embedded relay handed over to a detached `mailroot serve` when the console leaves.
A mixin of ConsoleApp (tui/app.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time

from relay.ops import AlreadyRunning, Config, ConfigError, lock_holder
from relay.ops.running import ListenError, make_relay
from tui.collector import freeze_long_lived


class RelayLink:
    async def start_relay(self) -> None:
        try:
            relay = make_relay(self.config, stream=None)
            await relay.start()
            self.relay = relay
            freeze_long_lived()
        except AlreadyRunning:
            self.holder = lock_holder(self.store)
        except (ListenError, ConfigError) as exc:  # a taken port, a bad DKIM key: show it
            self.relay_error = str(exc)
            self.notify(f"The relay did not start: {exc}", severity="error", timeout=30,
                        markup=False)
        finally:
            self.starting = False
            self.tick()

    def relay_state(self) -> tuple[str, bool]:
        if self.relay_died and self.holder is None and self.relay is None:
            return f"✗ {self.relay_died}", False
        if self.starting:
            return "starting the embedded relay…", False
        if self.relay_error:
            return f"relay not started: {self.relay_error}", False
        if self.relay is not None and self.relay.running:
            return f"embedded relay {self.relay.processes()}", True
        if self.holder:
            return f"attached to relay {self.holder}", True
        return "no relay running" + (" (read-only view)" if self.readonly else ""), False

    def follow_lock(self) -> None:
        """Who holds the mailroot now that the console runs no relay itself; a holder that
        let go is a relay gone."""
        was, self.holder = self.holder, lock_holder(self.store)
        if was and self.holder is None:
            self.relay_gone(holder_pid(was))
        elif self.holder:
            self.relay_died = ""

    def relay_gone(self, pid: int | None) -> None:
        """The relay this console watched let go of the mailroot: a stop it logged, or a
        death (kill -9, a crash) that looks like one unless said; then say it, and log it."""
        self.follow_events()  # its relay-stopped, if it wrote one, is in the log by now
        if pid is None or pid in self.stopped_pids:
            return
        signum = None
        if self.started is not None and self.started.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.started.wait(timeout=1)
                signum = -code if code < 0 else None
        how = f", signal {signum}" if signum else ""
        at = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        self.relay_died = f"relay died (pid {pid}{how}) at {at}"
        self.admin.events.emit("relay-died", pid=pid, signal=signum,
                               reason=f"relay pid {pid} ended without a clean stop{how}",
                               seen_by=f"console pid {os.getpid()}")

    async def attach_to_started(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 15
        while lock_holder(self.store) is None and proc.poll() is None \
                and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.tick()
        if self.holder is None:
            self.notify(f"mailroot serve (pid {proc.pid}) has not taken the mailroot; "
                        "see log/events.jsonl", severity="error", markup=False)

    async def hand_over(self, why: str = "the operator chose to keep it running") -> None:
        """Stop the embedded relay, start `mailroot serve` detached in its place, then quit
        once it holds the mailroot; the event log says so, and why."""
        relay, self.relay = self.relay, None
        if relay is not None:
            await relay.stop()
        try:
            pid = start_background_relay(self.config).pid
        except OSError as exc:
            self.handover_failed(f"The background relay did not start: {exc}", why)
            return
        deadline = time.monotonic() + 10
        while (holder := lock_holder(self.store)) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if holder is None:
            self.handover_failed(f"The background relay (pid {pid}) has not taken the "
                                 "mailroot; see log/events.jsonl", why)
            return
        self.admin.events.emit("relay-handed-over", console_pid=os.getpid(), relay=holder,
                               why=why)
        self.exit(message=None if self.hung_up else
                  f"mailroot: the relay runs on in the background ({holder})")

    def handover_failed(self, problem: str, why: str) -> None:
        self.admin.events.emit("relay-handover-failed", console_pid=os.getpid(),
                               problem=problem, why=why)
        if self.hung_up:  # nobody to tell but the log
            self.exit()
        else:
            self.notify(problem, severity="error", markup=False)


def holder_pid(holder: str) -> int | None:
    """The pid in a lock holder's line ('pid 123 on host')."""
    match = re.match(r"pid (\d+)", holder)
    return int(match[1]) if match else None


def start_background_relay(config: Config) -> subprocess.Popen:
    """`mailroot serve` in its own session, detached from this terminal."""
    command = [sys.executable, "-m", "relay.cli", "serve"]
    if config.source:
        command += ["-c", str(config.source)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return proc
