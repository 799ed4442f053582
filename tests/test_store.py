"""The store's durable commit under concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

from relay.store import QUEUE, Mailroot, Write


def test_concurrent_commits_to_one_folder_all_complete(tmp_path: Path) -> None:
    """Directory fsyncs are shared between concurrent commits (group commit); every commit
    still returns, with its files in place, and none waits forever."""
    store = Mailroot(tmp_path / "mailroot")
    store.ensure()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                store.commit([Write(store.path(QUEUE, f"w{n}-{i}", ".eml"), b"x" * 100)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(list((tmp_path / "mailroot" / QUEUE).glob("*.eml"))) == 200
    assert not list((tmp_path / "mailroot" / "tmp").iterdir())
