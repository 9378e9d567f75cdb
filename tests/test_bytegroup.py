"""Byte grouping of float chunks: exact round trips at every element size and phase, the
store-raw and grouped-vs-whole decisions, and refusal of malformed grouped objects."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import bytegroup
from cas.compression import CODEC_GROUPED, CODEC_RAW, CODEC_ZSTD, Compressor, decompress
from cas.errors import VerifyError


def bf16_bytes(n_elems: int, seed: int = 0) -> bytes:
    values = np.random.default_rng(seed).normal(0, 0.02, n_elems).astype(np.float32)
    return (values.view(np.uint32) >> 16).astype("<u2").tobytes()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), elem=st.sampled_from([2, 4, 8]), phase=st.integers(0, 7))
def test_split_join_round_trip(data, elem, phase):
    phase %= elem
    streams = bytegroup.split(data, elem, phase)
    assert [len(s) for s in streams] == bytegroup.stream_lengths(len(data), elem, phase)
    assert bytegroup.join(streams, elem, phase, len(data)) == data
    encoded, _ = bytegroup.encode(data, elem, phase, min_saving=0.0)
    if encoded is not None:
        assert bytegroup.decode(encoded, len(data), "t") == data


def test_streams_follow_the_element_phase():
    data = bytes(range(10))  # chunk starts at byte 1 of a 4-byte element
    assert bytegroup.split(data, 4, 1) == [bytes([3, 7]), bytes([0, 4, 8]), bytes([1, 5, 9]),
                                           bytes([2, 6])]


def test_grouping_shrinks_bf16_well_beyond_plain_zstd():
    chunk = bf16_bytes(40_000)
    comp = Compressor()
    codec_whole, whole = comp.compress(chunk)
    codec_grouped, grouped = comp.compress(chunk, (2, 0))
    assert codec_whole == CODEC_ZSTD and codec_grouped == CODEC_GROUPED
    assert len(grouped) < 0.9 * len(whole)
    assert decompress(CODEC_GROUPED, bytes(grouped), len(chunk)) == chunk
    # float32 grouped by 4 beats whole-chunk zstd, also for a chunk that starts mid-element.
    f32 = np.random.default_rng(1).normal(0, 0.02, 20_000).astype("<f4").tobytes()[1:]
    codec, stored = comp.compress(f32, (4, 1))
    assert len(stored) < 0.95 * len(comp.compress(f32)[1])
    assert decompress(codec, bytes(stored), len(f32)) == f32
    (won, shrunk), (codec, _) = comp.best(chunk, (2, 0))
    assert won and codec == CODEC_GROUPED
    assert shrunk == 0b10  # the exponent stream shrinks, the mantissa stream does not
    # Offering only the exponent stream gives the same encoding.
    assert comp.compress(chunk, (2, 0), shrunk) == (codec, grouped)


def test_grouping_keeps_whole_compression_where_that_wins():
    text = b"the same few words again and again " * 2000  # no float structure at all
    (won, _), (codec, stored) = Compressor().best(text, (4, 0))
    assert not won and codec == CODEC_ZSTD
    assert decompress(codec, bytes(stored), len(text)) == text


def test_random_bytes_are_stored_raw():
    noise = np.random.default_rng(3).bytes(50_000)
    assert Compressor().compress(noise, (2, 0))[0] == CODEC_RAW


def _grouped(chunk: bytes) -> bytes:
    out, _ = bytegroup.encode(chunk, 2, 0, 0.0)
    assert out is not None
    return out


@pytest.mark.parametrize("mutate, why", [
    (lambda b: b[:1], "truncated"),
    (lambda b: bytes([3]) + b[1:], "element size"),
    (lambda b: b[:1] + bytes([2]) + b[2:], "phase"),
    (lambda b: b + b"x", "trailing"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:2] + bytes([9]) + b[3:], "unknown codec"),
])
def test_malformed_grouped_objects_are_refused(mutate, why):
    chunk = bf16_bytes(5000)
    with pytest.raises(VerifyError, match=why):
        bytegroup.decode(mutate(_grouped(chunk)), len(chunk), "t")


def test_grouped_stream_bomb_is_refused_before_allocation():
    n = 1000
    bomb = zstandard.ZstdCompressor().compress(bytes(100_000_000))
    heads = struct.pack("<BB", 2, 0) + struct.pack("<BI", 1, len(bomb)) + struct.pack("<BI", 0, 500)
    stored = heads + bomb + bytes(500)
    with pytest.raises(VerifyError, match="declares"):
        bytegroup.decode(stored, n, "t")


def test_float_ranges_locate_phase(tmp_path):
    from safetensors.numpy import save_file

    from cas.metadata import float_ranges

    path = tmp_path / "m.safetensors"
    save_file({"a": np.zeros(1000, np.float32), "b": np.zeros(10, np.int64),
               "c": np.zeros(3000, np.float16)}, str(path))
    ranges = float_ranges(path)
    assert sorted(e for _, _, e in ranges) == [2, 4]
    fr = bytegroup.FloatRanges(ranges)
    start_f32 = next(s for s, _, e in ranges if e == 4)
    assert fr.locate(start_f32 + 6, 100)[1:] == (4, 2)
    assert fr.locate(0, 8) is None  # the header is not a tensor
    assert float_ranges(tmp_path / "missing.safetensors") == []


def test_a_transform_that_does_not_round_trip_is_never_stored(monkeypatch):
    chunk = bf16_bytes(5000)
    real_split = bytegroup.split

    def broken_split(data, elem, phase):  # loses the last byte of every stream
        return [s[:-1] + b"\0" for s in real_split(data, elem, phase)]

    monkeypatch.setattr(bytegroup, "split", broken_split)
    assert bytegroup.encode(chunk, 2, 0, 0.0) == (None, 0)
    assert bytegroup.encode(chunk[1:], 2, 1, 0.0) == (None, 0)
    f32 = np.random.default_rng(2).normal(0, 1, 3000).astype("<f4").tobytes()
    assert bytegroup.encode(f32, 4, 0, 0.0) == (None, 0)
    codec, stored = Compressor().compress(chunk, (2, 0))
    assert codec == CODEC_RAW and bytes(stored) == chunk


def _gguf_with_data(tensors: list[tuple[str, int, bytes, int]], alignment: int = 32) -> tuple[
        bytes, dict[str, tuple[int, int]]]:
    """A real GGUF v3 file: header, aligned tensor data. tensors: (name, ggml type, data,
    element count). Returns the bytes and each tensor's absolute byte range."""
    def gstr(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    kvs = gstr("general.architecture") + struct.pack("<I", 8) + gstr("llama")
    kvs += gstr("general.alignment") + struct.pack("<II", 4, alignment)
    infos = b""
    offset = 0
    offsets = []
    for name, gtype, data, count in tensors:
        offsets.append(offset)
        infos += gstr(name) + struct.pack("<IQ", 1, count) + struct.pack("<IQ", gtype, offset)
        offset += -(-len(data) // alignment) * alignment
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 2) + kvs + infos
    start = -(-len(header) // alignment) * alignment
    body = bytearray(header + bytes(start - len(header)))
    ranges = {}
    for (name, _, data, _), off in zip(tensors, offsets):
        body += bytes(start + off - len(body)) + data
        ranges[name] = (start + off, start + off + len(data))
    return bytes(body), ranges


def test_gguf_float_tensors_are_located_and_grouped(tmp_path):
    from cas.format.pack import KIND_CHUNK
    from cas.metadata import describe, float_ranges
    from cas.store import Store

    f16 = np.random.default_rng(7).normal(0, 0.02, 300_000).astype("<f2").tobytes()
    f32 = np.random.default_rng(8).normal(0, 1, 1000).astype("<f4").tobytes()
    quant = np.random.default_rng(9).bytes(144 * 100)  # Q4_K blocks: not grouped
    data, where = _gguf_with_data([("tok_embd.weight", 1, f16, 300_000),
                                   ("blk.0.ffn.weight", 12, quant, 25_600),
                                   ("output_norm.weight", 0, f32, 1000)])
    path = tmp_path / "tiny.gguf"
    path.write_bytes(data)
    got = sorted(float_ranges(path))
    assert got == sorted([(*where["tok_embd.weight"], 2), (*where["output_norm.weight"], 4)])
    assert describe(path, [path.name])["format"] == "gguf"
    store = Store.init(tmp_path / "s")
    store.add("tiny", path)
    codecs = [e.codec for p in store.packs.packs.values() for e in p.entries()
              if e.kind == KIND_CHUNK]
    assert CODEC_GROUPED in codecs
    out = tmp_path / "out"
    store.checkout("tiny", out)
    assert (out / "tiny.gguf").read_bytes() == data
    store.close()
