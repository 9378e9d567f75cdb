"""Diff of two registered versions: files, and the tensors of the weight files both hold.

Files are paired by path. A file whose SHA-256 is unchanged is equal without reading it; a path
only one side has is a rename when the other side has a file with the same SHA-256 under a path
of its own (paired in path order), else an addition or a removal. Safetensors and GGUF files
that changed are compared tensor by tensor (by name): added, removed, changed in dtype, in
shape, or in value (with the number of bytes that differ). A tensor that only moved inside its
file (the header grew, offsets shifted) is unchanged. Unchanged tensors are counted, not listed.

Reading is driven by the chunk lists, so that the cost follows what changed, not the file size:

* A weight file's header is read through its chunk list: only the chunks that cover it.
* A byte region (a tensor's data, a GGUF metadata value) of file A and its counterpart in B are
  equal without reading when the same sequence of chunk ids covers both with the same offset
  from the region's start. Otherwise a chunk of B that has an id and an offset (relative to the
  region) that a chunk of A also has covers equal bytes; only what no such pair covers is read
  from both files and compared byte by byte. Content-defined chunking keeps the interior chunks
  of a shifted tensor (same ids, same offset from the tensor), so only its edges are read.
* Reads go through a range reader whose chunk cache the derived chunks it decodes share: a
  chunk of B stored as a residual against A finds the chunks of A it is predicted from already
  read for the comparison. Memory is bounded by the comparison windows and that cache.
* Tensors whose bytes must be read are compared by two worker threads.

Every byte read is verified against its BLAKE3 (as every pack read is). Nothing is written.
"""

from __future__ import annotations

import io
import json
import math
import struct
import threading
from bisect import bisect_left, bisect_right
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final

import msgspec

from cas import derive
from cas.compression import CODEC_DERIVED
from cas.derive import RangeReader
from cas.errors import CasError, CasWarning, NotFoundError, VerifyError
from cas.format.chunklist import ChunkList
from cas.format.manifest import FileEntry, Manifest
from cas.format.pack import ENTRY_HEADER_SIZE, KIND_CHUNK_LIST
from cas.ids import blake3_id, parse_hex
from cas.metadata import (
    _GGUF_DEFAULT_ALIGNMENT,
    _GGUF_INT_TYPES,
    _GGUF_MIN_KV,
    _GGUF_MIN_TENSOR,
    _GGUF_SCALARS,
    _PARSE_ERRORS,
    GGML_TYPES,
    MAX_GGUF_COUNT,
    MAX_GGUF_DIMS,
    MAX_SAFETENSORS_HEADER,
    _GgufReader,
    _Malformed,
    safetensors_tensors,
)

if TYPE_CHECKING:
    from cas.packs import Located
    from cas.registry import Version
    from cas.store import Store

__all__ = ["DiffResult", "DiffStats", "FileChange", "TensorChange", "WeightDiff",
           "diff_manifests", "diff_versions"]

#: Bytes of a region compared at a time (bounds memory; a window's chunks stay in the cache).
WINDOW: Final = 1 << 20
#: Decoded chunks kept for reuse: the windows of all workers, with the chunks of A that the
#: derived chunks of B in them are predicted from.
CACHED_CHUNKS: Final = 128
#: Threads comparing tensors (decompression, hashing and comparison release the GIL).
WORKERS: Final = 2
#: GGUF block geometry per ggml type: (elements per block, bytes per block).
GGML_BLOCKS: Final[dict[int, tuple[int, int]]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
}  # fmt: skip
_U64: Final = struct.Struct("<Q")


class FileChange(msgspec.Struct, omit_defaults=True):
    """One file that differs. ``status`` is ``added``, ``removed``, ``modified`` (same path,
    other bytes or mode) or ``renamed`` (same SHA-256, ``old_path`` -> ``path``)."""

    path: str
    status: str
    old_path: str | None = None
    size_a: int | None = None
    size_b: int | None = None
    sha256_a: str | None = None
    sha256_b: str | None = None
    #: Set when only the executable bit changed (``[a, b]``).
    executable: list[bool] | None = None


