"""Tests for the header layouts read through a byte-range reader (cas.metadata
``safetensors_layout`` / ``gguf_layout``): what they return, what they refuse, and that the
reader's own errors pass through."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from cas.errors import VerifyError
from cas.metadata import HeaderError, Tensor, gguf_layout, safetensors_layout


def _reader(data: bytes, log: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    def read_at(offset: int, n: int) -> bytes:
        if log is not None:
            log.append((offset, n))
        return data[offset : offset + n]
    return read_at


def _safetensors(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def _gguf_str(s: str) -> bytes:
    return struct.pack("<Q", len(s.encode())) + s.encode()


def _gguf(kvs: list[tuple[str, int, bytes]], tensors: list[tuple[str, list[int], int, int]],
          data: bytes) -> bytes:
    """GGUF v3 with key/values ``(key, value type, encoded value)`` and tensors ``(name, dims,
    ggml type, offset)``, its data aligned to 32."""
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for key, vtype, value in kvs:
        out += [_gguf_str(key), struct.pack("<I", vtype), value]
    for name, dims, ggml_type, offset in tensors:
        out += [_gguf_str(name), struct.pack(f"<I{len(dims)}Q", len(dims), *dims),
                struct.pack("<IQ", ggml_type, offset)]
    head = b"".join(out)
    return head + bytes(-len(head) % 32) + data


def test_safetensors_layout_reads_only_the_header() -> None:
    w = np.arange(6, dtype=np.float32).tobytes()
    file = _safetensors({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                         "b": {"dtype": "U8", "shape": [8], "data_offsets": [24, 32]}},
                        w + bytes(8))
    log: list[tuple[int, int]] = []
    layout = safetensors_layout(_reader(file, log), len(file))
    start = len(file) - 32
    assert layout.metadata == {"format": "pt"}
    assert {t.name: t for t in layout.tensors} == {
        "w": Tensor("w", "F32", (2, 3), start, start + 24),
        "b": Tensor("b", "U8", (8,), start + 24, start + 32)}
    assert all(offset < start for offset, _ in log)


def test_safetensors_empty_header_is_not_malformed() -> None:
    file = _safetensors({}, b"")
    layout = safetensors_layout(_reader(file), len(file))
    assert layout.tensors == [] and layout.metadata == {}


@pytest.mark.parametrize("file", [
    _safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 999]}}, bytes(8)),
    _safetensors({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
    _safetensors({"w": "nope"}, b""),
    struct.pack("<Q", 5) + b"{nope",
    struct.pack("<Q", 1 << 40) + b"{}",
    b"\x01\x00",
])
def test_safetensors_malformed_header_is_a_header_error(file: bytes) -> None:
    with pytest.raises(HeaderError) as info:
        safetensors_layout(_reader(file), len(file))
    assert str(info.value)


def test_gguf_layout_tensors_and_key_ranges() -> None:
    name = struct.pack("<I", 8) + _gguf_str("tiny")
    align = struct.pack("<I", 4) + struct.pack("<I", 64)
    kvs = [("general.name", 8, _gguf_str("tiny")), ("general.alignment", 4, struct.pack("<I", 64))]
    data = bytes(64) + bytes(64) + bytes(40)
    tensors = [("f32", [16], 0, 0), ("q8", [32], 8, 64), ("odd", [3], 99, 128)]
    file = _gguf(kvs, tensors, b"")
    file += bytes(-len(file) % 64) + data
    layout = gguf_layout(_reader(file), len(file))
    data_start = len(file) - len(data)
    assert [(t.name, t.dtype, t.shape, t.start - data_start, t.end - data_start)
            for t in layout.tensors] == [
        ("f32", "F32", (16,), 0, 64), ("q8", "Q8_0", (32,), 64, 64 + 34),
        # a ggml type this module does not know runs to the end of the file
        ("odd", "GGML_TYPE_99", (3,), 128, len(data))]
    lo, hi = layout.kv_ranges["general.name"]
    assert file[lo:hi] == name
    lo, hi = layout.kv_ranges["general.alignment"]
    assert file[lo:hi] == align


@pytest.mark.parametrize("file", [
    b"GGUF" + struct.pack("<IQQ", 9, 0, 0),
    b"GGML" + struct.pack("<IQQ", 3, 0, 0),
    b"GGUF" + struct.pack("<IQQ", 3, 10**7, 0),
    _gguf([], [("t", [8], 0, 0)], bytes(16)),  # 32 bytes of F32 in 16
])
def test_gguf_malformed_header_is_a_header_error(file: bytes) -> None:
    with pytest.raises(HeaderError):
        gguf_layout(_reader(file), len(file))


@pytest.mark.parametrize("layout", [safetensors_layout, gguf_layout])
def test_reader_errors_pass_through_unchanged(layout) -> None:  # type: ignore[no-untyped-def]
    boom = VerifyError("chunk 00: damaged")

    def read_at(offset: int, n: int) -> bytes:
        raise boom

    with pytest.raises(VerifyError) as info:
        layout(read_at, 1 << 20)
    assert info.value is boom
