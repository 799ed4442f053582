"""What DKIM signing costs per message: 2 KB messages through the relay's own intake (parse,
Received header, signing, durable commit to Queue) unsigned, signed with rsa-sha256 (2048
bits) and with ed25519-sha256, interleaved in the same run.

`python -m bench --only dkim` runs it with the other workloads' machinery; it is also in the
full run, so its figures sit beside the relay figures.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.core import Workload, spread
from bench.load import SENDER, message
from relay.core.config import Config, DkimKey, Domain
from relay.core.dkim import Signer, load_keys
from relay.core.intake import Intake, Submission
from relay.core.message import Message
from relay.core.store import Mailroot
from relay.ops import dkim_keys

SIGNERS = {"rsa-2048": "rsa-sha256", "ed25519": "ed25519-sha256"}
SYSTEMS = ["unsigned", *SIGNERS]
SIGNING_DOMAIN = SENDER.rsplit("@", 1)[1]


def bench_config(home: Path, system: str) -> Config:
    """A mailroot under `home`; for a signing system, a fresh key for the bench sender."""
    dkim: dict[Domain, list[DkimKey]] = {}
    if system in SIGNERS:
        algorithm = SIGNERS[system]
        key_file = home / f"{system}.key"
        dkim_keys.write_private(key_file, dkim_keys.generate(algorithm, 2048))
        dkim = {Domain(SIGNING_DOMAIN): [DkimKey("bench", str(key_file), algorithm)]}
    return Config(mailroot=str(home / "mailroot"), hostname="relay.bench.test", dkim=dkim)


def signing_cost(count: int):
    def measure(system: str, ctx) -> dict[str, float]:
        home = ctx.home(f"dkim-{system}-")
        config = bench_config(home, system)
        store = Mailroot(config.root)
        store.ensure()
        intake = Intake(config, store)
        signer = Signer(load_keys(config))
        messages = [message(n, 2000) for n in range(count)]
        sign_ms = []
        for data in messages if system in SIGNERS else []:  # signing alone, parsed messages
            parsed = Message.parse(data)
            began = time.perf_counter()
            signer.sign(parsed)
            sign_ms.append((time.perf_counter() - began) * 1000)
        accept_ms = []
        for n, data in enumerate(messages):  # the whole intake, commit (fsyncs) included
            began = time.perf_counter()
            intake.accept(Submission(data, SENDER, ["sink@remote.example"], f"bench {n}"))
            accept_ms.append((time.perf_counter() - began) * 1000)
        signing = spread(sign_ms, "ms to sign") if sign_ms else {}
        return {**signing, **spread(accept_ms, "ms intake"),
                "intake msg/s": count / (sum(accept_ms) / 1000)}
    return measure


def workload(count: int) -> Workload:
    return Workload(f"DKIM signing at intake, {count} × 2 KB", SYSTEMS, signing_cost(count),
                    ["unsigned"])
