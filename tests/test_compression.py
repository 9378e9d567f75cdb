"""Tests for cas.compression: codec choice, round-trip, and refusal of hostile frames."""

from __future__ import annotations

import random
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.compression import CODEC_RAW, CODEC_ZSTD, CODECS, Compressor, decompress
from cas.errors import VerifyError


def random_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def compressible_bytes(n: int) -> bytes:
    text = b"".join(b"tensor.%06d weight=0.%04d;\n" % (i, i % 97) for i in range(n // 20 + 1))
    return text[:n]


def test_codec_table():
    assert CODECS == {0: "raw", 1: "zstd", 2: "grouped", 3: "derived"}
    assert (CODEC_RAW, CODEC_ZSTD) == (0, 1)


def test_random_bytes_stored_raw():
    data = random_bytes(65536)
    codec, stored = Compressor().compress(data)
    assert codec == CODEC_RAW
    assert stored == data


def test_compressible_bytes_stored_zstd():
    data = compressible_bytes(65536)
    codec, stored = Compressor().compress(data)
    assert codec == CODEC_ZSTD
    assert len(stored) < len(data) // 2
    assert zstandard.frame_content_size(stored) == len(data)  # content size is always written
    assert decompress(codec, stored, len(data)) == data


def test_empty_chunk_is_raw():
    assert Compressor().compress(b"") == (CODEC_RAW, b"")
    assert decompress(CODEC_RAW, b"", 0) == b""


def test_min_saving_threshold():
    # Saving a little is not enough when min_saving demands a lot.
    data = random_bytes(30000) + bytes(2000)
    codec_default, _ = Compressor().compress(data)
    codec_strict, stored = Compressor(min_saving=0.5).compress(data)
    assert codec_default == CODEC_ZSTD
    assert codec_strict == CODEC_RAW and stored == data


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=4096),
        st.builds(lambda b, k: b * k, st.binary(min_size=1, max_size=16), st.integers(1, 500)),
    )
)
def test_round_trip(data):
    codec, stored = Compressor().compress(data)
    assert codec in CODECS
    if codec == CODEC_ZSTD:
        assert len(stored) < len(data)
    assert decompress(codec, stored, len(data), object_id="x") == data


