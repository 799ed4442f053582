"""The garbage collector kept away from the console's frames: what lives as long as the
console is left out of its full passes, and a bulk action holds them off."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

NO_FULL_PASS = 1_000_000  # gc's third threshold while a bulk action runs: never reached


@contextlib.contextmanager
def no_full_collections() -> Iterator[None]:
    """While a bulk action runs, the garbage collector makes no full pass of its own: one
    took 50-130 ms, and landing inside a redraw it made the longest frame gaps of a
    10,000-message hold. apply_pending calls one halfway between two redraws instead."""
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, NO_FULL_PASS)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, full)


def freeze_long_lived() -> None:
    """Leave what exists now (the index's 100,000 entries, the relay's schedule) out of the
    garbage collector's full passes: each pass over them held the console up for 0.2-0.4 s
    during bulk actions, and they live as long as the console."""
    gc.freeze()
