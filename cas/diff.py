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
  equal without reading when the same sequence of chunks covers both with the same offset
  from the region's start. Otherwise a chunk of B that has an id and an offset (relative to the
  region) that a chunk of A also has covers equal bytes; only what no such pair covers is read
  from both files and compared byte by byte. Content-defined chunking keeps the interior chunks
  of a shifted tensor (same ids, same offset from the tensor), so only its edges are read.
* What must be read is gathered, for all tensors of a file, into windows: whole chunks of B (at
  most :data:`WINDOW` bytes, neighbouring tensors that share a chunk in one window) and the
  chunks of A under them. A window's chunks of A are decoded and verified into one array and
  B's into another (runs of chunks stored back to back are read with one ``pread`` and decoded
  in place), and the differing bytes of each tensor in it are counted with numpy. A chunk of B
  stored as a residual against A is predicted from A's chunks of the same window, which are
  already decoded: they are not read twice.
* Windows run in the calling thread (:data:`WORKERS` is one), because a chunk's decode is many
  short calls (a zstd frame and a numpy copy per byte stream, the Python between them) that
  hold the GIL a third to a half of the time: measured on two cores, a second thread added
  30-45% CPU time in GIL hand-offs and made no diff faster (a residual-heavy one about 10%
  slower). With more workers, windows run on a thread pool.
* Memory is bounded by the windows in flight and a small cache of chunks.

Every byte read is verified against its BLAKE3 (as every pack read is). Nothing is written.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any, Final

import msgspec

from cas import derive
from cas.compression import CODEC_DERIVED
from cas.derive import RangeReader
from cas.errors import CasWarning, NotFoundError, VerifyError
from cas.format.chunklist import ChunkList
from cas.format.manifest import FileEntry, Manifest
from cas.format.pack import ENTRY_HEADER_SIZE, KIND_CHUNK_LIST
from cas.ids import blake3_id, parse_hex
from cas.metadata import HeaderError, Tensor, format_of, gguf_layout, safetensors_layout

if TYPE_CHECKING:
    from cas.format.pack import Entry
    from cas.packs import Located, Pack
    from cas.registry import Version
    from cas.store import Store

__all__ = ["DiffResult", "DiffStats", "FileChange", "TensorChange", "WeightDiff",
           "diff_manifests", "diff_versions"]

#: Bytes of B decoded and compared by one task (with the chunks of A under them).
WINDOW: Final = 2 << 20
#: Decoded chunks kept for header reads, and by the range reader that derived chunks read
#: their base through (a window's chunks of A are found without it while the window lives).
CACHED_CHUNKS: Final = 16
#: Threads decoding and comparing windows (see the module docstring for why one).
WORKERS: Final = 1

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


def _np():  # type: ignore[no-untyped-def]
    """numpy, imported on first use (most diffs never compare bytes, and it is slow to import).
    Only its copies and comparisons are used: its BLAS thread pool is limited to one thread
    unless the user chose, as :mod:`cas.bytegroup` does."""
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy

    return numpy


@dataclass
class _StoredFile:
    """A file as its chunk list lays it out."""

    clist_id: bytes
    clist: ChunkList
    size: int
    starts: list[int]  # len(clist) + 1 entries; starts[-1] == size

    def span(self, offset: int, length: int) -> range:
        """Indexes of the chunks covering ``length > 0`` bytes at ``offset``."""
        return range(bisect_right(self.starts, offset) - 1,
                     bisect_left(self.starts, offset + length))


