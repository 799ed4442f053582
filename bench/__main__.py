"""`python -m bench`: every workload, interleaved across systems, 3 runs; a table and JSON."""

from __future__ import annotations

import argparse
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
from bench.sink import Sink
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke test)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (default 3)")
    parser.add_argument("--only", metavar="WORDS", help="workloads whose name contains WORDS")
    parser.add_argument("--idle", type=float, metavar="SECONDS",
                        help="idle-CPU window for the scale workload (default 30, quick 3)")
    parser.add_argument("--work", metavar="DIR", help="work directory (default: a tmp dir)")
    parser.add_argument("--json", metavar="FILE", help="write results here "
                        "(default: bench/results/<time>.json)")
    args = parser.parse_args(argv)
    params = dataclasses.replace(QUICK if args.quick else Params())
    if args.idle is not None:
        params.idle_seconds = args.idle
    workloads = [w for w in all_workloads(params)
                 if not args.only or args.only.lower() in w.name.lower()]
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.work))
    work.chmod(0o755)  # Postfix's daemons reach their queue below it
    began = time.monotonic()
    try:
        with Sink() as sink:
            ctx = Context(sink, params, work, postfix_missing=postfixmod.available())
            log(f"sink on 127.0.0.1:{sink.port}; postfix: "
                f"{ctx.postfix_missing or 'available'}")
            rows = run(workloads, ctx, args.runs, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else RESULTS / f"{stamp}.json"
    write_json(out, rows, {"command": " ".join(["python -m bench", *sys.argv[1:]]),
                           "quick": args.quick, "runs": args.runs,
                           "params": dataclasses.asdict(params), "machine": machine(),
                           "seconds": round(time.monotonic() - began, 1)})
    print(f"\n{len(rows)} figures in {time.monotonic() - began:.0f} s; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
