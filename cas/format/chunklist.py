"""Chunk lists: the ordered chunks of one file, stored as a content-addressed object.

A manifest names one chunk-list id per file instead of listing chunks, so manifests grow with the
number of files, not chunks. The list carries the file size and each chunk's length; decoding
refuses a list whose lengths do not sum to the size.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cas.errors import SchemaError

MAGIC = b"CASLIST\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, reserved, count, total size
_ITEM = struct.Struct("<32sI")  # chunk id, raw length
HEADER_SIZE = _HEADER.size  # 32
ITEM_SIZE = _ITEM.size  # 36


@dataclass(frozen=True, slots=True)
class ChunkList:
    """The chunks of one file, in order."""

    size: int
    chunks: tuple[tuple[bytes, int], ...]  # (chunk id, length)

    def encode(self) -> bytes:
        parts = [_HEADER.pack(MAGIC, VERSION, 0, len(self.chunks), self.size)]
        parts.extend(_ITEM.pack(oid, length) for oid, length in self.chunks)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> ChunkList:
        """Parse an encoded list; raise SchemaError on any inconsistency."""
        if len(data) < HEADER_SIZE:
            raise SchemaError("chunk list: truncated header")
        magic, version, _, count, size = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise SchemaError("chunk list: bad magic")
        if version != VERSION:
            raise SchemaError(f"chunk list: unknown version {version}")
        if len(data) != HEADER_SIZE + count * ITEM_SIZE:
            raise SchemaError(f"chunk list: {len(data)} bytes do not hold {count} chunks")
        chunks = tuple(_ITEM.iter_unpack(memoryview(data)[HEADER_SIZE:]))
        total = sum(length for _, length in chunks)
        if total != size:
            raise SchemaError(f"chunk list: chunk lengths sum to {total}, file size is {size}")
        if any(length == 0 for _, length in chunks):
            raise SchemaError("chunk list: empty chunk")
        return cls(size, tuple((bytes(oid), length) for oid, length in chunks))
