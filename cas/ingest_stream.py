"""Ingest from streams: register a version from files whose bytes arrive as streams.

:func:`add_streams` is :func:`cas.ingest.add` for content that is not in a folder (a Hub
download): each :class:`StreamFile` names a path, a size, the expected digest (SHA-256, or a
git blob id) and how to open its bytes from an offset. Bytes are chunked, hashed and packed as
they arrive, by the same :class:`cas.ingest._Ingester` that ``add`` uses, so the manifest, the
chunk boundaries and the stored objects are those ``cas add`` of the same folder makes; memory
stays bounded (the ingest pipeline's blocks, plus a weight file's header while it is read).

Weight headers: grouping float tensors, predicting from the previous version and describing
the model all read a file's header before its bytes are chunked. The header is read from the
head of the stream (a safetensors header by its length, a GGUF header until it parses) and
written to a *stand-in*: a sparse file of the file's size holding only its head, in a private
temp folder, so that :mod:`cas.metadata` reads it as it reads a file on disk. Nothing else of
the content is ever written outside the store.

Verification: each file's size and digest are checked when its last byte is packed; a file
that does not match fails the whole version (``E_VERIFY``): nothing is registered, and the
packs written so far are unreferenced (gc removes them, as after any interrupted add).

Resume (``resume=`` a key): progress is recorded in ``cache/resume/<key>.json`` at
*checkpoints*, each taken after the pack writer made every object so far durable: a file
finished (its digest), or a prefix of a file being received (the chunk list of its first
``P`` bytes, ending on a chunk boundary). A later run with the same key and the same expected
digests opens a finished file not at all, and a started one at ``P``: its SHA-256 (and git
blob id) are fed by reading the prefix back from the store, and FastCDC cuts from a chunk
boundary exactly as it cuts the whole file, so the manifest is the same. Chunks stored after
the last checkpoint are found again by dedupe when they sit in a closed pack. The record is
deleted once the version is committed; it is a cache (deleting it costs a download).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from cas.checkout import pause_hook_from_env
from cas.commits import check_message
from cas.errors import (
    ArgsError,
    CasError,
    CasWarning,
    ConflictError,
    VerifyError,
    from_os_error,
)
from cas.format.chunklist import ChunkList
from cas.format.manifest import FileEntry, Manifest
from cas.format.pack import KIND_CHUNK_LIST
from cas.fsutil import atomic_write
from cas.gcpause import gc_paused
from cas.ids import blake3_id, parse_hex
from cas.ingest import (
    BLOCK_SIZE,
    SMALL_FILE,
    AddOptions,
    AddResult,
    _base_files,
    _commit_new,
    _Ingester,
    _latest,
    _parse_parents,
    _plan,
    _record_bases,
    _set_tags,
)
from cas.metadata import (
    MAX_CONFIG_BYTES,
    MAX_SAFETENSORS_HEADER,
    HeaderError,
    describe,
    float_ranges,
    format_of,
    gguf_layout,
)
from cas.names import validate_model_name, validate_rel_path, validate_tag
from cas.packwriter import PackWriter
from cas.statcache import FileDigest
from cas.unchanged import check_tags, gives_metadata, metadata_not_recorded, read_manifest

if TYPE_CHECKING:
    from cas.store import Progress, Store

#: A file being received is checkpointed at most every this many bytes (and at least every
#: third of its size, but not under one ingest block).
CHECKPOINT_BYTES = 64 << 20
#: A finished file is checkpointed when the packs grew by this much since the last one
#: (smaller packs would be the "small packs" gc repacks).
FILE_CHECKPOINT_BYTES = 16 << 20
#: The most of a GGUF file's head read to parse its header.
MAX_GGUF_HEAD = 64 << 20
RESUME_DIR = "cache/resume"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")

#: ``open(offset)``: a readable (``readinto``) of the file's bytes from ``offset`` on.
Opener = Callable[[int], BinaryIO]


@dataclass(frozen=True)
class StreamFile:
    """One file of a version to register from a stream."""

    path: str
    size: int
    open: Opener
    #: The expected SHA-256 (hex) of the content, or None when ``git_blob_id`` is given.
    sha256: str | None = None
    #: The expected git blob SHA-1 (hex) of the content (for files git stores as blobs).
    git_blob_id: str | None = None
    executable: bool = False

    @property
    def expected(self) -> str:
        return self.sha256 if self.sha256 is not None else self.git_blob_id or ""


class _Progress(msgspec.Struct):
    """One file's entry in a resume record: the expected id, and what is durable."""

    expected: str
    size: int
    #: ``[size, sha256, chunk list id]`` of a file wholly stored.
    done: list[Any] | None = None
    #: ``[offset, chunk list id]`` of the file's first ``offset`` bytes.
    prefix: list[Any] | None = None


