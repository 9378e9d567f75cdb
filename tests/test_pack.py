"""Tests for pack files and indexes: cas.format.pack (layouts) and cas.packs (I/O)."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.compression import CODEC_RAW, CODEC_ZSTD, CODECS, Compressor
from cas.errors import NotFoundError, SchemaError, VerifyError
from cas.format import pack as fmt
from cas.ids import blake3_id
from cas.packs import PackSet, pack_path, scan_pack
from cas.packwriter import PackWriter
from cas.storage.local import LocalBackend


def test_layout_sizes():
    assert fmt.PACK_HEADER_SIZE == 16
    assert fmt.ENTRY_HEADER_SIZE == 48
    assert fmt.PACK_TRAILER_SIZE == 48
    assert fmt.IDX_HEADER_SIZE == 16
    assert fmt.IDX_FANOUT_SIZE == 1024
    assert fmt.IDX_RECORD_SIZE == 48
    assert fmt.IDX_TRAILER_SIZE == 64
    assert fmt.index_size(0) == 16 + 1024 + 64
    assert fmt.index_size(3) == 16 + 1024 + 3 * 48 + 64


# --------------------------------------------------------------------------- helpers


def make_objects(n: int, size: int = 20000, seed: int = 0) -> list[bytes]:
    """Alternate incompressible and compressible payloads so both codecs are exercised."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(rng.randbytes(size + i))
        else:
            out.append((b"layer.%d.weight " % i) * ((size + i) // 16))
    return out


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    packs = tmp_path / "packs"
    tmp = tmp_path / "tmp"
    packs.mkdir()
    tmp.mkdir()
    return packs, tmp


def write_objects(
    packs: Path, tmp: Path, objects: list[bytes], target: int = 1 << 30
) -> tuple[PackWriter, list[bytes], dict[bytes, int]]:
    writer = PackWriter(LocalBackend(packs.parent), target)
    comp = Compressor()
    ids = []
    codecs = {}
    for data in objects:
        oid = blake3_id(data)
        codec, stored = comp.compress(data)
        writer.add(oid, fmt.KIND_CHUNK, codec, len(data), stored)
        ids.append(oid)
        codecs[oid] = codec
    writer.finish()
    return writer, ids, codecs


def single_pack(packs: Path, objects: list[bytes]) -> tuple[Path, Path, list[bytes], dict]:
    tmp = packs.parent / "tmp"
    writer, ids, codecs = write_objects(packs, tmp, objects)
    assert len(writer.finished) == 1
    pid = writer.finished[0]
    return pack_path(packs, pid, "pack"), pack_path(packs, pid, "idx"), ids, codecs


# --------------------------------------------------------------------------- round trip


def test_round_trip_raw_and_zstd(dirs):
    packs, tmp = dirs
    objects = make_objects(6)
    writer, ids, codecs = write_objects(packs, tmp, objects)
    assert set(codecs.values()) == {CODEC_RAW, CODEC_ZSTD}
    assert len(writer.finished) == 1
    assert os.listdir(tmp) == []
    ps = PackSet(packs)
    try:
        assert ps.broken == {}
        assert list(ps.packs) == writer.finished
        for oid, data in zip(ids, objects):
            assert ps.has(oid)
            assert ps.read(oid) == data
            loc = ps.locate(oid)
            assert loc is not None and loc.entry.codec == codecs[oid]
            assert loc.entry.raw_len == len(data)
            assert loc.entry.kind == fmt.KIND_CHUNK
    finally:
        ps.close()


def test_roll_over_to_multiple_packs(dirs):
    packs, tmp = dirs
    objects = make_objects(12, size=30000, seed=3)
    writer, ids, _ = write_objects(packs, tmp, objects, target=70000)
    assert len(writer.finished) >= 3
    assert len(set(writer.finished)) == len(writer.finished)
    names = sorted(os.listdir(packs))
    assert names == sorted(
        f"pack-{p}.{ext}" for p in writer.finished for ext in ("pack", "idx")
    )
    assert os.listdir(tmp) == []
    ps = PackSet(packs)
    try:
        assert set(ps.packs) == set(writer.finished)
        for oid, data in zip(ids, objects):
            assert ps.read(oid) == data
        # every object is in exactly one pack
        for oid in ids:
            assert sum(p.lookup(oid) is not None for p in ps.packs.values()) == 1
        # each closed pack reached the target except possibly the last
        for pid in writer.finished[:-1]:
            assert pack_path(packs, pid, "pack").stat().st_size >= 70000
    finally:
        ps.close()
    assert writer.bytes_written == sum(
        pack_path(packs, p, "pack").stat().st_size - fmt.PACK_HEADER_SIZE - fmt.PACK_TRAILER_SIZE
        for p in writer.finished
    )


def test_duplicate_add_is_noop(dirs):
    packs, tmp = dirs
    data = b"same bytes" * 100
    oid = blake3_id(data)
    writer = PackWriter(LocalBackend(packs.parent), 1 << 30)
    writer.add(oid, fmt.KIND_CHUNK, CODEC_RAW, len(data), data)
    writer.add(oid, fmt.KIND_CHUNK, CODEC_RAW, len(data), data)
    assert oid in writer
    (pid,) = writer.finish()
    entries, _ = scan_pack(pack_path(packs, pid, "pack"))
    assert len(entries) == 1


def test_finish_twice_and_empty_finish(dirs):
    packs, tmp = dirs
    writer = PackWriter(LocalBackend(packs.parent), 1 << 30)
    assert writer.finish() == []
    assert os.listdir(packs) == []
    data = b"x" * 10
    writer.add(blake3_id(data), fmt.KIND_CHUNK, CODEC_RAW, 10, data)
    first = writer.finish()
    assert len(first) == 1
    assert writer.finish() == first
    assert len(os.listdir(packs)) == 2


def test_lookup_present_and_absent(dirs):
    packs, _ = dirs
    objects = make_objects(5)
    _, _, ids, _ = single_pack(packs, objects)
    ps = PackSet(packs)
    try:
        (pack,) = ps.packs.values()
        for oid in ids:
            e = pack.lookup(oid)
            assert e is not None and e.oid == oid
        absent = [blake3_id(b"absent %d" % i) for i in range(50)]
        absent += [b"\x00" * 32, b"\xff" * 32, ids[0][:31] + bytes([ids[0][31] ^ 1])]
        for oid in absent:
            assert pack.lookup(oid) is None
            assert not ps.has(oid)
            with pytest.raises(NotFoundError) as info:
                ps.read(oid)
            assert info.value.code == "E_NOT_FOUND"
    finally:
        ps.close()


def test_entry_ordering_pack_order_vs_index_order(dirs):
    packs, _ = dirs
    objects = make_objects(8)
    pack_file, idx_file, ids, _ = single_pack(packs, objects)
    entries, pack_id = scan_pack(pack_file)
    # pack order is insertion order, offsets strictly increasing and contiguous
    assert [e.oid for e in entries] == ids
    assert entries[0].offset == fmt.PACK_HEADER_SIZE
    for a, b in zip(entries, entries[1:]):
        assert b.offset == a.offset + fmt.ENTRY_HEADER_SIZE + a.stored_len
    # pack id is BLAKE3 of the ids in pack order, and names the files
    assert pack_id == blake3.blake3(b"".join(ids)).digest()
    assert pack_file.name == f"pack-{pack_id.hex()}.pack"
    # index is sorted by id
    buf = idx_file.read_bytes()
    idx_entries = list(fmt.iter_index(buf))
    assert [e.oid for e in idx_entries] == sorted(ids)
    assert fmt.index_pack_id(buf, len(ids)) == pack_id
    ps = PackSet(packs)
    try:
        (pack,) = ps.packs.values()
        assert [e.oid for e in pack.entries()] == sorted(ids)
        pack.verify_index()
    finally:
        ps.close()


def test_scan_pack_rebuilds_index(dirs):
    packs, _ = dirs
    pack_file, idx_file, _, _ = single_pack(packs, make_objects(7))
    entries, pack_id = scan_pack(pack_file)
    assert fmt.encode_index(entries, pack_id) == idx_file.read_bytes()
    assert sorted(entries, key=lambda e: e.oid) == list(fmt.iter_index(idx_file.read_bytes()))


# --------------------------------------------------------------------------- index format


def fake_entries(n: int, seed: int = 0) -> list[fmt.Entry]:
    rng = random.Random(seed)
    out = []
    off = fmt.PACK_HEADER_SIZE
    for _ in range(n):
        n_stored = rng.randint(1, 5000)
        out.append(fmt.Entry(rng.randbytes(32), off, n_stored, n_stored + 7, 1, rng.randint(0, 1)))
        off += fmt.ENTRY_HEADER_SIZE + n_stored
    return out


def test_index_encode_verify_and_fanout():
    entries = fake_entries(300)
    pid = b"\x42" * 32
    buf = fmt.encode_index(entries, pid)
    assert len(buf) == fmt.index_size(300)
    assert fmt.check_index_header(buf, "t", len(buf)) == 300
    fmt.verify_index(buf, "t")
    assert list(fmt.iter_index(buf)) == sorted(entries, key=lambda e: e.oid)
    assert fmt.index_pack_id(buf, 300) == pid
    for e in entries:
        lo, hi = fmt.index_fanout(buf, e.oid[0])
        assert e.oid in [fmt.index_record_id(buf, i) for i in range(lo, hi)]
        assert all(fmt.index_record_id(buf, i)[0] == e.oid[0] for i in range(lo, hi))
    assert fmt.index_fanout(buf, 255)[1] == 300


def test_index_duplicates_keep_first():
    e1 = fmt.Entry(b"\x01" * 32, 16, 10, 10, 1, 0)
    e2 = fmt.Entry(b"\x01" * 32, 999, 20, 20, 1, 1)
    buf = fmt.encode_index([e1, e2], b"\x00" * 32)
    assert list(fmt.iter_index(buf)) == [e1]


def test_empty_index():
    buf = fmt.encode_index([], b"\x00" * 32)
    fmt.verify_index(buf, "empty")
    assert list(fmt.iter_index(buf)) == []
    assert fmt.index_fanout(buf, 0) == (0, 0)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=32, max_size=32),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.sampled_from([fmt.KIND_CHUNK, fmt.KIND_CHUNK_LIST]),
            st.sampled_from([CODEC_RAW, CODEC_ZSTD]),
        ),
        max_size=40,
        unique_by=lambda t: t[0],
    ),
    st.binary(min_size=32, max_size=32),
)
def test_index_round_trip_property(rows, pid):
    entries = [fmt.Entry(*r) for r in rows]
    buf = fmt.encode_index(entries, pid)
    fmt.verify_index(buf, "p")
    assert list(fmt.iter_index(buf)) == sorted(entries, key=lambda e: e.oid)
    assert fmt.index_pack_id(buf, len(entries)) == pid


