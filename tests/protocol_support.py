"""Drive the store's protocol (docs/store-protocol.md) one file operation at a time.

Each sequence of the document runs against a real mailroot with the relay's own parts
(intake, the Pickup taker, the queue manager's scheduler delivering to a real aiosmtpd sink,
the operator API). The store tells each file operation to its probes (`relay.core.store.did`); a
point is the n-th operation of one kind on one name (ids and tmp names made alike), so the
same point is found in every run.

- crash: the sequence runs in a forked process that SIGKILLs itself right after the point;
  then what a fresh relay does at its start runs (`start_afresh`), and `check` holds.
- pause: the sequence runs in a thread that waits at the point while a concurrent pass runs
  to its end in other objects on the same mailroot (as another process would); then the
  sequence goes on, and `check` holds (and, after a pass that only reads or recovers, the
  message is where the sequence puts it).

The invariant (`check`): every message (found by the token it carries) is committed
somewhere with its exact bytes, or was delivered; no quarantine and no `missing` reason; no
partial entry, no id committed twice, nothing left in Pickup or tmp/pickup.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import relay.core.store
from relay.core.bounce import quarantine
from relay.core.config import Config
from relay.core.config_loader import parse
from relay.core.events import EventLog
from relay.core.intake import Intake, Submission
from relay.core.logrotate import Rotation
from relay.core.store import (
    BADMAIL,
    DROP,
    HOLD,
    MARKER,
    MOVE_FOLDERS,
    PICKUP,
    QUEUE,
    READY_FILES,
    TRASH,
    Mailroot,
    json_fields,
)
from relay.ops.admin import Admin
from relay.pickup.watcher import PickupWatcher
from relay.queue.recovery import Recovery
from relay.queue.scheduler import Scheduler

LOCAL, REMOTE = "yourdomain.com", "remote.example"
SENDER = f"app@{LOCAL}"
TOKEN = re.compile(rb"X-Token: (\w+)")
_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{16}")
Point = tuple[str, int]  # (operation and name, which occurrence)
PLACES = (QUEUE, HOLD, BADMAIL, DROP, TRASH, "delivered")


@dataclass
class World:
    """A mailroot and the relay's parts on it, as one process of a relay holds them."""

    root: Path
    config: Config
    store: Mailroot
    events: EventLog
    intake: Intake
    pickup: PickupWatcher
    scheduler: Scheduler

    def admin(self, wait: float = 0.0) -> Admin:
        return Admin(self.config, wait=wait)

    def close(self) -> None:
        self.pickup.pool.shutdown(wait=True)
        self.scheduler.disk.shutdown(wait=True)
        self.events.close()


def world_config(root: Path, sink_port: int, local: str = LOCAL) -> Config:
    return parse(yaml.safe_dump({
        "mailroot": str(root), "hostname": "relay.test",
        "domains": {"local": {"default": local}},
        "smtp": {"listen": ["127.0.0.1:0"], "max_message_size": "64KiB"},
        "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": "1s"},
        "delivery": {"smarthost": f"127.0.0.1:{sink_port}", "timeout": "10s"},
        "admin": {"trash_retention": "1h"},
    }))


def world(root: Path, sink_port: int) -> World:
    config = world_config(root, sink_port)
    store = Mailroot(root, READY_FILES)
    store.ensure()
    events = EventLog(store.log_dir, None, Rotation.of(config.log))
    intake = Intake(config, store)
    pickup = PickupWatcher(config, store, intake, events, workers=1)
    pickup.claimed.mkdir(parents=True, exist_ok=True)
    return World(root, config, store, events, intake, pickup,
                 Scheduler(config, store, intake, events, workers=1))


