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

from relay.core.config_loader import load
from relay.core.store import QUEUE, Mailroot
from relay.ops.admin import Admin
from tests.admin_support import submit
from tests.conftest import wait_for
from tests.test_delivery import delivery_config

COMMITTED = {"Queue": ".env", "Hold": ".env", "Badmail": ".BAD", "Trash": ".env"}


def tokens_by_folder(root: Path) -> Counter:
    """Each message's token, counted once per committed entry in any folder (Drop holds only
    the non-delivery reports to the local sender, which quote the token)."""
    seen: Counter = Counter()
    for folder, marker in COMMITTED.items():
        for path in (root / folder).glob(f"*{marker}"):
            data = path.with_suffix(".eml").read_bytes()
            seen.update(set(re.findall(rb"race-token-\d+", data)))
    return seen


def test_500_operations_on_100_messages_racing_real_delivery(relay, dns_server, sink) -> None:
    hop = sink()
    rng = random.Random(5)
    answers = ["250 OK", "451 4.3.0 try later", "550 5.1.1 no such user"]
    hop.data_reply = answers[1]  # all wait in Queue until the operators start
    r = relay(delivery_config(dns_server, hop.port))
    ids = submit(r, "user@remote.example", 100, "race")
    hop.data_reply = lambda: rng.choice(answers)
    config = load(r.config)
    verbs = ["requeue", "hold", "release", "delete", "undelete", "retry"]
    plan = [(rng.choice(verbs), rng.sample(ids, 3)) for _ in range(500)]
    outcomes: Counter = Counter()

    def operator(part: list[tuple[str, list[str]]]) -> None:
        admin = Admin(config, wait=0.5)
        for verb, chosen in part:
            result = getattr(admin, verb)(chosen)
            outcomes.update(["done"] * len(result.done))
            outcomes.update(reason.split(":")[0] for reason in result.problems.values())

    threads = [threading.Thread(target=operator, args=(plan[i::4],)) for i in range(4)]
    cli = [subprocess.Popen([sys.executable, "-m", "relay.cli", verb, *ids[k::7], "-c",
                             str(r.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
           for k, verb in enumerate(["hold", "release", "requeue"])]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 40
    for thread in threads:
        thread.join(max(0.1, deadline - time.monotonic()))
    for proc in cli:
        assert proc.wait(30) in (0, 1)
    assert not any(t.is_alive() for t in threads)
    hop.data_reply = "250 OK"  # let what is still queued drain
    wait_for(lambda: not Mailroot(r.root).ids(QUEUE), timeout=30)

    seen = tokens_by_folder(r.root)
    delivered = Counter(t for m in hop.messages for t in set(re.findall(rb"race-token-\d+", m.data)))
    assert all(n == 1 for n in delivered.values()), "delivered twice"
    total = seen + delivered
    assert sorted(total) == sorted(f"race-token-{i}".encode() for i in range(100)), "lost"
    twice = [t for t, n in total.items() if n > 1]
    where = {t: [p.name for f in COMMITTED for p in (r.root / f).glob("*.eml")
                 if t in p.read_bytes()] + (["sink"] if t in delivered else []) for t in twice}
    assert not twice, (where, [e for e in r.events() if any(
        x.split(".")[0] in str(e) for v in where.values() for x in v if x != "sink")])
    assert outcomes["done"] > 200 and delivered and seen, (outcomes, len(delivered))
    for folder, marker in COMMITTED.items():  # no half-moved leftovers
        for eml in (r.root / folder).glob("*.eml"):
            assert eml.with_suffix(marker).exists(), eml