def test_index_flipped_byte_fails_checksum():
    buf = fmt.encode_index(fake_entries(20), b"\x07" * 32)
    # flip a byte in a record id, a record's lengths, the fanout, the header count area and the
    # checksum itself
    for pos in (
        fmt.IDX_RECORDS_START + 5 * 48 + 3,
        fmt.IDX_RECORDS_START + 5 * 48 + 35,
        fmt.IDX_HEADER_SIZE + 400,
        len(buf) - 1,
    ):
        bad = bytearray(buf)
        bad[pos] ^= 0x01
        with pytest.raises(VerifyError, match="checksum mismatch"):
            fmt.verify_index(bytes(bad), "t")


def test_index_wrong_magic_version_size():
    buf = fmt.encode_index(fake_entries(4), b"\x00" * 32)
    bad_magic = b"NOTANIDX" + buf[8:]
    with pytest.raises(VerifyError, match="bad magic"):
        fmt.check_index_header(bad_magic, "t", len(bad_magic))
    bad_version = buf[:8] + struct.pack("<I", 2) + buf[12:]
    with pytest.raises(SchemaError, match="unknown index version"):
        fmt.check_index_header(bad_version, "t", len(bad_version))
    with pytest.raises(VerifyError, match="does not match"):
        fmt.check_index_header(buf + b"\x00", "t", len(buf) + 1)
    with pytest.raises(VerifyError, match="does not match"):
        fmt.check_index_header(buf[:-48], "t", len(buf) - 48)
    with pytest.raises(VerifyError, match="truncated"):
        fmt.check_index_header(buf[:100], "t", 100)
    bad_count = buf[:12] + struct.pack("<I", 5) + buf[16:]
    with pytest.raises(VerifyError):
        fmt.verify_index(bad_count, "t")


