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
import pyfastcdc

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
        self._cdc = pyfastcdc.FastCDC(
            avg_size=params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            normalized_chunking=params.normalization,  # type: ignore[arg-type]
            seed=params.seed,
        )

    def cut_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Yield the chunks of ``stream`` in order.

        Each memoryview is valid only until the next one is produced; copy it to keep it. Memory
        stays bounded by the chunker's internal buffer whatever the stream's length.
        """
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def cut_bytes(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
        """Yield ``(offset, length)`` of each chunk of an in-memory buffer."""
        for chunk in self._cdc.cut_buf(data):
            yield chunk.offset, chunk.length
