"""Ingest: ``cas add``, from a file or folder to a registered version.

Steps, all under the store write lock except the first:

1. :func:`cas.ignore.scan_input` lists the files (symlinks followed, ``.git``, ``.casignore``
   and ``--exclude`` patterns applied, every relative path validated). Nothing is read yet.
2. Requested tags are checked: a tag that names another version is refused (``E_CONFLICT``)
   unless ``--force-tag``; one that names the latest version is kept only if the content turns
   out unchanged, which is settled before anything is stored (see :mod:`cas.unchanged`).
3. The stat cache (:mod:`cas.statcache`) recognises files unchanged since they were last read.
   If every file is recognised and the content equals the latest version's (by the fingerprint
   the stat cache keeps of it, else by its manifest), the add ends here: no file is read and
   no version is made; metadata options it could not record are named in a warning.
4. Each other file is read once. A file of at most ``SMALL_FILE`` bytes that is not a weight
   file is read whole and handled on the calling thread (SHA-256, FastCDC, BLAKE3 of each chunk,
   zstd of the new ones), its new objects batched into one pack write per ``BATCH_BYTES``: thread
   hand-offs would cost more than the work. A larger file or a weight file streams through
   :meth:`_Ingester.ingest`: this thread reads 8 MiB blocks and cuts them (chunks are views
   into the block, never copied); a hash thread feeds each block to SHA-256 in order; a pool of
   ``WORKERS`` hashes each chunk with BLAKE3, checks whether the store has it, and byte-groups
   (float tensors), zstd-compresses or, in a tensor its base version also has, derives the new
   ones (:mod:`cas.derive`, planned on its own thread); a writer thread appends the results to
   the pack in order. At most ``MAX_BLOCKS_IN_FLIGHT`` blocks are held at once, so memory
   stays bounded whatever the file size. Each file's chunk list is stored as an object.
5. :meth:`cas.packwriter.PackWriter.finish` makes every pack durable and visible; only then is the
   manifest committed (:mod:`cas.metadata` describes the model from headers only), the model
   ref moved, the tags set, and the stat cache saved.

Order of effects (see ``docs/format.md``, "Write ordering"): a crash before the ref moves leaves
only unreferenced packs, which dedupe the next attempt and which gc may remove later.
"""

from __future__ import annotations

import hashlib
import os
import queue
import socket
import stat as stat_mod
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from cas.chunking import BufferPool, Chunker
from cas.compression import CODEC_DERIVED, CODEC_RAW, Compressor
from cas.clock import iso_utc
from cas.errors import (
    CasError,
    CasWarning,
    ConflictError,
    DiskError,
    PermError,
    from_os_error,
)
from cas.format.chunklist import ChunkList
from cas.format.manifest import FileEntry, Manifest, Metadata, Provenance
from cas.format.pack import KIND_CHUNK, KIND_CHUNK_LIST
from cas.gcpause import gc_paused
from cas.ids import blake3_id, parse_hex
from cas.ignore import Scan, Skipped, scan_input
from cas.metadata import describe, float_ranges, format_of
from cas.names import parse_version_spec, validate_model_name, validate_tag
from cas.packwriter import PackWriter
from cas.checkout import pause_hook_from_env
from cas.commits import check_message, resolve_identity
from cas.registry import Version
from cas.versions import new_version_id
from cas.statcache import FileDigest, StatCache, unconfirmed
from cas.unchanged import (
    changed,
    check_tags,
    file_entry,
    fingerprint,
    gives_metadata,
    metadata_not_recorded,
    prove_unchanged,
    read_manifest,
    same_content,
)

if TYPE_CHECKING:
    from cas import derive
    from cas.bytegroup import FloatRanges
    from cas.registry import Registry
    from cas.store import Progress, Store

#: Bytes read per block; the chunker cuts whole blocks at once (no per-chunk copies).
BLOCK_SIZE = 8 << 20
#: Blocks being hashed, compressed or written at once: bounds memory to about 4 x 8 MiB.
MAX_BLOCKS_IN_FLIGHT = 4
#: Chunks per worker task: large enough that task overhead is small, small enough to spread.
GROUP = 32
WORKERS = 2
#: Files up to this size (that are not weight files) are read whole and handled inline.
SMALL_FILE = 256 << 10
#: Chunk lists up to this size (three chunks) are stored raw without trying zstd.
TINY_OBJECT = 160
#: New objects of small files are appended to the pack in batches of about this many bytes.
BATCH_BYTES = 4 << 20
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

