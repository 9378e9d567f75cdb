"""Ingest: files -> chunks -> packs -> manifest -> registry commit.

One pass over each input file. The calling thread reads 8 MiB blocks and cuts them (FastCDC,
whole blocks at once; chunks are views into the block, never copied); a small pool hashes each
chunk with BLAKE3, checks whether the store already has it, and compresses the new ones; a
single ordered thread feeds each block to the whole-file SHA-256 and BLAKE3. zstd, BLAKE3 and
hashlib release the GIL, so the work spreads over the cores. At most ``MAX_BLOCKS_IN_FLIGHT``
blocks are held at once, so memory stays bounded whatever the file size.

Order of effects (see ``docs/format.md``, "Write ordering"): chunks and chunk lists go into packs;
all packs are finished (durable, then visible); only then is the manifest committed and the model
ref moved. A crash before the ref moves leaves only unreferenced packs, which dedupe the next
attempt and which gc may remove later.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import socket
import stat as stat_mod
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas import derive
from cas.bytegroup import FloatRanges
from cas.chunking import BufferPool, Chunker
from cas.compression import CODEC_DERIVED, Compressor
from cas.errors import ArgsError, CasError, ConflictError, NotFoundError, from_os_error
from cas.format.chunklist import ChunkList
from cas.format.manifest import FileEntry, Manifest, Metadata, Provenance
from cas.format.pack import KIND_CHUNK, KIND_CHUNK_LIST
from cas.gcpause import gc_paused
from cas.ids import blake3_id, parse_hex
from cas.metadata import (
    MAX_SAFETENSORS_HEADER,
    describe,
    float_ranges,
    safetensors_tensors,
    tensors,
)
from cas.names import (
    check_unique_paths,
    parse_version_spec,
    validate_model_name,
    validate_rel_path,
    validate_tag,
)
from cas.packs import PackWriter
from cas.registry import resolve_identity
from cas.statcache import FileDigest, StatCache

if TYPE_CHECKING:
    from cas.store import Progress, Store

#: Bytes read per block; the chunker cuts whole blocks at once (no per-chunk copies).
BLOCK_SIZE = 8 << 20
#: Blocks being hashed, compressed or written at once: bounds memory to about 4 x 8 MiB.
MAX_BLOCKS_IN_FLIGHT = 4
#: Chunks per worker task: large enough that task overhead is small, small enough to spread.
GROUP = 32
WORKERS = 2

_ChunkResult = tuple[bytes, int, "int | None", "bytes | memoryview | None"]
_Block = tuple[memoryview, "Future[None]", "list[Future[list[_ChunkResult]]]"]
_SKIP_DIRS = frozenset({".git", ".cas"})


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


@dataclass
class _Counters:
    new_chunks: int = 0
    reused_chunks: int = 0
    bytes_hashed: int = 0


def scan_input(path: Path, exclude: Path | None = None
               ) -> tuple[Path, list[tuple[str, Path, os.stat_result]]]:
    """List the regular files to register under ``path``, sorted by relative path.

    Symlinks to files are followed (their content is registered); ``.git`` folders and the
    folder ``exclude`` (the store itself, which changes while it is written) are skipped.
    A ``path`` inside ``exclude`` is refused. Every relative path is validated before anything
    is read.

    Raises:
        NotFoundError: ``path`` does not exist.
        ArgsError: a special file, an unsafe or colliding name, or an empty directory.
    """
    try:
        top = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    excluded = os.stat(exclude) if exclude is not None and exclude.exists() else None
    if excluded is not None:
        real = path.resolve()
        if real == exclude.resolve() or exclude.resolve() in real.parents:  # type: ignore[union-attr]
            raise ArgsError(f"{path}: is inside the store; register files from elsewhere")
    if stat_mod.S_ISREG(top.st_mode):
        rel = path.name
        validate_rel_path(rel, user_input=True)
        return path.parent, [(rel, path, top)]
    if not stat_mod.S_ISDIR(top.st_mode):
        raise ArgsError(f"{path}: not a regular file or directory")
    found: list[tuple[str, Path, os.stat_result]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(d: Path, prefix: str) -> None:
        st = os.stat(d)
        if (st.st_dev, st.st_ino) in seen_dirs:
            raise ArgsError(f"{d}: symlink loop")
        seen_dirs.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise from_os_error(exc, f"listing {d}") from None
        for e in entries:
            rel = f"{prefix}{e.name}"
            if e.name in _SKIP_DIRS and e.is_dir():
                continue
            validate_rel_path(rel, user_input=True)
            try:
                st = os.stat(e.path)  # follows symlinks
            except FileNotFoundError:
                raise ArgsError(f"{e.path}: dangling symlink") from None
            if stat_mod.S_ISDIR(st.st_mode):
                if excluded is not None and (st.st_dev, st.st_ino) == (excluded.st_dev,
                                                                       excluded.st_ino):
                    continue
                walk(Path(e.path), rel + "/")
            elif stat_mod.S_ISREG(st.st_mode):
                found.append((rel, Path(e.path), st))
            else:
                raise ArgsError(f"{e.path}: not a regular file")

    walk(path, "")
    if not found:
        raise ArgsError(f"{path}: directory holds no files")
    found.sort(key=lambda t: t[0])
    check_unique_paths((rel for rel, _, _ in found), user_input=True)
    return path, found


class _Ingester:
    """Cuts, hashes, dedupes, compresses and packs files for one ``add``."""

    def __init__(self, store: Store, writer: PackWriter, progress: Progress | None,
                 total: int) -> None:
        self.store = store
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

    @property
    def buffers(self) -> BufferPool:
        # Allocated on first use: an add where every file is unchanged never needs them.
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
        return oid in self.writer or self.store.packs.has(oid)

    def _work_group(self, chunks: list[tuple[int, memoryview]], floats: FloatRanges | None,
                    planned: Future[derive.Plan | None] | None) -> list[_ChunkResult]:
        """Hash a run of ``(file offset, chunk)``, and compress the ones the store lacks.

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
                plan, planned = planned.result(), None
            where = floats.locate(offset, len(view)) if floats is not None else None
            tensor = plan.tensor_at(offset, len(view)) if plan is not None else None
            if tensor is not None and plan.decided.get(tensor, True):  # type: ignore[union-attr]
                derived = self._derive(view, offset, plan, where)  # type: ignore[arg-type]
                if derived is not None and plan.decided.get(tensor):  # type: ignore[union-attr]
                    out.append((oid, len(view), CODEC_DERIVED, derived))
                    continue
            else:
                derived = None
            if where is None:
                codec, stored = self.compressor.compress(view)
            else:
                index, elem, phase = where
                decision = floats.decided.get(index)  # type: ignore[union-attr]
                if decision is None:
                    decision, (codec, stored) = self.compressor.best(view, (elem, phase))
                    floats.decided[index] = decision  # type: ignore[union-attr]
                elif decision[0]:
                    codec, stored = self.compressor.compress(view, (elem, phase), decision[1])
                else:
                    codec, stored = self.compressor.compress(view)
            if tensor is not None and tensor not in plan.decided:  # type: ignore[union-attr]
                # The first new chunk of a tensor decides for the rest of it, as for grouping.
                won = derived is not None and len(derived) < len(stored)
                plan.decided[tensor] = won  # type: ignore[union-attr]
                if won:
                    codec, stored = CODEC_DERIVED, derived  # type: ignore[assignment]
            out.append((oid, len(view), codec, stored))
        return out

    def _derive(self, view: memoryview, offset: int, plan: derive.Plan,
                where: tuple[int, int, int] | None) -> bytes | None:
        """The chunk as a residual against its prediction from the base file, if smaller
        than the chunk itself."""
        grouping = where[1:] if where is not None else None

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
        oid = blake3_id(data)
        if not self._known(oid):
            codec, stored = self.compressor.compress(data)
            self.writer.add(oid, kind, codec, len(data), stored)
        return oid

    def ingest(self, path: Path, label: str,
               plan: Future[derive.Plan | None] | None = None) -> FileDigest:
        """Chunk, hash and pack one file in a single pass; return its digest."""
        sha = hashlib.sha256()

        chunks: list[tuple[bytes, int]] = []
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
                    except BaseException as exc:  # noqa: BLE001 - re-raised by ingest()
                        failed.append(exc)
                for fut in (hashed, *groups):  # never recycle a buffer still being read
                    fut.exception()
                self.buffers.release(region.obj)  # type: ignore[arg-type]
                if self.progress is not None and not failed:
                    self.progress(self.done, self.total, label)

        ranges = float_ranges(path)
        floats = FloatRanges(ranges) if ranges else None
        offset = 0
        drain = self.drainer.submit(write_blocks)
        try:
            with open(path, "rb", buffering=0) as f:
                for region, views in self.chunker.cut_blocks(f, BLOCK_SIZE, self.buffers):
                    placed = []
                    for view in views:
                        placed.append((offset, view))
                        offset += len(view)
                    groups = [self.pool.submit(self._work_group, placed[i : i + GROUP], floats, plan)
                              for i in range(0, len(placed), GROUP)]
                    blocks.put((region, self.hasher.submit(sha.update, region), groups))
                    if failed:
                        break
        except OSError as exc:
            failed.append(from_os_error(exc, f"reading {path}"))
        finally:
            blocks.put(None)
            drain.result()
        if failed:
            raise failed[0]
        size = sum(n for _, n in chunks)
        clist = ChunkList(size, tuple(chunks))
        clist_id = self.put_object(clist.encode(), KIND_CHUNK_LIST)
        return FileDigest(size, sha.hexdigest(), clist_id.hex(), False)


