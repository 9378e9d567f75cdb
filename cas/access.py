"""When this store last used each version: the order eviction (``gc --quota``) follows.

``checkout``, ``cat``, ``get`` and the arrival of a version's content (``add``, ``pull``)
append a record to ``access.log`` (store-local state, never synced): the version id and the
wall-clock time. The order of eviction is the order of the records, not their times: the
version whose last record comes first is the least recently used. A clock that jumps (or a
host whose clock is wrong) therefore never makes a version look used in the future (immortal)
or long ago (first to go); the time is kept only to show it. A version with no record (used
before this file existed, or only on other hosts) comes before every recorded one, in model
and sequence order.

Appending is one ``write`` of one whole record on a file opened with ``O_APPEND`` (no lock,
no fsync: losing the last uses in a crash only makes those versions look a little older).
A reader ignores a torn last record. When the file has grown past :data:`COMPACT_AT`
records, :func:`compact` (run by gc under the store lock) rewrites it with the last record of
each version, in order, atomically. Byte layout in ``docs/format.md``, "access.log".
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from cas.fsutil import atomic_write

NAME = "access.log"
#: A record: the version id (ASCII, NUL-padded) and the time (u64 seconds, big-endian).
ID_BYTES = 40
_RECORD = struct.Struct(f">{ID_BYTES}sQ")
RECORD = _RECORD.size
#: Records after which gc rewrites the file with one record per version.
COMPACT_AT = 1 << 16


def record(store_path: Path, version_ids: Iterable[str], when: float | None = None) -> None:
    """Append a use of each of ``version_ids`` now. Never raises: a use that cannot be
    recorded (a read-only store, a full disk) leaves the order as it was."""
    now = int(time.time() if when is None else when)
    data = b"".join(_RECORD.pack(v.encode()[:ID_BYTES], max(now, 0)) for v in version_ids
                    if v and len(v.encode()) <= ID_BYTES)
    if not data:
        return
    try:
        fd = os.open(store_path / NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError:
        return
    try:
        os.write(fd, data)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(store_path: Path) -> dict[str, tuple[int, int]]:
    """Version id -> (position of its last use, its time); absent file: empty. Positions
    only compare with each other (higher: used more recently)."""
    try:
        data = (store_path / NAME).read_bytes()
    except FileNotFoundError:
        return {}
    except OSError:
        return {}
    out: dict[str, tuple[int, int]] = {}
    whole = len(data) - len(data) % RECORD
    for pos, (raw, when) in enumerate(_RECORD.iter_unpack(data[:whole])):
        vid = raw.rstrip(b"\0").decode("ascii", "replace")
        if vid:
            out[vid] = (pos, when)
    return out


def compact(store_path: Path, keep: set[str] | None = None) -> bool:
    """Rewrite the log with the last record of each version (of those in ``keep``, when
    given), in the same order, if it has grown past :data:`COMPACT_AT` records (or holds
    versions not in ``keep``). The caller holds the store's write lock. Returns whether it
    rewrote."""
    try:
        size = (store_path / NAME).stat().st_size
    except OSError:
        return False
    last = read(store_path)
    stale = keep is not None and any(v not in keep for v in last)
    if size // RECORD < COMPACT_AT and not stale:
        return False
    ordered = sorted(((pos, vid, when) for vid, (pos, when) in last.items()
                      if keep is None or vid in keep))
    atomic_write(store_path / NAME,
                 b"".join(_RECORD.pack(vid.encode(), when) for _, vid, when in ordered),
                 store_path / "tmp")
    return True


def lru_order(versions: Iterable[tuple[str, str, int]], uses: dict[str, tuple[int, int]]
              ) -> list[tuple[str, str, int]]:
    """``versions`` (id, model, seq), least recently used first: those never recorded first
    (by model, then seq), then by the position of their last use."""
    return sorted(versions, key=lambda v: (uses.get(v[0], (-1, 0))[0], v[1], v[2]))