_ChunkResult = tuple[bytes, int, "int | None", "bytes | memoryview | None"]
_Block = tuple[memoryview, "Future[None]", "list[Future[list[_ChunkResult]]]"]
_PackItem = tuple[bytes, int, int, int, "bytes | memoryview"]


@dataclass
class AddOptions:
    """Everything ``add`` takes besides the name and the path."""

    message: str = ""
    tags: list[str] = field(default_factory=list)
    role: str | None = None
    base_model: str | None = None
    license: str | None = None
    parents: list[str] = field(default_factory=list)  # version specs, resolved at add time
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    source: str | None = None  # default: the absolute path added
    rehash: bool = False
    provenance: Provenance = field(default_factory=Provenance)
    #: ``Name <email>`` or a bare name; default: $CAS_AUTHOR, the git identity, user@host.
    author: str | None = None
    #: Move a requested tag that names another version of the model.
    force_tag: bool = False
    #: Globs (gitignore syntax) of paths to leave out, besides those in ``.casignore``.
    exclude: list[str] = field(default_factory=list)


class AddResult(msgspec.Struct):
    """What an add did: the version it registered (or found unchanged), what it read and
    stored, what it left out and what the user should know."""

    name: str
    seq: int
    commit: str
    created: bool
    files: int
    total_size: int
    bytes_hashed: int
    stat_cache_hits: int
    new_chunks: int
    reused_chunks: int
    new_stored_bytes: int
    tags: list[str]
    stale_cache: list[str] = []
    #: What the scan left out, per reason (see :class:`cas.ignore.Skipped`).
    skipped: list[Skipped] = []
    warnings: list[CasWarning] = []


@dataclass
class _Counters:
    new_chunks: int = 0
    reused_chunks: int = 0
    bytes_hashed: int = 0


