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
from cas.errors import VerifyError, from_os_error
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



#: Rounds of asking a remote: each brings chunk lists that were damaged or missing here, whose
#: chunks the next round can then name.
REMOTE_ROUNDS = 4


def heal_from_remote(store: Store, spec: str, progress: Progress | None = None) -> HealResult:
    """Store good copies, fetched from remote ``spec``, of every object a version kept here
    needs and this store lacks a good copy of (call after a verify recorded the damage).

    The remote sends transfer packs, verified on arrival like any pull (:mod:`cas.transfer`);
    no registry entry changes. Objects the remote lacks too stay missing (the verify that
    follows names them).

    Raises:
        ArgsError | NotFoundError | NetError: the remote cannot be reached.
    """
    from cas import graph, sync, transfer
    from cas.peer import LocalPeer

    result = HealResult()
    _name, _url, peer = sync.connect(store, spec)
    local = LocalPeer(store)
    asked: set[bytes] = set()
    try:
        with local.session("repair"):
            for _ in range(REMOTE_ROUNDS):
                store.packs.refresh()
                roots = graph.find_roots(store)
                errors: list[str] = []
                closure = graph.needs(store, [m for _r, m in graph.root_manifests(
                    store, roots.roots, errors)])
                wanted = set(transfer.missing(store, closure.ids)) | set(closure.unreadable)
                wanted -= asked
                if not wanted:
                    break
                asked |= wanted
                ids = sorted(wanted)
                lacking_there = set(peer.missing(ids))
                ids = [oid for oid in ids if oid not in lacking_there]
                if not ids:
                    break
                try:
                    _fetch_objects(local, peer, ids, result, progress, spec)
                except VerifyError:
                    # Some object is damaged there too: take the others one by one, so
                    # that one bad copy does not keep every good one out.
                    for oid in ids:
                        try:
                            _fetch_objects(local, peer, [oid], result, progress, spec)
                        except VerifyError:
                            continue
    finally:
        peer.close()
    return result


def _fetch_objects(local, peer, ids: list[bytes], result: HealResult,  # type: ignore[no-untyped-def]
                   progress: Progress | None, label: str) -> None:
    """Receive ``ids`` from ``peer`` into ``local``'s store (transfer packs, verified)."""
    from cas.transfer import counted

    total, pieces = peer.send(ids, not local.store.config.derives)
    stats = local.receive(counted(pieces, total, progress, label))
    result.objects_stored += stats.objects - stats.already
    result.bytes_stored += stats.bytes
