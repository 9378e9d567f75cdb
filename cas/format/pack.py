"""Pack files and pack indexes: byte layouts, encode and decode.

A pack is a header, a run of self-describing entries (each names its object id, kind, codec and
lengths, with a checksum over the entry header) and a trailer naming the pack. Because entries
describe themselves, a lost or corrupt index can always be rebuilt by scanning the pack.

An index is a sorted table of fixed-size records with a 256-entry fanout, so a lookup reads a few
records through mmap and never loads the whole table. Its trailer repeats the pack id and carries
the BLAKE3 of the index bytes.

A pack id is the BLAKE3 of the concatenated ids of its entries, in pack order: it names the
pack's content and is cheap to compute while writing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import blake3
import xxhash

from cas.compression import CODECS
from cas.errors import SchemaError, VerifyError

PACK_MAGIC = b"CASPACK\x00"
PACK_END_MAGIC = b"CASPEND\x00"
IDX_MAGIC = b"CASIDX\x00\x00"
PACK_VERSION = 1
IDX_VERSION = 1

#: Largest pack offset the index can hold (offsets are u32).
MAX_PACK_BYTES = (1 << 32) - 1
#: Largest single object (lengths are u32).
MAX_OBJECT_BYTES = (1 << 32) - 1

KIND_CHUNK = 1
KIND_CHUNK_LIST = 2
KINDS = {KIND_CHUNK: "chunk", KIND_CHUNK_LIST: "chunk list"}

_PACK_HEADER = struct.Struct("<8sII")  # magic, version, reserved
_ENTRY_HEADER = struct.Struct("<32sBBHII")  # id, kind, codec, reserved, raw_len, stored_len
_ENTRY_CHECK = struct.Struct("<I")  # xxh32 of the 44 bytes above
_PACK_TRAILER = struct.Struct("<8sQ32s")  # magic, entry count, pack id

PACK_HEADER_SIZE = _PACK_HEADER.size  # 16
ENTRY_HEADER_SIZE = _ENTRY_HEADER.size + _ENTRY_CHECK.size  # 48
PACK_TRAILER_SIZE = _PACK_TRAILER.size  # 48

_IDX_HEADER = struct.Struct("<8sII")  # magic, version, count
_IDX_FANOUT = struct.Struct("<256I")
_IDX_RECORD = struct.Struct("<32sIIIBBH")  # id, offset, stored_len, raw_len, kind, codec, reserved
_IDX_TRAILER = struct.Struct("<32s32s")  # pack id, blake3 of everything before (pack id included)

IDX_HEADER_SIZE = _IDX_HEADER.size  # 16
IDX_FANOUT_SIZE = _IDX_FANOUT.size  # 1024
IDX_RECORD_SIZE = _IDX_RECORD.size  # 48
IDX_TRAILER_SIZE = _IDX_TRAILER.size  # 64
IDX_RECORDS_START = IDX_HEADER_SIZE + IDX_FANOUT_SIZE


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one object lives in a pack and how it is stored."""

    oid: bytes
    offset: int  # offset of the entry header in the pack
    stored_len: int
    raw_len: int
    kind: int
    codec: int

    @property
    def data_offset(self) -> int:
        return self.offset + ENTRY_HEADER_SIZE


def pack_header() -> bytes:
    return _PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, 0)


def check_pack_header(data: bytes, name: str) -> None:
    """Raise unless ``data`` (the first 16 bytes of a pack) is a header this build reads."""
    if len(data) < PACK_HEADER_SIZE:
        raise VerifyError(f"pack {name}: truncated header")
    magic, version, _ = _PACK_HEADER.unpack_from(data)
    if magic != PACK_MAGIC:
        raise VerifyError(f"pack {name}: not a cas pack (bad magic)")
    if version != PACK_VERSION:
        raise SchemaError(f"pack {name}: unknown pack version {version}")


def encode_entry_header(oid: bytes, kind: int, codec: int, raw_len: int, stored_len: int) -> bytes:
    head = _ENTRY_HEADER.pack(oid, kind, codec, 0, raw_len, stored_len)
    return head + _ENTRY_CHECK.pack(xxhash.xxh32_intdigest(head))