class _Ingester:
    """Cuts, hashes, dedupes, compresses and packs files for one ``add``."""

    def __init__(self, store: Store, writer: PackWriter, progress: Progress | None,
                 total: int, avoid: frozenset[str] = frozenset()) -> None:
        self.store = store
        #: Packs a running gc is about to delete: an object only they hold counts as absent.
        self.avoid = avoid
        self.writer = writer
        self.chunker = Chunker(store.config.chunker)
        self.compressor = Compressor(store.config.compression.level)
        self.progress = progress
        self.total = total
        self.done = 0
        self.counters = _Counters()
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="cas-chunk")
        self.hasher = ThreadPoolExecutor(1, thread_name_prefix="cas-hash")
        self.planner = ThreadPoolExecutor(1, thread_name_prefix="cas-plan")
        self.drainer = ThreadPoolExecutor(1, thread_name_prefix="cas-write")
        self._buffers: BufferPool | None = None
        #: New objects of small files not yet handed to the pack writer (see flush()).
        self._batch: list[_PackItem] = []
        self._batched: set[bytes] = set()
        self._batch_bytes = 0
        #: Format of each small file read inline (relative path -> metadata.format_of).
        self.formats: dict[str, str] = {}

    @property
    def buffers(self) -> BufferPool:
        # Allocated on first use: an add of small files only never needs them.
        # One more buffer than blocks in flight, so reading the next block overlaps the rest.
        if self._buffers is None:
            self._buffers = BufferPool(self.chunker, MAX_BLOCKS_IN_FLIGHT + 1, BLOCK_SIZE)
        return self._buffers

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.hasher.shutdown(wait=True, cancel_futures=True)
        self.planner.shutdown(wait=True, cancel_futures=True)
        self.drainer.shutdown(wait=True, cancel_futures=True)

    def _known(self, oid: bytes) -> bool:
        if oid in self._batched or oid in self.writer:
            return True
        if not self.avoid:
            return self.store.packs.has(oid)
        packs = self.store.packs
        loc = packs.locate(oid)
        return loc is not None and loc.pack.id not in self.avoid and (
            not packs.bad_ids or (oid, loc.pack.id) not in packs.bad)

    def _queue(self, item: _PackItem) -> None:
        self._batch.append(item)
        self._batched.add(item[0])
        self._batch_bytes += len(item[4])
        if self._batch_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand the batched objects to the pack writer (one write). Called from the thread
        that owns the writer, never while a streamed file is being written."""
        if self._batch:
            self.writer.add_many(self._batch)
            self._batch, self._batched, self._batch_bytes = [], set(), 0

    def ingest_small(self, rel: str, path: str, st: os.stat_result) -> FileDigest | None:
        """Read a small file whole and store it on this thread; None if it is a weight file
        (grouping and derivation need :meth:`ingest`).

        Raises:
            ConflictError: the file changed between the scan and the read.
        """
        return self.ingest_small_bytes(rel, _read_whole(path, st))

    def ingest_small_bytes(self, rel: str, data: bytes) -> FileDigest | None:
        """:meth:`ingest_small` of bytes already in memory."""
        kind = format_of(data[:16], len(data), rel)
        if kind in ("safetensors", "gguf"):
            return None
        self.formats[rel] = kind
        view = memoryview(data)
        chunks = []
        for offset, length in self.chunker.cut_bytes(data):
            chunk = view[offset : offset + length]
            oid = blake3_id(chunk)
            if self._known(oid):
                self.counters.reused_chunks += 1
            else:
                codec, stored = self.compressor.compress(chunk)
                self._queue((oid, KIND_CHUNK, codec, length, stored))
                self.counters.new_chunks += 1
            chunks.append((oid, length))
        clist_id = self.put_object(ChunkList(len(data), tuple(chunks)).encode(), KIND_CHUNK_LIST)
        self.done += len(data)
        self.counters.bytes_hashed += len(data)
        if self.progress is not None:
            self.progress(self.done, self.total, rel)
        return FileDigest(len(data), hashlib.sha256(data).hexdigest(), clist_id.hex(), False)

    def _work_group(self, chunks: list[tuple[int, memoryview]], floats: FloatRanges | None,
                    planned: Future[derive.Plan | None] | None) -> list[_ChunkResult]:
        """Hash a run of ``(file offset, chunk)``, and encode the ones the store lacks.

        ``planned`` is worked out on another thread while the file is read; it is waited for
        only when a chunk turns out to be new."""
        out: list[_ChunkResult] = []
        plan = None
        for offset, view in chunks:
            oid = blake3_id(view)
            if self._known(oid):
                out.append((oid, len(view), None, None))
                continue
            if planned is not None:
                plan, planned = self._usable(planned.result()), None
            codec, stored = self._encode(view, offset, floats, plan)
            out.append((oid, len(view), codec, stored))
        return out

    def _usable(self, plan: derive.Plan | None) -> derive.Plan | None:
        """The plan, unless derivation is off for this add: while a gc dooms packs or damage
        is known, objects are stored again, and a chunk must never be predicted from a file
        that holds it."""
        return None if self.avoid or self.store.packs.bad_ids else plan

    def _encode(self, view: memoryview, offset: int, floats: FloatRanges | None,
                plan: derive.Plan | None) -> tuple[int, bytes | memoryview]:
        """The stored form of a new chunk: derived from the base file where its tensor was
        decided for that, else :meth:`_plain`. A tensor's first new chunk decides for the
        rest of it (derived if that is smaller than the plain form), as for grouping."""
        where = floats.locate(offset, len(view)) if floats is not None else None
        tensor = plan.tensor_at(offset, len(view)) if plan is not None else None
        if tensor is None:
            return self._plain(view, floats, where)
        assert plan is not None
        decided = plan.decided.get(tensor)
        if decided is False:
            return self._plain(view, floats, where)
        derived = self._derive(view, offset, plan, where)
        if decided:
            return (CODEC_DERIVED, derived) if derived is not None else \
                self._plain(view, floats, where)
        codec, stored = self._plain(view, floats, where)
        won = derived is not None and len(derived) < len(stored)
        plan.decided[tensor] = won
        return (CODEC_DERIVED, derived) if won else (codec, stored)  # type: ignore[return-value]

    def _plain(self, view: memoryview, floats: FloatRanges | None,
               where: tuple[int, int, int] | None) -> tuple[int, bytes | memoryview]:
        """zstd, or in a float tensor byte-grouped streams if the tensor's first new chunk
        found them smaller (:meth:`cas.compression.Compressor.best`)."""
        if where is None:
            return self.compressor.compress(view)
        index, elem, phase = where
        decision = floats.decided.get(index)  # type: ignore[union-attr]
        if decision is None:
            decision, result = self.compressor.best(view, (elem, phase))
            floats.decided[index] = decision  # type: ignore[union-attr]
            return result
        if decision[0]:
            return self.compressor.compress(view, (elem, phase), decision[1])
        return self.compressor.compress(view)

    def _derive(self, view: memoryview, offset: int, plan: derive.Plan,
                where: tuple[int, int, int] | None) -> bytes | None:
        """The chunk as a residual against its prediction from the base file, if smaller
        than the chunk itself."""
        grouping = where[1:] if where is not None else None

        from cas import derive

        def compress_residual(residual: bytearray) -> tuple[int, bytes]:
            return self.compressor.compress(residual, grouping)  # type: ignore[arg-type,return-value]

        try:
            payload = derive.encode(view, plan.segments(offset, len(view)), plan.base,
                                    self.store.packs.ranges, compress_residual)
        except CasError:
            return None  # an unreadable base: store the chunk the usual way
        return payload if payload is not None and len(payload) < len(view) else None

    def _write_block(self, groups: list[Future[list[_ChunkResult]]],
                     chunks: list[tuple[bytes, int]]) -> None:
        """Append one block's new chunks to the pack, in order (writer thread)."""
        for group in groups:
            batch = []
            for oid, n, codec, stored in group.result():
                if codec is None or oid in self.writer:
                    self.counters.reused_chunks += 1
                else:
                    batch.append((oid, KIND_CHUNK, codec, n, stored))
                    self.counters.new_chunks += 1
                chunks.append((oid, n))
                self.done += n
                self.counters.bytes_hashed += n
            self.writer.add_many(batch)  # type: ignore[arg-type]

    def put_object(self, data: bytes, kind: int) -> bytes:
        """Store one whole object (a chunk list) unless the store has it; return its id."""
        oid = blake3_id(data)
        if not self._known(oid):
            # A list of a few chunks is mostly random ids, which zstd never shrinks enough to
            # be kept: store it raw without trying (for small files, trying costs as much as
            # the rest of storing the list).
            codec, stored = self.compressor.compress(data) if len(data) > TINY_OBJECT \
                else (CODEC_RAW, data)
            self._queue((oid, kind, codec, len(data), stored))
        return oid

    def ingest(self, path: Path, label: str,
               plan: Future[derive.Plan | None] | None = None) -> FileDigest:
        """Chunk, hash and pack one file in a single pass, streaming; return its digest.

        The caller flushes the small-file batch first: the writer thread owns the pack writer
        while this runs."""
        try:
            with open(path, "rb", buffering=0) as f:
                return self.ingest_stream(f, label, plan, float_ranges(path), str(path))
        except OSError as exc:
            raise from_os_error(exc, f"reading {path}") from None

    def ingest_stream(self, stream: BinaryIO, label: str,
                      plan: Future[derive.Plan | None] | None,
                      ranges: list[tuple[int, int, int]], what: str, *,
                      start: int = 0, sha: hashlib._Hash | None = None,
                      chunks: list[tuple[bytes, int]] | None = None,
                      after_block: Callable[[list[tuple[bytes, int]]], None] | None = None
                      ) -> FileDigest:
        """:meth:`ingest` of a readable (``readinto``) holding the file's bytes from offset
        ``start``; ``ranges``: the file's float ranges (:func:`cas.metadata.float_ranges`).

        A resumed file passes the ``chunks`` of its first ``start`` bytes and ``sha`` fed with
        them (FastCDC cuts from a chunk boundary as it would have cut the whole file).
        ``after_block(chunks so far)`` runs on the writer thread after each block is appended
        to the pack (the only time another caller may use the pack writer)."""
        sha = sha if sha is not None else hashlib.sha256()
        chunks = chunks if chunks is not None else []
        # Blocks travel from this thread (read, cut, submit) to a writer thread (collect
        # results in order, append to the pack, recycle the buffer), so that reading and
        # writing overlap. The bounded queue and the buffer pool bound memory.
        blocks: queue.Queue[_Block | None] = queue.Queue(MAX_BLOCKS_IN_FLIGHT)
        failed: list[BaseException] = []

        def write_blocks() -> None:
            while (block := blocks.get()) is not None:
                region, hashed, groups = block
                if not failed:
                    try:
                        self._write_block(groups, chunks)
                        hashed.result()
                        if after_block is not None:
                            after_block(chunks)
                    except BaseException as exc:  # noqa: BLE001 - re-raised by ingest()
                        failed.append(exc)
                for fut in (hashed, *groups):  # never recycle a buffer still being read
                    fut.exception()
                self.buffers.release(region.obj)  # type: ignore[arg-type]
                if self.progress is not None and not failed:
                    self.progress(self.done, self.total, label)

        if ranges:
            from cas.bytegroup import FloatRanges

            floats: FloatRanges | None = FloatRanges(ranges)
        else:
            floats = None
        offset = start
        drain = self.drainer.submit(write_blocks)
        try:
            for region, views in self.chunker.cut_blocks(stream, BLOCK_SIZE, self.buffers):
                placed = []
                for view in views:
                    placed.append((offset, view))
                    offset += len(view)
                groups = [self.pool.submit(self._work_group, placed[i : i + GROUP], floats,
                                           plan) for i in range(0, len(placed), GROUP)]
                blocks.put((region, self.hasher.submit(sha.update, region), groups))
                if failed:
                    break
        except OSError as exc:
            failed.append(from_os_error(exc, f"reading {what}"))
        except BaseException as exc:  # noqa: BLE001 - a stream's own error, after the drain
            failed.append(exc)
        finally:
            blocks.put(None)
            drain.result()
        if failed:
            raise failed[0]
        size = sum(n for _, n in chunks)
        clist = ChunkList(size, tuple(chunks))
        clist_id = self.put_object(clist.encode(), KIND_CHUNK_LIST)
        return FileDigest(size, sha.hexdigest(), clist_id.hex(), False)