def test_compressor_shared_by_threads():
    comp = Compressor()
    inputs = [compressible_bytes(20000 + i * 1000) for i in range(8)]
    results: dict[int, tuple[int, bytes]] = {}

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = comp.compress(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, data in enumerate(inputs):
        codec, stored = results[i]
        assert decompress(codec, stored, len(data)) == data


def test_unknown_codec_refused():
    with pytest.raises(VerifyError) as info:
        decompress(7, b"abc", 3, object_id="deadbeef")
    assert info.value.object_id == "deadbeef"
    assert "unknown codec" in info.value.message
    assert info.value.code == "E_VERIFY"


def test_raw_wrong_length_refused():
    with pytest.raises(VerifyError) as info:
        decompress(CODEC_RAW, b"abcd", 3, object_id="o1")
    assert info.value.expected == "3" and info.value.actual == "4"


@pytest.mark.parametrize(
    "frame",
    [
        b"garbage-not-a-zstd-frame",
        b"",
        b"\x28\xb5\x2f\xfd",  # magic only
    ],
)
def test_garbage_frame_refused(frame):
    with pytest.raises(VerifyError) as info:
        decompress(CODEC_ZSTD, frame, 100, object_id="g")
    assert info.value.object_id == "g"


def test_truncated_frame_refused():
    data = compressible_bytes(50000)
    _, stored = Compressor().compress(data)
    with pytest.raises(VerifyError):
        decompress(CODEC_ZSTD, stored[: len(stored) // 2], len(data))


def _flips(frame: bytes) -> Iterator[tuple[int, bytes]]:
    """Every single-bit flip of ``frame`` at bits 0 and 7 of each byte."""
    for pos in range(len(frame)):
        for mask in (0x01, 0x80):
            bad = bytearray(frame)
            bad[pos] ^= mask
            yield pos, bytes(bad)


def test_corrupted_frame_is_refused_or_decodes_to_the_recorded_length():
    """What ``decompress`` alone promises: a damaged frame raises VerifyError (never another
    exception) or decodes to exactly the recorded length. zstd frames carry no checksum here,
    so the content may differ: the BLAKE3 check of the reader (next test) is what catches it."""
    data = compressible_bytes(4000)
    codec, stored = Compressor().compress(data)
    assert codec == CODEC_ZSTD
    refused = 0
    for _, bad in _flips(bytes(stored)):
        try:
            out = decompress(CODEC_ZSTD, bad, len(data))
        except VerifyError:
            refused += 1
            continue
        assert len(out) == len(data)
    assert refused > 0


def test_corrupted_frame_never_returns_wrong_bytes(tmp_path: Path):
    """Every single-bit flip of a stored zstd frame in a real pack: reading the chunk either
    raises VerifyError or returns the original bytes, never different ones."""
    from cas.format import pack as fmt
    from cas.ids import blake3_id
    from cas.packs import PackSet, scan_pack
    from cas.packwriter import PackWriter
    from cas.storage.local import LocalBackend

    (tmp_path / "packs").mkdir()
    (tmp_path / "tmp").mkdir()
    data = compressible_bytes(4000)
    codec, stored = Compressor().compress(data)
    assert codec == CODEC_ZSTD
    oid = blake3_id(data)
    writer = PackWriter(LocalBackend(tmp_path), 1 << 20)
    writer.add(oid, fmt.KIND_CHUNK, codec, len(data), stored)
    writer.finish()
    pack_file = tmp_path / "packs" / f"pack-{writer.finished[0]}.pack"
    (entry,), _ = scan_pack(pack_file)
    original = pack_file.read_bytes()
    start = entry.data_offset
    assert original[start : start + entry.stored_len] == stored

    outcomes = {"refused by zstd or length": 0, "refused by BLAKE3": 0, "returned": 0}
    packs = PackSet(tmp_path / "packs")
    try:
        assert packs.read(oid) == data
        for pos, bad in _flips(bytes(stored)):
            pack_file.write_bytes(original[:start] + bad + original[start + len(bad):])
            try:
                out = packs.read(oid)
            except VerifyError as exc:
                assert exc.object_id == oid.hex()
                key = "refused by BLAKE3" if "content hashes to" in exc.message else \
                    "refused by zstd or length"
                outcomes[key] += 1
                continue
            assert out == data, f"flip at frame byte {pos} returned wrong bytes"
            outcomes["returned"] += 1
    finally:
        packs.close()
    # Both guards were exercised: flips that zstd decoded to other bytes of the right length
    # were stopped by the hash, so this test would fail without it.
    assert outcomes["refused by BLAKE3"] > 0, outcomes
    assert outcomes["refused by zstd or length"] > 0, outcomes


def test_zstd_bomb_declared_size_refused_without_allocating():
    bomb = zstandard.ZstdCompressor(level=1).compress(bytes(10_000_000))
    assert len(bomb) < 10_000
    tracemalloc.start()
    try:
        with pytest.raises(VerifyError) as info:
            decompress(CODEC_ZSTD, bomb, 1000, object_id="bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    assert info.value.object_id == "bomb"
    assert info.value.expected == "1000"
    assert info.value.actual == "10000000"


def test_declared_size_smaller_than_record_refused():
    frame = zstandard.ZstdCompressor().compress(b"a" * 500)
    with pytest.raises(VerifyError):
        decompress(CODEC_ZSTD, frame, 1000)


def test_frame_without_content_size_that_expands_beyond_raw_len_refused():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1_000_000))
    assert zstandard.frame_content_size(frame) == -1
    tracemalloc.start()
    try:
        with pytest.raises(VerifyError) as info:
            decompress(CODEC_ZSTD, frame, 1000, object_id="nocs")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 500_000
    assert info.value.object_id == "nocs"


def test_frame_without_content_size_that_is_short_refused():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"\x01" * 500)
    with pytest.raises(VerifyError) as info:
        decompress(CODEC_ZSTD, frame, 1000)
    assert info.value.expected == "1000" and info.value.actual == "500"


def test_frame_without_content_size_exact_length_accepted():
    data = compressible_bytes(10000)
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert decompress(CODEC_ZSTD, frame, len(data)) == data
