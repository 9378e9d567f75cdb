"""Property-based fuzzing of the pack, pack index and multi-pack index parsers.

Each property feeds a parser arbitrary bytes, valid encodings with one byte flipped, cut at any
length or extended, and structured mutations (fields set to values no writer produces, with the
checksums recomputed so the deeper checks are reached). The parser must return a valid value or
raise a ``CasError`` with the code this file pins; any other exception is a bug.

Codes, per parser:

- pack header, entry header, index, midx: damaged or crafted bytes (truncation, magic, checksum,
  sizes, order, fanout, an unknown kind, codec or reserved value) are ``E_VERIFY``; a version
  field other than 1 is ``E_SCHEMA``. Binary record versions change only together with a
  feature name in ``config.json``, which refuses an unknown store with ``E_FORMAT`` before any
  of these is read; an index or midx is derived data that a writer rebuilds, and readers set
  aside one that raises either code, so neither may become ``E_FORMAT`` (which would refuse the
  whole store for one flipped byte).
- pack trailer: not a parser that fails: ``None`` for anything that is not a trailer.
- whole packs and indexes on disk (``scan_pack``, ``PackSet`` reads): never wrong bytes;
  damage to a pack is ``E_VERIFY``; damage to an index is ``E_VERIFY`` or a miss.

Round-trip properties pin the layouts: encode -> decode is the identity.
"""

from __future__ import annotations

import struct
from pathlib import Path

import blake3
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.compression import CODEC_RAW, CODEC_ZSTD, CODECS, Compressor
from cas.errors import CasError, NotFoundError, SchemaError, VerifyError
from cas.format import midx as mfmt
from cas.format import pack as fmt
from cas.ids import blake3_id
from cas.packs import PackSet, pack_path, scan_pack
from conftest import damaged

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=40, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ids = st.binary(min_size=32, max_size=32)
u32 = st.integers(0, 2**32 - 1)
kinds = st.sampled_from(sorted(fmt.KINDS))
codecs = st.sampled_from(sorted(CODECS))


def expect_code(exc: CasError, code: str) -> None:
    assert exc.code == code, f"{type(exc).__name__} {exc.code} ({exc}), wanted {code}"


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """``valid`` with one byte flipped, cut at any length, or extended."""
    return damaged(valid).map(lambda r: r[1])


# --------------------------------------------------------------------------- pack header


@FUZZ
@given(st.binary(max_size=40) | st.builds(lambda v, r: fmt.PACK_MAGIC + struct.pack("<II", v, r),
                                          u32, u32))
def test_pack_header_any_bytes(data: bytes) -> None:
    try:
        fmt.check_pack_header(data, "p")
    except SchemaError as exc:
        expect_code(exc, "E_SCHEMA")
        assert data[:8] == fmt.PACK_MAGIC and struct.unpack_from("<I", data, 8)[0] != 1
    except VerifyError as exc:
        expect_code(exc, "E_VERIFY")
        assert len(data) < fmt.PACK_HEADER_SIZE or data[:8] != fmt.PACK_MAGIC
    else:
        assert data[:12] == fmt.PACK_MAGIC + struct.pack("<I", fmt.PACK_VERSION)


def test_pack_header_layout() -> None:
    assert fmt.pack_header() == b"CASPACK\x00" + struct.pack("<II", 1, 0)
    fmt.check_pack_header(fmt.pack_header(), "p")


# --------------------------------------------------------------------------- entry header


def raw_entry_header(oid: bytes, kind: int, codec: int, reserved: int, raw: int,
                     stored: int) -> bytes:
    """An entry header with any field values and a correct check (what a crafted pack holds)."""
    head = struct.pack("<32sBBHII", oid, kind, codec, reserved, raw, stored)
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


@FUZZ
@given(ids, kinds, codecs, u32, u32, u32)
def test_entry_header_round_trip(oid, kind, codec, raw, stored, offset) -> None:
    head = fmt.encode_entry_header(oid, kind, codec, raw, stored)
    assert head == raw_entry_header(oid, kind, codec, 0, raw, stored)
    assert fmt.decode_entry_header(head, offset, "p") == fmt.Entry(oid, offset, stored, raw,
                                                                   kind, codec)
    entry = fmt.decode_entry_header(head + b"trailing bytes are not read", offset, "p")
    assert entry.data_offset == offset + 48


@FUZZ
@given(st.binary(max_size=60))
def test_entry_header_any_bytes(data: bytes) -> None:
    try:
        entry = fmt.decode_entry_header(data, 16, "p")
    except VerifyError as exc:
        expect_code(exc, "E_VERIFY")
    else:
        assert entry.kind in fmt.KINDS and entry.codec in CODECS


