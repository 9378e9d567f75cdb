"""Pause Python's cyclic garbage collector around the hot loops of ``add``, ``checkout`` and
``verify``.

Those loops allocate a great many short-lived objects (memoryviews, tuples, futures) that
reference counting frees at once, but every 700 allocations the collector also scans the young
generation and, now and then, every object the interpreter holds. Measured on a 1 GiB add,
the scans cost about 8% of the wall time. The loops create no reference cycles on their normal
path, so nothing accumulates; whatever an error path leaves is collected once the collector is
back on.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block (nesting is fine), then restore it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