def decode_entry_header(data: bytes | memoryview, offset: int, name: str) -> Entry:
    """Decode the 48-byte header of the entry at ``offset``.

    The checksum, then the kind, codec and reserved field are checked: a kind or codec this
    build does not know is refused rather than guessed at (a new one comes with a feature name
    in the store's config, which a reader that lacks it refuses first), so in a store this
    build opens it can only be damage or a crafted pack.

    Raises:
        VerifyError: truncated, damaged (checksum), or an unknown kind, codec or reserved value.
    """
    if len(data) < ENTRY_HEADER_SIZE:
        raise VerifyError(f"pack {name}: truncated entry header at offset {offset}")
    head = bytes(data[: _ENTRY_HEADER.size])
    (check,) = _ENTRY_CHECK.unpack_from(data, _ENTRY_HEADER.size)
    if xxhash.xxh32_intdigest(head) != check:
        raise VerifyError(f"pack {name}: damaged entry header at offset {offset}")
    oid, kind, codec, reserved, raw_len, stored_len = _ENTRY_HEADER.unpack(head)
    _check_kind_codec(kind, codec, reserved, f"pack {name}: entry at offset {offset}")
    return Entry(oid, offset, stored_len, raw_len, kind, codec)


def _check_kind_codec(kind: int, codec: int, reserved: int, where: str) -> None:
    """Refuse a kind, codec or reserved value that no writer of this format produces."""
    if kind not in KINDS:
        raise VerifyError(f"{where} has unknown kind {kind}")
    if codec not in CODECS:
        raise VerifyError(f"{where} has unknown codec {codec}")
    if reserved:
        raise VerifyError(f"{where} has a non-zero reserved field")


def pack_trailer(count: int, pack_id: bytes) -> bytes:
    return _PACK_TRAILER.pack(PACK_END_MAGIC, count, pack_id)


def decode_pack_trailer(data: bytes) -> tuple[int, bytes] | None:
    """Return ``(entry_count, pack_id)``, or None if ``data`` is not a pack trailer."""
    if len(data) != PACK_TRAILER_SIZE:
        return None
    magic, count, pack_id = _PACK_TRAILER.unpack(data)
    if magic != PACK_END_MAGIC:
        return None
    return count, pack_id


class PackIdHasher:
    """Accumulates entry ids, in pack order, into the pack id."""

    def __init__(self) -> None:
        self._h = blake3.blake3()

    def add(self, oid: bytes) -> None:
        self._h.update(oid)

    def digest(self) -> bytes:
        return self._h.digest()


