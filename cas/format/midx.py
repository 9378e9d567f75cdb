"""Multi-pack indexes: one sorted table of object ids over many packs.

With thousands of packs, probing every pack index for every chunk would make a lookup cost
thousands of binary searches. A multi-pack index (midx) maps each id to the pack that holds it,
so a lookup is one binary search per midx (there are only a few: they are merged
geometrically) plus one in the pack's own index for the entry details.

A midx is derived data: deleting one is always safe (lookups fall back to the pack indexes),
and one that is damaged or names a pack that is gone is ignored.

Layout (little-endian)::

    header   8 magic "CASMIDX\\0" | u32 version | u32 pack count P | u64 record count N
    packs    P x 32-byte pack id, sorted
    fanout   256 x u64: number of records whose id's first byte is <= i
    records  N x (32-byte id | u32 pack number), sorted by id, no duplicates
    trailer  32-byte BLAKE3 of everything before it

The file is named ``midx-<BLAKE3 of its body>.midx``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import blake3

from cas.errors import SchemaError, VerifyError

MAGIC = b"CASMIDX\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIQ")
_FANOUT = struct.Struct("<256Q")
_RECORD = struct.Struct("<32sI")
HEADER_SIZE = _HEADER.size  # 24
FANOUT_SIZE = _FANOUT.size  # 2048
RECORD_SIZE = _RECORD.size  # 36
TRAILER_SIZE = 32


def size_for(packs: int, records: int) -> int:
    return HEADER_SIZE + 32 * packs + FANOUT_SIZE + RECORD_SIZE * records + TRAILER_SIZE


class MidxWriter:
    """Streams sorted ``(id, pack id)`` pairs into midx bytes, chunk by chunk.

    Feed pairs in ascending id order with :meth:`add` (a repeated id keeps its first pack),
    then call :meth:`finish` to get the header+packs+fanout prefix and the hasher state.
    Because the fanout precedes the records, the caller writes records to a temp file first
    and the prefix is assembled at the end (see ``cas.packs.write_midx``).
    """

    def __init__(self, pack_ids: list[bytes]) -> None:
        self.pack_ids = sorted(pack_ids)
        self._number = {p: i for i, p in enumerate(self.pack_ids)}
        self.fanout = [0] * 256
        self.count = 0
        self._last = b""

    def record(self, oid: bytes, pack_id: bytes) -> bytes | None:
        """Return the 36 record bytes for ``oid``, or None for a repeated id."""
        if oid == self._last:
            return None
        if oid < self._last:
            raise SchemaError("midx records must come in ascending id order")
        self._last = oid
        self.fanout[oid[0]] += 1
        self.count += 1
        return _RECORD.pack(oid, self._number[pack_id])

    def prefix(self) -> bytes:
        cumulative = []
        total = 0
        for n in self.fanout:
            total += n
            cumulative.append(total)
        return (_HEADER.pack(MAGIC, VERSION, len(self.pack_ids), self.count)
                + b"".join(self.pack_ids) + _FANOUT.pack(*cumulative))


class Midx:
    """A midx opened over a buffer (an mmap): cheap header checks, lookups by bisection."""

    def __init__(self, buf: bytes | memoryview, name: str) -> None:
        if len(buf) < HEADER_SIZE:
            raise VerifyError(f"midx {name}: truncated")
        magic, version, packs, count = _HEADER.unpack_from(buf)
        if magic != MAGIC:
            raise VerifyError(f"midx {name}: bad magic")
        if version != VERSION:
            raise SchemaError(f"midx {name}: unknown version {version}")
        if len(buf) != size_for(packs, count):
            raise VerifyError(f"midx {name}: size does not match {packs} packs, {count} records")
        self.buf = buf
        self.name = name
        self.count = count
        self.pack_ids = [bytes(buf[HEADER_SIZE + 32 * i : HEADER_SIZE + 32 * (i + 1)])
                         for i in range(packs)]
        if any(a >= b for a, b in zip(self.pack_ids, self.pack_ids[1:])):
            raise VerifyError(f"midx {name}: pack ids are not sorted and unique")
        self._fanout_at = HEADER_SIZE + 32 * packs
        self._records_at = self._fanout_at + FANOUT_SIZE
        # A lookup bisects the range the fanout gives: checked here so it never leaves the
        # records, whatever the bytes say.
        fanout = _FANOUT.unpack_from(buf, self._fanout_at)
        if fanout[-1] != count or list(fanout) != sorted(fanout):
            raise VerifyError(f"midx {name}: damaged fanout table")

    def _range(self, first: int) -> tuple[int, int]:
        hi = struct.unpack_from("<Q", self.buf, self._fanout_at + 8 * first)[0]
        if first == 0:
            return 0, hi
        lo = struct.unpack_from("<Q", self.buf, self._fanout_at + 8 * (first - 1))[0]
        return lo, hi

    def _id(self, i: int) -> bytes:
        at = self._records_at + RECORD_SIZE * i
        return bytes(self.buf[at : at + 32])

    def lookup(self, oid: bytes) -> bytes | None:
        """The id of the pack holding ``oid`` according to this midx, or None."""
        lo, hi = self._range(oid[0])
        while lo < hi:
            mid = (lo + hi) // 2
            if self._id(mid) < oid:
                lo = mid + 1
            else:
                hi = mid
        if lo < self.count and self._id(lo) == oid:
            (number,) = struct.unpack_from("<I", self.buf, self._records_at + RECORD_SIZE * lo + 32)
            if number < len(self.pack_ids):
                return self.pack_ids[number]
        return None

    def _records(self) -> Iterator[tuple[bytes, int]]:
        """Every ``(id, pack number)``, unpacked a block at a time (memory stays small)."""
        block = RECORD_SIZE * 65536
        end = self._records_at + RECORD_SIZE * self.count
        for at in range(self._records_at, end, block):
            yield from _RECORD.iter_unpack(bytes(self.buf[at : min(at + block, end)]))

    def pairs(self) -> Iterator[tuple[bytes, bytes]]:
        """All ``(id, pack id)`` in id order (for merging midxs).

        Raises:
            VerifyError: a record names a pack number beyond the pack list.
        """
        for i in range(self.count):
            oid, number = _RECORD.unpack_from(self.buf, self._records_at + RECORD_SIZE * i)
            if number >= len(self.pack_ids):
                raise VerifyError(f"midx {self.name}: record {i} names pack {number} of "
                                  f"{len(self.pack_ids)}")
            yield bytes(oid), self.pack_ids[number]

    def verify(self) -> None:
        """Check the trailer checksum, the record order, every record's pack number and the
        fanout against the records; raise VerifyError if anything is wrong."""
        body = len(self.buf) - TRAILER_SIZE
        if blake3.blake3(self.buf[:body]).digest() != bytes(self.buf[body:]):
            raise VerifyError(f"midx {self.name}: checksum mismatch")
        per_byte = [0] * 256
        prev = b""
        for i, (oid, number) in enumerate(self._records()):
            if oid <= prev:
                raise VerifyError(f"midx {self.name}: records out of order at {i}")
            if number >= len(self.pack_ids):
                raise VerifyError(f"midx {self.name}: record {i} names pack {number} of "
                                  f"{len(self.pack_ids)}")
            prev = oid
            per_byte[oid[0]] += 1
        total = 0
        fanout = _FANOUT.unpack_from(self.buf, self._fanout_at)
        for b in range(256):
            total += per_byte[b]
            if fanout[b] != total:
                raise VerifyError(f"midx {self.name}: fanout does not match the records")


def encode(pairs: Iterable[tuple[bytes, bytes]], pack_ids: list[bytes]) -> bytes:
    """Encode a whole midx in memory (small midxs and tests)."""
    w = MidxWriter(pack_ids)
    records = [r for oid, p in pairs if (r := w.record(oid, p)) is not None]
    body = w.prefix() + b"".join(records)
    return body + blake3.blake3(body).digest()
