"""A crash run: a real `mailroot serve` under Pickup and SMTP load, remote mail delivered
through a smart host to a real aiosmtpd sink (offering PIPELINING, so a kill may come between
a pipelined transaction's commands and their replies) and local mail to Drop, killed with SIGKILL at
random moments and restarted; then every accepted message is looked for, by the unique token
header each carries, per recipient.

One remote recipient in ten is refused by the sink (550): that recipient must end in Badmail
with a reason, and the sender (local) must get an NDR in Drop.

Accepted: an SMTP message once the client has its 250 (a client never resends: a message
whose reply never came gets no second copy, so SMTP intake cannot duplicate); a Pickup file
once it is written (every one is taken at last: the run waits for Pickup to empty).

In flight at a kill (the only duplicates allowed), seen once the process is dead and before
it is restarted:
- a Pickup file in tmp/pickup: taken, maybe committed, not yet removed, so taken again;
- a (token, recipient) the sink had already received while its Queue entry still existed:
  delivered, the result not yet written, so delivered again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import signal
import smtplib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from relay.core.bounce import read_reason
from relay.core.store import Envelope
from tests.conftest import RelayProcess, wait_for
from tests.queue_fill import fill_queue
from tests.smtpsink import Sink

TOKEN = re.compile(rb"^X-Crash-Token: (\S+?)\r?$", re.M)
RECEIVER = re.compile(rb"^X-Receiver: (\S+?)\r?$", re.M)
LOCAL, REMOTE = "yourdomain.com", "remote.example"

Key = tuple[str, str]  # (token, recipient)


def recipients(number: int) -> list[str]:
    """Local only, remote only, or both (split between Drop and the Queue)."""
    return [f"u{number}@{d}" for d in ((LOCAL,), (REMOTE,), (LOCAL, REMOTE))[number % 3]]


def refused_by_sink(count: int) -> dict[str, str]:
    return {f"u{n}@{REMOTE}": "550 5.1.1 no such user" for n in range(7, count, 10)}


def message(token: str, rcpts: list[str], number: int) -> bytes:
    return (f"From: app@{LOCAL}\r\nTo: {', '.join(rcpts)}\r\nSubject: crash {token}\r\n"
            f"X-Crash-Token: {token}\r\n\r\n" + "body line\r\n" * (number % 40 + 1)).encode()


def tokens_in(data: bytes) -> list[str]:
    return [t.decode() for t in TOKEN.findall(data)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Load(threading.Thread):
    """Bounded in count and time; records what was accepted, per token its recipients."""

    def __init__(self, count: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.count, self.seconds = count, seconds
        self.began = time.monotonic()
        self.deadline = self.began + seconds * 3  # a hard bound: the relay may be slow
        self.accepted: dict[str, list[str]] = {}
        self.unacknowledged: set[str] = set()  # sent, no 250 seen: may or may not be kept
        self.enough = threading.Event()  # set: stop early (the kills aimed at are done)

    def going(self) -> bool:
        return time.monotonic() < self.deadline and not self.enough.is_set()

    def pace(self, done: int) -> None:
        """Spread the load over about `seconds`, so the kills fall while it runs."""
        ahead = self.began + self.seconds * done / self.count - time.monotonic()
        time.sleep(max(0.0, min(ahead, 1.0)))


class PickupLoad(Load):
    """Files written aside, then renamed into Pickup, in bursts of 20."""

    def __init__(self, root: Path, count: int, seconds: float) -> None:
        super().__init__(count, seconds)
        self.root = root

    def run(self) -> None:
        staging = self.root.parent / "staging"
        staging.mkdir(exist_ok=True)
        for number in range(self.count):
            if not self.going():
                break
            token, rcpts = f"p{number}", recipients(number)
            aside = staging / f"{token}.eml"
            aside.write_bytes(message(token, rcpts, number))
            os.rename(aside, self.root / "Pickup" / f"{token}.eml")
            self.accepted[token] = rcpts
            if number % 20 == 19:
                self.pace(number + 1)


class SmtpLoad(Load):
    """One smtplib client: up to 10 messages a connection, a new token for every try."""

    def __init__(self, name: str, port: list[int], count: int, seconds: float) -> None:
        super().__init__(count, seconds)
        self.name, self.port = name, port
        self.refused: dict[str, int] = {}  # token -> the reply code it was refused with

    def run(self) -> None:
        numbers = itertools.count()
        while self.going():
            try:
                client = smtplib.SMTP("127.0.0.1", self.port[0], timeout=5)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the relay is down: try again
                continue
            try:
                client.ehlo("load.test")
                for number in itertools.islice(numbers, 10):
                    if number >= self.count:
                        return
                    token, rcpts = f"{self.name}-{number}", recipients(number)
                    self.unacknowledged.add(token)
                    try:
                        refused = client.sendmail(f"app@{LOCAL}", rcpts,
                                                  message(token, rcpts, number))
                    except (smtplib.SMTPResponseException,
                            smtplib.SMTPRecipientsRefused) as exc:
                        self.unacknowledged.discard(token)
                        self.refused[token] = getattr(exc, "smtp_code", 550)
                        break
                    self.unacknowledged.discard(token)
                    self.accepted[token] = [r for r in rcpts if r not in refused]
                    self.pace(number + 1)
            except (OSError, smtplib.SMTPException):
                pass  # killed mid-session: that message stays unacknowledged
            finally:
                client.close()


@dataclass
class Snapshot:
    """What a kill left: Pickup files taken but not finished; deliveries not yet recorded."""
    taken: set[str]
    delivered_unrecorded: set[Key]


@dataclass
class Tally:
    seen: Counter = field(default_factory=Counter)  # (token, rcpt) -> copies kept or delivered
    reports: Counter = field(default_factory=Counter)  # token -> reports (NDRs) in Drop
    bounced: set[str] = field(default_factory=set)  # tokens with a recipient in Badmail
    problems: list[str] = field(default_factory=list)


def sink_keys(sink: Sink) -> Counter:
    with sink.lock:
        received = list(sink.messages)
    found: Counter = Counter()
    for got in received:
        for token in tokens_in(got.data):
            found.update((token, r) for r in got.recipients)
    return found


def queued_keys(root: Path, parked: frozenset[str] = frozenset()) -> set[Key]:
    """Pending (token, recipient) of committed Queue entries (not the parked ones)."""
    keys: set[Key] = set()
    for env_path in (root / "Queue").glob("*.env"):
        if env_path.stem in parked:
            continue
        try:
            envelope = Envelope.from_json(env_path.read_bytes())
            data = env_path.with_suffix(".eml").read_bytes()
        except (OSError, ValueError):
            continue
        for token in tokens_in(data):
            keys.update((token, r.address) for r in envelope.recipients)
    return keys


def snapshot(root: Path, sink: Sink, parked: frozenset[str]) -> Snapshot:
    """What was in flight just after a kill. After a kill of one child the others run on,
    so a Pickup file may be taken on between listing tmp/pickup and reading it: its taker
    is alive, so it was not in flight."""
    taken: set[str] = set()
    for path in (root / "tmp" / "pickup").glob("*"):
        try:
            taken.update(tokens_in(path.read_bytes()))
        except FileNotFoundError:
            continue
    return Snapshot(taken, set(sink_keys(sink)) & queued_keys(root, parked))


def unparked(root: Path, parked: frozenset[str]) -> list[str]:
    """Names in Queue other than the parked messages' files."""
    return [name for name in os.listdir(root / "Queue") if name.split(".")[0] not in parked]