def _parse_parents(store: Store, specs: list[str]) -> list[str]:
    out = []
    for spec in specs:
        v = store.registry.resolve(parse_version_spec(spec))
        out.append(f"{v.name}@{v.commit}")
    return out


def add(store: Store, name: str, path: Path, options: AddOptions,
        progress: Progress | None = None) -> AddResult:
    """Register ``path`` as a new version of ``name``; see :meth:`cas.store.Store.add`.

    Creates no version when the content equals the latest version's (tags given are then put
    on the latest version). Holds the store write lock throughout.

    Raises:
        ArgsError | NotFoundError: bad name, tag, parent or path, before anything is written.
        ConflictError: a file changed while it was read; nothing is committed.
        DiskError | LockError: the disk or the lock failed; the store stays consistent.
    """
    validate_model_name(name)
    for t in options.tags:
        validate_tag(t)
    root, files = scan_input(path.expanduser(), exclude=store.path)
    with store.writing(), gc_paused():
        parents = _parse_parents(store, options.parents)
        # A requested tag that already names another version is refused before any work; one
        # that names the latest version is fine if the content turns out unchanged.
        taken = store.registry.tags(name)
        live = store.registry.versions(name) if store.registry.head(name) is not None else []
        latest_commit = live[-1].commit if live else None
        for t in options.tags:
            if (name, t) in taken and taken[(name, t)] != latest_commit:
                raise ConflictError(f"tag {name}@{t} exists (move it with 'cas tag --force')")
        cache = StatCache(store.cache_dir / "stat.msgpack", store.tmp_dir)
        writer = PackWriter(store.packs_dir, store.tmp_dir, store.config.pack_target_bytes)
        entries: list[FileEntry] = []
        hits = 0
        stale: list[str] = []
        todo = []
        for rel, fpath, st in files:
            key = str(fpath.absolute())
            cached = cache.get(key, st)
            chunks_id = parse_hex(cached.chunks, what="chunk list id") if cached else None
            if chunks_id is not None and store.has_object(chunks_id):
                if not options.rehash:
                    entries.append(_entry(rel, cached, st))
                    hits += 1
                    continue
            todo.append((rel, fpath, st, key, cached))
        # Fine-tunes and dtype conversions are predicted (see cas.derive) from the same files
        # in the first --parent if one is given, else in the model's latest version.
        base_version = (store.registry.resolve(parse_version_spec(options.parents[0]))
                        if options.parents else live[-1] if live else None)
        base_files = ({f.path: f for f in store.manifest(base_version).files}
                      if base_version is not None else {})
        ing = _Ingester(store, writer, progress, sum(st.st_size for _, _, st, _, _ in todo))
        try:
            for rel, fpath, st, key, cached in todo:
                started = time.time_ns()
                base = base_files.get(rel)
                # The plan reads the base file's header (and imports numpy): off the path.
                plan = ing.planner.submit(_plan, store, fpath, base) \
                    if base is not None else None
                digest = ing.ingest(fpath, rel, plan)
                after = os.stat(fpath)
                if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or \
                        digest.size != st.st_size:
                    raise ConflictError(f"{fpath}: file changed while it was being read")
                if cached is not None and \
                        (cached.sha256, cached.size) != (digest.sha256, digest.size):
                    stale.append(rel)
                cache.put(key, st, digest, started)
                entries.append(_entry(rel, digest, st))
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            ing.close()
        entries.sort(key=lambda e: e.path)
        detected = describe(root if path.is_dir() else path, [e.path for e in entries])
        result = _commit(store, name, path, options, entries, detected, parents)
        new_stored = sum(writer.written.values())
        cache.save()
    return AddResult(
        name=name,
        seq=result[0],
        commit=result[1],
        created=result[2],
        files=len(entries),
        total_size=sum(e.size for e in entries),
        bytes_hashed=ing.counters.bytes_hashed,
        stat_cache_hits=hits,
        new_chunks=ing.counters.new_chunks,
        reused_chunks=ing.counters.reused_chunks,
        new_stored_bytes=new_stored,
        tags=list(options.tags),
        stale_cache=stale,
    )


