"""Listing and counting a large folder on every core (relay.core.fanout): the forked workers give
exactly what one process gives, in the same order, and `mailroot queue --json` and `summary`
use them."""

from __future__ import annotations

import json
import os
import shutil
import time

from relay.cli.admin import render_rows
from relay.core import config_loader
from relay.core.fanout import CHUNK, FIRST_CHUNK, fan_out
from relay.core.folderstats import all_usage
from relay.core.store import HOLD, QUEUE
from relay.ops.admin import Admin
from tests.admin_support import cli
from tests.bulk_support import fill_queue


def test_chunks_come_back_in_order_from_more_than_one_process():
    ids = [f"id{n:06d}" for n in range(FIRST_CHUNK + 4 * CHUNK + 7)]
    parts = list(fan_out(lambda chunk: (os.getpid(), chunk), ids, workers=2))
    assert [mid for _, chunk in parts for mid in chunk] == ids
    assert [len(chunk) for _, chunk in parts] == [FIRST_CHUNK, *[CHUNK] * 4, 7]
    assert parts[0][0] == os.getpid()  # the first chunk is read here, at once
    assert len({pid for pid, _ in parts[1:]} - {os.getpid()}) == 2


def test_a_small_folder_is_read_without_a_fork():
    parts = list(fan_out(lambda chunk: os.getpid(), [f"id{n}" for n in range(FIRST_CHUNK)],
                         workers=2))
    assert parts == [os.getpid()]


def test_workers_list_and_count_what_one_process_does(write_config, tmp_path):
    path = write_config()
    root = tmp_path / "mailroot"
    ids = fill_queue(root, 6000, domains=7, size_of=lambda n: 100 + n % 50)
    held = fill_queue(root, 700, domains=3, folder=HOLD, prefix="h")
    # an interrupted move (Queue -> Hold) left the first message in both: it is Hold's now
    for ext in (".eml", ".env"):
        shutil.copy(root / QUEUE / f"{ids[0]}{ext}", root / HOLD / f"{ids[0]}{ext}")
    admin = Admin(config_loader.load(path))

    def listing(workers: int, folder: str = QUEUE) -> str:
        render = lambda rows: render_rows(rows, admin.store, as_json=True).text  # noqa: E731
        return "".join(admin.folder_parts(folder, render, workers=workers).parts)

    one = listing(1)
    assert listing(2) == one
    assert [json.loads(line)["id"] for line in one.splitlines()] == ids[1:]
    assert listing(2, HOLD) == listing(1, HOLD)
    def per_domain(workers: int) -> dict[str, int]:  # (ages move on between two calls)
        return {row.name: row.total for row in admin.summary(workers=workers).domains}

    assert per_domain(2) == per_domain(1)
    assert sum(per_domain(2).values()) == len(ids) - 1 and len(per_domain(2)) == 7
    now = time.time()
    assert all_usage(admin.store, now, workers=2) == all_usage(admin.store, now, workers=1)
    assert all_usage(admin.store, now, workers=2)[HOLD].messages == len(held) + 1

    listed = cli(path, "queue", "--json")
    assert listed.stdout == one
    total = cli(path, "summary").stdout.splitlines()[1]
    assert total.split()[:2] == ["TOTAL", str(len(ids) - 1)]