def tally(root: Path, sink: Sink, parked: frozenset[str]) -> Tally:
    """Where each (token, recipient) ended: the sink, Drop, Badmail (with a reason)."""
    result = Tally(seen=sink_keys(sink))
    for eml in (root / "Drop").glob("*.eml"):
        data = eml.read_bytes()
        if data.startswith(b"X-Sender: <>\r\n"):  # a report, quoting the original's header
            result.reports.update(set(tokens_in(data)))
            continue
        for token in tokens_in(data):
            result.seen.update((token, r.decode()) for r in RECEIVER.findall(data))
    for bad in (root / "Badmail").glob("*.BAD"):
        reason = read_reason(bad)
        if not reason:
            result.problems.append(f"Badmail/{bad.name} has no reason")
        elif any(word in reason for word in ("missing", "damaged", "cannot be read")):
            result.problems.append(f"Badmail/{bad.name}: {reason}")  # nothing here damages
        envelope = Envelope.from_json(bad.with_suffix(".env").read_bytes())
        for token in tokens_in(bad.with_suffix(".eml").read_bytes()):
            result.bounced.add(token)
            result.seen.update((token, r.address) for r in envelope.recipients
                               if r.state == "failed")
    for leftover in unparked(root, parked):
        result.problems.append(f"Queue/{leftover} is left after the queue drained")
    still = {name[:-4] for name in os.listdir(root / "Queue") if name.endswith(".env")}
    if parked - still:
        result.problems.append(f"{len(parked - still)} of the {len(parked)} parked messages "
                               "are gone from Queue")
    return result