def _read_whole(path: str, st: os.stat_result) -> bytes:
    """The bytes of a small file, checked to be those of the file the scan saw.

    Raises:
        ConflictError: the file changed (size, mtime or inode) since it was scanned.
    """
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            # One byte more than expected tells a file that grew; fstat tells the rest.
            data = os.read(fd, st.st_size + 1)
            while len(data) < st.st_size:
                more = os.read(fd, st.st_size + 1 - len(data))
                if not more:
                    break
                data += more
            after = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    if len(data) != st.st_size or changed(st, after):
        raise ConflictError(f"{path}: file changed while it was being read")
    return data


def _parse_parents(store: Store, specs: list[str]) -> list[str]:
    out = []
    for spec in specs:
        v = store.registry.resolve(parse_version_spec(spec))
        out.append(f"{v.name}@{v.commit}")
    return out


def add(store: Store, name: str, path: Path, options: AddOptions,
        progress: Progress | None = None) -> AddResult:
    """Register ``path`` as a new version of ``name``; see :meth:`cas.store.Store.add`.

    Creates no version when the content equals the latest version's; requested tags are then
    put on the latest version, and metadata options that could not be recorded are named in a
    ``W_METADATA_NOT_RECORDED`` warning. Holds a shared lease throughout (:mod:`cas.leases`)
    and the store write lock only to commit (``docs/format.md``, Write ordering).

    Raises:
        ArgsError | NotFoundError: bad name, tag, parent, path or pattern, before anything is
            read.
        ConflictError: a requested tag names another version (without ``force_tag``), found
            before any file is stored; or a file changed while it was read (nothing committed).
        DiskError | LockError: the disk or the lock failed; the store stays consistent.
    """
    validate_model_name(name)
    check_message(options.message)
    tags = list(dict.fromkeys(options.tags))
    for t in tags:
        validate_tag(t)
    path = path.expanduser()
    scan = scan_input(path, store_dir=store.path, exclude=options.exclude)
    warnings = list(scan.warnings)
    # A shared lease tells a gc that this add may deduplicate against what it is about to
    # delete; a gc already under way names its doomed packs, which this add must not use.
    #
    # The store's write lock (flock) is held only to commit: adds run side by side and a tag
    # or rm waits only for a commit, not for a whole add. Taking it once at the start makes a
    # lock that is stuck fail at once (E_LOCK), before any work, and recovers what killed
    # writers left.
    store.check_writable()
    with store.leases.acquire_shared("add") as lease, gc_paused():
        avoid = store.leases.doomed_packs()
        pause = pause_hook_from_env()
        registry = store.registry
        parents = _parse_parents(store, options.parents)
        latest = _latest(registry, name)
        for t in tags:
            registry.check_tag_case(name, t)
        tagged = {t: c for (_, t), c in registry.tags(name).items() if t in tags}
        on_latest = check_tags(name, tagged, latest, options.force_tag)
        cache = StatCache(store.backend, store_id=store.config.uuid)
        warnings.extend(cache.warnings)
        old: Manifest | None = None

        def latest_manifest() -> Manifest:
            nonlocal old
            if old is None:
                assert latest is not None
                old = read_manifest(store, latest)
            return old

        found: dict[str, FileDigest] = {}
        todo: list[tuple[str, str, os.stat_result, FileDigest | None]] = []
        for rel, apath, st in scan.files:
            cached = cache.get(apath, st)
            if cached is not None and not options.rehash:
                found[rel] = cached
            else:
                todo.append((rel, apath, st, cached))
        hits = len(found)
        unchanged = False
        content_id = None
        if not todo and latest is not None:
            # Every file is known: compare with the latest version, by the fingerprint the
            # stat cache keeps of it when there is one (no need to read the manifest).
            known = cache.content(latest.commit)
            if known is not None:
                content_id = fingerprint(found, scan.files)
                unchanged = content_id == known
            else:
                unchanged = same_content(found, scan.files, latest_manifest())
        if (not unchanged or store.packs.bad_ids) and hits:
            # A new version will name these chunk lists: trust a cached digest only if what
            # it vouches for is confirmed (its chunk list is in the store, and agrees). While
            # the store knows of damaged objects, an unchanged add checks too: re-adding the
            # original files is how they are healed.
            for rel, apath, st, d in unconfirmed(store, found, scan.files,
                                                 latest_manifest() if latest else None, avoid):
                del found[rel]
                todo.append((rel, apath, st, d))
                unchanged = False
            hits = len(found)
        if on_latest and not unchanged:
            assert latest is not None
            prove_unchanged(name, on_latest, latest, latest_manifest(), scan.files, found, todo,
                            cache)
            unchanged, todo = True, []

        writer = PackWriter(store.backend, store.config.pack_target_bytes)
        ing = _Ingester(store, writer, progress, sum(st.st_size for _, _, st, _ in todo),
                        avoid) if todo else None
        stale: list[str] = []
        base_files: dict[str, FileEntry] = {}
        try:
            if ing is not None:
                base_files = _base_files(store, options, latest,
                                         latest_manifest() if latest is not None else None)
                for rel, apath, st, cached in todo:
                    digest = _ingest_file(store, ing, cache, rel, apath, st, base_files.get(rel))
                    if cached is not None and \
                            (cached.sha256, cached.size) != (digest.sha256, digest.size):
                        stale.append(rel)
                    found[rel] = digest
                ing.flush()
            writer.finish()
            if pause is not None:
                pause("ingested")  # objects durable, nothing committed (test hook)
        except BaseException:
            writer.abort()
            raise
        finally:
            if ing is not None:
                ing.close()
        with store.writing():
            # What another writer committed while this add ran: the model's latest version
            # and the requested tags are read again, under the lock, and settled as at the
            # start (the files' digests are all known now, so nothing is read again).
            now_latest = _latest(registry, name)
            now_tagged = {t: c for (_, t), c in registry.tags(name).items() if t in tags}
            if (now_latest.commit if now_latest else None) != \
                    (latest.commit if latest else None) or now_tagged != tagged:
                latest, old, tagged, content_id = now_latest, None, now_tagged, None
                on_latest = check_tags(name, tagged, latest, options.force_tag)
                unchanged = latest is not None and same_content(found, scan.files,
                                                                latest_manifest())
                if on_latest and not unchanged:
                    raise ConflictError(
                        f"tag {name}@{on_latest[0]} was set on a version registered while "
                        "this add ran; move it with --force-tag")
            if latest is not None and not unchanged:
                unchanged = same_content(found, scan.files, latest_manifest())
            if unchanged:
                assert latest is not None
                version, created = latest, False
                if gives_metadata(options):
                    warnings.extend(metadata_not_recorded(options, parents, latest,
                                                          latest_manifest()))
            else:
                entries = _record_bases(store, [file_entry(rel, found[rel], st)
                                                for rel, _, st in scan.files],
                                        [*base_files.values(), *(old.files if old else ())])
                detected = _describe(path, scan, entries, ing.formats if ing else None,
                                     warnings)
                lease.check()  # a lease lost (expired, broken) may mean a gc deleted what we use
                version = _commit_new(store, name, path, options, entries, detected, parents)
                created = True
            # The version is committed: what fails from here on is reported as a warning, never
            # as an error that would make a script retry a success.
            tags = _set_tags(registry, version, tags, tagged, warnings)
            if not unchanged or content_id is None:
                content_id = fingerprint(found, scan.files)
            _save_cache(cache, version, content_id, warnings)
    return AddResult(
        name=name,
        seq=version.seq,
        commit=version.commit,
        created=created,
        files=len(found),
        total_size=sum(d.size for d in found.values()),
        bytes_hashed=ing.counters.bytes_hashed if ing else 0,
        stat_cache_hits=hits,
        new_chunks=ing.counters.new_chunks if ing else 0,
        reused_chunks=ing.counters.reused_chunks if ing else 0,
        new_stored_bytes=sum(writer.written.values()),
        tags=tags,
        stale_cache=stale,
        skipped=scan.skipped,
        warnings=warnings,
    )