def message(token: str, rcpts: list[str], size: int = 200) -> bytes:
    head = (f"From: {SENDER}\r\nTo: {', '.join(rcpts)}\r\nSubject: {token}\r\n"
            f"X-Token: {token}\r\n\r\n")
    return (head + "body line\r\n" * (size // 11 + 1)).encode()


def submit(w: World, token: str, rcpts: list[str]) -> str:
    """A message through intake (as a receiver commits it): its id."""
    return w.intake.accept(Submission(message(token, rcpts), SENDER, rcpts, "test")).id


def attempt(w: World, mid: str) -> None:
    """One delivery attempt by the queue manager, claim to release (Scheduler.attempt),
    then the retired files' disposal its release hands to a disk thread."""
    scheduler = Scheduler(w.config, w.store, w.intake, w.events, workers=1)

    async def run() -> None:
        scheduler.loop = asyncio.get_running_loop()
        await scheduler.attempt(mid)
        await scheduler.client.close()
    asyncio.run(run())
    scheduler.disk.shutdown(wait=True)


# --- the sequences of docs/store-protocol.md ---------------------------------------------------

@dataclass
class Sequence:
    """One sequence of the protocol: `setup` puts the mailroot in the state before it and
    returns what `run` needs; `after` is where each token is once it has run undisturbed."""

    name: str
    setup: Callable[[World], dict]
    run: Callable[[World, dict], None]
    after: dict[str, set[str]]
    may_vanish: frozenset[str] = frozenset()  # tokens the sequence removes on purpose
    damaged: frozenset[str] = frozenset()  # tokens the setup damages: quarantined is right
    # tokens of messages the sequence itself accepts, acknowledged only once it has
    # returned (a 250 after the commit): a crash at any point of it may lose them (the
    # client sends them again)
    told_on_return: frozenset[str] = frozenset()


def _pickup(w: World, token: str, rcpts: list[str], data: bytes | None = None) -> dict:
    (w.root / PICKUP / f"{token}.eml").write_bytes(data or message(token, rcpts))
    return {"name": f"{token}.eml"}


def _queued(w: World, token: str, rcpts: list[str], **changes: object) -> dict:
    mid = submit(w, token, rcpts)
    if changes:
        envelope = w.store.read_envelope(QUEUE, mid)
        for key, value in changes.items():
            setattr(envelope, key, value)
        w.store.update_envelope(QUEUE, envelope)
    return {"id": mid}


def _moved(w: World, token: str, action: str, *more: str) -> dict:
    """A queued message moved on by operator actions (hold, delete, a failed delivery)."""
    state = _queued(w, token, [f"{'bad' if action == 'bounce' else 'ok'}@{REMOTE}"])
    for step in (action, *more):
        if step == "bounce":
            attempt(w, state["id"])
        else:
            assert getattr(w.admin(), step)([state["id"]]).ok, step
    return state


def _act(action: str, **options: object) -> Callable[[World, dict], None]:
    def run(w: World, state: dict) -> None:
        result = getattr(w.admin(wait=5.0), action)([state["id"]], **options)
        assert result.ok, result.problems
    return run


def _take(w: World, state: dict) -> None:
    assert w.pickup._take(state["name"]) == "done"


def _set_aside(w: World) -> dict:
    os.mkfifo(w.root / PICKUP / "fifo.eml")
    return {"name": "fifo.eml"}


def _damaged(w: World) -> dict:
    state = _queued(w, "hurt", [f"ok@{REMOTE}"])
    path = w.store.path(QUEUE, state["id"], ".eml")
    path.write_bytes(path.read_bytes()[:-40])  # a disk fault: the file is cut short
    return state


def _interrupted_move(w: World) -> dict:
    """A hold killed after Hold was committed, before the Queue copy went."""
    state = _queued(w, "twice", [f"ok@{REMOTE}"])
    envelope = w.store.read_envelope(QUEUE, state["id"])
    w.store.commit(w.store.move_ops(QUEUE, HOLD, envelope)[:2])
    (w.root / QUEUE / "0000000000000001.eml").write_bytes(b"left by a crash")  # a partial
    return state


def _purge(w: World, state: dict) -> None:
    with w.store.claim(TRASH, state["id"]) as held:  # deleted two hours ago: past retention
        assert held
        record = json_fields(w.store.path(TRASH, state["id"], ".env").read_bytes())
        record["deleted_at"] = time.time() - 7200
        w.store.commit([relay.core.store.Write(w.store.path(TRASH, state["id"], ".env"),
                                          relay.core.store.json_bytes(record))])
    assert w.admin().purge_trash() == [state["id"]]


def _spares(w: World) -> dict:
    for n in range(2):  # two delivered messages' files, zeroed and kept as spares
        spent = w.store.tmp / f"{n}.spent"
        spent.write_bytes(message(f"gone{n}", [f"ok@{REMOTE}"]))
        w.store.recycle(spent)
    assert len(list(w.store.tmp.glob("spare-*"))) == 2
    return {}


def _make_ready(w: World, state: dict) -> None:
    """Ready files made from the spares (in this thread: its points in order), then a
    commit written into them."""
    w.store.ready_files = 2
    assert w.store._filling.acquire(blocking=False)
    w.store._make_ready()
    w.store.ready_files = 0  # none made again behind the commit, at a pool thread's pace
    state["id"] = submit(w, "fresh", [f"ok@{REMOTE}"])


def _recover(w: World, state: dict) -> None:
    list(w.store.recover())


OK, LATER, BAD = f"ok@{REMOTE}", f"later@{REMOTE}", f"bad@{REMOTE}"
SEQUENCES = [
    Sequence("intake-queue", lambda w: _pickup(w, "p", [OK]), _take, {"p": {QUEUE}}),
    Sequence("intake-drop-and-queue", lambda w: _pickup(w, "pd", [OK, f"u@{LOCAL}"]), _take,
             {"pd": {QUEUE, DROP}}),
    Sequence("intake-refused", lambda w: _pickup(w, "r", [], b"X-Token: r\r\nno header\r\n"),
             _take, {"r": {BADMAIL}}),
    Sequence("intake-too-large", lambda w: _pickup(w, "big", [OK], message("big", [OK], 70000)),
             _take, {"big": {BADMAIL}}),
    Sequence("intake-set-aside", _set_aside, _take, {}),
    Sequence("smtp-intake", lambda w: {},
             lambda w, s: s.update(id=submit(w, "s", [OK, f"u@{LOCAL}"])), {"s": {QUEUE, DROP}},
             told_on_return=frozenset({"s"})),
    Sequence("defer", lambda w: _queued(w, "d", [LATER]), lambda w, s: attempt(w, s["id"]),
             {"d": {QUEUE}}),
    Sequence("delay-notice", lambda w: _queued(w, "n", [LATER], queued_at=time.time() - 86400),
             lambda w, s: attempt(w, s["id"]), {"n": {QUEUE, DROP}}),
    Sequence("deliver", lambda w: _queued(w, "v", [OK]), lambda w, s: attempt(w, s["id"]),
             {"v": {"delivered"}}),
    Sequence("bounce", lambda w: _queued(w, "b", [BAD]), lambda w, s: attempt(w, s["id"]),
             {"b": {BADMAIL, DROP}}),
    Sequence("hold", lambda w: _queued(w, "h", [OK]), _act("hold"), {"h": {HOLD}}),
    Sequence("release", lambda w: _moved(w, "rl", "hold"), _act("release"), {"rl": {QUEUE}}),
    Sequence("retry-now", lambda w: _queued(w, "t", [LATER], next_attempt=time.time() + 3600),
             _act("retry"), {"t": {QUEUE}}),
    Sequence("requeue-badmail", lambda w: _moved(w, "rb", "bounce"), _act("requeue"),
             {"rb": {QUEUE, DROP}}),
    Sequence("requeue-drop", lambda w: {"id": submit(w, "rd", [f"u@{LOCAL}"])},
             lambda w, s: _requeue_routed_away(w, s), {"rd": {QUEUE}}),
    Sequence("requeue-refused", lambda w: _refused(w, "rr"), _act("requeue", force=True),
             {"rr": {QUEUE}}),
    Sequence("delete", lambda w: _queued(w, "x", [OK]), _act("delete"), {"x": {TRASH}}),
    Sequence("undelete", lambda w: _moved(w, "u", "delete"), _act("undelete"), {"u": {QUEUE}}),
    Sequence("purge", lambda w: _moved(w, "pg", "delete"), _purge, {"pg": set()},
             may_vanish=frozenset({"pg"})),
    Sequence("quarantine", _damaged, lambda w, s: _quarantined(w, s), {"hurt": {BADMAIL}},
             damaged=frozenset({"hurt"})),
    Sequence("spares-and-ready-files", _spares, _make_ready, {"fresh": {QUEUE}},
             told_on_return=frozenset({"fresh"})),
    Sequence("recovery", _interrupted_move, _recover, {"twice": {HOLD}}),
]


def _quarantined(w: World, state: dict) -> None:
    assert quarantine(w.store, QUEUE, state["id"])


def _refused(w: World, token: str) -> dict:
    """A Pickup file refused at intake (over the size limit of a smaller config), in
    Badmail without an envelope."""
    _pickup(w, token, [OK], message(token, [OK], 70000))
    _take(w, {"name": f"{token}.eml"})
    (mid,) = w.store.ids(BADMAIL)
    return {"id": mid}


def _requeue_routed_away(w: World, state: dict) -> None:
    """A Drop message requeued once its domain is no longer local (an operator's config
    edit): Drop -> Queue."""
    admin = Admin(world_config(w.root, 9, local="elsewhere.test"), wait=5.0)
    result = admin.requeue([state["id"]])
    assert result.ok, result.problems


# --- points, crashes, pauses ------------------------------------------------------------------

def label(operation: str, path: str, root: Path) -> str:
    name = os.path.relpath(path, root) if path else ""
    return f"{operation} {_ID.sub('<id>', name)}"


def explored(text: str, sequence: Sequence) -> bool:
    """Points of the sequence itself: a pool thread making ready files runs beside it at
    its own pace (its points are explored by the spares sequence, run in the main thread)."""
    if text.startswith("open "):
        return False  # a reader's, not a change
    if sequence.name == "spares-and-ready-files":
        return True
    return not (text.startswith("create ") or text.endswith(".ready"))


class Counting:
    """A probe that numbers the points as they come and acts at one of them."""

    def __init__(self, root: Path, sequence: Sequence, at: Point | None = None,
                 action: Callable[[], None] | None = None) -> None:
        self.root, self.sequence, self.at, self.action = root, sequence, at, action
        self.seen: Counter[str] = Counter()
        self.points: list[Point] = []
        self.lock = threading.Lock()

    def __call__(self, operation: str, path: str) -> None:
        text = label(operation, path, self.root)
        if not explored(text, self.sequence):
            return
        with self.lock:
            self.seen[text] += 1
            point = (text, self.seen[text])
            self.points.append(point)
        if point == self.at and self.action is not None:
            self.action()


def in_child(body: Callable[[], None], timeout: float = 30.0) -> int:
    """Run body in a forked process; its exit status (-signal if killed)."""
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            body()
            code = 0
        except BaseException:  # noqa: BLE001 - told by the exit code
            import traceback
            traceback.print_exc()
            code = 4
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the sequence did not end in time")
        time.sleep(0.002)


def points_of(root: Path, sequence: Sequence, sink_port: int) -> list[Point]:
    """Every point of a run of the sequence (in a child, so the mailroot is left as after
    setup... and thrown away by the caller)."""
    record = root.parent / f"{root.name}.points"

    def body() -> None:
        w = world(root, sink_port)
        probe = Counting(root, sequence)
        relay.core.store.PROBES.append(probe)
        sequence.run(w, state_of(root))
        record.write_text("\n".join(f"{n}\t{t}" for t, n in probe.points))

    assert in_child(body) == 0, f"{sequence.name} failed when run whole"
    return [(text, int(n)) for n, text in
            (line.split("\t") for line in record.read_text().splitlines())]


def prepare(root: Path, sequence: Sequence, sink_port: int) -> None:
    w = world(root, sink_port)
    try:
        state = sequence.setup(w)
    finally:
        w.close()
    (root / "state.yaml").write_text(yaml.safe_dump(state))


def state_of(root: Path) -> dict:
    return yaml.safe_load((root / "state.yaml").read_text()) or {}


def crash_at(root: Path, sequence: Sequence, point: Point, sink_port: int) -> None:
    """Run the sequence in a child killed by SIGKILL right after `point`."""
    def body() -> None:
        w = world(root, sink_port)
        relay.core.store.PROBES.append(Counting(root, sequence, point,
                                           lambda: os.kill(os.getpid(), signal.SIGKILL)))
        sequence.run(w, state_of(root))

    status = in_child(body)
    assert status == -signal.SIGKILL, f"{sequence.name}: {point} not reached ({status})"


def start_afresh(root: Path, sink_port: int) -> World:
    """What a relay's processes do at its start, in their order: the supervisor clears
    tmp/, the Pickup taker intakes what it had taken, the queue manager scans Queue and
    runs the recovery pass; the Pickup taker takes what waits in Pickup."""
    w = world(root, sink_port)
    w.store.clear_tmp()
    w.pickup._retry_claimed()
    w.scheduler._due_times(w.store.ids(QUEUE))
    recovery = Recovery(w.config, w.store, w.events)
    for folder, mid, what in w.store.recover():
        w.events.emit("recovered", id=mid, folder=folder, action=what)
    recovery.quarantine_held()
    for name in sorted(os.listdir(root / PICKUP)):
        w.pickup._take(name)
    return w


@dataclass
class Census:
    """Where each token is: committed folders (exact bytes checked), delivered; and what
    is wrong."""

    places: dict[str, set[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(self, data: bytes, place: str) -> None:
        for token in TOKEN.findall(data):
            self.places.setdefault(token.decode(), set()).add(place)


def census(root: Path, delivered: list[bytes]) -> Census:
    found = Census()
    store = Mailroot(root)
    committed: dict[str, list[str]] = {}
    for folder in MOVE_FOLDERS:
        marker = MARKER[folder]
        for path in (root / folder).iterdir():
            mid, _, ext = path.name.partition(".")
            if not (root / folder / f"{mid}{marker}").exists():
                found.problems.append(f"{folder}/{path.name}: left without its marker")
            elif f".{ext}" == marker:
                committed.setdefault(mid, []).append(folder)
    for mid, folders in committed.items():
        if len(folders) > 1:
            found.problems.append(f"{mid} committed in {folders}")
        for folder in folders:
            _count_entry(store, folder, mid, found)
    for path in (root / DROP).glob("*.eml"):
        found.add(path.read_bytes(), DROP)
    for data in delivered:
        found.add(data, "delivered")
    for folder in (PICKUP, "tmp/pickup"):
        for path in (root / folder).iterdir():
            found.problems.append(f"{folder}/{path.name} left untaken")
    log = root / "log" / "events.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        if json_fields(line.encode())["event"] == "quarantined":
            found.problems.append(f"quarantined: {line}")
    return found


def _count_entry(store: Mailroot, folder: str, mid: str, found: Census) -> None:
    base = store.root / folder / mid
    if folder == BADMAIL:
        reason = (base.with_suffix(".BAD")).read_text(errors="replace")
        if "missing" in reason.split("\n", 3)[2]:
            found.problems.append(f"Badmail/{mid}: {reason.splitlines()[2]}")
        if base.with_suffix(".eml").exists():
            found.add(base.with_suffix(".eml").read_bytes(), BADMAIL)
        elif "Kept as:" not in reason:  # a set-aside report: its entry may be still
            found.problems.append(f"Badmail/{mid} has no message file")  # in Pickup
        return
    envelope = json_fields(base.with_suffix(".env").read_bytes())
    try:
        data = base.with_suffix(".eml").read_bytes()
    except FileNotFoundError:
        found.problems.append(f"{folder}/{mid}.eml is missing")
        return
    if len(data) != envelope["size"] or (envelope.get("crc32")
                                         and zlib.crc32(data) != envelope["crc32"]):
        found.problems.append(f"{folder}/{mid}.eml is not the message its envelope names")
    found.add(data, folder)


def check(root: Path, sequence: Sequence, delivered: list[bytes], exact: bool = False,
          crashed: bool = False) -> list[str]:
    """What is wrong with the mailroot after the sequence (and recovery); `exact`: every
    token must also be just where the sequence puts it; `crashed`: the sequence never
    returned, so what it would have acknowledged on return may be gone."""
    found = census(root, delivered)
    problems = [p for p in found.problems  # quarantined: right for what setup damaged
                if not (sequence.damaged and p.startswith("quarantined"))]
    for token, places in sequence.after.items():
        where = found.places.get(token, set())
        if not where and token not in sequence.may_vanish and not (
                crashed and token in sequence.told_on_return):
            problems.append(f"{token} is lost")
        elif exact and where != places:
            problems.append(f"{token} is in {sorted(where)}, not {sorted(places)}")
    return problems