class _Record(msgspec.Struct):
    files: dict[str, _Progress] = {}


class ResumeRecord:
    """``cache/resume/<key>.json``: what earlier runs of one import made durable."""

    def __init__(self, store: Store, key: str) -> None:
        if not _KEY.match(key):
            raise ArgsError(f"{key!r} is not a resume key")
        self.path = store.path / RESUME_DIR / f"{key}.json"
        try:
            self.record = msgspec.json.decode(self.path.read_bytes(), type=_Record)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            self.record = _Record()  # none yet, or unreadable: start over (a cache)

    def get(self, f: StreamFile) -> _Progress | None:
        p = self.record.files.get(f.path)
        return p if p is not None and (p.expected, p.size) == (f.expected, f.size) else None

    def set(self, f: StreamFile, done: FileDigest | None = None,
            prefix: tuple[int, str] | None = None) -> None:
        self.record.files[f.path] = _Progress(
            f.expected, f.size, [done.size, done.sha256, done.chunks] if done else None,
            list(prefix) if prefix else None)

    def forget(self, f: StreamFile) -> None:
        self.record.files.pop(f.path, None)

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, msgspec.json.encode(self.record))
        except (CasError, OSError):
            pass  # resume is an optimisation: the import goes on without it

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


class _NeedMore(Exception):
    """The header parser asked for bytes past the head read so far."""


class _Head:
    """The head of a stream, read as far as a header parser asks, then handed on: reading
    from it yields the head, then the rest of the stream."""

    def __init__(self, stream: BinaryIO, start: int = 0) -> None:
        self.stream = stream
        self.start = start
        self.data = bytearray()
        self.eof = False
        self._pos = 0

    def fill(self, upto: int) -> None:
        """Read until the head holds ``upto`` bytes (or the stream ends)."""
        while len(self.data) < upto and not self.eof:
            buf = bytearray(min(upto - len(self.data), 8 << 20))
            n = self.stream.readinto(buf)
            if not n:
                self.eof = True
            self.data += memoryview(buf)[:n]

    def read_at(self, offset: int, n: int) -> bytes:
        if offset + n > len(self.data) and not self.eof:
            raise _NeedMore()
        return bytes(self.data[offset : offset + n])

    def readinto(self, buf: Any) -> int:
        if self._pos < len(self.data):
            n = min(len(buf), len(self.data) - self._pos)
            buf[:n] = self.data[self._pos : self._pos + n]
            self._pos += n
            if self._pos == len(self.data):
                self.data = bytearray()  # handed on: free it
                self._pos = 1 << 62
            return n
        return self.stream.readinto(buf)  # type: ignore[attr-defined,no-any-return]


def head_length(head: _Head, rel: str, size: int) -> None:
    """Read as much of ``head`` as the file's header (or a ``config.json``) needs."""
    head.fill(min(size, 16))
    kind = format_of(bytes(head.data[:16]), size, rel)
    if rel == "config.json":
        head.fill(min(size, MAX_CONFIG_BYTES))
    elif kind == "safetensors" and len(head.data) >= 8:
        length = int.from_bytes(head.data[:8], "little")
        head.fill(min(size, 8 + min(length, MAX_SAFETENSORS_HEADER)))
    elif kind == "gguf":
        want = 1 << 20
        while True:
            head.fill(min(size, want))
            try:
                gguf_layout(head.read_at, size)
                return
            except _NeedMore:
                if want >= MAX_GGUF_HEAD:
                    return  # a header this long is described as malformed
                want *= 4
            except HeaderError:
                return


class _Hashing:
    """A readable that feeds what passes through it to ``update``."""

    def __init__(self, inner: Any, update: Callable[[bytes | memoryview], object]) -> None:
        self.inner, self.update = inner, update

    def readinto(self, buf: Any) -> int:
        n = self.inner.readinto(buf)
        if n:
            self.update(memoryview(buf)[:n])
        return n  # type: ignore[no-any-return]