def _describe(path: Path, scan: Scan, entries: list[FileEntry], formats: dict[str, str] | None,
              warnings: list[CasWarning]) -> dict[str, object]:
    """Metadata from the files' headers (:func:`cas.metadata.describe`); a header that does not
    agree with its file is named in a ``W_BAD_HEADER`` warning."""
    single = stat_mod.S_ISREG(os.stat(path).st_mode)
    detected = describe(path.absolute() if single else scan.root, [e.path for e in entries],
                        formats)
    for rel, reason in detected["bad_headers"]:  # type: ignore[attr-defined]
        shown = str(path) if single else os.path.join(path, rel)
        warnings.append(CasWarning(
            "W_BAD_HEADER", f"{shown}: {reason}; registered as bytes, with no parameter count "
                            "or dtypes from this file"))
    return detected


def _set_tags(registry: Registry, version: Version, tags: list[str], tagged: dict[str, str],
              warnings: list[CasWarning]) -> list[str]:
    """Put the requested tags on the committed ``version``; a tag that cannot be set is a
    ``W_TAG_NOT_SET`` warning. Returns the tags set."""
    done = []
    for t in tags:
        if tagged.get(t) == version.commit:
            done.append(t)
            continue
        try:
            registry.set_tag(version, t, force=t in tagged, warnings=warnings)
            done.append(t)
        except (CasError, OSError) as exc:
            why = exc.message if isinstance(exc, CasError) else exc.strerror or str(exc)
            warnings.append(CasWarning(
                "W_TAG_NOT_SET", f"{version.ref} is registered but tag {t!r} was not set: "
                                 f"{why}; run 'cas tag {version.ref} {t}'"))
    return done


