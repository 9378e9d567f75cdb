"""Byte grouping: store float weights as separate byte streams so zstd can shrink them.

In a float tensor, the byte holding the sign and exponent of each element varies little (weights
cluster around zero) while the low mantissa bytes are close to random. Interleaved, zstd sees
near-random bytes and saves little; grouped (every element's byte 0 together, then byte 1, ...)
the exponent stream compresses well and the mantissa streams are stored raw at no cost.

The grouping is aligned to the element: a chunk that starts at file offset ``o`` inside a tensor
whose data starts at ``t`` has phase ``(o - t) % E`` for element size ``E``; byte ``i`` of the
chunk goes to stream ``(phase + i) % E``. Stored layout of a grouped object (codec 2, see
``docs/format.md``)::

    u8 element size E | u8 phase | E x (u8 codec, u32 stored length) | stream 0 | ... | stream E-1

Each stream is zstd (codec 1) or raw (codec 0), whichever is smaller. Decoding caps every
stream at the length the chunk length implies, so a crafted object cannot expand beyond its
record.
"""

from __future__ import annotations

import struct
import threading
from bisect import bisect_right

import zstandard

from cas.errors import VerifyError

ELEMENT_SIZES = (2, 4, 8)
_HEAD = struct.Struct("<BB")
_STREAM = struct.Struct("<BI")

#: zstd settings for grouped streams. They hold no long repeats (float bytes), so a minimal
#: match finder loses nothing while entropy coding does the work: measured on bf16 exponent
#: streams of 40 KB, ratio 0.34 at ~840 MB/s against 0.38 at ~300 MB/s for level 1.
_STREAM_PARAMS = zstandard.ZstdCompressionParameters(
    strategy=zstandard.STRATEGY_FAST, window_log=18, hash_log=6, chain_log=6, search_log=1,
    min_match=7, target_length=0, write_content_size=True,
)
_local = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    ctx = getattr(_local, "cctx", None)
    if ctx is None:
        ctx = _local.cctx = zstandard.ZstdCompressor(compression_params=_STREAM_PARAMS)
    return ctx


def _dctx() -> zstandard.ZstdDecompressor:
    ctx = getattr(_local, "dctx", None)
    if ctx is None:
        ctx = _local.dctx = zstandard.ZstdDecompressor()
    return ctx


def _numpy():  # type: ignore[no-untyped-def]
    """Import numpy on first use, so commands that never group stay quick to start.

    Only numpy's byte shuffling is used; its BLAS thread pool would only compete with the
    ingest threads for the cores, so it is limited to one thread unless the user chose.
    """
    global _np
    if _np is None:
        import os

        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        import numpy

        _np = numpy
    return _np


_np = None


def stream_lengths(n: int, elem: int, phase: int) -> list[int]:
    """Length of each stream for a chunk of ``n`` bytes."""
    return [len(range((k - phase) % elem, n, elem)) for k in range(elem)]


def split(data: bytes | memoryview, elem: int, phase: int) -> list[bytes]:
    """Group the bytes of ``data`` into ``elem`` streams (see the module docstring).

    Byte ``i`` goes to stream ``(phase + i) % elem``, so stream ``k`` is the strided slice
    starting at ``(k - phase) % elem``. Strided numpy copies release the GIL, unlike the
    casting copies of a word-shift approach, which matters with several ingest threads.
    """
    raw = _numpy().frombuffer(data, dtype="u1")
    return [raw[(k - phase) % elem :: elem].tobytes() for k in range(elem)]


def join(streams: list[bytes], elem: int, phase: int, n: int,
         into: memoryview | None = None) -> bytearray | memoryview:
    """Inverse of :func:`split`: a new buffer of ``n`` bytes, or ``into`` filled in place."""
    np = _numpy()
    if into is not None:
        if n:
            dest = np.frombuffer(into, dtype="u1")
            for k, stream in enumerate(streams):  # every byte is assigned: no zeroing needed
                dest[(k - phase) % elem :: elem] = np.frombuffer(stream, dtype="u1")
        return into
    out = bytearray(n)
    if n == 0:
        return out
    dest = np.frombuffer(out, dtype="u1")
    if elem == 2 and n >= 2:
        # Two-byte elements (F16, BF16: the common case): copy the high bytes into place,
        # then OR the low bytes in as u16 words over the aligned middle. Both release the GIL.
        hi = (1 - phase) % 2  # where the first high byte goes
        dest[hi::2] = np.frombuffer(streams[1], dtype="u1")
        pairs = (n - phase) // 2
        words = np.frombuffer(out, dtype="<u2", count=pairs, offset=phase)
        words |= np.frombuffer(streams[0], dtype="u1", count=pairs)
        if (n - phase) % 2:
            out[n - 1] = streams[0][pairs]
        return out
    for k, stream in enumerate(streams):
        dest[(k - phase) % elem :: elem] = np.frombuffer(stream, dtype="u1")
    return out