@dataclass
class Report:
    seed: int
    kills: int
    accepted_pickup: int
    accepted_smtp: int
    unacknowledged_smtp: int
    lost: list[Key]
    duplicates: dict[Key, int]
    explained: dict[Key, str]  # duplicate -> why it was in flight
    unexplained: list[Key]
    problems: list[str]
    child_kills: int  # of the kills, those of one child process (the others: the whole group)
    bounced: int  # accepted messages with a recipient the sink refused, in Badmail
    duplicate_reports: int  # NDRs sent twice (a bounce in flight at a kill)
    refused: dict[int, int]
    seconds: float
    at_operations: dict[str, int] = field(default_factory=dict)  # kills per file operation
    not_reached: list[str] = field(default_factory=list)  # operations no process came to

    def summary(self) -> str:
        reasons = Counter(self.explained.values())
        return (f"seed={self.seed} kills={self.kills} (of one child: {self.child_kills}) "
                f"accepted: pickup={self.accepted_pickup} "
                f"smtp={self.accepted_smtp} (no 250 seen: {self.unacknowledged_smtp}; "
                f"refused with a reply: {self.refused or 0}) lost={len(self.lost)} "
                f"duplicates={len(self.duplicates)} "
                f"({len(self.duplicates) / max(1, self.kills):.2f} per kill; "
                f"{dict(reasons) or 'none'}) "
                f"unexplained={len(self.unexplained)} problems={len(self.problems)} "
                f"bounced={self.bounced} (NDRs twice: {self.duplicate_reports}) "
                + (f"at file operations: {self.at_operations} "
                   f"(not reached: {self.not_reached or 'none'}) " if self.at_operations
                   or self.not_reached else "")
                + f"in {self.seconds:.1f}s")


# file operations a kill is aimed at by default (`kill_at`): each step of intake, delivery,
# bounce and recycling (see docs/store-protocol.md), named as relay.core.faults matches them
OPERATIONS = ("rename tmp/pickup/*", "rename Queue/*.eml", "rename Queue/*.delivered",
              "rename Queue/*.env", "zero *", "rename Drop/*.eml", "link Badmail/*.eml",
              "unlink tmp/pickup/*", "rename tmp/*.spent", "rename Badmail/*.BAD",
              "write tmp/*", "unlink Queue/*.env", "link tmp/spare-*", "synced *")


