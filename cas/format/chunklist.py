"""Chunk lists: the ordered chunks of one file, stored as a content-addressed object.

A manifest names one chunk-list id per file instead of listing chunks, so manifests grow with the
number of files, not chunks. The list carries the file size and each chunk's length; decoding
refuses a list whose lengths do not sum to the size.

A decoded list keeps its encoding and builds Python objects only when asked: the lengths are
unpacked by ``struct`` in blocks (they are needed to check the list), chunk ids are sliced out
one at a time or a run at a time, and the ``chunks`` tuple is built on first use. A 10 GB file
has about 150,000 chunks; readers that look at a few of them (``diff``) do not pay for all.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any

from cas.errors import SchemaError

MAGIC = b"CASLIST\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")  # magic, version, reserved, count, total size
_ITEM = struct.Struct("<32sI")  # chunk id, raw length
HEADER_SIZE = _HEADER.size  # 32
ITEM_SIZE = _ITEM.size  # 36
_ID_SIZE = 32
#: Items whose lengths one ``struct`` call unpacks.
_BLOCK = 1024


#: The smallest ``min_size`` a chunker configuration may have (``ChunkerParams.validate``):
#: every chunk of a file but the last is at least this long, whichever store cut it.
SMALLEST_CHUNK = 64


def max_encoded_size(file_size: int) -> int:
    """The most bytes the chunk list of a ``file_size``-byte file can take: a record claiming
    more is refused before it is decompressed (a small record cannot make a reader allocate
    what its claim says)."""
    return HEADER_SIZE + ITEM_SIZE * (file_size // SMALLEST_CHUNK + 1)


@lru_cache(maxsize=4)
def _lengths_struct(count: int) -> struct.Struct:
    """Unpacks the lengths of ``count`` consecutive items (skipping their ids)."""
    return struct.Struct("<" + f"{_ID_SIZE}xI" * count)


def _unpack_lengths(data: bytes, count: int) -> tuple[int, ...]:
    out: list[int] = []
    full, rest = divmod(count, _BLOCK)
    block = _lengths_struct(_BLOCK) if full else None
    for k in range(full):
        out.extend(block.unpack_from(data, HEADER_SIZE + k * _BLOCK * ITEM_SIZE))  # type: ignore[union-attr]
    if rest:
        out.extend(_lengths_struct(rest).unpack_from(data, HEADER_SIZE + full * _BLOCK * ITEM_SIZE))
    return tuple(out)


class ChunkList:
    """The chunks of one file, in order. Immutable; equal lists have equal encodings.

    Attributes:
        size: the file size (the sum of the chunk lengths).
        chunks: ``(chunk id, length)`` per chunk (built on first use for a decoded list).
        lengths: the chunk lengths.
    """

    __slots__ = ("size", "_encoded", "_chunks", "_lengths")
    size: int
    _encoded: bytes | None
    _chunks: tuple[tuple[bytes, int], ...] | None
    _lengths: tuple[int, ...] | None

    def __init__(self, size: int, chunks: tuple[tuple[bytes, int], ...]) -> None:
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "_encoded", None)
        object.__setattr__(self, "_chunks", tuple(chunks))
        object.__setattr__(self, "_lengths", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ChunkList is immutable (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"ChunkList is immutable (cannot delete {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChunkList):
            return NotImplemented
        return self.encode() == other.encode()

    def __hash__(self) -> int:
        return hash(self.encode())

    def __repr__(self) -> str:
        return f"ChunkList(size={self.size}, chunks=<{len(self)} chunks>)"

    def __len__(self) -> int:
        if self._chunks is not None:
            return len(self._chunks)
        return (len(self._encoded) - HEADER_SIZE) // ITEM_SIZE  # type: ignore[arg-type]

    @property
    def chunks(self) -> tuple[tuple[bytes, int], ...]:
        if self._chunks is None:
            object.__setattr__(self, "_chunks", tuple(zip(self.ids(), self.lengths)))
        return self._chunks  # type: ignore[return-value]

    @property
    def lengths(self) -> tuple[int, ...]:
        if self._lengths is None:
            object.__setattr__(self, "_lengths", tuple(n for _, n in self.chunks))
        return self._lengths  # type: ignore[return-value]

    def id_at(self, i: int) -> bytes:
        """The id of chunk ``i`` (``0 <= i < len(self)``)."""
        if not 0 <= i < len(self):
            raise IndexError(f"chunk {i} of {len(self)}")
        if self._encoded is None:
            return self.chunks[i][0]
        at = HEADER_SIZE + i * ITEM_SIZE
        return self._encoded[at : at + _ID_SIZE]

    def ids(self, start: int = 0, stop: int | None = None) -> list[bytes]:
        """The ids of chunks ``start`` to ``stop`` (default: the end)."""
        start, stop, _ = slice(start, stop).indices(len(self))
        if self._encoded is None:
            return [oid for oid, _ in self.chunks[start:stop]]
        data = self._encoded
        return [data[at : at + _ID_SIZE]
                for at in range(HEADER_SIZE + start * ITEM_SIZE, HEADER_SIZE + stop * ITEM_SIZE,
                                ITEM_SIZE)]

    def run_key(self, start: int, stop: int) -> bytes:
        """A value that is equal for two runs of chunks (of this list or another) exactly when
        they hold the same chunks, with the same lengths, in the same order: the encoded items
        of chunks ``start`` to ``stop``."""
        start, stop, _ = slice(start, stop).indices(len(self))
        return self.encode()[HEADER_SIZE + start * ITEM_SIZE : HEADER_SIZE + stop * ITEM_SIZE]

    def encode(self) -> bytes:
        if self._encoded is None:
            chunks = self._chunks or ()
            parts = [_HEADER.pack(MAGIC, VERSION, 0, len(chunks), self.size)]
            parts.extend(_ITEM.pack(oid, length) for oid, length in chunks)
            object.__setattr__(self, "_encoded", b"".join(parts))
        return self._encoded  # type: ignore[return-value]

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> ChunkList:
        """Parse an encoded list.

        Raises:
            SchemaError: a bad magic, version or reserved field, a byte length other than the
                count's, an empty chunk, or lengths that do not sum to the file size.
        """
        if len(data) < HEADER_SIZE:
            raise SchemaError("chunk list: truncated header")
        magic, version, reserved, count, size = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise SchemaError("chunk list: bad magic")
        if version != VERSION:
            raise SchemaError(f"chunk list: unknown version {version}")
        if reserved:
            # One encoding per list: its id names the content, so equal lists have equal ids.
            raise SchemaError("chunk list: non-zero reserved field")
        if len(data) != HEADER_SIZE + count * ITEM_SIZE:
            raise SchemaError(f"chunk list: {len(data)} bytes do not hold {count} chunks")
        data = bytes(data)  # kept: a view would pin the buffer it was read into
        lengths = _unpack_lengths(data, count)
        total = sum(lengths)
        if total != size:
            raise SchemaError(f"chunk list: chunk lengths sum to {total}, file size is {size}")
        if 0 in lengths:
            raise SchemaError("chunk list: empty chunk")
        out = cls.__new__(cls)
        object.__setattr__(out, "size", size)
        object.__setattr__(out, "_encoded", data)
        object.__setattr__(out, "_chunks", None)
        object.__setattr__(out, "_lengths", lengths)
        return out
