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
from cas.fsutil import fsync_dir, tmp_name

if TYPE_CHECKING:
    from cas.packs import Pack, PackSet

PREFIX = "midx-"
SUFFIX = ".midx"
#: Uncovered packs that trigger a new midx; below this, probing them one by one is cheap.
BATCH = 8


class OpenMidx:
    """A midx file mapped read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.midx = fmt.Midx(self._map, path.name)
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


def write_midx(packs_dir: Path, tmp_dir: Path, sources: Iterable[Iterator[tuple[bytes, bytes]]],
               pack_ids: list[bytes]) -> Path:
    """Merge sorted ``(id, pack id)`` streams into a new midx file; return its path.

    Records stream through a temp file, so memory stays small whatever the record count.
    """
    writer = fmt.MidxWriter(pack_ids)
    records_tmp = tmp_name(tmp_dir, "midx-records")
    final_tmp = tmp_name(tmp_dir, "midx")
    try:
        with open(records_tmp, "wb", buffering=1 << 20) as out:
            for oid, pack_id in heapq.merge(*sources):
                rec = writer.record(oid, pack_id)
                if rec is not None:
                    out.write(rec)
        hasher = blake3.blake3()
        with open(final_tmp, "xb", buffering=1 << 20) as out, open(records_tmp, "rb") as rec_in:
            prefix = writer.prefix()
            out.write(prefix)
            hasher.update(prefix)
            while block := rec_in.read(1 << 20):
                out.write(block)
                hasher.update(block)
            digest = hasher.digest()
            out.write(digest)
            out.flush()
            os.fsync(out.fileno())
        path = packs_dir / f"{PREFIX}{digest.hex()}{SUFFIX}"
        os.replace(final_tmp, path)
        fsync_dir(packs_dir)
        return path
    except OSError as exc:
        raise from_os_error(exc, "writing a multi-pack index") from None
    finally:
        records_tmp.unlink(missing_ok=True)
        final_tmp.unlink(missing_ok=True)


def maintain(packset: PackSet, tmp_dir: Path) -> list[str]:
    """Cover new packs with a midx and merge midxs geometrically (write lock held).

    Returns the names of the midx files written.
    """
    packs = packset.packs
    packs_dir = packset.packs_dir
    written = []
    uncovered = [packs[h] for h in packset.uncovered()]
    if len(uncovered) >= BATCH:
        path = write_midx(packs_dir, tmp_dir, [_pack_pairs(p) for p in uncovered],
                          [bytes.fromhex(p.id) for p in uncovered])
        written.append(path.name)
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
        path = write_midx(packs_dir, tmp_dir, [m.midx.pairs() for m in group], pack_ids)
        written.append(path.name)
        for m in group:
            packset.drop_midx(m)
            m.path.unlink(missing_ok=True)
        fsync_dir(packs_dir)
        packset.refresh()
    return written