def _round_trips(streams: list[bytes], data: bytes | memoryview, elem: int, phase: int) -> bool:
    """True if ``streams`` interleave back into ``data``."""
    return join(streams, elem, phase, len(data)) == data


ALL_STREAMS = 0xFF


def encode(data: bytes | memoryview, elem: int, phase: int, min_saving: float,
           streams: int = ALL_STREAMS) -> tuple[bytes | None, int]:
    """Encode one chunk grouped.

    Only the streams whose bit is set in ``streams`` are offered to zstd (the others are known,
    from an earlier chunk of the same tensor, not to compress: mantissa bytes). Returns the
    encoding, or None if it does not save ``min_saving`` of the chunk, and the mask of streams
    that zstd did shrink.
    """
    parts = []
    heads = [_HEAD.pack(elem, phase)]
    shrunk = 0
    streams_raw = split(data, elem, phase)
    # Round trip before anything is stored: the transform is ours, so prove it on every
    # chunk (zstd's own round trip is zstd's job). A mismatch would be a bug; the chunk is
    # then simply not grouped.
    if not _round_trips(streams_raw, data, elem, phase):
        return None, 0
    for k, stream in enumerate(streams_raw):
        packed = _cctx().compress(stream) if stream and streams >> k & 1 else b""
        if packed and len(packed) <= len(stream) * (1 - min_saving):
            heads.append(_STREAM.pack(1, len(packed)))
            parts.append(packed)
            shrunk |= 1 << k
        else:
            heads.append(_STREAM.pack(0, len(stream)))
            parts.append(stream)
    out = b"".join(heads + parts)
    if len(out) > len(data) * (1 - min_saving):
        return None, shrunk
    return out, shrunk


def decode(stored: bytes, raw_len: int, object_id: str,
           into: memoryview | None = None) -> bytes | bytearray | memoryview:
    """Decode a grouped object into exactly ``raw_len`` bytes (into ``into`` when given).

    Raises:
        VerifyError: a malformed layout, a stream of the wrong length, or a corrupt frame.
    """
    def bad(why: str) -> VerifyError:
        return VerifyError(f"object {object_id}: grouped encoding {why}", object_id=object_id)

    if len(stored) < _HEAD.size:
        raise bad("is truncated")
    elem, phase = _HEAD.unpack_from(stored)
    if elem not in ELEMENT_SIZES or phase >= elem:
        raise bad(f"has element size {elem} phase {phase}")
    pos = _HEAD.size + elem * _STREAM.size
    if len(stored) < pos:
        raise bad("is truncated")
    streams = []
    for k, want in enumerate(stream_lengths(raw_len, elem, phase)):
        codec, size = _STREAM.unpack_from(stored, _HEAD.size + k * _STREAM.size)
        body = stored[pos : pos + size]
        pos += size
        if len(body) != size:
            raise bad("is truncated")
        if codec == 0:
            s = body
        elif codec == 1:
            try:
                declared = zstandard.frame_content_size(body)
            except zstandard.ZstdError as exc:
                raise bad(f"stream {k} has a damaged frame header ({exc})") from None
            if declared not in (-1, want):
                raise bad(f"stream {k} declares {declared} bytes, expected {want}")
            try:
                s = _dctx().decompress(body, max_output_size=want)
            except zstandard.ZstdError as exc:
                raise bad(f"stream {k} is corrupt ({exc})") from None
        else:
            raise bad(f"stream {k} has unknown codec {codec}")
        if len(s) != want:
            raise bad(f"stream {k} holds {len(s)} bytes, expected {want}")
        streams.append(s)
    if pos != len(stored):
        raise bad("has trailing bytes")
    return join(streams, elem, phase, raw_len, into)


class FloatRanges:
    """Sorted byte ranges of one file that hold float tensors, and what grouping achieved.

    Grouping is kept only where it beats compressing the chunk whole: the first chunk met in
    each tensor is compressed both ways and the winner is used for the rest of that tensor
    (tensors are homogeneous, so one chunk is a fair sample and the cost is paid once).
    """

    def __init__(self, ranges: list[tuple[int, int, int]]) -> None:
        self.ranges = sorted(r for r in ranges if r[1] > r[0])
        self._starts = [r[0] for r in self.ranges]
        #: range index -> (grouping won, mask of streams worth offering to zstd)
        self.decided: dict[int, tuple[bool, int]] = {}

    def locate(self, offset: int, length: int) -> tuple[int, int, int] | None:
        """``(range index, element size, phase)`` for a chunk whose middle byte lies in a
        float tensor, else None."""
        middle = offset + length // 2
        i = bisect_right(self._starts, middle) - 1
        if i < 0:
            return None
        start, end, elem = self.ranges[i]
        if not start <= middle < end:
            return None
        return i, elem, (offset - start) % elem
