"""The operator subcommands of `mailroot`: every verb of relay.ops.admin, for scripts and cron.

Exit codes: 0 done, 1 some id not found or not in a state for the action (named on stderr),
2 bad usage or config.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from relay.core.config import Config
from relay.core.fanout import cores
from relay.core.folderstats import FolderUsage, all_usage, disk_bytes, human_size, usage_table
from relay.core.store import (
    BADMAIL,
    DROP,
    HOLD,
    LISTING_SORTED_UP_TO,
    PICKUP,
    QUEUE,
    TRASH,
    Mailroot,
    json_bytes,
)
from relay.ops.actions import ActionResult
from relay.ops.admin import Admin
from relay.ops.audit import INLINE_IDS
from relay.ops.listing import MatchError, matching
from relay.ops.qshape import AGE_BUCKETS, ShapeRow
from relay.ops.queries import FolderParts, MessageSummary, NotFound
from relay.ops.refusals import top_refused

FOLDER_NAMES = {"queue": QUEUE, "badmail": BADMAIL, "drop": DROP, "pickup": PICKUP,
                "hold": HOLD, "trash": TRASH}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    delta = stamp - time.time()
    return "now" if delta <= 0 else f"in {_age(delta)}"


def format_row(row: MessageSummary) -> list[str]:
    """A message as postqueue -p shows it: id (! if held), size, age, sender; recipients."""
    mark = "!" if row.held else " "
    tried = f"{row.attempts} tr{'y' if row.attempts == 1 else 'ies'}"
    tries = f"{tried}, next {_when(row.next_attempt)}" if row.folder == QUEUE else \
        tried if row.attempts else ""
    lines = [f"{row.id or row.name}{mark} {row.size:>9} {_age(row.age):>5}  "
             f"<{row.sender}>  {tries}".rstrip()]
    if row.deleted_from:
        lines.append(f"    (deleted from {row.deleted_from})")
    if row.last_error:
        lines.append(f"    ({row.last_error})")
    for rcpt in row.recipients:
        status = f" {rcpt.status}" if rcpt.status else ""
        lines.append(f"    <{rcpt.address}> {rcpt.state}{status}")
    return lines


def cmd_queue(args: argparse.Namespace, admin: Admin) -> int:
    """Rows are written a chunk at a time as they are read (on every core): the first at
    once, a million in constant memory. Oldest first, unless the folder is too large to
    list and sort before the first line (then in directory order, and stderr says so)."""
    folder = FOLDER_NAMES[args.folder]
    render = partial(render_rows, store=admin.store, as_json=args.json)
    sort_up_to = math.inf if args.sort else 0 if args.unsorted else LISTING_SORTED_UP_TO
    try:
        listing = FolderParts(iter([render(matching(admin, folder, args.match))]), True) \
            if args.match else admin.folder_parts(folder, render, sort_up_to, workers=cores())
    except MatchError as exc:
        print(f"mailroot queue: bad --match: {exc}", file=sys.stderr)
        return 2
    if not (listing.oldest_first or args.unsorted):
        print(f"mailroot queue: over {LISTING_SORTED_UP_TO:,} in {folder}: listed in directory "
              "order as read (--sort: oldest first, once every name is listed)",
              file=sys.stderr, flush=True)
    write_parts(listing.parts, f"in {folder}", as_json=args.json)
    return 0


class Rendered(NamedTuple):
    text: str
    count: int
    size: int  # the bytes their files hold on disk (folderstats.disk_bytes)


def render_rows(rows: list[MessageSummary], store: Mailroot, as_json: bool = False
                ) -> Rendered:
    """Rows as `mailroot queue` prints them: postqueue -p's layout, or a JSON object a line;
    their size on disk as `summary` measures a folder (looked at here, where the rows are
    read: by every core for a large folder)."""
    if as_json:
        text = b"".join(json_bytes(row.to_dict()) + b"\n" for row in rows).decode()
    else:
        text = "".join("\n".join(format_row(row)) + "\n\n" for row in rows)
    size = sum(disk_bytes(store, folder, [r.id for r in rows if r.folder == folder])
               for folder in {r.folder for r in rows})
    return Rendered(text, len(rows), size)


def write_rows(rows: Iterable[MessageSummary], store: Mailroot, where: str,
               as_json: bool = False) -> None:
    write_parts([render_rows(list(rows), store, as_json)], where, as_json)


def write_parts(parts: Iterable[Rendered], where: str, as_json: bool = False) -> None:
    out = sys.stdout
    count = size = 0
    for part in parts:
        out.write(part.text)
        out.flush()  # each chunk as it is read: the first lines come at once
        count += part.count
        size += part.size
    if not as_json:
        out.write(f"-- {human_size(size)} on disk in {count:,} message{'s' * (count != 1)} "
                  f"{where}\n")


def cmd_show(args: argparse.Namespace, admin: Admin) -> int:
    try:
        if args.raw:
            sys.stdout.buffer.write(admin.raw(args.id))
            return 0
        detail = admin.show(args.id)
    except NotFound as exc:
        print(f"mailroot: {args.id}: {exc}", file=sys.stderr)
        return 1
    row = detail.summary
    print(f"Id:        {row.id}\nFolder:    {row.folder}{' (held)' if row.held else ''}")
    print(f"From:      <{row.sender}>\nSize:      {row.size}\nAge:       {_age(row.age)}")
    if row.folder == QUEUE:
        print(f"Next try:  {_when(row.next_attempt)}")
    for label, stamp in (("Notice at", detail.delay_notice_at),
                         ("Expires", detail.expires_at)):
        if stamp is not None:
            print(f"{label + ':':<11}{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stamp))}")
    if detail.reason:
        print(f"Reason:    {detail.reason}")
    print(f"Signed by: {', '.join(map(str, detail.signatures)) or 'not DKIM-signed'}")
    print("Recipients:")
    for line in format_row(row)[1:]:
        if line.startswith("    <"):
            print(line)
    if detail.attempts:
        print("Attempts:")
        for attempt in detail.attempts:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(attempt.time))
            print(f"    {stamp}  {attempt.host or '-'}  {attempt.reply}")
    print("Headers:")
    for name, value in detail.headers:
        print(f"    {name}: {value}")
    return 0


def report(result: ActionResult, verb: str) -> int:
    """A line per message (scripts read the ids), then the total on stderr, as postsuper
    prints it: "mailroot: held 1,310 messages; 8 were not (named above)"."""
    for mid in result.done:
        print(f"{verb} {mid}")
    for mid, reason in result.problems.items():
        print(f"mailroot: {mid}: {reason}", file=sys.stderr)
    done, missed = len(result.done), len(result.problems)
    total = f"mailroot: {verb.rstrip(':')} {done:,} message{'s' * (done != 1)}"
    if missed:
        total += f"; {missed:,} {'was' if missed == 1 else 'were'} not (named above)"
    print(total, file=sys.stderr)
    return 1 if result.problems else 0


def _ids_or_all(args: argparse.Namespace, everything: Callable[[], ActionResult],
                some: Callable[[list[str]], ActionResult]) -> ActionResult | None:
    if args.ids and getattr(args, "all", False):
        return None
    if args.ids:
        return some(args.ids)
    return everything() if args.all or getattr(args, "domain", None) else None


def cmd_requeue(args: argparse.Namespace, admin: Admin) -> int:
    result = _ids_or_all(
        args, lambda: admin.requeue_all(FOLDER_NAMES[args.folder], args.domain, args.reason,
                                        args.force),
        lambda ids: admin.requeue(ids, args.reason, args.force))
    if result is None:
        print("mailroot requeue: give message ids, or --all", file=sys.stderr)
        return 2
    return report(result, "requeued")


def cmd_retry(args: argparse.Namespace, admin: Admin) -> int:
    result = _ids_or_all(args, lambda: admin.retry_all(args.domain), admin.retry)
    if result is None:
        print("mailroot retry: give message ids, --all or --domain D", file=sys.stderr)
        return 2
    return report(result, "due now:")


def confirm_delete(count: int) -> bool:
    sys.stderr.write(f"Delete {count} message{'s' * (count != 1)} "
                     "(kept in Trash for admin.trash_retention)? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        print("mailroot: nothing deleted", file=sys.stderr)
        return False
    return True


def cmd_delete(args: argparse.Namespace, admin: Admin) -> int:
    if not args.ids:
        print("mailroot delete: give message ids or --match EXPR", file=sys.stderr)
        return 2
    if not args.yes and not confirm_delete(len(args.ids)):
        return 1
    return report(admin.delete(args.ids), "deleted")


def simple(method: str, verb: str) -> Callable[[argparse.Namespace, Admin], int]:
    def run_ids(args: argparse.Namespace, admin: Admin) -> int:
        if not args.ids:
            print(f"mailroot {method}: give message ids or --match EXPR", file=sys.stderr)
            return 2
        return report(getattr(admin, method)(args.ids), verb)
    return run_ids


# `--match EXPR`: the action on every message of the folder the expression selects
MATCH_FOLDER = {"hold": "queue", "release": "hold", "retry": "queue", "delete": "queue",
                "requeue": "badmail", "undelete": "trash"}


def by_match(action: str, verb: str, by_ids: Callable[[argparse.Namespace, Admin], int]
             ) -> Callable[[argparse.Namespace, Admin], int]:
    """The command, with --match EXPR [--dry-run] selecting its messages instead of ids."""
    def run_match(args: argparse.Namespace, admin: Admin) -> int:
        if args.match is None:
            return by_ids(args, admin)
        if args.ids or getattr(args, "all", False):
            print(f"mailroot {action}: give ids, --all or --match, not both", file=sys.stderr)
            return 2
        folder = FOLDER_NAMES[args.folder or MATCH_FOLDER[action]]
        try:
            rows = matching(admin, folder, args.match)
        except MatchError as exc:
            print(f"mailroot {action}: bad --match: {exc}", file=sys.stderr)
            return 2
        if args.dry_run:
            write_rows(rows, admin.store, f"in {folder} would be {verb.rstrip(':')}")
            return 0
        if action == "delete" and not args.yes and not confirm_delete(len(rows)):
            return 1
        detail = {"reason": args.reason} if action == "requeue" else {}
        return report(admin.bulk(action, [r.id for r in rows], match=args.match, **detail), verb)
    return run_match


def cmd_summary(args: argparse.Namespace, admin: Admin) -> int:
    """Counts by age, columns headed by their upper bound in minutes as qshape does; every
    line within 80 columns (and 80 bytes: a cut name's `…` is 3 of them)."""
    shape = admin.summary(workers=cores())
    rows = [shape.total(), *shape.domains, *shape.badmail]
    layout = ShapeLayout.of([r.name for r in rows] + ["minutes up to"],
                            max(r.total for r in rows), max(max(r.counts) for r in rows))
    print(layout.line("minutes up to", "T", age_labels()))
    for row in [shape.total(), *shape.domains]:
        print(layout.row(row))
    if shape.badmail:
        print("\nBadmail by reason")
        for row in shape.badmail:
            print(layout.row(row))
    refused = top_refused(admin.store.log_dir, time.time())
    if refused:
        print("\nRefused clients, last hour")
        for client, count in refused:
            print(layout.line(client, count, []))
    print("\nDisk used by each folder")
    now = time.time()
    queue = FolderUsage(QUEUE, shape.messages, shape.bytes,  # counted as its envelopes were read
                        max(0.0, now - shape.oldest) if shape.messages else 0.0)
    print("\n".join(usage_table(all_usage(admin.store, now, cores(), known={QUEUE: queue}))))
    return 0


SUMMARY_WIDTH = 80  # the README's promise for `summary`
CUT = "…"  # one column, three bytes


@dataclass(frozen=True)
class ShapeLayout:
    """The widths of `summary`'s table: the counts as wide as the largest needs, the name
    column what is left of 80 (a name cut in its middle keeps its end: domains differ there)."""

    name: int
    total: int
    count: int

    @classmethod
    def of(cls, names: list[str], largest_total: int, largest_count: int) -> ShapeLayout:
        total = max(6, len(str(largest_total)))
        count = max(5, len(str(largest_count)))
        room = SUMMARY_WIDTH - (len(CUT.encode()) - 1) - 1 - total - len(AGE_BUCKETS) * (1 + count)
        return cls(min(max(len(n) for n in names), room), total, count)

    def line(self, name: str, total: object, counts: list) -> str:
        return f"{cut_middle(name, self.name):<{self.name}} {total:>{self.total}}" + "".join(
            f" {c:>{self.count}}" for c in counts)

    def row(self, row: ShapeRow) -> str:
        return self.line(row.name, row.total, row.counts)


def age_labels() -> list[str]:
    bounds = [limit for limit, _ in AGE_BUCKETS]
    return [f"{int(b // 60)}" if b != math.inf else f"{int(bounds[-2] // 60)}+" for b in bounds]


def cut_middle(text: str, width: int) -> str:
    """`a-rather-lo…-name-7.example`: the start and the end, which tell names apart."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 2 + (width - 1) % 2
    return text[:width - 1 - tail] + CUT + text[-tail:]


def cmd_domains(args: argparse.Namespace, admin: Admin) -> int:
    action = args.action or "list"
    if action == "list":
        listing = admin.domains()
        print(f"default  {listing.default}")
        for alias in listing.aliases:
            print(f"alias    {alias}")
        for name, remote in listing.remote.items():
            print(f"remote   {name}  tls={remote.tls}  smarthost={remote.smarthost or '-'}")
        return 0
    if len(args.names) != (2 if action == "rename" else 1):
        print(f"mailroot domains {action}: give {'OLD NEW' if action == 'rename' else 'DOMAIN'}",
              file=sys.stderr)
        return 2
    calls: dict[str, Callable[[], object]] = {
        "add-local": lambda: admin.add_local(args.names[0]),
        "add-alias": lambda: admin.add_alias(args.names[0]),
        "set-default": lambda: admin.set_default(args.names[0]),
        "remove": lambda: admin.remove_domain(args.names[0]),
        "rename": lambda: admin.rename_domain(*args.names),
        "set-remote": lambda: admin.set_remote(args.names[0], args.tls, args.smarthost),
    }
    calls[action]()
    print(f"{action} {' '.join(args.names)}: saved to {admin.config.source}")
    return 0


def cmd_settings(args: argparse.Namespace, admin: Admin) -> int:
    if args.action == "get":
        print(admin.settings_get(args.key))
        return 0
    if args.value is None:
        print("mailroot settings set: give KEY VALUE", file=sys.stderr)
        return 2
    admin.settings_set(args.key, args.value)
    print(f"{args.key} = {admin.settings_get(args.key)}: saved to {admin.config.source}")
    return 0


def cmd_audit(args: argparse.Namespace, admin: Admin) -> int:
    """One line per action; a bulk action's ids one per line below it with --ids."""
    for entry in admin.audit():
        print(entry.line())
        if args.ids and len(entry.ids) > INLINE_IDS:
            print("\n".join(f"    {mid}" for mid in entry.ids))
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    queue = sub.add_parser("queue", parents=[common],
                           help="list a folder: oldest first, in directory order when large")
    queue.add_argument("--folder", choices=list(FOLDER_NAMES), default="queue")
    queue.add_argument("--json", action="store_true", help="one JSON object per line")
    order = queue.add_mutually_exclusive_group()
    order.add_argument("--sort", action="store_true",
                       help=f"oldest first even over {LISTING_SORTED_UP_TO:,} messages "
                            "(the first row waits until every name is listed)")
    order.add_argument("--unsorted", action="store_true",
                       help="in directory order, not oldest first: the first row at once")
    queue.add_argument("--match", metavar="EXPR", default="",
                       help="only messages matching EXPR (see `mailroot hold --help`)")
    show = sub.add_parser("show", parents=[common], help="one message: envelope, attempts")
    show.add_argument("id")
    show.add_argument("--raw", action="store_true", help="the message exactly as stored")
    requeue = sub.add_parser("requeue", parents=[common],
                             help="Badmail back to Queue; Drop/Queue routed again")
    requeue.add_argument("ids", nargs="*", metavar="ID")
    requeue.add_argument("--all", action="store_true", help="every message in --folder")
    requeue.add_argument("--folder", choices=["badmail", "drop", "queue"], default="badmail")
    requeue.add_argument("--domain", help="only messages with a recipient in this domain")
    requeue.add_argument("--reason", default="", help="why (kept in the audit log)")
    requeue.add_argument("--force", action="store_true",
                         help="requeue even what intake would refuse again at once (over the "
                              "size limit or the hop count)")
    retry = sub.add_parser("retry", parents=[common], help="queued messages due now")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true")
    retry.add_argument("--domain", help="queued messages for this domain")
    for name, text in (("hold", "keep queued messages from delivery"),
                       ("release", "held messages back to Queue, due now"),
                       ("undelete", "deleted messages back where they were")):
        sub.add_parser(name, parents=[common], help=text).add_argument(
            "ids", nargs="*", metavar="ID")
    delete = sub.add_parser("delete", parents=[common], help="move messages to Trash")
    delete.add_argument("ids", nargs="*", metavar="ID")
    delete.add_argument("--yes", "-y", action="store_true", help="don't ask")
    for name, folder in MATCH_FOLDER.items():
        action = sub.choices[name]
        action.add_argument("--match", metavar="EXPR",
                            help="every message of the folder that matches EXPR (as the "
                                 "console's / filter: words, domain:, from:, to:, reason:, "
                                 "older:2h, newer:10m, size>1MB, attempts>3)")
        action.add_argument("--dry-run", action="store_true",
                            help="with --match: list what would change, change nothing")
        if name != "requeue":  # requeue has its own --folder
            action.add_argument("--folder", choices=list(FOLDER_NAMES), default=None,
                                help=f"with --match: the folder (default {folder})")
    sub.add_parser("summary", parents=[common], help="queue shape by domain and age; most refused clients")
    domains = sub.add_parser("domains", parents=[common], help="list or change domains")
    domains.add_argument("action", nargs="?", choices=["list", "add-local", "add-alias",
                                                       "set-default", "remove", "rename",
                                                       "set-remote"])
    domains.add_argument("names", nargs="*", metavar="DOMAIN")
    domains.add_argument("--tls", choices=["none", "may", "require", "verify"])
    domains.add_argument("--smarthost", metavar="HOST:PORT", help='"" for none')
    settings = sub.add_parser("settings", parents=[common], help="get or set one setting")
    settings.add_argument("action", choices=["get", "set"])
    settings.add_argument("key")
    settings.add_argument("value", nargs="?")
    audit = sub.add_parser("audit", parents=[common], help="print the audit log")
    audit.add_argument("--ids", action="store_true",
                       help="list every id of a bulk action, one per line below it")


COMMANDS: dict[str, Callable[[argparse.Namespace, Admin], int]] = {
    "queue": cmd_queue, "show": cmd_show,
    "requeue": by_match("requeue", "requeued", cmd_requeue),
    "retry": by_match("retry", "due now:", cmd_retry),
    "hold": by_match("hold", "held", simple("hold", "held")),
    "release": by_match("release", "released", simple("release", "released")),
    "delete": by_match("delete", "deleted", cmd_delete),
    "undelete": by_match("undelete", "undeleted", simple("undelete", "undeleted")),
    "summary": cmd_summary, "domains": cmd_domains, "settings": cmd_settings,
    "audit": cmd_audit,
}


def run(command: str, args: argparse.Namespace, config: Config) -> int:
    return COMMANDS[command](args, Admin(config))