@FUZZ
@given(ids, st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF), u32, u32)
def test_entry_header_unknown_kind_codec_or_reserved_refused(oid, kind, codec, reserved, raw,
                                                              stored) -> None:
    """A header whose check is right but whose kind, codec or reserved field no writer
    produces is refused, never decoded into an entry a reader would guess at."""
    head = raw_entry_header(oid, kind, codec, reserved, raw, stored)
    known = kind in fmt.KINDS and codec in CODECS and reserved == 0
    try:
        fmt.decode_entry_header(head, 16, "p")
    except VerifyError as exc:
        expect_code(exc, "E_VERIFY")
        assert not known
        assert ("kind" in exc.message) or ("codec" in exc.message) or ("reserved" in exc.message)
    else:
        assert known


@FUZZ
@given(ids, kinds, codecs, u32, u32, st.data())
def test_entry_header_mutations_refused(oid, kind, codec, raw, stored, data) -> None:
    head = fmt.encode_entry_header(oid, kind, codec, raw, stored)
    bad = data.draw(mutated(head))
    try:
        entry = fmt.decode_entry_header(bad, 0, "p")
    except VerifyError as exc:
        expect_code(exc, "E_VERIFY")
    else:
        assert bad[:48] == head  # only an extension decodes, to the same entry
        assert entry == fmt.Entry(oid, 0, stored, raw, kind, codec)


# --------------------------------------------------------------------------- pack trailer


@FUZZ
@given(st.integers(0, 2**64 - 1), ids)
def test_pack_trailer_round_trip(count: int, pack_id: bytes) -> None:
    t = fmt.pack_trailer(count, pack_id)
    assert t == b"CASPEND\x00" + struct.pack("<Q", count) + pack_id
    assert fmt.decode_pack_trailer(t) == (count, pack_id)


@FUZZ
@given(st.binary(max_size=60) | st.builds(lambda b: fmt.PACK_END_MAGIC + b, st.binary(max_size=50)))
def test_pack_trailer_any_bytes(data: bytes) -> None:
    got = fmt.decode_pack_trailer(data)
    if got is None:
        assert len(data) != 48 or data[:8] != fmt.PACK_END_MAGIC
    else:
        count, pack_id = got
        assert len(data) == 48 and data[:8] == fmt.PACK_END_MAGIC
        assert fmt.pack_trailer(count, pack_id) == data


# --------------------------------------------------------------------------- pack index

entries_st = st.lists(
    st.builds(fmt.Entry, ids, u32, u32, u32, kinds, codecs), max_size=12,
    unique_by=lambda e: e.oid,
)


def reseal_index(buf: bytes | bytearray) -> bytes:
    """Recompute an index's trailing checksum, so that checks past it are reached."""
    body = bytes(buf[:-32])
    return body + blake3.blake3(body).digest()


def use_index(buf: bytes) -> None:
    """Open an index as a reader does, then look up and verify it, asserting the codes.

    Once the header check passes, lookups must stay inside the records and never raise; once
    ``verify_index`` passes, every record must be found by a lookup.
    """
    try:
        count = fmt.check_index_header(buf, "t", len(buf))
    except SchemaError as exc:
        expect_code(exc, "E_SCHEMA")
        assert buf[:8] == fmt.IDX_MAGIC and struct.unpack_from("<I", buf, 8)[0] != 1
        return
    except VerifyError as exc:
        expect_code(exc, "E_VERIFY")
        return
    records = list(fmt.iter_index(buf))
    assert len(records) == count
    for b in range(256):
        lo, hi = fmt.index_fanout(buf, b)
        assert 0 <= lo <= hi <= count
    fmt.index_pack_id(buf, count)
    try:
        fmt.verify_index(buf, "t")
    except SchemaError as exc:  # pragma: no cover - the header check would have said so
        raise AssertionError(f"verify_index: {exc}") from None
    except VerifyError as exc:
        expect_code(exc, "E_VERIFY")
        return
    for i, e in enumerate(records):
        lo, hi = fmt.index_fanout(buf, e.oid[0])
        assert lo <= i < hi
        assert fmt.index_record(buf, i) == e
        assert e.kind in fmt.KINDS and e.codec in CODECS


@FUZZ
@given(entries_st, ids)
def test_index_round_trip(entries: list[fmt.Entry], pack_id: bytes) -> None:
    buf = fmt.encode_index(entries, pack_id)
    assert len(buf) == fmt.index_size(len(entries))
    assert fmt.check_index_header(buf, "t", len(buf)) == len(entries)
    fmt.verify_index(buf, "t")
    assert list(fmt.iter_index(buf)) == sorted(entries, key=lambda e: e.oid)
    assert fmt.index_pack_id(buf, len(entries)) == pack_id
    use_index(buf)