def test_index_out_of_order_records_refused():
    buf = bytearray(fmt.encode_index(fake_entries(3), b"\x00" * 32))
    r0 = slice(fmt.IDX_RECORDS_START, fmt.IDX_RECORDS_START + 48)
    r1 = slice(fmt.IDX_RECORDS_START + 48, fmt.IDX_RECORDS_START + 96)
    buf[r0], buf[r1] = bytes(buf[r1]), bytes(buf[r0])
    body_end = len(buf) - 32
    buf[body_end:] = blake3.blake3(bytes(buf[:body_end])).digest()  # valid checksum
    with pytest.raises(VerifyError, match="out of order"):
        fmt.verify_index(bytes(buf), "t")


def test_index_flipped_pack_id_caught_by_pack_verify(dirs):
    # The index checksum covers the pack id in the trailer too.
    packs, _ = dirs
    _, idx_file, _, _ = single_pack(packs, make_objects(2))
    bad = bytearray(idx_file.read_bytes())
    bad[-40] ^= 0x01
    idx_file.write_bytes(bytes(bad))
    ps = PackSet(packs)
    try:
        (pack,) = ps.packs.values()
        with pytest.raises(VerifyError):
            pack.verify_index()
    finally:
        ps.close()


def test_index_naming_another_pack_refused(dirs):
    packs, _ = dirs
    pack_file, idx_file, _, _ = single_pack(packs, make_objects(2))
    entries, _ = scan_pack(pack_file)
    idx_file.write_bytes(fmt.encode_index(entries, b"\x09" * 32))
    ps = PackSet(packs)
    try:
        (pack,) = ps.packs.values()
        with pytest.raises(VerifyError, match="names another pack"):
            pack.verify_index()
    finally:
        ps.close()