class _Reader:
    """Reads verified chunks of stored files, and counts what it reads from the packs.

    Chunks are read three ways: a window of consecutive chunks decoded into one buffer
    (:meth:`decode`), a small byte range for header parsers (:meth:`read`, through a small
    cache), and the base chunks of derived chunks (through a :class:`cas.derive.RangeReader`).
    While a window of A is held, its chunks are what the range reader gets for their ids: a
    chunk of B stored as a residual against A is predicted from them without reading them
    again. Every object read from a pack (chunk lists, chunks, base chunks) is counted.
    Thread-safe.
    """

    def __init__(self, store: Store) -> None:
        self._packs = store.packs
        self._lists: dict[bytes, ChunkList] = {}
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, bytes | memoryview] = OrderedDict()
        #: chunk id -> (its bytes in a held window, its derivation depth, the window's array)
        #: per window holding it
        self._held: dict[bytes, list[tuple[memoryview, int, Any]]] = {}
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

    def _decode_located(self, loc: Located) -> tuple[bytes | memoryview, int]:
        """The verified bytes of a located chunk and its derivation depth (see
        :mod:`cas.derive`)."""
        entry = loc.entry
        if entry.codec != CODEC_DERIVED:
            return loc.pack.read(entry), 0
        oid = entry.oid.hex()
        stored = loc.pack.read_stored(entry)
        raw = derive.decode(stored, entry.raw_len, self._ranges, object_id=oid)
        got = blake3_id(raw)
        if got != entry.oid:
            raise VerifyError(f"chunk {oid}: content hashes to {got.hex()}",
                              object_id=oid, expected=oid, actual=got.hex())
        return raw, derive.depth_of_payload(stored)

    def _read_object(self, oid: bytes) -> tuple[bytes | memoryview, int]:
        """The range reader's source: a copy of a held chunk, else a read from a pack.

        The copy is taken under the lock: once released, the array a chunk is held in may be
        reused for another window at any time.
        """
        with self._lock:
            held = self._held.get(oid)
            if held:
                return bytes(held[-1][0]), held[-1][1]
        return self._decode_located(self._locate(oid))

    def open(self, entry: FileEntry) -> _StoredFile:
        clist_id = parse_hex(entry.chunks, what="chunk list id")
        clist = self._chunk_list(clist_id)
        if clist.size != entry.size:
            raise VerifyError(f"{entry.path}: chunk list {entry.chunks} does not hold "
                              f"{entry.size} bytes", object_id=entry.chunks)
        return _StoredFile(clist_id, clist, entry.size, list(accumulate(clist.lengths,
                                                                        initial=0)))

    def read(self, f: _StoredFile, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of ``f`` (clipped to the file), verified. For header
        parsers: the chunks stay in a small cache, as parsers read in small steps."""
        length = max(0, min(length, f.size - offset))
        if length == 0:
            return b""
        parts = []
        for i in f.span(offset, length):
            data = self._cached(f.clist.id_at(i), f.starts[i + 1] - f.starts[i])
            lo, hi = max(offset, f.starts[i]), min(offset + length, f.starts[i + 1])
            parts.append(memoryview(data)[lo - f.starts[i] : hi - f.starts[i]])
        return b"".join(parts)

    def _cached(self, oid: bytes, n: int) -> bytes | memoryview:
        with self._lock:
            hit = self._cache.get(oid)
            if hit is not None:
                self._cache.move_to_end(oid)
                return hit
        data = self._read_object(oid)[0]
        if len(data) != n:
            raise VerifyError(f"chunk {oid.hex()} holds {len(data)} bytes, its chunk list "
                              f"says {n}", object_id=oid.hex())
        with self._lock:
            self._cache[oid] = data
            while len(self._cache) > CACHED_CHUNKS:
                self._cache.popitem(last=False)
        return data

    def locate(self, f: _StoredFile, i0: int, i1: int) -> list[Located]:
        """Where chunks ``i0`` to ``i1 - 1`` of ``f`` are stored (each counted as read).

        Raises:
            NotFoundError: a chunk is not in the store.
        """
        return [self._locate(oid) for oid in f.clist.ids(i0, i1)]

    def decode(self, f: _StoredFile, i0: int, locs: list[Located], into: Any = None,
               hold: bool = False) -> Any:
        """The located chunks ``i0``, ``i0 + 1``, ... of ``f``, verified, in one uint8 array
        (the start of ``into`` when it is large enough, else a new one).

        Chunks stored back to back in a pack are read with one ``pread`` and decoded in
        place. With ``hold``, the chunks are what derived chunks predicted from them get
        until :meth:`release` is called with ``locs`` and the returned array (the range
        reader gets copies).

        Raises:
            VerifyError: a chunk is damaged, or its length is not the chunk list's.
        """
        base = f.starts[i0]
        n = f.starts[i0 + len(locs)] - base
        buf = into[:n] if into is not None and len(into) >= n else _np().empty(n, dtype="u1")
        view = memoryview(buf)
        outs: list[memoryview] = []
        depths: list[int] = []
        run: list[Entry] = []
        run_outs: list[memoryview | None] = []
        pack: Pack | None = None
        for i, loc in enumerate(locs, i0):
            out = view[f.starts[i] - base : f.starts[i + 1] - base]
            outs.append(out)
            entry = loc.entry
            if entry.raw_len != len(out):
                raise VerifyError(f"chunk {entry.oid.hex()} holds {entry.raw_len} bytes, its "
                                  f"chunk list says {len(out)}", object_id=entry.oid.hex())
            if run and (entry.codec == CODEC_DERIVED or loc.pack is not pack or entry.offset
                        != run[-1].offset + ENTRY_HEADER_SIZE + run[-1].stored_len):
                pack.read_run(run, run_outs)  # type: ignore[union-attr]
                run, run_outs = [], []
            if entry.codec == CODEC_DERIVED:
                raw, depth = self._decode_located(loc)
                out[:] = raw
                depths.append(depth)
            else:
                run.append(entry)
                run_outs.append(out)
                pack = loc.pack
                depths.append(0)
        if run:
            pack.read_run(run, run_outs)  # type: ignore[union-attr]
        if hold:
            with self._lock:
                for loc, out, depth in zip(locs, outs, depths):
                    self._held.setdefault(loc.entry.oid, []).append((out, depth, buf))
        return buf

    def release(self, locs: list[Located], buf: Any) -> None:
        """Undo one :meth:`decode` with ``hold`` of these chunks, which returned ``buf``.
        Another window may hold the same chunk in its own array: that copy stays."""
        with self._lock:
            for loc in locs:
                held = self._held.get(loc.entry.oid)
                if held is None:
                    continue  # the window named it twice
                held[:] = [h for h in held if h[2] is not buf]
                if not held:
                    del self._held[loc.entry.oid]


# -- comparing bytes ----------------------------------------------------------------------------


@dataclass
class _Window:
    """Chunks ``j0`` to ``j1 - 1`` of B and the pieces of regions in them to compare."""

    shift: int  # offset in A minus offset in B, the same for every piece
    j0: int
    j1: int
    #: (region index, start, end) in B
    pieces: list[tuple[int, int, int]] = field(default_factory=list)


def _windows(fb: _StoredFile, pieces: list[tuple[int, int, int, int]]) -> list[_Window]:
    """Group ``(start, end, shift, region)`` pieces of B (sorted by start) into windows of
    whole chunks of B, each at most about :data:`WINDOW` bytes. Pieces with the same shift
    that share or neighbour a chunk go into one window, so that a chunk of B is decoded once
    (twice only where a window fills up inside it); a piece longer than a window is cut at
    chunk boundaries."""
    starts = fb.starts
    out: list[_Window] = []
    cur: _Window | None = None
    for lo, hi, shift, k in pieces:
        pos = lo
        while pos < hi:
            j = bisect_right(starts, pos) - 1
            if cur is None or cur.shift != shift or j > cur.j1 or \
                    starts[cur.j1] - starts[cur.j0] >= WINDOW:
                cur = _Window(shift, j, j + 1)
                out.append(cur)
            limit = max(j + 1, bisect_right(starts, starts[cur.j0] + WINDOW) - 1)
            cur.j1 = max(cur.j1, min(bisect_left(starts, hi), limit))
            end = min(hi, starts[cur.j1])
            cur.pieces.append((k, pos, end))
            pos = end
    return out


class _Comparer:
    """Compares byte regions of two stored files, reading only what chunk ids cannot settle.

    Counters are updated by the calling thread only: workers return what they did."""

    def __init__(self, reader: _Reader, pool: ThreadPoolExecutor | None) -> None:
        self.reader = reader
        self.pool = pool
        self.stats = DiffStats()
        self._local = threading.local()

    def unknown_parts(self, fa: _StoredFile, a0: int, fb: _StoredFile, b0: int,
                      n: int) -> list[tuple[int, int]]:
        """The parts ``[lo, hi)`` of an ``n``-byte region (at ``a0`` in A, ``b0`` in B) that
        chunk ids alone do not prove equal, in order (empty: the regions are equal)."""
        if n == 0:
            return []
        sa, sb = fa.span(a0, n), fb.span(b0, n)
        if fa.starts[sa.start] - a0 == fb.starts[sb.start] - b0 and \
                fa.clist.run_key(sa.start, sa.stop) == fb.clist.run_key(sb.start, sb.stop):
            return []
        in_a = {(oid, fa.starts[i] - a0)
                for i, oid in enumerate(fa.clist.ids(sa.start, sa.stop), sa.start)}
        unknown = []
        pos = 0
        for j, oid in enumerate(fb.clist.ids(sb.start, sb.stop), sb.start):
            rel = fb.starts[j] - b0
            if (oid, rel) in in_a:
                lo, hi = max(0, rel), min(n, fb.starts[j + 1] - b0)
                if lo > pos:
                    unknown.append((pos, lo))
                pos = max(pos, hi)
        if pos < n:
            unknown.append((pos, n))
        return unknown

    def count_differences(self, fa: _StoredFile, fb: _StoredFile,
                          regions: list[tuple[int, int, list[tuple[int, int]]]]) -> list[int]:
        """For each region ``(a0, b0, parts)``, how many bytes of its ``parts`` (offsets from
        ``a0`` in A and ``b0`` in B) differ. The windows run on the pool, if there is one,
        else in this thread.

        Raises:
            NotFoundError | VerifyError: a chunk that must be read is missing or damaged.
        """
        pieces = sorted((b0 + lo, b0 + hi, a0 - b0, k)
                        for k, (a0, b0, parts) in enumerate(regions) for lo, hi in parts)
        # Largest first, so that several threads would finish together.
        windows = sorted(_windows(fb, pieces), key=lambda w: fb.starts[w.j0] - fb.starts[w.j1])
        counts = [0] * len(regions)

        def add(done: list[tuple[int, int, int]]) -> None:
            for k, differ, n in done:
                counts[k] += differ
                self.stats.bytes_compared += n

        if self.pool is None:
            for w in windows:
                add(self._compare_window(fa, fb, w))
            return counts
        futures = [self.pool.submit(self._compare_window, fa, fb, w) for w in windows]
        try:
            for fut in futures:
                add(fut.result())
        finally:
            for fut in futures:
                fut.cancel()  # after an error: windows not started yet are not read
        return counts

    def _compare_window(self, fa: _StoredFile, fb: _StoredFile,
                        w: _Window) -> list[tuple[int, int, int]]:
        """Decode one window of B and the chunks of A under it, and count the differing bytes
        of each piece: ``(region, differing, compared)`` per piece.

        A's chunks are decoded first, and held while B's are decoded when some of those are
        derived: they are predicted from A's.
        """
        np = _np()
        b_lo, b_hi = fb.starts[w.j0], fb.starts[w.j1]
        a_lo, a_hi = max(0, b_lo + w.shift), min(fa.size, b_hi + w.shift)
        sa = fa.span(a_lo, a_hi - a_lo)
        locs_b = self.reader.locate(fb, w.j0, w.j1)
        locs_a = self.reader.locate(fa, sa.start, sa.stop)
        # The arrays are this thread's, reused: fresh pages cost more than decoding into
        # them. A's chunks are held for B's derived chunks, which are predicted from them.
        derived = any(loc.entry.codec == CODEC_DERIVED for loc in locs_b)
        local = self._local
        a_len = fa.starts[sa.stop] - fa.starts[sa.start]
        if getattr(local, "b", None) is None or len(local.b) < b_hi - b_lo or \
                len(local.a) < a_len:
            size = max(b_hi - b_lo, a_len, WINDOW) * 5 // 4
            local.a = np.empty(size, dtype="u1")
            local.b = np.empty(size, dtype="u1")
            local.ne = np.empty(size, dtype=bool)
        buf_a = self.reader.decode(fa, sa.start, locs_a, into=local.a, hold=derived)
        try:
            buf_b = self.reader.decode(fb, w.j0, locs_b, into=local.b)
        finally:
            if derived:
                self.reader.release(locs_a, buf_a)
        a_at = fa.starts[sa.start] - w.shift  # where buf_a starts, in B's offsets
        out = []
        for k, lo, hi in w.pieces:
            ne = np.not_equal(buf_a[lo - a_at : hi - a_at], buf_b[lo - b_lo : hi - b_lo],
                              out=local.ne[: hi - lo])
            out.append((k, int(np.count_nonzero(ne)), hi - lo))
        return out


# -- weight headers -----------------------------------------------------------------------------


@dataclass
class _Weights:
    """What a weight file's header says: its tensors and its metadata."""

    format: str
    tensors: dict[str, Tensor]
    #: safetensors: ``__metadata__`` values; GGUF: key -> absolute byte range of type + value.
    metadata: dict[str, Any]


def _parse_weights(reader: _Reader, f: _StoredFile, path: str) -> tuple[_Weights | None, str]:
    """Parse a stored file's weight header: ``(weights, "")``, ``(None, "")`` when it is no
    weight file, or ``(None, why)`` when it looks like one but its header is malformed.

    Raises:
        NotFoundError | VerifyError: a chunk of the header is missing or damaged.
    """
    kind = format_of(reader.read(f, 0, 16), f.size, path)
    if kind not in ("safetensors", "gguf"):
        return None, ""

    def read_at(offset: int, n: int) -> bytes:
        return reader.read(f, offset, n)

    tensors: list[Tensor]
    try:
        if kind == "safetensors":
            st = safetensors_layout(read_at, f.size)
            tensors, metadata = st.tensors, dict(st.metadata)
        else:
            gg = gguf_layout(read_at, f.size)
            tensors, metadata = gg.tensors, dict(gg.kv_ranges)
    except HeaderError as exc:
        return None, f"{kind} header is malformed ({exc})"
    by_name: dict[str, Tensor] = {}
    for t in tensors:
        if t.name in by_name:
            return None, f"{kind} header is malformed (tensor {t.name!r} appears twice)"
        by_name[t.name] = t
    return _Weights(kind, by_name, metadata), ""


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def _diff_tensors(cmp: _Comparer, fa: _StoredFile, wa: _Weights, fb: _StoredFile,
                  wb: _Weights, path: str) -> WeightDiff:
    """The tensor-level diff of one weight file pair whose headers are parsed."""
    changes: list[TensorChange] = []
    unchanged = changed_value = 0
    to_read: list[tuple[Tensor, Tensor]] = []
    regions: list[tuple[int, int, list[tuple[int, int]]]] = []
    in_order = sorted(wb.tensors.values(), key=lambda t: t.start)
    for tb in in_order:
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
            parts = cmp.unknown_parts(fa, ta.start, fb, tb.start, tb.end - tb.start)
            if not parts:
                cmp.stats.tensors_by_chunks += 1
                unchanged += 1
            else:
                cmp.stats.tensors_read += 1
                to_read.append((ta, tb))
                regions.append((ta.start, tb.start, parts))
    for (ta, tb), differ in zip(to_read, cmp.count_differences(fa, fb, regions)):
        if differ == 0:
            unchanged += 1
            continue
        n = tb.end - tb.start
        changed_value += 1
        changes.append(TensorChange(tb.name, "value", ta.dtype, tb.dtype, _shape(ta), _shape(tb),
                                    nbytes=n, differing_bytes=differ,
                                    fraction=round(differ / n, 6)))
    order = {t.name: i for i, t in enumerate(in_order)}
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
    changed = {k for k in keys if k not in wa.metadata or k not in wb.metadata}
    to_read: list[str] = []
    regions: list[tuple[int, int, list[tuple[int, int]]]] = []
    for k in keys:
        if k in changed:
            continue
        (a0, a1), (b0, b1) = wa.metadata[k], wb.metadata[k]
        if a1 - a0 != b1 - b0:
            changed.add(k)
            continue
        parts = cmp.unknown_parts(fa, a0, fb, b0, b1 - b0)
        if parts:
            to_read.append(k)
            regions.append((a0, b0, parts))
    changed.update(k for k, differ in zip(to_read, cmp.count_differences(fa, fb, regions))
                   if differ)
    return [k for k in keys if k in changed]


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
    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="cas-diff") if WORKERS > 1 else None
    cmp = _Comparer(reader, pool)
    try:
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
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    stats = cmp.stats
    stats.bytes_read, stats.objects_read = reader.bytes_read, reader.objects_read
    return DiffResult(a, b, identical=not files, files=files, weights=weights,
                      files_unchanged=unchanged, stats=stats, warnings=warnings)


def diff_versions(store: Store, va: Version, vb: Version) -> DiffResult:
    """Diff version ``va`` (old) against ``vb`` (new); see :func:`diff_manifests`."""
    return diff_manifests(store, store.manifest(va), store.manifest(vb), va.ref, vb.ref)
