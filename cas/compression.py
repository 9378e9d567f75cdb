"""Per-chunk compression: zstd where it pays, raw where it does not.

The decision is recorded per stored object as a codec byte (see ``docs/format.md``). Decompression
is always capped at the recorded raw length, so a crafted frame cannot expand into a memory bomb,
and every decompressed chunk is then checked against its BLAKE3 id by the caller.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import zstandard

from cas.errors import VerifyError

CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_GROUPED = 2
#: A chunk stored as the XOR residual of a prediction from an earlier file (see
#: :mod:`cas.derive`); decoded by the pack reader, which can read that file.
CODEC_DERIVED = 3
CODECS = {CODEC_RAW: "raw", CODEC_ZSTD: "zstd", CODEC_GROUPED: "grouped",
          CODEC_DERIVED: "derived"}

#: zstd level for new stores. Measured on model weights cut into ~80 KiB chunks, level 1 gives
#: the same ratio as level 3 (0.78 on bf16, 0.91 on float32) at about 1.2x the speed
#: (benchmarks/zstd_levels.py).
DEFAULT_LEVEL = 1


class Compressor:
    """Compress chunks, choosing raw storage when zstd saves too little.

    One instance may be shared by threads: each thread gets its own zstd context, because a
    ``ZstdCompressor`` must not be used by two threads at once.
    """

    def __init__(self, level: int = DEFAULT_LEVEL, min_saving: float = 1 / 64) -> None:
        self.level = level
        self.min_saving = min_saving
        self._local = threading.local()

    def _ctx(self) -> zstandard.ZstdCompressor:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
            self._local.ctx = ctx
        return ctx

    def compress(self, data: bytes | memoryview, grouping: tuple[int, int] | None = None,
                 streams: int = 0xFF) -> tuple[int, bytes | memoryview]:
        """Return ``(codec, stored_bytes)`` for one chunk.

        ``grouping`` is ``(element size, phase)`` when the chunk lies in a float tensor: the
        chunk is then byte-grouped (see :mod:`cas.bytegroup`) instead of compressed whole, and
        only the streams set in ``streams`` are offered to zstd.
        """
        return self._compress(data, grouping, streams)[:2]

    def _compress(self, data: bytes | memoryview, grouping: tuple[int, int] | None,
                  streams: int) -> tuple[int, bytes | memoryview, int]:
        if not data:
            return CODEC_RAW, data, 0
        if grouping is not None:
            from cas import bytegroup

            grouped, shrunk = bytegroup.encode(data, grouping[0], grouping[1], self.min_saving,
                                               streams)
            if grouped is not None:
                return CODEC_GROUPED, grouped, shrunk
            return CODEC_RAW, data, shrunk
        packed = self._ctx().compress(data)
        if len(packed) <= len(data) * (1 - self.min_saving):
            return CODEC_ZSTD, packed, 0
        return CODEC_RAW, data, 0

    def best(self, data: bytes | memoryview,
             grouping: tuple[int, int]) -> tuple[tuple[bool, int], tuple[int, bytes | memoryview]]:
        """Compress both ways; return ``((grouping won, streams zstd shrank), the smaller
        result)``. The first element is what to reuse for the rest of the tensor."""
        whole = self._compress(data, None, 0)
        grouped = self._compress(data, grouping, 0xFF)
        if len(grouped[1]) < len(whole[1]):
            return (True, grouped[2]), grouped[:2]
        return (False, 0), whole[:2]


_dlocal = threading.local()
#: Above this many claimed bytes, a zstd frame is decompressed piece by piece: memory then
#: follows what the frame really produces (at most the claim), not what the record claims.
STREAM_ABOVE = 4 << 20


def _decompress_growing(ctx: zstandard.ZstdDecompressor, stored: bytes | memoryview,
                        raw_len: int) -> bytes:
    """Decompress one frame in 1 MiB pieces, stopping one byte past ``raw_len``."""
    out = bytearray()
    with ctx.stream_reader(stored, read_across_frames=False) as reader:
        while len(out) <= raw_len:
            piece = reader.read(min(1 << 20, raw_len + 1 - len(out)))
            if not piece:
                break
            out += piece
    return bytes(out)


def decompress(codec: int, stored: bytes, raw_len: int, *, object_id: str = "?",
               into: memoryview | None = None) -> bytes | memoryview:
    """Undo :meth:`Compressor.compress`, refusing output that is not exactly ``raw_len`` bytes.

    With ``into`` (a writable buffer of ``raw_len`` bytes) the result is written there and
    ``into`` is returned; grouped objects are then assembled in place, without a copy.

    Raises:
        VerifyError: unknown codec, corrupt frame, or a length other than ``raw_len``.
    """
    if into is not None and len(into) != raw_len:
        raise ValueError(f"decompress: buffer of {len(into)} bytes for {raw_len}")
    if codec == CODEC_RAW:
        out = stored
    elif codec == CODEC_ZSTD:
        ctx = getattr(_dlocal, "ctx", None)
        if ctx is None:
            ctx = _dlocal.ctx = zstandard.ZstdDecompressor()
        try:
            # A frame header may declare any content size; refuse one that disagrees with the
            # record before zstd allocates for it (the zstd-bomb case).
            declared = zstandard.frame_content_size(stored)
            if declared not in (-1, raw_len):
                raise VerifyError(
                    f"object {object_id}: zstd frame declares {declared} bytes, "
                    f"record says {raw_len}",
                    object_id=object_id,
                    expected=str(raw_len),
                    actual=str(declared),
                )
            if raw_len > STREAM_ABOVE and into is None:
                out = _decompress_growing(ctx, stored, raw_len)
            else:
                out = ctx.decompress(stored, max_output_size=raw_len)
        except zstandard.ZstdError as exc:
            raise VerifyError(
                f"object {object_id}: zstd frame is corrupt ({exc})", object_id=object_id
            ) from None
    elif codec == CODEC_GROUPED:
        from cas import bytegroup

        out = bytegroup.decode(stored, raw_len, object_id, into=into)
        if into is not None:
            return into
    else:
        raise VerifyError(f"object {object_id}: unknown codec {codec}", object_id=object_id)
    if len(out) != raw_len:
        raise VerifyError(
            f"object {object_id}: decoded to {len(out)} bytes, record says {raw_len}",
            object_id=object_id,
            expected=str(raw_len),
            actual=str(len(out)),
        )
    if into is not None:
        into[:] = out
        return into
    return out


def iter_frame(stored: bytes | memoryview, raw_len: int, *, object_id: str = "?",
               piece: int = 1 << 20) -> Iterator[bytes]:
    """The decompressed bytes of one zstd frame in pieces of at most ``piece`` bytes, for a
    reader that hashes them without holding the whole (memory stays at one piece whatever
    the frame or its record claims).

    Raises:
        VerifyError: a corrupt frame, or one that does not produce exactly ``raw_len`` bytes.
    """
    ctx = getattr(_dlocal, "ctx", None)
    if ctx is None:
        ctx = _dlocal.ctx = zstandard.ZstdDecompressor()
    done = 0
    try:
        declared = zstandard.frame_content_size(stored)
        if declared not in (-1, raw_len):
            raise VerifyError(f"object {object_id}: zstd frame declares {declared} bytes, "
                              f"record says {raw_len}", object_id=object_id)
        with ctx.stream_reader(stored, read_across_frames=False) as reader:
            while done <= raw_len:
                out = reader.read(min(piece, raw_len + 1 - done))
                if not out:
                    break
                done += len(out)
                if done <= raw_len:
                    yield out
    except zstandard.ZstdError as exc:
        raise VerifyError(f"object {object_id}: zstd frame is corrupt ({exc})",
                          object_id=object_id) from None
    if done != raw_len:
        got = str(done) if done < raw_len else f"more than {raw_len}"
        raise VerifyError(f"object {object_id}: decoded to {got} bytes, record says {raw_len}",
                          object_id=object_id)