def encode_index(entries: Iterable[Entry], pack_id: bytes) -> bytes:
    """Encode the index of a pack. Entries may come in any order; duplicates keep the first."""
    by_id: dict[bytes, Entry] = {}
    for e in entries:
        by_id.setdefault(e.oid, e)
    ordered = sorted(by_id.values(), key=lambda e: e.oid)
    fanout = [0] * 256
    for e in ordered:
        fanout[e.oid[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    parts = [_IDX_HEADER.pack(IDX_MAGIC, IDX_VERSION, len(ordered)), _IDX_FANOUT.pack(*fanout)]
    parts.extend(
        _IDX_RECORD.pack(e.oid, e.offset, e.stored_len, e.raw_len, e.kind, e.codec, 0)
        for e in ordered
    )
    body = b"".join(parts)
    return body + _IDX_TRAILER.pack(pack_id, blake3.blake3(body + pack_id).digest())


def index_size(count: int) -> int:
    return IDX_RECORDS_START + count * IDX_RECORD_SIZE + IDX_TRAILER_SIZE


def check_index_header(buf: bytes | memoryview, name: str, file_size: int) -> int:
    """Validate an index's header, size and fanout; return its record count.

    This is the cheap check done at open: magic, version, a file size that matches the count,
    and a fanout that never decreases and ends at the count (so a lookup never bisects outside
    the records). The checksum and the records are checked by :func:`verify_index`.

    Raises:
        VerifyError: truncated, bad magic, a size or fanout that does not match the count.
        SchemaError: an unknown index version.
    """
    count = _check_index_size(buf, name, file_size)
    fanout = _IDX_FANOUT.unpack_from(buf, IDX_HEADER_SIZE)
    if fanout[-1] != count or list(fanout) != sorted(fanout):
        raise VerifyError(f"index {name}: damaged fanout table")
    return count


def _check_index_size(buf: bytes | memoryview, name: str, file_size: int) -> int:
    """Magic, version and a size that matches the record count; return the count."""
    if file_size < IDX_RECORDS_START + IDX_TRAILER_SIZE or len(buf) < file_size:
        raise VerifyError(f"index {name}: truncated")
    magic, version, count = _IDX_HEADER.unpack_from(buf)
    if magic != IDX_MAGIC:
        raise VerifyError(f"index {name}: not a cas pack index (bad magic)")
    if version != IDX_VERSION:
        raise SchemaError(f"index {name}: unknown index version {version}")
    if file_size != index_size(count):
        raise VerifyError(f"index {name}: size {file_size} does not match {count} records")
    return count


def index_fanout(buf: bytes | memoryview, first_byte: int) -> tuple[int, int]:
    """Return the record range ``[lo, hi)`` whose ids start with ``first_byte``."""
    hi = struct.unpack_from("<I", buf, IDX_HEADER_SIZE + 4 * first_byte)[0]
    if first_byte == 0:
        return 0, hi
    lo = struct.unpack_from("<I", buf, IDX_HEADER_SIZE + 4 * (first_byte - 1))[0]
    return lo, hi


def index_record(buf: bytes | memoryview, i: int) -> Entry:
    oid, offset, stored_len, raw_len, kind, codec, _ = _IDX_RECORD.unpack_from(
        buf, IDX_RECORDS_START + i * IDX_RECORD_SIZE
    )
    return Entry(bytes(oid), offset, stored_len, raw_len, kind, codec)


def index_record_id(buf: bytes | memoryview, i: int) -> bytes:
    start = IDX_RECORDS_START + i * IDX_RECORD_SIZE
    return bytes(buf[start : start + 32])


def index_pack_id(buf: bytes | memoryview, count: int) -> bytes:
    start = IDX_RECORDS_START + count * IDX_RECORD_SIZE
    return bytes(buf[start : start + 32])


def verify_index(buf: bytes | memoryview, name: str) -> None:
    """Check an index's checksum and records; raise VerifyError if anything is wrong.

    Beyond :func:`check_index_header`: the BLAKE3 trailer, ids strictly ascending, a fanout
    that counts the records' first bytes, and in every record a known kind and codec and a zero
    reserved field.
    """
    count = _check_index_size(buf, name, len(buf))
    body_end = IDX_RECORDS_START + count * IDX_RECORD_SIZE + 32
    want = bytes(buf[body_end : body_end + 32])
    if blake3.blake3(buf[:body_end]).digest() != want:
        raise VerifyError(f"index {name}: checksum mismatch")
    per_byte = [0] * 256
    prev = b""
    for i, (oid, _, _, _, kind, codec, reserved) in enumerate(index_records(buf, count)):
        if oid <= prev:
            raise VerifyError(f"index {name}: records out of order at {i}")
        prev = oid
        per_byte[oid[0]] += 1
        _check_kind_codec(kind, codec, reserved, f"index {name}: record {i}")
    total = 0
    fanout = _IDX_FANOUT.unpack_from(buf, IDX_HEADER_SIZE)
    for b in range(256):
        total += per_byte[b]
        if fanout[b] != total:
            raise VerifyError(f"index {name}: fanout does not match the records")


def index_records(buf: bytes | memoryview, count: int) -> Iterator[tuple]:
    """Every record as a tuple ``(id, offset, stored_len, raw_len, kind, codec, reserved)``,
    unpacked a block at a time (memory stays small)."""
    block = IDX_RECORD_SIZE * 65536
    end = IDX_RECORDS_START + count * IDX_RECORD_SIZE
    for at in range(IDX_RECORDS_START, end, block):
        yield from _IDX_RECORD.iter_unpack(bytes(buf[at : min(at + block, end)]))


def iter_index(buf: bytes | memoryview) -> Iterator[Entry]:
    count = _IDX_HEADER.unpack_from(buf)[2]
    for i in range(count):
        yield index_record(buf, i)
