"""Healing: store good copies of damaged or missing objects from the original files.

``cas verify --all --repair --from PATH`` reads the files under ``PATH`` (the folder or file a
version was added from, or any copy of it), cuts them with the store's chunker, and stores every
chunk and chunk list the store does not hold a good copy of (missing, or only in copies
:mod:`cas.badobjects` knows to be damaged). No version is registered: the versions that needed
those objects are whole again, which the verify that follows confirms. What PATH holds beyond
that costs space only until the next ``gc``.

Re-adding the original files with ``cas add`` heals as well: ``add`` never deduplicates against
an object that only has damaged copies, and while the store knows of damaged objects it
confirms every stat-cache hit against the store before trusting it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.chunking import Chunker
from cas.compression import CODEC_RAW, Compressor
from cas.errors import from_os_error
from cas.format.chunklist import ChunkList
from cas.format.pack import KIND_CHUNK, KIND_CHUNK_LIST
from cas.ids import blake3_id
from cas.ignore import scan_input
from cas.packwriter import PackWriter

if TYPE_CHECKING:
    from cas.store import Progress, Store


class HealResult(msgspec.Struct):
    files_read: int = 0
    bytes_read: int = 0
    #: Objects stored (chunks and chunk lists the store lacked a good copy of).
    objects_stored: int = 0
    bytes_stored: int = 0


def heal_from(store: Store, path: Path, progress: Progress | None = None) -> HealResult:
    """Store good copies of every object of the files under ``path`` that the store lacks
    (see the module docstring).

    Raises:
        ArgsError | NotFoundError: ``path`` cannot be scanned.
        DiskError: reading a file or writing a pack failed (what was stored stays).
    """
    scan = scan_input(path.expanduser(), store_dir=store.path)
    chunker = Chunker(store.config.chunker)
    compressor = Compressor(store.config.compression.level)
    result = HealResult()
    total = sum(st.st_size for _, _, st in scan.files)
    with store.leases.acquire_shared("repair") as lease, store.writing():
        avoid = store.leases.doomed_packs()
        packs = store.packs
        writer = PackWriter(store.backend, store.config.pack_target_bytes)

        def lacks(oid: bytes) -> bool:
            if oid in writer:
                return False
            loc = packs.locate(oid)
            return loc is None or loc.pack.id in avoid or (oid, loc.pack.id) in packs.bad

        try:
            for rel, apath, st in scan.files:
                chunks = []
                try:
                    with open(apath, "rb", buffering=0) as f:
                        for _region, views in chunker.cut_blocks(f):
                            for chunk in views:
                                oid = blake3_id(chunk)
                                chunks.append((oid, len(chunk)))
                                if lacks(oid):
                                    codec, stored = compressor.compress(chunk)
                                    writer.add(oid, KIND_CHUNK, codec, len(chunk),
                                               bytes(stored))
                                    result.objects_stored += 1
                                    result.bytes_stored += len(stored)
                except OSError as exc:
                    raise from_os_error(exc, f"reading {apath}") from None
                encoded = ChunkList(st.st_size, tuple(chunks)).encode()
                clist = blake3_id(encoded)
                if lacks(clist):
                    writer.add(clist, KIND_CHUNK_LIST, CODEC_RAW, len(encoded), encoded)
                    result.objects_stored += 1
                    result.bytes_stored += len(encoded)
                result.files_read += 1
                result.bytes_read += st.st_size
                if progress is not None:
                    progress(result.bytes_read, total, rel)
            lease.check()
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    return result

