"""Derived chunks: a chunk stored as its difference from a prediction made out of an earlier file.

A fine-tune changes every weight of a layer a little; a dtype conversion rewrites the whole file.
Neither leaves a chunk that deduplicates, yet both are almost entirely predictable from the
previous version of the same file (the add's first ``--parent``, else the model's latest
version): a fine-tuned tensor from its old values, an F16 tensor from
its F32 original cast with round-to-nearest-even. For a chunk that lies in such a tensor, the
ingest builds that prediction, XORs it with the chunk, and stores the residual (mostly zero
bytes, see :mod:`cas.bytegroup` for how it is then compressed) with a recipe for the prediction.
The chunk keeps its id (the BLAKE3 of its bytes); only its stored form changes, recorded as codec
3. The encoder decodes every derived chunk before storing it, and the reader checks the BLAKE3
of every decoded chunk, as for every codec.

Stored layout of a derived object (see ``docs/format.md``)::

    u8 version (1) | u8 depth | 32 base chunk list id | u16 segment count
    count x (i64 chunk offset, u32 elements, u64 base file offset, u8 source dtype, u8 dtype)
    u8 residual codec (0, 1 or 2) | residual

Segment ``(o, k, b, s, d)``: the ``k`` elements of dtype ``s`` at byte ``b`` of the base file,
converted to dtype ``d``, predict the chunk's bytes from offset ``o`` (negative when the chunk
starts inside an element; bytes outside the chunk are dropped). Bytes no segment covers are
predicted as zero. Conversions are integer bit operations or IEEE casts, so every machine
computes the same prediction.

A derived chunk reads its base file's chunks, which may be derived themselves; ``depth`` is one
more than the deepest of them (1 when none is derived). Each level costs a decode at checkout, so
the encoder derives a chunk only up to depth :data:`ENCODE_DEPTH` (a long series of fine-tunes
then starts a fresh chain every few versions); readers refuse chains deeper than
:data:`MAX_DEPTH`. The recorded depth describes the writer's store only: another store may hold
the same base bytes encoded otherwise (plainly, or derived in other steps), and the chunk reads
back there all the same (portable objects: sync, bundles and repack copy or re-encode bases).
The base chunk list and its chunks must stay stored as long as a derived chunk needs them.
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

from cas.errors import VerifyError
from cas.metadata import Tensor

VERSION = 1
#: dtype name -> (code, element size)
DTYPES = {"F32": (1, 4), "F16": (2, 2), "BF16": (3, 2)}
_SIZES = {code: size for code, size in DTYPES.values()}
_HEAD = struct.Struct("<BB32sH")
_SEG = struct.Struct("<qIQBB")
MAX_SEGMENTS = 4096
MAX_DEPTH = 16
ENCODE_DEPTH = 4

#: object id -> its verified bytes and its chain depth (0 unless it is a derived chunk)
ReadObject = Callable[[bytes], tuple[bytes, int]]
Segment = tuple[int, int, int, int, int]  # chunk offset, elements, base offset, src, dst


def _np():  # type: ignore[no-untyped-def]
    from cas.bytegroup import _numpy

    return _numpy()


def convert(data: bytes | memoryview, src: int, dst: int):  # type: ignore[no-untyped-def]
    """The elements of ``data`` (dtype code ``src``) as dtype ``dst``, as a uint8 array."""
    np = _np()
    if src == dst:
        return np.frombuffer(data, dtype="u1")
    if src == 1:
        f32 = np.frombuffer(data, dtype="<f4")
    elif src == 2:
        f32 = np.frombuffer(data, dtype="<f2").astype("<f4")
    else:  # BF16: the high half of an F32
        f32 = (np.frombuffer(data, dtype="<u2").astype("<u4") << 16).view("<f4")
    if dst == 1:
        out = f32.astype("<f4", copy=False)
    elif dst == 2:
        with np.errstate(over="ignore", invalid="ignore"):
            out = f32.astype("<f2")
    else:  # F32 -> BF16, round to nearest even (wraps for NaN payloads: still deterministic)
        u = f32.view("<u4")
        out = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype("<u2")
    return out.view("u1")


@dataclass
class Plan:
    """How to predict the tensors of one new file from a base file.

    ``pairs`` holds ``(start, end, dst code, base start, src code)`` per tensor of the new file
    that has a same-named, same-shaped float tensor in the base, sorted by start.
    """

    base: bytes  # the base file's chunk list id
    pairs: list[tuple[int, int, int, int, int]]
    #: tensor index -> whether deriving beat plain compression on its first new chunk
    decided: dict[int, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pairs.sort()
        self._starts = [p[0] for p in self.pairs]

    @classmethod
    def build(cls, base: bytes, new: list[Tensor], old: list[Tensor]) -> Plan | None:
        by_name = {t.name: t for t in old if t.dtype in DTYPES}
        pairs = []
        for t in new:
            o = by_name.get(t.name)
            if o is None or t.dtype not in DTYPES or o.shape != t.shape or t.end <= t.start:
                continue
            dst, dsz = DTYPES[t.dtype]
            src, ssz = DTYPES[o.dtype]
            if (t.end - t.start) // dsz != (o.end - o.start) // ssz:
                continue
            pairs.append((t.start, t.end, dst, o.start, src))
        return cls(base, pairs) if pairs else None

    def tensor_at(self, offset: int, length: int) -> int | None:
        """Index of the paired tensor holding the chunk's middle byte, if any."""
        middle = offset + length // 2
        i = bisect_right(self._starts, middle) - 1
        if i >= 0 and middle < self.pairs[i][1]:
            return i
        return None

    def segments(self, offset: int, n: int) -> list[Segment]:
        """The segments that predict the chunk at ``offset`` of length ``n``."""
        out = []
        i = max(0, bisect_right(self._starts, offset) - 1)
        while i < len(self.pairs) and self.pairs[i][0] < offset + n:
            start, end, dst, base_start, src = self.pairs[i]
            i += 1
            lo, hi = max(offset, start), min(offset + n, end)
            if lo >= hi:
                continue
            dsz, ssz = _SIZES[dst], _SIZES[src]
            e0 = (lo - start) // dsz
            e1 = -(-(hi - start) // dsz)
            out.append((start + e0 * dsz - offset, e1 - e0, base_start + e0 * ssz, src, dst))
        return out[:MAX_SEGMENTS]


class RangeReader:
    """Byte ranges of stored files, for predictions: chunk lists and decoded chunks are kept in
    small LRU caches, since neighbouring chunks read neighbouring ranges. Thread-safe."""

    def __init__(self, read_object: ReadObject, read_chunk_list: Callable[[bytes], object],
                 cached_chunks: int = 48) -> None:
        self._read_object = read_object
        self._read_chunk_list = read_chunk_list
        self._lists: OrderedDict[bytes, tuple[list[int], list[bytes]]] = OrderedDict()
        self._chunks: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()
        self._cap = cached_chunks
        self._lock = threading.Lock()
        self._local = threading.local()

    def _layout(self, clist_id: bytes) -> tuple[list[int], list[bytes]]:
        with self._lock:
            hit = self._lists.get(clist_id)
            if hit is not None:
                self._lists.move_to_end(clist_id)
                return hit
        clist = self._read_chunk_list(clist_id)
        ids = [oid for oid, _ in clist.chunks]  # type: ignore[attr-defined]
        starts = [0, *accumulate(n for _, n in clist.chunks)]  # type: ignore[attr-defined]
        with self._lock:
            self._lists[clist_id] = (starts, ids)
            while len(self._lists) > 8:
                self._lists.popitem(last=False)
        return starts, ids

    def _chunk(self, oid: bytes) -> tuple[bytes, int]:
        with self._lock:
            hit = self._chunks.get(oid)
            if hit is not None:
                self._chunks.move_to_end(oid)
                return hit
        data = self._read_object(oid)
        with self._lock:
            self._chunks[oid] = data
            while len(self._chunks) > self._cap:
                self._chunks.popitem(last=False)
        return data

    def read(self, clist_id: bytes, offset: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes at ``offset`` of the stored file ``clist_id``, and the deepest
        chain depth of the chunks they came from.

        Raises:
            VerifyError: the range is outside the file, or derived chunks nest deeper than
                :data:`MAX_DEPTH` (a crafted loop included).
        """
        depth = getattr(self._local, "depth", 0)
        if depth >= MAX_DEPTH:
            raise VerifyError(f"derived chunks nest deeper than {MAX_DEPTH} levels")
        starts, ids = self._layout(clist_id)
        if offset < 0 or length < 0 or offset + length > starts[-1]:
            raise VerifyError(f"derived chunk reads bytes {offset}+{length} of a "
                              f"{starts[-1]}-byte base file")
        self._local.depth = depth + 1
        try:
            parts = []
            deepest = 0
            i = bisect_right(starts, offset) - 1
            pos = offset
            while pos < offset + length:
                data, level = self._chunk(ids[i])
                deepest = max(deepest, level)
                lo = pos - starts[i]
                take = min(len(data) - lo, offset + length - pos)
                parts.append(memoryview(data)[lo : lo + take])
                pos += take
                i += 1
            return b"".join(parts), deepest
        finally:
            self._local.depth = depth


def predict(segments: list[Segment], n: int, base: bytes,
            reader: RangeReader) -> tuple[bytearray, int]:
    """The predicted bytes of an ``n``-byte chunk (zero where no segment reaches), and the
    depth a chunk derived from them has."""
    pred = bytearray(n)
    out = _np().frombuffer(pred, dtype="u1")
    depth = 1
    for off, count, base_off, src, dst in segments:
        data, level = reader.read(base, base_off, count * _SIZES[src])
        depth = max(depth, level + 1)
        values = convert(data, src, dst)
        a, b = max(0, off), min(n, off + count * _SIZES[dst])
        if a < b:
            out[a:b] = values[a - off : b - off]
    return pred, depth


def _xor(a: bytes | memoryview | bytearray, b: bytearray) -> bytearray:
    np = _np()
    out = bytearray(len(b))
    np.bitwise_xor(np.frombuffer(a, dtype="u1"), np.frombuffer(b, dtype="u1"),
                   out=np.frombuffer(out, dtype="u1"))
    return out


def encode(chunk: bytes | memoryview, segments: list[Segment], base: bytes,
           reader: RangeReader, compress_residual: Callable[[bytearray], tuple[int, bytes]]
           ) -> bytes | None:
    """The derived form of ``chunk``, or None if it cannot be derived.

    Before it is returned the result is parsed back and its residual decoded and combined with
    the prediction; that must give ``chunk`` again (the prediction itself is not recomputed:
    it is deterministic, and recomputing it would read the base a second time).
    """
    from cas.compression import decompress

    if not segments:
        return None
    n = len(chunk)
    pred, depth = predict(segments, n, base, reader)
    if depth > ENCODE_DEPTH:
        return None
    residual = _xor(chunk, pred)
    codec, body = compress_residual(residual)
    parts = [_HEAD.pack(VERSION, depth, base, len(segments))]
    parts.extend(_SEG.pack(*s) for s in segments)
    parts.append(bytes([codec]))
    parts.append(body)
    payload = b"".join(parts)
    got = _parse(payload, n, "(new)")
    if got[:3] != (depth, base, segments) or \
            _xor(decompress(got[3], got[4], n, object_id="(new)"), pred) != chunk:
        return None  # would be a bug; the chunk is then simply stored the usual way
    return payload


def decode(payload: bytes | memoryview, n: int, reader: RangeReader, *, object_id: str) -> bytes:
    """Rebuild an ``n``-byte chunk from its derived form.

    Raises:
        VerifyError: a malformed payload, a base that cannot be read, or a bad residual.
    """
    from cas.compression import decompress

    _depth, base, segments, codec, body = _parse(payload, n, object_id)
    residual = decompress(codec, body, n, object_id=object_id)
    # The recorded depth is what the writer's store made of the chain; this store may hold the
    # base encoded otherwise (plainly, or derived in other steps), so it is not compared: the
    # reader's own limit (MAX_DEPTH, enforced while reading the base) bounds the nesting.
    pred, _actual = predict(segments, n, base, reader)
    return bytes(_xor(residual, pred))


def _parse(payload: bytes | memoryview, n: int, object_id: str
           ) -> tuple[int, bytes, list[Segment], int, bytes]:
    """``(depth, base, segments, residual codec, residual)`` of a derived payload, checked.

    Raises:
        VerifyError: the payload is malformed.
    """
    from cas.compression import CODEC_GROUPED

    def bad(why: str) -> VerifyError:
        return VerifyError(f"object {object_id}: derived encoding {why}", object_id=object_id)

    if len(payload) < _HEAD.size:
        raise bad("is truncated")
    version, depth, base, count = _HEAD.unpack_from(payload)
    if version != VERSION:
        raise bad(f"has unknown version {version}")
    if not 1 <= depth <= MAX_DEPTH:
        raise bad(f"has depth {depth}")
    if count > MAX_SEGMENTS:
        raise bad(f"has {count} segments")
    pos = _HEAD.size + count * _SEG.size
    if len(payload) < pos + 1:
        raise bad("is truncated")
    segments = []
    for k in range(count):
        seg = _SEG.unpack_from(payload, _HEAD.size + k * _SEG.size)
        off, elems, _base_off, src, dst = seg
        if src not in _SIZES or dst not in _SIZES:
            raise bad(f"segment {k} has dtype codes {src}, {dst}")
        span = elems * _SIZES[dst]
        if off + span <= 0 or off >= n or off < -_SIZES[dst] or span > n + 2 * _SIZES[dst]:
            raise bad(f"segment {k} lies outside the chunk")
        segments.append(seg)
    codec = payload[pos]
    if codec > CODEC_GROUPED:
        raise bad(f"has residual codec {codec}")
    return depth, bytes(base), segments, codec, bytes(payload[pos + 1 :])


def depth_of_payload(payload: bytes | memoryview) -> int:
    """The chain depth recorded in a derived object's stored bytes (0 if unreadable: the
    object's own decode reports the damage)."""
    return payload[1] if len(payload) >= _HEAD.size else 0
