"""The long crash run: `python -m bench.crash [--kills 25] [--seed N] [--json out.json]`.

A real relay under Pickup and SMTP load (remote mail through a smart host to an aiosmtpd sink,
local mail to Drop) is killed with SIGKILL, either one child process (which its supervisor
starts again) or the whole process group (then started again); then every accepted message
is looked for by its token (see tests/crash_support.py for what counts as accepted and as in
flight). Prints lost (must be 0) and each duplicate with why it was allowed; exits 1 if
anything was lost, duplicated without being in flight, or left wrong (a "missing" or
"damaged" reason in Badmail among them).

When the kills come:
  (default)        at random moments;
  --at OPERATION   right after a file operation of the store, e.g. --at "rename Queue/*.env"
                   (repeatable; --at all: each step of intake, delivery, bounce and
                   recycling in turn; see relay/core/faults.py and docs/store-protocol.md);
  --startup        the whole relay, within --gap seconds of each of --kills starts, while
                   Pickup and SMTP mail keeps arriving (and the Pickup taker waits
                   --slow-commit seconds between a commit's message file and its envelope).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.crash_support import OPERATIONS, crash_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__)
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--pickup", type=int, default=1500, help="Pickup files")
    parser.add_argument("--smtp", type=int, default=1500, help="SMTP messages")
    parser.add_argument("--clients", type=int, default=5, help="SMTP client threads")
    parser.add_argument("--queued", type=int, default=0,
                        help="deferred messages parked in Queue behind the load")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--child-share", type=float, default=0.5,
                        help="odds that a kill is of one child process, not the whole group")
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument("--at", action="append", default=[], metavar="OPERATION",
                        help='kill right after this file operation ("all": each in turn)')
    parser.add_argument("--startup", action="store_true",
                        help="kill the whole relay while it starts, mail arriving")
    parser.add_argument("--gap", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="seconds between kills (with --startup: after each start)")
    parser.add_argument("--slow-commit", type=float, default=0.0, metavar="SECONDS",
                        help="the Pickup taker's wait between message file and envelope")
    args = parser.parse_args(argv)
    gap = tuple(args.gap or ((0.0, 0.6) if args.startup else (0.2, 1.5)))
    kill_at = OPERATIONS if args.at == ["all"] else tuple(args.at)
    # a load that lasts as long as the kills (a restart takes a second or two; aimed kills
    # wait for their operation): these end it once the kills are done
    seconds = args.kills * (sum(gap) / 2 + (4.0 if args.startup or kill_at else 0.0))
    with tempfile.TemporaryDirectory(prefix="mailroot-crash-") as tmp:
        report = crash_run(Path(tmp), kills=args.kills, pickup=args.pickup, smtp=args.smtp,
                           clients=args.clients, load_seconds=seconds,
                           gap=gap, seed=args.seed, drain_timeout=120,
                           queued=args.queued, child_share=args.child_share,
                           kill_at=kill_at, startup=args.startup,
                           slow_commit=args.slow_commit)
    print(report.summary())
    print(f"lost: {len(report.lost)}", *report.lost[:20], sep="\n  ")
    print(f"duplicates: {len(report.duplicates)} "
          f"({len(report.duplicates) / max(1, report.kills):.2f} per kill)")
    for why, count in Counter(report.explained.values()).items():
        print(f"  {count} x {why}")
    for key, why in sorted(report.explained.items())[:20]:
        print(f"    {key[0]} to {key[1]}: {report.duplicates[key]} copies; {why}")
    for key in report.unexplained[:20]:
        print(f"  NOT in flight at any kill: {key} x{report.duplicates[key]}")
    for problem in report.problems[:20]:
        print(f"problem: {problem}")
    if args.json:
        data = dataclasses.asdict(report)
        data["lost"] = [list(k) for k in report.lost]
        data["unexplained"] = [list(k) for k in report.unexplained]
        data["duplicates"] = [[*k, n, report.explained.get(k)]
                              for k, n in report.duplicates.items()]
        del data["explained"]
        args.json.write_text(json.dumps(data, indent=1))
    return 1 if report.lost or report.unexplained or report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