def _plan(store: Store, path: Path, base: FileEntry | None) -> derive.Plan | None:
    """How to predict ``path``'s tensors from ``base`` (the same file in the latest version),
    or None when either is not a safetensors file or they share no float tensor."""
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


def _entry(rel: str, d: FileDigest, st: os.stat_result) -> FileEntry:
    return FileEntry(path=rel, size=d.size, sha256=d.sha256, chunks=d.chunks,
                     executable=bool(st.st_mode & stat_mod.S_IXUSR))


def _commit(store: Store, name: str, path: Path, options: AddOptions, entries: list[FileEntry],
            detected: dict[str, object], parents: list[str]) -> tuple[int, str, bool]:
    registry = store.registry
    latest = None
    if registry.head(name) is not None:
        live = registry.versions(name)
        latest = live[-1] if live else None
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
        source=options.source or str(path.expanduser().absolute()),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        created_on=socket.gethostname(),
        extra=dict(options.extra),
        provenance=options.provenance,
    )
    manifest = Manifest(name=name, seq=seq, files=entries,
                        total_size=sum(e.size for e in entries), metadata=meta)
    manifest.validate()
    taken = registry.tags(name)
    if latest is not None and store.manifest(latest).same_content(manifest):
        for t in options.tags:
            if (name, t) not in taken:
                registry.set_tag(latest, t)
        return latest.seq, latest.commit, False
    for t in options.tags:
        if (name, t) in taken:
            raise ConflictError(f"tag {name}@{t} exists (move it with 'cas tag --force')")
    version = registry.add_version(name, seq, manifest.encode(), options.message,
                                   resolve_identity(options.author))
    for t in options.tags:
        registry.set_tag(version, t)
    return version.seq, version.commit, True
