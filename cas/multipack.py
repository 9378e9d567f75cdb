"""Multi-pack indexes on disk: opening them, writing them, and keeping their number small.

See :mod:`cas.format.midx` for the layout. Writers (holding the store lock) call
:func:`maintain` after they add packs: once ``BATCH`` packs are not covered by any midx, one
midx is written over them; midxs are then merged geometrically (the smallest ones are merged
while their total reaches half of the next larger one), so each id is rewritten O(log n) times
over the life of a store and a lookup visits O(log n) midxs.

A midx is written to a temp file, fsynced, renamed, and the folder fsynced; the midxs it
replaces are deleted only afterwards. A crash leaves at worst overlapping midxs, which are
correct (each one answers for packs it lists) and are merged by the next writer.
"""

from __future__ import annotations

import heapq
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import blake3

from cas.errors import CasError, from_os_error
from cas.format import midx as fmt
from cas.fsutil import tmp_name

if TYPE_CHECKING:
    from cas.packs import Pack, PackSet
    from cas.storage import Backend

PREFIX = "midx-"
SUFFIX = ".midx"
#: Uncovered packs that trigger a new midx; below this, probing them one by one is cheap.
BATCH = 8


class OpenMidx:
    """A midx file mapped read-only."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.midx = fmt.Midx(self._map, name or path.name)
        except CasError:
            self._map.close()
            raise
        self.pack_hexes = [p.hex() for p in self.midx.pack_ids]

    def close(self) -> None:
        self._map.close()


def list_midx(packs_dir: Path) -> list[Path]:
    return sorted(packs_dir / n for n in os.listdir(packs_dir)
                  if n.startswith(PREFIX) and n.endswith(SUFFIX))


def _pack_pairs(pack: Pack) -> Iterator[tuple[bytes, bytes]]:
    """``(id, pack id)`` of every record of one pack index, in id order."""
    pack_id = bytes.fromhex(pack.id)
    for oid in pack.ids():
        yield oid, pack_id


def write_midx(backend: Backend, tmp_dir: Path,
               sources: Iterable[Iterator[tuple[bytes, bytes]]], pack_ids: list[bytes]) -> str:
    """Merge sorted ``(id, pack id)`` streams into a new midx object; return its file name.

    Records stream through a scratch file in ``tmp_dir``, so memory stays small whatever the
    record count; the midx itself is written through ``backend``.
    """
    midx = fmt.MidxWriter(pack_ids)
    records_tmp = tmp_name(tmp_dir, "midx-records")
    out = None
    try:
        with open(records_tmp, "wb", buffering=1 << 20) as records:
            for oid, pack_id in heapq.merge(*sources):
                rec = midx.record(oid, pack_id)
                if rec is not None:
                    records.write(rec)
        hasher = blake3.blake3()
        out = backend.open_write("midx")
        with open(records_tmp, "rb") as rec_in:
            prefix = midx.prefix()
            out.write(prefix)
            hasher.update(prefix)
            while block := rec_in.read(4 << 20):
                out.write(block)
                hasher.update(block)
        digest = hasher.digest()
        out.write(digest)
        name = f"{PREFIX}{digest.hex()}{SUFFIX}"
        out.commit(f"packs/{name}")
        return name
    except OSError as exc:
        if out is not None:
            out.abort()
        raise from_os_error(exc, "writing a multi-pack index") from None
    finally:
        records_tmp.unlink(missing_ok=True)


def maintain(packset: PackSet, backend: Backend, tmp_dir: Path) -> list[str]:
    """Cover new packs with a midx and merge midxs geometrically (write lock held).

    Returns the names of the midx files written.
    """
    packs = packset.packs
    written = []
    uncovered = [packs[h] for h in packset.uncovered()]
    if len(uncovered) >= BATCH:
        written.append(write_midx(backend, tmp_dir, [_pack_pairs(p) for p in uncovered],
                                  [bytes.fromhex(p.id) for p in uncovered]))
        packset.refresh()
    midxs = sorted(packset.midxs, key=lambda m: m.midx.count)
    total = 0
    take = 0
    for i, m in enumerate(midxs):
        if i and total * 2 < m.midx.count:
            break
        total += m.midx.count
        take = i + 1
    if take >= 2:
        group = midxs[:take]
        pack_ids = sorted({p for m in group for p in m.midx.pack_ids})
        written.append(write_midx(backend, tmp_dir, [m.midx.pairs() for m in group], pack_ids))
        for m in group:
            packset.drop_midx(m)
            try:
                backend.delete(f"packs/{m.path.name}")
            except OSError as exc:
                raise from_os_error(exc, "removing a merged multi-pack index") from None
        packset.refresh()
    return written