# --------------------------------------------------------------------------- entry headers


@settings(max_examples=40, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.sampled_from(sorted(fmt.KINDS)),
    st.sampled_from(sorted(CODECS)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 47),
    st.integers(1, 255),
)
def test_entry_header_round_trip_and_any_flip_detected(oid, kind, codec, raw, stored, pos, mask):
    head = fmt.encode_entry_header(oid, kind, codec, raw, stored)
    assert len(head) == fmt.ENTRY_HEADER_SIZE
    assert fmt.decode_entry_header(head, 123, "p") == fmt.Entry(oid, 123, stored, raw, kind, codec)
    bad = bytearray(head)
    bad[pos] ^= mask
    with pytest.raises(VerifyError, match="damaged entry header"):
        fmt.decode_entry_header(bytes(bad), 123, "p")


def test_entry_header_truncated():
    head = fmt.encode_entry_header(b"\x01" * 32, 1, 0, 5, 5)
    with pytest.raises(VerifyError, match="truncated"):
        fmt.decode_entry_header(head[:47], 0, "p")


def test_pack_header_and_trailer():
    fmt.check_pack_header(fmt.pack_header(), "p")
    with pytest.raises(VerifyError):
        fmt.check_pack_header(b"CASPACK", "p")
    with pytest.raises(VerifyError, match="bad magic"):
        fmt.check_pack_header(b"NOTAPACK" + fmt.pack_header()[8:], "p")
    with pytest.raises(SchemaError):
        fmt.check_pack_header(fmt.pack_header()[:8] + struct.pack("<II", 9, 0), "p")
    t = fmt.pack_trailer(3, b"\x05" * 32)
    assert fmt.decode_pack_trailer(t) == (3, b"\x05" * 32)
    assert fmt.decode_pack_trailer(t[:-1]) is None
    assert fmt.decode_pack_trailer(b"X" + t[1:]) is None


# --------------------------------------------------------------------------- damage


