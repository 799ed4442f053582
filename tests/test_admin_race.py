"""Operators racing each other and the relay: no message lost, none duplicated."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from relay.admin import Admin
from relay.config import load
from relay.store import QUEUE, Mailroot
from tests.admin_support import fail_delivery, submit

COMMITTED = {"Queue": ".env", "Hold": ".env", "Badmail": ".BAD", "Trash": ".env",
             "Drop": ".eml"}


def tokens_by_folder(root: Path) -> Counter:
    """Each message's token, counted once per committed entry in any folder."""
    seen: Counter = Counter()
    for folder, marker in COMMITTED.items():
        for path in (root / folder).glob(f"*{marker}"):
            data = path.with_suffix(".eml").read_bytes()
            seen.update(set(re.findall(rb"race-token-\d+", data)))
    return seen


def test_500_operations_on_100_messages_lose_and_duplicate_nothing(relay) -> None:
    r = relay()
    ids = submit(r, "user@remote.example", 100, "race")
    config = load(r.config)
    store = Mailroot(r.root)
    verbs = ["requeue", "hold", "release", "delete", "undelete", "retry"]
    rng = random.Random(5)
    plan = [(rng.choice(verbs), rng.sample(ids, 3)) for _ in range(500)]
    outcomes: Counter = Counter()

    def operator(part: list[tuple[str, list[str]]]) -> None:
        admin = Admin(config, wait=0.5)
        for verb, chosen in part:
            result = getattr(admin, verb)(chosen)
            outcomes.update(["done"] * len(result.done))
            outcomes.update(reason.split(":")[0] for reason in result.problems.values())

    def bouncer(stop: threading.Event) -> None:
        """Plays the relay's part: claims queued messages and fails some to Badmail."""
        while not stop.is_set():
            queued = store.ids(QUEUE)
            if queued:
                try:
                    fail_delivery(r.root, rng.choice(queued))
                    outcomes["bounced"] += 1
                except (AssertionError, FileNotFoundError):
                    outcomes["bouncer-lost-race"] += 1  # an operator had it
            time.sleep(0.005)

    stop = threading.Event()
    threads = [threading.Thread(target=operator, args=(plan[i::4],)) for i in range(4)]
    threads.append(threading.Thread(target=bouncer, args=(stop,)))
    cli = [subprocess.Popen([sys.executable, "-m", "relay.cli", verb, *ids[k::7], "-c",
                             str(r.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
           for k, verb in enumerate(["hold", "release", "requeue"])]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 40
    for thread in threads[:4]:
        thread.join(max(0.1, deadline - time.monotonic()))
    stop.set()
    threads[4].join(5)
    for proc in cli:
        assert proc.wait(30) in (0, 1)
    assert not any(t.is_alive() for t in threads)

    seen = tokens_by_folder(r.root)
    assert sorted(seen) == sorted(f"race-token-{i}".encode() for i in range(100))
    assert set(seen.values()) == {1}, [t for t, n in seen.items() if n > 1]
    assert not list(r.folder("Drop").iterdir())
    assert outcomes["done"] > 200 and outcomes["bounced"] > 0, outcomes
    for folder, marker in COMMITTED.items():  # no half-moved leftovers
        for eml in (r.root / folder).glob("*.eml"):
            assert eml.with_suffix(marker).exists(), eml