@FUZZ
@given(st.binary(max_size=1300)
       | st.builds(lambda rest: fmt.IDX_MAGIC + rest, st.binary(min_size=1096, max_size=1300)))
def test_index_any_bytes(buf: bytes) -> None:
    use_index(buf)


@FUZZ
@given(entries_st, ids, st.data())
def test_index_mutations(entries: list[fmt.Entry], pack_id: bytes, data) -> None:
    valid = fmt.encode_index(entries, pack_id)
    bad = data.draw(mutated(valid))
    use_index(bad)
    if bad != valid:
        with pytest.raises((VerifyError, SchemaError)):  # the checksum or size sees any change
            fmt.verify_index(bad, "t")


@FUZZ
@given(entries_st.filter(bool), ids, st.data())
def test_index_structured_mutations_with_valid_checksum(entries, pack_id, data) -> None:
    """Crafted indexes that carry a correct checksum: fields set to values no writer produces."""
    buf = bytearray(fmt.encode_index(entries, pack_id))
    n = len(entries)
    what = data.draw(st.sampled_from(["fanout", "count", "version", "kind", "codec", "reserved",
                                      "order", "id"]))
    i = data.draw(st.integers(0, n - 1))
    rec = fmt.IDX_RECORDS_START + i * fmt.IDX_RECORD_SIZE
    if what == "fanout":
        b = data.draw(st.integers(0, 255))
        struct.pack_into("<I", buf, fmt.IDX_HEADER_SIZE + 4 * b, data.draw(u32))
    elif what == "count":
        struct.pack_into("<I", buf, 12, data.draw(u32))
    elif what == "version":
        struct.pack_into("<I", buf, 8, data.draw(u32.filter(lambda v: v != 1)))
    elif what == "kind":
        buf[rec + 44] = data.draw(st.integers(0, 255))
    elif what == "codec":
        buf[rec + 45] = data.draw(st.integers(0, 255))
    elif what == "reserved":
        struct.pack_into("<H", buf, rec + 46, data.draw(st.integers(1, 0xFFFF)))
    elif what == "order" and n > 1:
        j = (i + 1) % n
        other = fmt.IDX_RECORDS_START + j * fmt.IDX_RECORD_SIZE
        buf[rec : rec + 48], buf[other : other + 48] = buf[other : other + 48], buf[rec : rec + 48]
    else:
        buf[rec + data.draw(st.integers(0, 31))] ^= data.draw(st.integers(1, 255))
    use_index(reseal_index(buf))


# --------------------------------------------------------------------------- multi-pack index

pairs_st = st.lists(st.tuples(ids, st.integers(0, 4)), max_size=12, unique_by=lambda t: t[0])


def midx_of(pairs: list[tuple[bytes, int]], npacks: int = 5) -> tuple[bytes, list[bytes]]:
    packs = sorted({blake3_id(bytes([k])) for k in range(npacks)})
    return mfmt.encode(sorted((oid, packs[k % npacks]) for oid, k in pairs), packs), packs


def reseal_midx(buf: bytes | bytearray) -> bytes:
    body = bytes(buf[:-32])
    return body + blake3.blake3(body).digest()


def use_midx(buf: bytes, probes: list[bytes]) -> None:
    """Open a midx as a reader does, look up and merge from it, verify it; assert the codes."""
    for view in (buf, memoryview(buf)):
        try:
            m = mfmt.Midx(view, "m")
        except SchemaError as exc:
            expect_code(exc, "E_SCHEMA")
            assert buf[:8] == mfmt.MAGIC and struct.unpack_from("<I", buf, 8)[0] != 1
            return
        except VerifyError as exc:
            expect_code(exc, "E_VERIFY")
            return
        for oid in probes:
            got = m.lookup(oid)
            assert got is None or got in m.pack_ids
        try:
            pairs = list(m.pairs())
        except VerifyError as exc:
            expect_code(exc, "E_VERIFY")
            pairs = None
        try:
            m.verify()
        except VerifyError as exc:
            expect_code(exc, "E_VERIFY")
            continue
        assert pairs is not None  # a midx that verifies can be merged
        for oid, pack in pairs:
            assert m.lookup(oid) == pack