def test_truncated_pack_read_raises_verify_error(dirs):
    packs, _ = dirs
    objects = make_objects(4)
    pack_file, _, ids, _ = single_pack(packs, objects)
    entries, _ = scan_pack(pack_file)
    last = entries[-1]
    # cut in the middle of the last object's data (the trailer goes too)
    with open(pack_file, "r+b") as f:
        f.truncate(last.data_offset + last.stored_len // 2)
    ps = PackSet(packs)
    try:
        with pytest.raises(VerifyError) as info:
            ps.read(ids[-1])
        assert info.value.object_id == ids[-1].hex()
        assert "truncated" in info.value.message
        # objects before the cut are still intact and readable
        for oid, data in zip(ids[:-1], objects[:-1]):
            assert ps.read(oid) == data
    finally:
        ps.close()
    with pytest.raises(VerifyError):
        scan_pack(pack_file)


def test_pack_truncated_to_header_every_read_fails(dirs):
    packs, _ = dirs
    pack_file, _, ids, _ = single_pack(packs, make_objects(3))
    with open(pack_file, "r+b") as f:
        f.truncate(fmt.PACK_HEADER_SIZE)
    ps = PackSet(packs)
    try:
        for oid in ids:
            with pytest.raises(VerifyError):
                ps.read(oid)
    finally:
        ps.close()


@pytest.mark.parametrize("index", [0, 1])  # 0: raw codec, 1: zstd codec
def test_flipped_data_byte_raises_verify_error_naming_chunk(dirs, index):
    packs, _ = dirs
    objects = make_objects(2)
    pack_file, _, ids, codecs = single_pack(packs, objects)
    assert codecs[ids[index]] == (CODEC_RAW, CODEC_ZSTD)[index]
    entries, _ = scan_pack(pack_file)
    e = entries[index]
    with open(pack_file, "r+b") as f:
        pos = e.data_offset + e.stored_len // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))
    ps = PackSet(packs)
    try:
        with pytest.raises(VerifyError) as info:
            ps.read(ids[index])
        assert info.value.object_id == ids[index].hex()
        assert ids[index].hex() in str(info.value)
        assert ps.read(ids[1 - index]) == objects[1 - index]
    finally:
        ps.close()


def test_damaged_entry_header_raises_verify_error(dirs):
    packs, _ = dirs
    objects = make_objects(3)
    pack_file, _, ids, _ = single_pack(packs, objects)
    entries, _ = scan_pack(pack_file)
    e = entries[1]
    with open(pack_file, "r+b") as f:
        f.seek(e.offset + 33)  # kind/codec/length bytes of the header
        f.write(b"\xee")
    ps = PackSet(packs)
    try:
        with pytest.raises(VerifyError, match="damaged entry header") as info:
            ps.read(ids[1])
        assert info.value.object_id == ids[1].hex()
        assert ps.read(ids[0]) == objects[0]
    finally:
        ps.close()
    with pytest.raises(VerifyError, match="damaged entry header"):
        scan_pack(pack_file)


def test_entry_not_matching_index_record_refused(dirs):
    packs, _ = dirs
    objects = make_objects(3)
    pack_file, idx_file, ids, _ = single_pack(packs, objects)
    entries, pack_id = scan_pack(pack_file)
    # an index that points object 0 at object 1's offset (checksum-valid, but wrong)
    moved = [
        fmt.Entry(e.oid, entries[1].offset, e.stored_len, e.raw_len, e.kind, e.codec)
        if e.oid == ids[0] else e
        for e in entries
    ]
    idx_file.write_bytes(fmt.encode_index(moved, pack_id))
    ps = PackSet(packs)
    try:
        with pytest.raises(VerifyError, match="does not match its index record"):
            ps.read(ids[0])
    finally:
        ps.close()


def test_scan_pack_refuses_missing_trailer_and_bad_magic(dirs, tmp_path):
    packs, _ = dirs
    pack_file, _, _, _ = single_pack(packs, make_objects(2))
    data = pack_file.read_bytes()
    no_trailer = tmp_path / "no-trailer.pack"
    no_trailer.write_bytes(data[: -fmt.PACK_TRAILER_SIZE])
    with pytest.raises(VerifyError):
        scan_pack(no_trailer)
    bad_magic = tmp_path / "bad-magic.pack"
    bad_magic.write_bytes(b"XXXXXXXX" + data[8:])
    with pytest.raises(VerifyError, match="bad magic"):
        scan_pack(bad_magic)
    wrong_count = tmp_path / "wrong-count.pack"
    count, pid = fmt.decode_pack_trailer(data[-fmt.PACK_TRAILER_SIZE :])
    wrong_count.write_bytes(data[: -fmt.PACK_TRAILER_SIZE] + fmt.pack_trailer(count + 1, pid))
    with pytest.raises(VerifyError, match="trailer does not match"):
        scan_pack(wrong_count)


# --------------------------------------------------------------------------- visibility


def test_abort_leaves_no_temp_and_nothing_visible(dirs):
    packs, tmp = dirs
    writer = PackWriter(LocalBackend(packs.parent), 1 << 30)
    objects = make_objects(3)
    for data in objects:
        writer.add(blake3_id(data), fmt.KIND_CHUNK, CODEC_RAW, len(data), data)
    assert len(os.listdir(tmp)) == 1  # the open temp pack
    writer.abort()
    assert os.listdir(tmp) == []
    assert os.listdir(packs) == []
    assert all(blake3_id(d) not in writer for d in objects)
    assert writer.finish() == []
    ps = PackSet(packs)
    assert ps.packs == {} and ps.broken == {}
    assert not ps.has(blake3_id(objects[0]))


def test_abort_after_roll_over_keeps_closed_packs(dirs):
    packs, tmp = dirs
    objects = make_objects(5, size=30000, seed=9)
    writer = PackWriter(LocalBackend(packs.parent), 65000)
    for data in objects:
        writer.add(blake3_id(data), fmt.KIND_CHUNK, CODEC_RAW, len(data), data)
    writer.abort()  # waits for the packs closed in the background at each roll-over
    closed = list(writer.finished)
    assert closed
    assert os.listdir(tmp) == []
    ps = PackSet(packs)
    try:
        assert set(ps.packs) == set(closed)
        visible = [d for d in objects if ps.has(blake3_id(d))]
        assert visible and len(visible) < len(objects)
        for d in visible:
            assert ps.read(blake3_id(d)) == d
            assert blake3_id(d) in writer
        for d in objects:
            if d not in visible:
                assert blake3_id(d) not in writer
    finally:
        ps.close()


def test_objects_invisible_until_finish_and_refresh(dirs):
    packs, tmp = dirs
    ps = PackSet(packs)
    writer = PackWriter(LocalBackend(packs.parent), 1 << 30)
    data = b"later" * 1000
    oid = blake3_id(data)
    writer.add(oid, fmt.KIND_CHUNK, CODEC_RAW, len(data), data)
    ps.refresh()
    assert not ps.has(oid)
    writer.finish()
    assert not ps.has(oid)  # not until refresh
    ps.refresh()
    try:
        assert ps.read(oid) == data
    finally:
        ps.close()


def test_pack_without_index_is_invisible(dirs):
    packs, _ = dirs
    pack_file, idx_file, ids, _ = single_pack(packs, make_objects(2))
    idx_file.unlink()
    ps = PackSet(packs)
    assert ps.packs == {} and ps.broken == {}
    assert not ps.has(ids[0])


def test_zero_byte_idx_is_broken(dirs):
    packs, _ = dirs
    objects = make_objects(2)
    _, _, ids, _ = single_pack(packs, objects)
    bogus = "ab" * 32
    pack_path(packs, bogus, "idx").write_bytes(b"")
    ps = PackSet(packs)
    try:
        assert set(ps.broken) == {bogus}
        assert "empty" in ps.broken[bogus]
        assert bogus not in ps.packs
        assert ps.read(ids[0]) == objects[0]  # the good pack still works
        ps.refresh()
        assert set(ps.broken) == {bogus}
    finally:
        ps.close()


@pytest.mark.parametrize(
    "content",
    [
        b"\x00" * 100,  # truncated
        b"NOTANIDX" + b"\x00" * (fmt.index_size(0) - 8),  # bad magic
        fmt.IDX_MAGIC + struct.pack("<II", 7, 0) + b"\x00" * (fmt.index_size(0) - 16),  # version
    ],
)
def test_bad_idx_files_are_broken(dirs, content):
    packs, _ = dirs
    bogus = "cd" * 32
    pack_path(packs, bogus, "idx").write_bytes(content)
    ps = PackSet(packs)
    assert set(ps.broken) == {bogus}
    assert ps.packs == {}


def test_unreadable_index_does_not_hide_other_packs(dirs):
    packs, _ = dirs
    _, _, ids, _ = single_pack(packs, make_objects(3))
    (packs / ("pack-" + "ab" * 32 + ".idx")).mkdir()  # an index that cannot be read as a file
    ps = PackSet(packs)
    try:
        assert "ab" * 32 in ps.broken
        assert all(ps.has(oid) for oid in ids)
    finally:
        ps.close()