class Faults:
    """The fault file a relay started with MAILROOT_FAULTS reads (relay/core/faults.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def arm(self, **fault: object) -> None:
        aside = self.path.with_suffix(".new")
        aside.write_text(json.dumps(fault))
        os.rename(aside, self.path)  # read whole or not at all

    def fired(self, timeout: float) -> bool:
        """Whether a process acted on the fault (a kill removes the file) within timeout;
        if not, it is taken back."""
        deadline = time.monotonic() + timeout
        while self.path.exists():
            if time.monotonic() > deadline:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                return False
            time.sleep(0.005)
        return True


def crash_run(tmp: Path, *, kills: int, pickup: int, smtp: int, clients: int,
              load_seconds: float, gap: tuple[float, float], seed: int | None = None,
              drain_timeout: float = 60, queued: int = 0, child_share: float = 0.5,
              kill_at: tuple[str, ...] = (), startup: bool = False,
              slow_commit: float = 0.0) -> Report:
    """The whole run; `gap` bounds the random time the relay runs between kills; `queued`
    deferred messages (next attempt a day away) are parked in Queue behind the load and
    must all still be there at the end. A kill is of one child process (the supervisor
    starts it again) with `child_share` odds, else of the whole process group (then the
    relay is started again). When:
    - at random moments (the default);
    - `kill_at`: right after a file operation, each kill aimed at the next of these (globs
      over "<operation> <path>", see relay/core/faults.py), at the 1st to 20th time a process
      comes to it;
    - `startup`: the whole relay, `gap` seconds after each start (while it recovers,
      reloads its window and takes the Pickup backlog), mail arriving all the while;
      `slow_commit` seconds pass in the Pickup taker between a commit's message file and
      its envelope (the window in which a start-up once lost a message)."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    started = time.monotonic()
    sink = Sink(pipelining=True)  # as real MXes: the transaction is pipelined, so a kill
    sink.rcpt_replies.update(refused_by_sink(max(pickup, smtp)))  # may come mid-pipeline
    port = [free_port()]
    root = tmp / "mailroot"
    config = tmp / "mailroot.yaml"
    config.write_text(yaml.safe_dump({
        "mailroot": str(root), "hostname": "relay.test",
        "domains": {"local": {"default": LOCAL}},
        "smtp": {"listen": [f"127.0.0.1:{port[0]}"], "relay": {"allow": ["127.0.0.0/8"]}},
        "pickup": {"rescan": "1s", "settle": "1s"},
        "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": "1s"},
        "delivery": {"smarthost": f"127.0.0.1:{sink.port}", "retry": ["1s"] * 4,
                     "timeout": "5s"}}))
    parked = frozenset(fill_queue(root, queued, recipient=f"parked@{REMOTE}"))
    faults = Faults(tmp / "faults.json")
    if slow_commit:
        faults.arm(match="rename Queue/*.eml", process="pickup", action="sleep",
                   seconds=slow_commit)
    relay = RelayProcess(config, root, own_group=True,
                         env={"MAILROOT_FAULTS": str(faults.path)}).start(timeout=30)
    loads: list[Load] = [PickupLoad(root, pickup, load_seconds)]
    loads += [SmtpLoad(f"s{n}", port, smtp // clients, load_seconds) for n in range(clients)]
    for load in loads:
        load.start()
    flying: list[Snapshot] = []
    child_kills = 0
    at_operations: Counter = Counter()
    not_reached: list[str] = []
    try:
        for number in range(kills):
            group = startup or rng.random() >= child_share
            if kill_at:
                operation = kill_at[number % len(kill_at)]
                faults.arm(match=operation, after=rng.randint(1, 20),
                           action="kill-group" if group else "kill")
                if not faults.fired(timeout=15):
                    not_reached.append(operation)
                    continue
                at_operations[operation] += 1
                if group:
                    relay.stop(signal.SIGKILL)  # reaps it: the group is gone
            else:
                time.sleep(rng.uniform(*gap))
                children = relay.children()
                group = group or not children
                if group:
                    relay.kill_group()
                else:
                    os.kill(rng.choice(children), signal.SIGKILL)
            time.sleep(0.1)  # what the sink had fully read before the kill is recorded
            flying.append(snapshot(root, sink, parked))
            if group:
                relay.start(timeout=30)
            else:
                child_kills += 1  # (the supervisor waits longer before starting it again)
        for load in loads:
            if kill_at or startup:  # the load ran as long as the kills needed it
                load.enough.set()
            load.join(timeout=load_seconds * 3 + 30)
            assert not load.is_alive(), "a load thread did not finish in time"
        with contextlib.suppress(FileNotFoundError):
            faults.path.unlink()  # the slow commits end: the backlog drains at full pace
        wait_for(lambda: not any((root / "Pickup").iterdir())
                 and not any((root / "tmp" / "pickup").iterdir())
                 and not unparked(root, parked), timeout=drain_timeout, interval=0.1)
    finally:
        relay.stop()
        sink.stop()
    report = account(seed, kills, child_kills, loads, flying, tally(root, sink, parked),
                     time.monotonic() - started)
    report.at_operations, report.not_reached = dict(at_operations), not_reached
    return report


def account(seed: int, kills: int, child_kills: int, loads: list[Load],
            flying: list[Snapshot], found: Tally, seconds: float) -> Report:
    accepted = {(token, r) for load in loads for token, rcpts in load.accepted.items()
                for r in rcpts}
    taken = set().union(*(s.taken for s in flying))
    unrecorded = set().union(*(s.delivered_unrecorded for s in flying))
    duplicates = {k: n for k, n in found.seen.items() if n > 1}
    explained = {}
    for key in duplicates:
        if key[0] in taken:
            explained[key] = "Pickup file taken, not finished at a kill"
        elif key in unrecorded:
            explained[key] = "delivered, not yet recorded at a kill"
    smtp = [load for load in loads if isinstance(load, SmtpLoad)]
    refused = {t: code for load in smtp for t, code in load.refused.items()}
    kept = {token for token, _ in found.seen}
    problems = found.problems + [f"{t} was refused with {code} but kept"
                                 for t, code in refused.items() if t in kept]
    accepted_tokens = {token for token, _ in accepted}
    problems += [f"{t} is in Badmail but its sender got no NDR"
                 for t in sorted(found.bounced & accepted_tokens) if not found.reports[t]]
    return Report(
        seed=seed, kills=kills, child_kills=child_kills,
        accepted_pickup=sum(len(lo.accepted) for lo in loads if isinstance(lo, PickupLoad)),
        accepted_smtp=sum(len(load.accepted) for load in smtp),
        unacknowledged_smtp=sum(len(load.unacknowledged) for load in smtp),
        lost=sorted(k for k in accepted if found.seen[k] == 0),
        duplicates=duplicates, explained=explained,
        unexplained=sorted(set(duplicates) - set(explained)),
        problems=problems, bounced=len(found.bounced & accepted_tokens),
        duplicate_reports=sum(1 for n in found.reports.values() if n > 1), refused=dict(Counter(refused.values())), seconds=seconds)