@FUZZ
@given(pairs_st)
def test_midx_round_trip(pairs) -> None:
    buf, packs = midx_of(pairs)
    m = mfmt.Midx(buf, "m")
    m.verify()
    want = sorted((oid, packs[k % 5]) for oid, k in pairs)
    assert list(m.pairs()) == want
    assert len(buf) == mfmt.size_for(len(packs), len(pairs))
    assert buf[:8] == b"CASMIDX\x00"
    for oid, pack in want:
        assert m.lookup(oid) == pack
        assert mfmt.Midx(memoryview(buf), "m").lookup(oid) == pack
    assert m.lookup(b"\xff" * 32) in (None, dict(want).get(b"\xff" * 32))


@FUZZ
@given(st.binary(max_size=2200)
       | st.builds(lambda rest: mfmt.MAGIC + rest, st.binary(min_size=2100, max_size=2300)),
       st.lists(ids, max_size=3))
def test_midx_any_bytes(buf: bytes, probes: list[bytes]) -> None:
    use_midx(buf, probes)


@FUZZ
@given(pairs_st, st.data())
def test_midx_mutations(pairs, data) -> None:
    valid, _ = midx_of(pairs)
    bad = data.draw(mutated(valid))
    use_midx(bad, [oid for oid, _ in pairs])
    if bad != valid:
        with pytest.raises(CasError):
            mfmt.Midx(bad, "m").verify()


@FUZZ
@given(pairs_st.filter(bool), st.data())
def test_midx_structured_mutations_with_valid_checksum(pairs, data) -> None:
    buf, packs = midx_of(pairs)
    buf = bytearray(buf)
    n, p = len(pairs), len(packs)
    fanout_at = mfmt.HEADER_SIZE + 32 * p
    records_at = fanout_at + mfmt.FANOUT_SIZE
    i = data.draw(st.integers(0, n - 1))
    rec = records_at + i * mfmt.RECORD_SIZE
    what = data.draw(st.sampled_from(["pack number", "fanout", "pack ids", "order", "version"]))
    if what == "pack number":
        struct.pack_into("<I", buf, rec + 32, data.draw(u32))
    elif what == "fanout":
        b = data.draw(st.integers(0, 255))
        struct.pack_into("<Q", buf, fanout_at + 8 * b, data.draw(st.integers(0, 2**64 - 1)))
    elif what == "pack ids":
        k = data.draw(st.integers(0, p - 1))
        buf[mfmt.HEADER_SIZE + 32 * k : mfmt.HEADER_SIZE + 32 * (k + 1)] = data.draw(ids)
    elif what == "order" and n > 1:
        j = (i + 1) % n
        other = records_at + j * mfmt.RECORD_SIZE
        buf[rec : rec + 36], buf[other : other + 36] = buf[other : other + 36], buf[rec : rec + 36]
    else:
        struct.pack_into("<I", buf, 8, data.draw(u32))
    use_midx(reseal_midx(buf), [oid for oid, _ in pairs])


def test_midx_record_naming_a_pack_beyond_the_list_is_verify_error() -> None:
    """A midx merge (run after every write command) used to raise IndexError here."""
    buf, _ = midx_of([(b"\x01" * 32, 0), (b"\x02" * 32, 1)], npacks=2)
    buf = bytearray(buf)
    struct.pack_into("<I", buf, mfmt.HEADER_SIZE + 64 + mfmt.FANOUT_SIZE + 32, 7)
    m = mfmt.Midx(reseal_midx(buf), "m")
    with pytest.raises(VerifyError, match="names pack 7 of 2"):
        list(m.pairs())
    with pytest.raises(VerifyError, match="names pack 7 of 2"):
        m.verify()
    assert m.lookup(b"\x01" * 32) is None  # a lookup ignores it


# --------------------------------------------------------------------------- whole packs on disk


def build_pack(objects: list[bytes]) -> tuple[bytes, list[fmt.Entry], bytes]:
    """Pack bytes (header, entries, trailer) for ``objects``, its entries and its id."""
    comp = Compressor()
    parts = [fmt.pack_header()]
    entries = []
    hasher = fmt.PackIdHasher()
    offset = fmt.PACK_HEADER_SIZE
    for i, data in enumerate(objects):
        oid = blake3_id(data)
        codec, stored = comp.compress(data)
        stored = bytes(stored)
        kind = fmt.KIND_CHUNK if i % 3 else fmt.KIND_CHUNK_LIST
        parts.append(fmt.encode_entry_header(oid, kind, codec, len(data), len(stored)))
        parts.append(stored)
        entries.append(fmt.Entry(oid, offset, len(stored), len(data), kind, codec))
        hasher.add(oid)
        offset += fmt.ENTRY_HEADER_SIZE + len(stored)
    pack_id = hasher.digest()
    parts.append(fmt.pack_trailer(len(entries), pack_id))
    return b"".join(parts), entries, pack_id


