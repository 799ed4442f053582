"""The console's index keeps the answers the panes asked for current as messages come and go:
after holds, retries, deletions and arrivals each kept answer equals the same query asked of
an index built fresh from the folders."""

from __future__ import annotations

from relay.core import config_loader
from relay.core.store import HOLD, QUEUE, TRASH
from relay.ops.admin import Admin
from relay.ops.listing import SORTS
from tests.bulk_support import fill_queue
from tui.index import FolderIndex

FOLDERS = (QUEUE, HOLD, TRASH)
EXPRESSIONS = ("", "domain:d3.example", "report 1", "size>300", "attempts>1 domain:d5.example",
               "from:app")


def built(admin: Admin) -> FolderIndex:
    index = FolderIndex(admin, FOLDERS)
    index.install(index.build())
    return index


def test_kept_answers_follow_every_change_in_every_sort(write_config, tmp_path):
    admin = Admin(config_loader.load(write_config()))
    root = tmp_path / "mailroot"
    ids = fill_queue(root, 3000, domains=10, size_of=lambda n: 100 + n % 301)
    for sort in range(len(SORTS)):
        index = built(admin)
        asked = [(folder, expression, sort) for folder in (QUEUE, HOLD)
                 for expression in EXPRESSIONS]
        for kept in asked:
            index.query(*kept)  # each asked once before the changes...
        mine = ids[sort::len(SORTS)]
        held, retried, deleted = mine[::3], mine[1::3], mine[2::6]
        admin.bulk("hold", held)
        admin.bulk("retry", retried)  # due now: its next attempt changes, the entry is replaced
        admin.bulk("delete", deleted)
        arrived = fill_queue(root, 50, domains=10, size_of=lambda n: 450 - n)
        admin.bulk("release", held[::2])
        index.merge(index.read_changes({QUEUE: {*held, *retried, *deleted, *arrived},
                                        HOLD: set(held), TRASH: set(deleted)}))

        fresh = built(admin)  # ...then kept current through them
        assert len(index.entries[QUEUE]) == len(admin.store.ids(QUEUE))
        for kept in asked:
            assert index.query(*kept) == fresh.query(*kept), kept
        assert index.query(QUEUE, "", 0) == sorted(admin.store.ids(QUEUE))