def _close(stream: Any) -> None:
    close = getattr(stream, "close", None)
    if close is not None:
        close()


class _StreamIngest:
    """One :func:`add_streams`: stand-ins, checkpoints and verification around an
    :class:`cas.ingest._Ingester`."""

    def __init__(self, store: Store, ing: _Ingester, writer: PackWriter, folder: Path,
                 record: ResumeRecord | None, what: str, checkpoint_bytes: int) -> None:
        self.store, self.ing, self.writer, self.folder = store, ing, writer, folder
        self.record, self.what = record, what
        self.checkpoint_bytes = checkpoint_bytes
        self.checkpointed = writer.bytes_written
        self.pause = pause_hook_from_env()
        self.opened = 0  # bytes asked of the streams

    def stand_in(self, rel: str, size: int, head: bytes) -> Path:
        """A sparse file of ``size`` bytes holding ``head`` (see the module docstring)."""
        path = self.folder / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(head)
                f.truncate(size)
        except OSError as exc:
            raise from_os_error(exc, f"writing the header of {rel} in {self.folder}") from None
        return path

    def checkpoint(self) -> None:
        """Make every object so far durable, then save the resume record (writer side)."""
        self.writer.finish()
        self.checkpointed = self.writer.bytes_written
        if self.record is not None:
            self.record.save()
        if self.pause is not None:
            self.pause("stream-checkpoint")  # test hook: progress durable, nothing committed

    def file(self, f: StreamFile, base: FileEntry | None) -> FileDigest:
        """Store one file; raise VerifyError unless it is the expected content."""
        progress = self.record.get(f) if self.record is not None else None
        if progress is not None and progress.done is not None:
            digest = FileDigest(progress.done[0], progress.done[1], progress.done[2], False)
            if self._stored(digest.chunks):
                self._stand_in_from_store(f, digest)
                self.ing.done += f.size
                return digest
        start, sha, chunks = 0, hashlib.sha256(), []
        blob = hashlib.sha1(b"blob %d\0" % f.size) if f.sha256 is None else None
        if progress is not None and progress.prefix is not None:
            start, chunks = self._resumed_prefix(f, progress.prefix, sha, blob)
        self.opened += f.size - start
        stream = f.open(start)
        try:
            digest = self._ingest(f, stream, base, start, sha, blob, chunks)
        finally:
            _close(stream)
        actual = digest.sha256 if blob is None else blob.hexdigest()
        if digest.size != f.size or actual != f.expected:
            if self.record is not None:
                self.record.forget(f)
                self.record.save()
            if digest.size != f.size:
                raise VerifyError(f"{self.what}: {f.path}: {digest.size} bytes, expected "
                                  f"{f.size}", expected=str(f.size), actual=str(digest.size))
            kind = "SHA-256" if blob is None else "git blob id"
            raise VerifyError(f"{self.what}: {f.path}: its {kind} is {actual}, expected "
                              f"{f.expected}", expected=f.expected, actual=actual)
        if self.record is not None:
            self.record.set(f, done=digest)
            if self.writer.bytes_written - self.checkpointed >= FILE_CHECKPOINT_BYTES:
                self.ing.flush()
                self.checkpoint()
        return digest

    def _stored(self, chunks: str) -> bool:
        """Whether the store holds a chunk list and every chunk it names."""
        try:
            clist_id = parse_hex(chunks)
            if not self.store.has_object(clist_id):
                return False
            return all(self.store.has_object(oid)
                       for oid, _ in self.store.read_chunk_list(clist_id).chunks)
        except (CasError, OSError, ValueError):
            return False

    def _ingest(self, f: StreamFile, stream: BinaryIO, base: FileEntry | None, start: int,
                sha: Any, blob: Any, chunks: list[tuple[bytes, int]]) -> FileDigest:
        source: Any = stream if blob is None else _Hashing(stream, blob.update)
        head = _Head(source, start)
        if start == 0:
            head_length(head, f.path, f.size)
            if f.size <= SMALL_FILE:
                head.fill(f.size + 1)
                data = bytes(head.data)
                if len(data) != f.size:
                    return FileDigest(len(data), hashlib.sha256(data).hexdigest(), "", False)
                digest = self.ing.ingest_small_bytes(f.path, data)
                self.stand_in(f.path, f.size, data)
                if digest is not None:
                    return digest
            path = self.stand_in(f.path, f.size, bytes(head.data))
        else:
            path = self.folder / f.path  # written by _resumed_prefix
        self.ing.flush()
        plan: Future[Any] | None = self.ing.planner.submit(_plan, self.store, path, base) \
            if base is not None else None
        interval = min(self.checkpoint_bytes, max(BLOCK_SIZE, f.size // 3))
        marks = {"at": start + interval, "covered": start, "counted": len(chunks)}

        def after_block(so_far: list[tuple[bytes, int]]) -> None:
            marks["covered"] += sum(n for _, n in so_far[marks["counted"]:])
            marks["counted"] = len(so_far)
            if self.record is None or marks["covered"] < marks["at"]:
                return
            marks["at"] = marks["covered"] + interval
            data = ChunkList(marks["covered"], tuple(so_far)).encode()
            oid = blake3_id(data)
            codec, stored = self.ing.compressor.compress(data)
            self.writer.add(oid, KIND_CHUNK_LIST, codec, len(data), stored)
            self.record.set(f, prefix=(marks["covered"], oid.hex()))
            self.checkpoint()

        return self.ing.ingest_stream(head, f.path, plan, float_ranges(path), self.what,
                                      start=start, sha=sha, chunks=chunks,
                                      after_block=after_block)

    def _resumed_prefix(self, f: StreamFile, prefix: list[Any], sha: Any, blob: Any
                        ) -> tuple[int, list[tuple[bytes, int]]]:
        """The chunks of a prefix an earlier run stored, with the hashes fed from the store;
        ``(0, [])`` when it cannot be used (gone, or the header runs past it)."""
        try:
            offset, clist_id = int(prefix[0]), parse_hex(str(prefix[1]))
            clist = self.store.read_chunk_list(clist_id)
            if clist.size != offset or not 0 < offset < f.size or \
                    not all(self.store.has_object(oid) for oid, _ in clist.chunks):
                return 0, []
            stored = _StoredHead(self.store, clist_id, offset)
            head_length(stored, f.path, f.size)  # type: ignore[arg-type]
            if stored.past:
                return 0, []
            self.stand_in(f.path, f.size, bytes(stored.data))
            for oid, _ in clist.chunks:
                data = self.store.read_object(oid)
                sha.update(data)
                if blob is not None:
                    blob.update(data)
        except (CasError, OSError, ValueError):
            return 0, []
        self.ing.done += offset
        return offset, list(clist.chunks)

    def _stand_in_from_store(self, f: StreamFile, digest: FileDigest) -> None:
        stored = _StoredHead(self.store, parse_hex(digest.chunks), f.size)
        head_length(stored, f.path, f.size)  # type: ignore[arg-type]
        self.stand_in(f.path, f.size, bytes(stored.data))
        if f.size <= SMALL_FILE:
            self.ing.formats[f.path] = format_of(bytes(stored.data[:16]), f.size, f.path)


class _StoredHead:
    """:class:`_Head` over a file (or its first ``limit`` bytes) already in the store."""

    def __init__(self, store: Store, clist_id: bytes, limit: int) -> None:
        self.store, self.clist_id, self.limit = store, clist_id, limit
        self.data = bytearray()
        self.eof = False
        self.past = False

    def fill(self, upto: int) -> None:
        if upto > self.limit:
            self.past, upto = True, self.limit
        if upto > len(self.data):
            self.data += self.store.packs.ranges.read(self.clist_id, len(self.data),
                                                      upto - len(self.data))[0]
        self.eof = upto >= self.limit

    read_at = _Head.read_at


def add_streams(store: Store, name: str, files: Sequence[StreamFile], options: AddOptions,
                progress: Progress | None = None, *, resume: str | None = None,
                checkpoint_bytes: int = CHECKPOINT_BYTES) -> AddResult:
    """Register ``files`` (received as streams) as a new version of ``name``.

    The same version (manifest, chunks, derived chunks, metadata) as ``cas add`` of a folder
    holding those files; no version when the content equals the latest version's (tags then
    stay or move as with ``add``). ``options.source`` should say where the files came from
    (default: the model name). ``resume``: a key naming this import, for the resume record
    (see the module docstring); ``None``: no record.

    Raises:
        ArgsError: bad name, tag, path (``..``, absolute, duplicates) or message.
        VerifyError: a file's size or digest is not the expected one (nothing registered).
        ConflictError: a requested tag names another version (without ``force_tag``).
        CasError: whatever a stream raises, unchanged; DiskError, LockError as ``add``.
    """
    validate_model_name(name)
    check_message(options.message)
    tags = list(dict.fromkeys(options.tags))
    for t in tags:
        validate_tag(t)
    ordered = sorted(files, key=lambda f: f.path)
    for i, f in enumerate(ordered):
        validate_rel_path(f.path, user_input=True)
        if i and ordered[i - 1].path == f.path:
            raise ArgsError(f"{f.path}: named twice")
        if f.size < 0 or (f.sha256 is None) == (f.git_blob_id is None):
            raise ArgsError(f"{f.path}: a size and one expected digest are required")
    what = options.source or name
    record = ResumeRecord(store, resume) if resume is not None else None
    warnings: list[CasWarning] = []
    store.check_writable()
    with store.leases.acquire_shared("add") as lease, gc_paused(), \
            tempfile.TemporaryDirectory(prefix="cas-heads-") as heads:
        avoid = store.leases.doomed_packs()
        registry = store.registry
        parents = _parse_parents(store, options.parents)
        latest = _latest(registry, name)
        for t in tags:
            registry.check_tag_case(name, t)
        tagged = {t: c for (_, t), c in registry.tags(name).items() if t in tags}
        check_tags(name, tagged, latest, options.force_tag)
        old = read_manifest(store, latest) if latest is not None else None
        writer = PackWriter(store.backend, store.config.pack_target_bytes)
        ing = _Ingester(store, writer, progress, sum(f.size for f in ordered), avoid)
        run = _StreamIngest(store, ing, writer, Path(heads), record, what, checkpoint_bytes)
        found: dict[str, FileDigest] = {}
        try:
            base_files = _base_files(store, options, latest, old)
            for f in ordered:
                found[f.path] = run.file(f, base_files.get(f.path))
            ing.flush()
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            ing.close()
        entries = [FileEntry(path=f.path, size=found[f.path].size, sha256=found[f.path].sha256,
                             chunks=found[f.path].chunks, executable=f.executable)
                   for f in ordered]
        with store.writing():
            now_latest = _latest(registry, name)
            now_tagged = {t: c for (_, t), c in registry.tags(name).items() if t in tags}
            if (now_latest.commit if now_latest else None) != \
                    (latest.commit if latest else None) or now_tagged != tagged:
                latest, tagged = now_latest, now_tagged
                old = read_manifest(store, latest) if latest is not None else None
            on_latest = check_tags(name, tagged, latest, options.force_tag)
            unchanged = old is not None and old.same_content(
                Manifest(name=name, seq=old.seq, total_size=0, files=entries))
            if on_latest and not unchanged:
                raise ConflictError(
                    f"tag {name}@{on_latest[0]} names the latest version, whose content "
                    "differs; move it with --force-tag")
            if unchanged:
                assert latest is not None and old is not None
                version, created = latest, False
                if gives_metadata(options):
                    warnings.extend(metadata_not_recorded(options, parents, latest, old))
            else:
                entries = _record_bases(store, entries,
                                        [*base_files.values(), *(old.files if old else ())])
                detected = describe(Path(heads), [e.path for e in entries], ing.formats)
                for rel, reason in detected["bad_headers"]:  # type: ignore[attr-defined]
                    warnings.append(CasWarning(
                        "W_BAD_HEADER", f"{what}: {rel}: {reason}; registered as bytes, with "
                                        "no parameter count or dtypes from this file"))
                lease.check()
                if options.source is None:
                    options = dataclasses.replace(options, source=name)
                version = _commit_new(store, name, Path(heads), options, entries, detected,
                                      parents)
                created = True
            tags = _set_tags(registry, version, tags, tagged, warnings)
    if record is not None:
        record.remove()
    return AddResult(
        name=name, seq=version.seq, commit=version.commit, created=created, files=len(found),
        total_size=sum(d.size for d in found.values()),
        bytes_hashed=ing.counters.bytes_hashed, stat_cache_hits=0,
        new_chunks=ing.counters.new_chunks, reused_chunks=ing.counters.reused_chunks,
        new_stored_bytes=sum(writer.written.values()), tags=tags, warnings=warnings)


def opened_at(path: Path) -> Opener:
    """An :data:`Opener` of a local file (tests, and callers holding a file)."""

    def open_at(offset: int) -> BinaryIO:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the ingest
        f.seek(offset)
        return f

    return open_at