class TensorChange(msgspec.Struct, omit_defaults=True):
    """One tensor that differs. ``change`` is ``added``, ``removed``, ``dtype`` (dtype changed,
    perhaps the shape too), ``shape`` (same dtype, other shape) or ``value`` (same dtype and
    shape, other bytes: ``differing_bytes`` of ``nbytes``, ``fraction`` their ratio)."""

    name: str
    change: str
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    nbytes: int | None = None
    differing_bytes: int | None = None
    fraction: float | None = None


class WeightDiff(msgspec.Struct):
    """The tensor-level diff of one safetensors or GGUF file that both versions hold."""

    path: str
    format: str
    tensors_a: int
    tensors_b: int
    unchanged: int
    added: int
    removed: int
    changed: int
    #: Tensors changed in value (a subset of ``changed``).
    changed_value: int
    changes: list[TensorChange]
    #: Header metadata keys (safetensors ``__metadata__``, GGUF key/value pairs) added,
    #: removed or changed.
    metadata_changed: list[str] = []


class DiffStats(msgspec.Struct):
    """What the diff read. ``bytes_read`` counts every object read from a pack (entry header
    plus stored bytes): chunk lists, chunks, and the chunks derived chunks are predicted from
    when they were not in the cache; it is what the diff cost in pack reads."""

    bytes_read: int = 0
    objects_read: int = 0
    #: Bytes of tensor data (and GGUF metadata values) compared byte by byte.
    bytes_compared: int = 0
    #: Tensor pairs found equal from their chunk ids alone.
    tensors_by_chunks: int = 0
    #: Tensor pairs whose bytes (some or all) were read.
    tensors_read: int = 0


class DiffResult(msgspec.Struct):
    """The diff of version ``a`` (old) against version ``b`` (new)."""

    a: str
    b: str
    identical: bool
    files: list[FileChange]
    weights: list[WeightDiff]
    files_unchanged: int
    stats: DiffStats
    warnings: list[CasWarning] = []


# -- reading stored files ---------------------------------------------------------------------


@dataclass
class _StoredFile:
    """A file as its chunk list lays it out: chunk ids and their start offsets."""

    clist: bytes
    size: int
    ids: list[bytes]
    starts: list[int]  # len(ids) + 1 entries; starts[-1] == size

    def span(self, offset: int, length: int) -> range:
        """Indexes of the chunks covering ``length > 0`` bytes at ``offset``."""
        return range(bisect_right(self.starts, offset) - 1,
                     bisect_left(self.starts, offset + length))