objects_st = st.lists(
    st.one_of(st.binary(min_size=1, max_size=300),
              st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4),
                        st.integers(50, 400))),
    min_size=1, max_size=4, unique=True,
)


@FEW
@given(objects_st)
def test_scan_pack_round_trip(tmp_path_factory, objects) -> None:
    data, entries, pack_id = build_pack(objects)
    path = tmp_path_factory.mktemp("scan") / "p.pack"
    path.write_bytes(data)
    assert scan_pack(path) == (entries, pack_id)
    assert {e.codec for e in entries} <= {CODEC_RAW, CODEC_ZSTD}


@FUZZ
@given(objects_st, st.data())
def test_scan_pack_mutations(tmp_path_factory, objects, data) -> None:
    """Scanning a damaged pack (to rebuild its index) fails with E_VERIFY, or with E_SCHEMA for
    a version field; a scan that passes gives entries that pass the trailer's check."""
    valid, _, _ = build_pack(objects)
    bad = data.draw(mutated(valid) | st.binary(max_size=200))
    path = tmp_path_factory.mktemp("scan") / "p.pack"
    path.write_bytes(bad)
    try:
        entries, pack_id = scan_pack(path)
    except SchemaError as exc:
        expect_code(exc, "E_SCHEMA")
        assert bad[:8] == fmt.PACK_MAGIC and bad[8:12] != struct.pack("<I", 1)
    except VerifyError as exc:
        expect_code(exc, "E_VERIFY")
    else:
        hasher = fmt.PackIdHasher()
        for e in entries:
            hasher.add(e.oid)
        assert hasher.digest() == pack_id


def install_pack(packs_dir: Path, data: bytes, index: bytes, pack_id: bytes) -> None:
    for p in packs_dir.iterdir():
        p.unlink()
    pack_path(packs_dir, pack_id.hex(), "pack").write_bytes(data)
    pack_path(packs_dir, pack_id.hex(), "idx").write_bytes(index)


@FUZZ
@given(objects_st, st.data())
def test_reads_from_a_damaged_pack_or_index(tmp_path_factory, objects, data) -> None:
    """Reading every object of a pack whose pack or index bytes were flipped, cut or extended:
    each read returns the original bytes or raises; damage to the pack is E_VERIFY, damage to
    the index E_VERIFY or a miss (the index is set aside, or the id is not found there)."""
    valid, entries, pack_id = build_pack(objects)
    index = fmt.encode_index(entries, pack_id)
    target = data.draw(st.sampled_from(["pack", "index"]))
    if target == "pack":
        data_bytes, index_bytes = data.draw(mutated(valid)), index
    else:
        data_bytes, index_bytes = valid, data.draw(mutated(index))
    packs_dir = tmp_path_factory.mktemp("packs")
    install_pack(packs_dir, data_bytes, index_bytes, pack_id)
    ps = PackSet(packs_dir)
    try:
        for obj in objects:
            try:
                got = ps.read(blake3_id(obj))
            except VerifyError as exc:
                expect_code(exc, "E_VERIFY")
            except NotFoundError as exc:
                expect_code(exc, "E_NOT_FOUND")
                assert target == "index"
            else:
                assert bytes(got) == obj
    finally:
        ps.close()


def test_reads_refuse_an_entry_of_unknown_kind(tmp_path: Path) -> None:
    """An entry header with a correct check but a kind no writer produces (and an index that
    agrees) is refused when read, and a scan refuses the pack."""
    obj = b"weights" * 10
    oid = blake3_id(obj)
    head = raw_entry_header(oid, 9, CODEC_RAW, 0, len(obj), len(obj))
    hasher = fmt.PackIdHasher()
    hasher.add(oid)
    pack_id = hasher.digest()
    data = fmt.pack_header() + head + obj + fmt.pack_trailer(1, pack_id)
    entry = fmt.Entry(oid, 16, len(obj), len(obj), 9, CODEC_RAW)
    install_pack(tmp_path, data, fmt.encode_index([entry], pack_id), pack_id)
    ps = PackSet(tmp_path)
    with pytest.raises(VerifyError, match="unknown kind 9"):
        ps.read(oid)
    ps.close()
    with pytest.raises(VerifyError, match="unknown kind 9"):
        scan_pack(pack_path(tmp_path, pack_id.hex(), "pack"))
    with pytest.raises(VerifyError, match="unknown kind 9"):
        fmt.verify_index(fmt.encode_index([entry], pack_id), "t")