def _save_cache(cache: StatCache, version: Version, content_id: str,
                warnings: list[CasWarning]) -> None:
    """Remember the version's content fingerprint and save the stat cache; a failure is a
    ``W_STAT_CACHE_NOT_SAVED`` warning (the next add re-reads the files)."""
    cache.remember_content(version.commit, content_id)
    try:
        cache.save()
    except (DiskError, PermError, OSError) as exc:
        why = exc.message if isinstance(exc, CasError) else exc.strerror or str(exc)
        warnings.append(CasWarning(
            "W_STAT_CACHE_NOT_SAVED", f"{version.ref} is registered; the stat cache was not "
                                      f"saved ({why}): the next add re-reads the files"))


def _ingest_file(store: Store, ing: _Ingester, cache: StatCache, rel: str, apath: str,
                 st: os.stat_result, base: FileEntry | None) -> FileDigest:
    """Store one file (inline if small, else streamed) and return its digest; the stat cache
    learns it."""
    started = time.time_ns()
    digest = ing.ingest_small(rel, apath, st) if st.st_size <= SMALL_FILE else None
    if digest is None:
        ing.flush()
        # The plan reads the base file's header (and imports numpy): off the path.
        plan = ing.planner.submit(_plan, store, Path(apath), base) if base is not None else None
        digest = ing.ingest(Path(apath), rel, plan)
        try:
            after = os.stat(apath)
        except OSError as exc:
            raise from_os_error(exc, f"reading {apath}") from None
        if changed(st, after) or digest.size != st.st_size:
            raise ConflictError(f"{apath}: file changed while it was being read")
    cache.put(apath, st, digest, started)
    return digest