class _Reader:
    """Reads byte ranges of stored files, and counts what it reads from the packs.

    It has its own :class:`cas.derive.RangeReader`, whose chunk cache also serves the derived
    chunks it decodes: a chunk of B stored as a residual against A is predicted from chunks of
    A that were just read for the comparison, not read again. Every object read from a pack
    (chunk lists, chunks, the base chunks of derived chunks) is counted. Thread-safe.
    """

    def __init__(self, store: Store) -> None:
        self._packs = store.packs
        self._lists: dict[bytes, ChunkList] = {}
        self._lock = threading.Lock()
        self._ranges = RangeReader(self._read_object, self._chunk_list, CACHED_CHUNKS)
        self.bytes_read = 0
        self.objects_read = 0

    def _locate(self, oid: bytes) -> Located:
        loc = self._packs.locate(oid) or self._packs.locate_everywhere(oid)
        if loc is None:
            raise NotFoundError(f"object {oid.hex()} is not in the store")
        with self._lock:
            self.bytes_read += ENTRY_HEADER_SIZE + loc.entry.stored_len
            self.objects_read += 1
        return loc

    def _chunk_list(self, oid: bytes) -> ChunkList:
        hit = self._lists.get(oid)
        if hit is None:
            loc = self._locate(oid)
            if loc.entry.kind != KIND_CHUNK_LIST:
                raise VerifyError(f"object {oid.hex()} is not a chunk list", object_id=oid.hex())
            hit = self._lists[oid] = ChunkList.decode(loc.pack.read(loc.entry))
        return hit

    def _read_object(self, oid: bytes) -> tuple[bytes, int]:
        """The verified bytes of a chunk and its derivation depth (see :mod:`cas.derive`)."""
        loc = self._locate(oid)
        if loc.entry.codec != CODEC_DERIVED:
            return loc.pack.read(loc.entry), 0
        stored = loc.pack.read_stored(loc.entry)
        raw = derive.decode(stored, loc.entry.raw_len, self._ranges, object_id=oid.hex())
        got = blake3_id(raw)
        if got != oid:
            raise VerifyError(f"chunk {oid.hex()}: content hashes to {got.hex()}",
                              object_id=oid.hex(), expected=oid.hex(), actual=got.hex())
        return raw, derive.depth_of_payload(stored)

    def open(self, entry: FileEntry) -> _StoredFile:
        clist = parse_hex(entry.chunks, what="chunk list id")
        chunks = self._chunk_list(clist).chunks
        if sum(n for _, n in chunks) != entry.size:
            raise VerifyError(f"{entry.path}: chunk list {entry.chunks} does not hold "
                              f"{entry.size} bytes", object_id=entry.chunks)
        return _StoredFile(clist, entry.size, [oid for oid, _ in chunks],
                           list(accumulate((n for _, n in chunks), initial=0)))

    def read(self, f: _StoredFile, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of ``f`` (clipped to the file), verified."""
        length = max(0, min(length, f.size - offset))
        if length == 0:
            return b""
        return self._ranges.read(f.clist, offset, length)[0]


class _Stream(io.RawIOBase):
    """A stored file as a seekable binary stream (for header parsers)."""

    def __init__(self, reader: _Reader, f: _StoredFile) -> None:
        self._reader, self._file, self._pos = reader, f, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._file.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf: Any) -> int:
        data = self._reader.read(self._file, self._pos, len(buf))
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


# -- weight headers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte range in the file
    end: int


@dataclass
class _Weights:
    """What a weight file's header says: its tensors and its metadata."""

    format: str
    tensors: dict[str, _Tensor]
    #: safetensors: ``__metadata__`` values; GGUF: key -> absolute byte range of type + value.
    metadata: dict[str, Any] = field(default_factory=dict)


def _sniff(head: bytes, size: int, path: str) -> str | None:
    """``safetensors``, ``gguf`` or None, from a file's first 16 bytes (as
    :func:`cas.metadata.detect_format` decides, with the manifest path for the suffix)."""
    if head.startswith(b"GGUF"):
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{":
        (length,) = _U64.unpack_from(head)
        if 2 <= length <= size - 8:
            return "safetensors"
    lower = path.lower()
    if lower.endswith(".safetensors"):
        return "safetensors"
    if lower.endswith(".gguf"):
        return "gguf"
    return None


def _read_safetensors(reader: _Reader, f: _StoredFile) -> _Weights:
    """The tensors and ``__metadata__`` of a stored safetensors file (header chunks only).

    Raises:
        _Malformed: the header is truncated, too large or inconsistent.
    """
    raw = reader.read(f, 0, 8)
    if len(raw) != 8:
        raise _Malformed("shorter than its length prefix")
    (length,) = _U64.unpack(raw)
    if length < 2 or length > MAX_SAFETENSORS_HEADER or length > f.size - 8:
        raise _Malformed(f"header length {length} does not fit the file")
    blob = reader.read(f, 8, length)
    header = json.loads(blob)
    if not isinstance(header, dict):
        raise _Malformed("header is not a JSON object")
    found = safetensors_tensors(io.BytesIO(raw + blob), f.size)
    if not found and any(k != "__metadata__" for k in header):
        raise _Malformed("a tensor entry is malformed")
    meta = header.get("__metadata__")
    return _Weights("safetensors",
                    {t.name: _Tensor(t.name, t.dtype, t.shape, t.start, t.end) for t in found},
                    dict(meta) if isinstance(meta, dict) else {})


def _read_gguf(reader: _Reader, f: _StoredFile) -> _Weights:
    """The tensors and key/value byte ranges of a stored GGUF (v2 or v3) file.

    A tensor's byte length comes from its ggml type's block geometry; for a type this build
    does not know, it runs to the next tensor's offset (or the end of the file).

    Raises:
        _Malformed: bad magic or version, a count over the bounds, a truncated header, a
            duplicate tensor name or a tensor outside the file.
    """
    r = _GgufReader(io.BufferedReader(_Stream(reader, f), 1 << 16), f.size)
    if r.read(4) != b"GGUF":
        raise _Malformed("bad GGUF magic")
    if r.u32() not in (2, 3):
        raise _Malformed("unsupported GGUF version")
    tensor_count, kv_count = r.u64(), r.u64()
    if tensor_count > MAX_GGUF_COUNT or kv_count > MAX_GGUF_COUNT:
        raise _Malformed("absurd GGUF counts")
    if kv_count * _GGUF_MIN_KV + tensor_count * _GGUF_MIN_TENSOR > r.remaining:
        raise _Malformed("GGUF counts exceed the file")
    kvs: dict[str, Any] = {}
    alignment = _GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = r.string().decode("utf-8", errors="replace")
        start = r.pos
        vtype = r.u32()
        if key == "general.alignment" and vtype in _GGUF_INT_TYPES:
            scalar = _GGUF_SCALARS[vtype]
            alignment = int(scalar.unpack(r.read(scalar.size))[0]) or _GGUF_DEFAULT_ALIGNMENT
        else:
            r.skip_value(vtype)
        kvs[key] = (start, r.pos)
    infos = []
    for _ in range(tensor_count):
        name = r.string().decode("utf-8", errors="replace")
        n_dims = r.u32()
        if n_dims > MAX_GGUF_DIMS:
            raise _Malformed("too many tensor dimensions")
        dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims))
        infos.append((name, dims, r.u32(), r.u64()))
    data_start = -(-r.pos // alignment) * alignment
    offsets = sorted({off for *_, off in infos})
    tensors: dict[str, _Tensor] = {}
    for name, dims, ggml_type, offset in infos:
        start = data_start + offset
        block = GGML_BLOCKS.get(ggml_type)
        count = math.prod(dims)
        if block is not None:
            if count % block[0]:
                raise _Malformed(f"tensor {name}: {count} elements are not whole blocks")
            end = start + count // block[0] * block[1]
        else:
            i = bisect_right(offsets, offset)
            end = data_start + offsets[i] if i < len(offsets) else f.size
        if end > f.size:
            raise _Malformed(f"tensor {name} lies outside the file")
        if name in tensors:
            raise _Malformed(f"tensor {name} appears twice")
        tensors[name] = _Tensor(name, GGML_TYPES.get(ggml_type, f"GGML_TYPE_{ggml_type}"),
                                tuple(dims), start, end)
    return _Weights("gguf", tensors, kvs)


# -- comparing bytes ----------------------------------------------------------------------------


class _Comparer:
    """Compares byte regions of two stored files, reading only what chunk ids cannot settle.

    Counters are updated under a lock: workers compare several tensors at once."""

    def __init__(self, reader: _Reader, pool: ThreadPoolExecutor) -> None:
        self.reader = reader
        self.pool = pool
        self.stats = DiffStats()
        self._lock = threading.Lock()

    def equal_by_chunks(self, fa: _StoredFile, a0: int, fb: _StoredFile, b0: int,
                        n: int) -> list[tuple[int, int]]:
        """The parts ``[lo, hi)`` of an ``n``-byte region (at ``a0`` in A, ``b0`` in B) that
        chunk ids alone do not prove equal, in order (empty: the regions are equal)."""
        if n == 0:
            return []
        sa, sb = fa.span(a0, n), fb.span(b0, n)
        if fa.starts[sa.start] - a0 == fb.starts[sb.start] - b0 and \
                fa.ids[sa.start:sa.stop] == fb.ids[sb.start:sb.stop]:
            return []
        in_a = {(fa.ids[i], fa.starts[i] - a0) for i in sa}
        unknown = []
        pos = 0
        for j in sb:
            rel = fb.starts[j] - b0
            if (fb.ids[j], rel) in in_a:
                lo, hi = max(0, rel), min(n, fb.starts[j + 1] - b0)
                if lo > pos:
                    unknown.append((pos, lo))
                pos = max(pos, hi)
        if pos < n:
            unknown.append((pos, n))
        return unknown

    def differing_bytes(self, fa: _StoredFile, a0: int, fb: _StoredFile, b0: int,
                        parts: list[tuple[int, int]]) -> int:
        """Read ``parts`` of the regions at ``a0`` and ``b0`` and count the bytes that differ.

        Each window of A is read before the same window of B, so that a chunk of B derived
        from those bytes of A finds them in the cache.
        """
        import numpy as np  # here: most diffs never compare bytes, and numpy is slow to import

        buf = np.empty(min(WINDOW, max(hi - lo for lo, hi in parts)), dtype=bool)
        differ = compared = 0
        for lo, hi in parts:
            for w in range(lo, hi, WINDOW):
                k = min(WINDOW, hi - w)
                da = self.reader.read(fa, a0 + w, k)
                db = self.reader.read(fb, b0 + w, k)
                out = buf[:k]
                np.not_equal(np.frombuffer(da, dtype=np.uint8),
                             np.frombuffer(db, dtype=np.uint8), out=out)
                differ += int(np.count_nonzero(out))
                compared += k
        with self._lock:
            self.stats.bytes_compared += compared
        return differ

    def region_differs(self, fa: _StoredFile, a: tuple[int, int], fb: _StoredFile,
                       b: tuple[int, int]) -> bool:
        """Whether byte range ``a`` of A and ``b`` of B hold different bytes."""
        n = a[1] - a[0]
        if n != b[1] - b[0]:
            return True
        parts = self.equal_by_chunks(fa, a[0], fb, b[0], n)
        return bool(parts) and self.differing_bytes(fa, a[0], fb, b[0], parts) > 0


def _shape(t: _Tensor) -> list[int]:
    return list(t.shape)


def _diff_tensors(cmp: _Comparer, fa: _StoredFile, wa: _Weights, fb: _StoredFile,
                  wb: _Weights, path: str) -> WeightDiff:
    """The tensor-level diff of one weight file pair whose headers are parsed."""
    changes: list[TensorChange] = []
    unchanged = changed_value = 0
    to_read: list[tuple[_Tensor, _Tensor, Future[int]]] = []
    # B in file order: neighbouring tensors share chunks, which then stay cached.
    for tb in sorted(wb.tensors.values(), key=lambda t: t.start):
        ta = wa.tensors.get(tb.name)
        if ta is None:
            changes.append(TensorChange(tb.name, "added", dtype_b=tb.dtype, shape_b=_shape(tb),
                                        nbytes=tb.end - tb.start))
        elif ta.dtype != tb.dtype:
            changes.append(TensorChange(tb.name, "dtype", ta.dtype, tb.dtype, _shape(ta),
                                        _shape(tb)))
        elif ta.shape != tb.shape or ta.end - ta.start != tb.end - tb.start:
            changes.append(TensorChange(tb.name, "shape", ta.dtype, tb.dtype, _shape(ta),
                                        _shape(tb)))
        else:
            parts = cmp.equal_by_chunks(fa, ta.start, fb, tb.start, tb.end - tb.start)
            if not parts:
                cmp.stats.tensors_by_chunks += 1
                unchanged += 1
            else:
                cmp.stats.tensors_read += 1
                to_read.append((ta, tb, cmp.pool.submit(cmp.differing_bytes, fa, ta.start, fb,
                                                        tb.start, parts)))
    for ta, tb, fut in to_read:
        differ = fut.result()
        if differ == 0:
            unchanged += 1
            continue
        n = tb.end - tb.start
        changed_value += 1
        changes.append(TensorChange(tb.name, "value", ta.dtype, tb.dtype, _shape(ta), _shape(tb),
                                    nbytes=n, differing_bytes=differ,
                                    fraction=round(differ / n, 6)))
    order = {name: i for i, name in enumerate(t.name for t in sorted(wb.tensors.values(),
                                                                      key=lambda t: t.start))}
    changes.sort(key=lambda c: order[c.name])
    for ta in sorted(wa.tensors.values(), key=lambda t: t.start):
        if ta.name not in wb.tensors:
            changes.append(TensorChange(ta.name, "removed", dtype_a=ta.dtype, shape_a=_shape(ta),
                                        nbytes=ta.end - ta.start))
    counts = {c: sum(1 for x in changes if x.change == c) for c in ("added", "removed")}
    return WeightDiff(
        path=path, format=wb.format, tensors_a=len(wa.tensors), tensors_b=len(wb.tensors),
        unchanged=unchanged, added=counts["added"], removed=counts["removed"],
        changed=len(changes) - counts["added"] - counts["removed"], changed_value=changed_value,
        changes=changes, metadata_changed=_diff_metadata(cmp, fa, wa, fb, wb),
    )


def _diff_metadata(cmp: _Comparer, fa: _StoredFile, wa: _Weights, fb: _StoredFile,
                   wb: _Weights) -> list[str]:
    """Metadata keys added, removed or changed between two weight headers of one format."""
    keys = sorted(set(wa.metadata) | set(wb.metadata))
    if wa.format == "safetensors":
        return [k for k in keys if wa.metadata.get(k) != wb.metadata.get(k)]
    return [k for k in keys if k not in wa.metadata or k not in wb.metadata
            or cmp.region_differs(fa, wa.metadata[k], fb, wb.metadata[k])]


def _parse_weights(reader: _Reader, f: _StoredFile, path: str) -> tuple[_Weights | None, str]:
    """Parse a stored file's weight header: ``(weights, "")``, ``(None, "")`` when it is no
    weight file, or ``(None, why)`` when it looks like one but its header is malformed."""
    head = reader.read(f, 0, 16)
    kind = _sniff(head, f.size, path)
    if kind is None:
        return None, ""
    try:
        if kind == "safetensors":
            return _read_safetensors(reader, f), ""
        return _read_gguf(reader, f), ""
    except _PARSE_ERRORS as exc:
        if isinstance(exc, CasError):
            raise  # a damaged or missing stored object, not a malformed header
        return None, f"{kind} header is malformed ({exc or type(exc).__name__})"


# -- versions -----------------------------------------------------------------------------------


def _pair_files(ma: Manifest, mb: Manifest
                ) -> tuple[list[FileChange], list[tuple[FileEntry, FileEntry]], int]:
    """File-level changes, the modified pairs ``(in A, in B)``, and the unchanged count."""
    by_a = {f.path: f for f in ma.files}
    by_b = {f.path: f for f in mb.files}
    changes: list[FileChange] = []
    modified: list[tuple[FileEntry, FileEntry]] = []
    unchanged = 0
    for path in sorted(by_a.keys() & by_b.keys()):
        fa, fb = by_a[path], by_b[path]
        if fa.sha256 == fb.sha256 and fa.size == fb.size:
            if fa.executable == fb.executable:
                unchanged += 1
            else:
                changes.append(FileChange(path, "modified", size_a=fa.size, size_b=fb.size,
                                          sha256_a=fa.sha256, sha256_b=fb.sha256,
                                          executable=[fa.executable, fb.executable]))
            continue
        changes.append(FileChange(path, "modified", size_a=fa.size, size_b=fb.size,
                                  sha256_a=fa.sha256, sha256_b=fb.sha256))
        modified.append((fa, fb))
    only_a = sorted(by_a.keys() - by_b.keys())
    only_b = sorted(by_b.keys() - by_a.keys())
    sources: dict[str, list[str]] = {}
    for path in only_a:
        sources.setdefault(by_a[path].sha256, []).append(path)
    renamed_from: dict[str, str] = {}
    for path in only_b:
        candidates = sources.get(by_b[path].sha256)
        if candidates:
            renamed_from[path] = candidates.pop(0)
    gone = set(renamed_from.values())
    for path in only_a:
        if path not in gone:
            f = by_a[path]
            changes.append(FileChange(path, "removed", size_a=f.size, sha256_a=f.sha256))
    for path in only_b:
        f = by_b[path]
        old = renamed_from.get(path)
        if old is not None:
            changes.append(FileChange(path, "renamed", old_path=old, size_a=f.size,
                                      size_b=f.size, sha256_a=f.sha256, sha256_b=f.sha256))
        else:
            changes.append(FileChange(path, "added", size_b=f.size, sha256_b=f.sha256))
    changes.sort(key=lambda c: c.path)
    return changes, modified, unchanged


def diff_manifests(store: Store, ma: Manifest, mb: Manifest, a: str = "a",
                   b: str = "b") -> DiffResult:
    """Diff two manifests whose objects are in ``store``.

    Args:
        store: the store holding both versions' chunk lists and chunks.
        ma: the old version; mb: the new one.
        a, b: how the result names them (``NAME@SEQ``).

    Returns:
        The diff. A weight file whose header cannot be parsed on either side is reported as
        modified, with a ``W_DIFF_HEADER`` warning, and not compared tensor by tensor.

    Raises:
        NotFoundError: a chunk list or chunk that must be read is not in the store.
        VerifyError | SchemaError: a stored object that must be read is damaged.
    """
    files, modified, unchanged = _pair_files(ma, mb)
    reader = _Reader(store)
    weights: list[WeightDiff] = []
    warnings: list[CasWarning] = []
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="cas-diff") as pool:
        cmp = _Comparer(reader, pool)
        for ea, eb in modified:
            fa, fb = reader.open(ea), reader.open(eb)
            wa, why_a = _parse_weights(reader, fa, ea.path)
            wb, why_b = _parse_weights(reader, fb, eb.path)
            for path, ref, why in ((ea.path, a, why_a), (eb.path, b, why_b)):
                if why:
                    warnings.append(CasWarning(
                        "W_DIFF_HEADER", f"{path} in {ref}: {why}; compared as a whole file"))
            if wa is None or wb is None:
                continue
            if wa.format != wb.format:
                warnings.append(CasWarning(
                    "W_DIFF_FORMAT", f"{eb.path} is {wa.format} in {a} and {wb.format} in "
                    f"{b}; compared as a whole file"))
                continue
            weights.append(_diff_tensors(cmp, fa, wa, fb, wb, eb.path))
    stats = cmp.stats
    stats.bytes_read, stats.objects_read = reader.bytes_read, reader.objects_read
    return DiffResult(a, b, identical=not files, files=files, weights=weights,
                      files_unchanged=unchanged, stats=stats, warnings=warnings)


def diff_versions(store: Store, va: Version, vb: Version) -> DiffResult:
    """Diff version ``va`` (old) against ``vb`` (new); see :func:`diff_manifests`."""
    return diff_manifests(store, store.manifest(va), store.manifest(vb), va.ref, vb.ref)
