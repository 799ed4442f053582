"""`python -m bench`: every workload, interleaved across systems, 3 runs, the relay workloads
through each next hop (`--hops`); a table and JSON."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import postfix as postfixmod
from bench.core import run, table, write_json
from bench.load import smtp_source_path
from bench.sink import Hop, Sink, hops
from bench.workloads import Context, Params, all_workloads

QUICK = Params(smtp_count=300, big_count=60, pickup_count=300, latency_samples=10,
               queue_count=5000, idle_seconds=3.0, console_seconds=3.0, dkim_count=200)
RESULTS = Path(__file__).resolve().parent / "results"


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def machine() -> dict[str, object]:
    postfix = None
    if shutil.which("postconf", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        postfix = subprocess.run(["postconf", "-h", "mail_version"], capture_output=True,
                                 text=True).stdout.strip() or None
    return {"host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "postfix": postfix,
            "smtp_client": "smtp-source" if smtp_source_path() else "smtplib threads"}


def describe_hops(params: Params, chosen: list[Hop]) -> list[dict[str, object]]:
    """Each next hop: what it is and, where they are smaller, the counts run through it."""
    described: list[dict[str, object]] = []
    for hop in chosen:
        counts = params.for_hop(hop)
        fewer = {} if counts == params else {
            "smtp_count": counts.smtp_count, "big_count": counts.big_count,
            "pickup_count": counts.pickup_count}
        described.append({**dataclasses.asdict(hop), "description": hop.description,
                          "fewer_messages": fewer or None})
    return described


def legend(described: list[dict[str, object]]) -> str:
    lines = ["Next hops (the sink every relay delivers to; ratios are to Postfix through the "
             "same hop):"]
    for hop in described:
        fewer = hop["fewer_messages"]
        note = (f" (fewer messages, its round trips are slow: {fewer['smtp_count']} × 2 KB, "
                f"{fewer['big_count']} × 100 KB, {fewer['pickup_count']} drained)"
                if isinstance(fewer, dict) else "")
        lines.append(f"- {hop['name']}: {hop['description']}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke test)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (default 3)")
    parser.add_argument("--only", metavar="WORDS", help="workloads whose name contains WORDS")
    parser.add_argument("--idle", type=float, metavar="SECONDS",
                        help="idle-CPU window for the scale workload (default 30, quick 3)")
    parser.add_argument("--work", metavar="DIR", help="work directory (default: a tmp dir)")
    parser.add_argument("--hops", metavar="NAMES", default="plain,pipelining,rtt20",
                        help="next hops the relays deliver to, comma-separated: plain (no "
                        "PIPELINING), pipelining, rtt<ms> (PIPELINING behind a round trip), "
                        "plain-rtt<ms> (default: plain,pipelining,rtt20)")
    parser.add_argument("--json", metavar="FILE", help="write results here "
                        "(default: bench/results/<time>.json)")
    args = parser.parse_args(argv)
    try:
        chosen = hops(args.hops)
    except ValueError as exc:
        parser.error(str(exc))
    if not chosen:
        parser.error("--hops names no next hop")
    params = dataclasses.replace(QUICK if args.quick else Params())
    if args.idle is not None:
        params.idle_seconds = args.idle
    workloads = [w for w in all_workloads(params, chosen)
                 if not args.only or args.only.lower() in w.name.lower()]
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.work))
    work.chmod(0o755)  # Postfix's daemons reach their queue below it
    began = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            sinks = {hop.name: stack.enter_context(Sink(hop)) for hop in chosen}
            ctx = Context(sinks, params, work, postfix_missing=postfixmod.available())
            for sink in sinks.values():
                log(f"next hop {sink.hop.name}: {sink.hop.description} on "
                    f"127.0.0.1:{sink.port}")
            log(f"postfix: {ctx.postfix_missing or 'available'}")
            rows = run(workloads, ctx, args.runs, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    described = describe_hops(params, chosen)
    print(f"\n{legend(described)}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else RESULTS / f"{stamp}.json"
    write_json(out, rows, {"command": " ".join(["python -m bench", *sys.argv[1:]]),
                           "quick": args.quick, "runs": args.runs,
                           "params": dataclasses.asdict(params), "hops": described,
                           "machine": machine(),
                           "seconds": round(time.monotonic() - began, 1)})
    print(f"\n{len(rows)} figures in {time.monotonic() - began:.0f} s; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