def _record_bases(store: Store, entries: list[FileEntry], earlier: list[FileEntry]
                  ) -> list[FileEntry]:
    """``entries`` with the base chunk lists their derived chunks need recorded (see
    :mod:`cas.graph`); ``earlier``: entries of versions read already, whose records are
    reused for equal chunk lists."""
    from cas import graph

    known = {parse_hex(f.chunks): f.bases for f in earlier if f.bases is not None}
    edges = graph.EdgeMap(store)
    out = [msgspec.structs.replace(e, bases=graph.list_bases(
        store, parse_hex(e.chunks), edges, known)) for e in entries]
    edges.save()
    return out


def _latest(registry: Registry, name: str) -> Version | None:
    if registry.head(name) is None:
        return None
    live = registry.versions(name)
    return live[-1] if live else None


def _base_files(store: Store, options: AddOptions, latest: Version | None,
                old: Manifest | None) -> dict[str, FileEntry]:
    """The files that new files are predicted from (see :mod:`cas.derive`): those of the first
    ``--parent`` if one is given, else of the model's latest version."""
    if not store.config.derives:
        return {}
    base = old
    if options.parents:
        version = store.registry.resolve(parse_version_spec(options.parents[0]))
        if latest is None or version.commit != latest.commit:
            base = store.manifest(version)
    return {f.path: f for f in base.files} if base is not None else {}


