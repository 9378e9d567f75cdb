"""Content-defined chunking with FastCDC (through the compiled ``pyfastcdc``).

The chunker parameters are part of the store format: they are written into the store config at
``init`` and read back from it, never taken from code defaults for an existing store. Two stores
with the same parameters cut the same bytes at the same places, which is what makes dedupe across
hosts work. Golden test vectors (``tests/test_chunking.py``) pin the boundaries, so a library
update that moves one boundary fails the tests instead of silently breaking dedupe.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import msgspec

from cas.errors import SchemaError

#: Name of the only algorithm this format version knows.
ALGORITHM = "fastcdc-2020"


class ChunkerParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """FastCDC parameters as recorded in the store config.

    ``avg_size`` is FastCDC's normal size (pyfastcdc's ``avg_size``); with cut-point skipping the
    observed mean is close to ``avg_size + min_size``.
    """

    algorithm: str = ALGORITHM
    avg_size: int = 65536
    min_size: int = 16384
    max_size: int = 262144
    normalization: int = 1
    seed: int = 0

    def validate(self) -> None:
        """Raise SchemaError unless these are parameters this build can reproduce exactly."""
        if self.algorithm != ALGORITHM:
            raise SchemaError(f"unknown chunking algorithm {self.algorithm!r}")
        if not (256 <= self.avg_size <= 4194304):
            raise SchemaError(f"chunker avg_size {self.avg_size} out of range")
        if not (64 <= self.min_size <= 1048576 and self.min_size <= self.avg_size):
            raise SchemaError(f"chunker min_size {self.min_size} out of range")
        if not (1024 <= self.max_size <= 16777216 and self.max_size >= self.avg_size):
            raise SchemaError(f"chunker max_size {self.max_size} out of range")
        if self.normalization not in (0, 1, 2, 3):
            raise SchemaError(f"chunker normalization {self.normalization} out of range")


DEFAULT_PARAMS = ChunkerParams()


class Chunker:
    """A reusable FastCDC cutter bound to one parameter set. Not thread-safe."""

    def __init__(self, params: ChunkerParams = DEFAULT_PARAMS) -> None:
        params.validate()
        self.params = params
        import pyfastcdc  # on first use: commands that never cut a file skip loading it

        self._cdc = pyfastcdc.FastCDC(
            avg_size=params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalization,  # type: ignore[arg-type]
            seed=params.seed,
        )

    def cut_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield the chunks of ``stream`` in order (a convenience over :meth:`cut_blocks`)."""
        for _region, chunks in self.cut_blocks(stream):
            yield from chunks

    def cut_blocks(
        self,
        stream: BinaryIO,
        block_size: int = 8 << 20,
        buffers: BufferPool | None = None,
    ) -> Iterator[tuple[memoryview, list[memoryview]]]:
        """Yield ``(region, chunks)`` per block read from ``stream``, in order.

        ``chunks`` are consecutive memoryviews over one buffer and ``region`` is the contiguous
        span they cover, so a caller can hash the region in one call: nothing is copied. The
        buffer comes from ``buffers`` when given (the caller hands ``region.obj`` back with
        :meth:`BufferPool.release` once done with the views; reusing buffers avoids faulting in
        fresh pages for every block), else a fresh one per block.

        Boundaries are exactly those of cutting the whole stream at once: a chunk is accepted
        only when at least ``max_size`` bytes follow its start in the buffer (FastCDC's cut
        depends on at most that many bytes), or at end of stream; the tail is carried over to
        the next block.
        """
        max_size = self.params.max_size
        block_size = max(block_size, 2 * max_size)
        capacity = block_size + max_size
        carry = b""
        eof = False
        while not eof:
            buf = buffers.get() if buffers is not None else bytearray(capacity)
            view = memoryview(buf)
            view[: len(carry)] = carry
            filled = len(carry)
            while filled < capacity:
                n = stream.readinto(view[filled:])  # type: ignore[attr-defined]
                if not n:
                    eof = True
                    break
                filled += n
            data = view[:filled]
            chunks: list[memoryview] = []
            end = 0
            for chunk in self._cdc.cut_buf(data):
                if not eof and chunk.offset + max_size > filled:
                    break
                chunks.append(data[chunk.offset : chunk.offset + chunk.length])
                end = chunk.offset + chunk.length
            carry = bytes(data[end:]) if not eof else b""
            if chunks:
                yield data[:end], chunks
            elif buffers is not None:
                buffers.release(buf)


    def cut_bytes(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
        """Yield ``(offset, length)`` of each chunk of an in-memory buffer."""
        for chunk in self._cdc.cut_buf(data):
            yield chunk.offset, chunk.length


class BufferPool:
    """A few reusable block buffers for :meth:`Chunker.cut_blocks`, shared by one ingest.

    ``get`` blocks when all buffers are out, which is what bounds memory: at most ``count``
    blocks are alive at once.
    """

    def __init__(self, chunker: Chunker, count: int, block_size: int = 8 << 20) -> None:
        import queue

        capacity = max(block_size, 2 * chunker.params.max_size) + chunker.params.max_size
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(bytearray(capacity))

    def get(self) -> bytearray:
        return self._free.get()

    def release(self, buf: bytearray) -> None:
        self._free.put(buf)
