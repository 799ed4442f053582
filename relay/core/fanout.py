"""Reading a large folder on every core.

`mailroot queue` and `summary` over a million queued messages spend their time opening and
decoding envelopes: one core's work in one process. Here the ids are cut into chunks and each
chunk is read by a forked worker process; the results come back in the ids' order, with a
bounded number of chunks in flight, so a slow reader of the output never makes the lister hold
the folder in memory, and the first chunk is small, so the first line comes at once.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Result = TypeVar("Result")

FIRST_CHUNK = 500  # ids read before the workers start: a small folder never forks
CHUNK = 2000  # ids per chunk after that
IN_FLIGHT = 3  # chunks per worker submitted ahead of the one being written out

_work: Callable[[list[str]], object] | None = None  # set before the fork: the workers' task


def _run(chunk: list[str]) -> object:
    assert _work is not None, "a fan-out worker without its work"
    return _work(chunk)


def chunks(ids: Iterable[str], first: int = FIRST_CHUNK, size: int = CHUNK
           ) -> Iterator[list[str]]:
    """The ids in lists: `first` of them, then `size` at a time; never all at once."""
    remaining = iter(ids)
    part = list(itertools.islice(remaining, first))
    while part:
        yield part
        part = list(itertools.islice(remaining, size))


def cores() -> int:
    return len(os.sched_getaffinity(0))


def fan_out(work: Callable[[list[str]], Result], ids: Iterable[str],
            workers: int) -> Iterator[Result]:
    """work(chunk) for each chunk of the ids, in order. The first chunk is worked here; the
    rest, if any, by `workers` forked processes (1: all here; `cores()`: one per core).
    `work` runs in the workers as this process had it when they were forked, so it may be
    any callable (a closure over an Admin), and its results must pickle."""
    global _work
    parts = chunks(ids)
    first = next(parts, None)
    if first is None:
        return
    yield work(first)
    if workers < 2:
        yield from map(work, parts)
        return
    if _work is not None:
        raise RuntimeError("fan_out is not reentrant")
    _work = work
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")
                                 ) as pool:
            flight: deque = deque()
            for part in parts:
                flight.append(pool.submit(_run, part))
                if len(flight) >= IN_FLIGHT * workers:
                    yield flight.popleft().result()
            while flight:
                yield flight.popleft().result()
    finally:
        _work = None