def _plan(store: Store, path: Path, base: FileEntry | None) -> derive.Plan | None:
    """How to predict ``path``'s tensors from ``base`` (the same file in the base version),
    or None when either is not a safetensors file or they share no float tensor."""
    import io

    from cas import derive
    from cas.metadata import MAX_SAFETENSORS_HEADER, safetensors_tensors, tensors

    if base is None or base.size < 8 or not store.config.derives:
        return None
    new = tensors(path)
    if not new:
        return None
    try:
        clist = parse_hex(base.chunks, what="chunk list id")
        head = store.packs.ranges.read(clist, 0, 8)[0]
        length = int.from_bytes(head, "little")
        if length > min(base.size - 8, MAX_SAFETENSORS_HEADER):
            return None
        old = safetensors_tensors(io.BytesIO(head + store.packs.ranges.read(clist, 8, length)[0]),
                                  base.size)
    except (CasError, OSError):
        return None  # prediction is an optimisation: without it chunks are stored as usual
    return derive.Plan.build(clist, new, old)


def _commit_new(store: Store, name: str, path: Path, options: AddOptions,
                entries: list[FileEntry], detected: dict[str, object],
                parents: list[str]) -> Version:
    """Commit a new version holding ``entries`` (its packs are durable already)."""
    registry = store.registry
    seq = registry.next_seq(name) if registry.head(name) is not None else 1
    meta = Metadata(
        format=str(detected.get("format") or "other"),
        architecture=detected.get("architecture"),  # type: ignore[arg-type]
        parameter_count=detected.get("parameter_count"),  # type: ignore[arg-type]
        dtypes=list(detected.get("dtypes") or []),  # type: ignore[call-overload]
        quantization=detected.get("quantization"),  # type: ignore[arg-type]
        role=options.role,
        base_model=options.base_model,
        parents=parents,
        metrics=dict(options.metrics),
        license=options.license,
        source=options.source or str(path.absolute()),
        created_at=iso_utc(),
        created_on=socket.gethostname(),
        extra=dict(options.extra),
        provenance=options.provenance,
    )
    # Not Manifest.validate(): every field was checked where it was made (paths by the scan,
    # with the same rules, folder by folder; ids and hashes are our own digests; entries come
    # sorted), and checking 5,000 paths again costs a tenth of adding 5,000 small files.
    manifest = Manifest(name=name, seq=seq, files=entries,
                        total_size=sum(e.size for e in entries), metadata=meta,
                        id=new_version_id())
    return registry.add_version(name, seq, manifest.encode(), options.message,
                                resolve_identity(options.author), version_id=manifest.id)


