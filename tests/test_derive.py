"""Derived chunks (codec 3): fine-tunes and dtype conversions stored as residuals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cas import Store
from cas.compression import CODEC_DERIVED
from cas.derive import DTYPES, ENCODE_DEPTH, Plan, RangeReader, convert, decode, predict
from cas.errors import VerifyError
from cas.ids import blake3_id
from cas.metadata import Tensor

MiB = 1 << 20


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.weight": (rng.standard_normal((512, 512)) * 0.02).astype(np.float32)
            for i in range(4)}


def _save(d: Path, tensors: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    return d


def _save_bf16(d: Path, tensors: dict[str, np.ndarray]) -> None:
    """safetensors.numpy has no bfloat16: write the file by hand from BF16 bit patterns."""
    header, blobs, pos = {}, [], 0
    for name, bits in tensors.items():
        header[name] = {"dtype": "BF16", "shape": list(bits.shape),
                        "data_offsets": [pos, pos + bits.nbytes]}
        blobs.append(bits.tobytes())
        pos += bits.nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _store_bytes(store: Store) -> int:
    return sum(p.stat().st_size for p in store.packs_dir.glob("*.pack"))


def _derived_payloads(store: Store) -> list[bytes]:
    out = []
    for pack in store.packs.packs.values():
        for e in pack.entries():
            if e.codec == CODEC_DERIVED:
                out.append(bytes(pack.read_stored(e)))
    return out


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even F32 -> BF16 bits, the textbook way (reference for convert)."""
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def test_convert_matches_reference_casts() -> None:
    x = np.array([0.0, -0.0, 1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5e-3, 3.0e38, 1e-40, 65504.0,
                  70000.0, np.inf, -np.inf], dtype=np.float32)
    f32, f16, bf16 = DTYPES["F32"][0], DTYPES["F16"][0], DTYPES["BF16"][0]
    with np.errstate(over="ignore"):
        assert convert(x.tobytes(), f32, f16).tobytes() == x.astype(np.float16).tobytes()
    assert convert(x.tobytes(), f32, bf16).tobytes() == _bf16(x).tobytes()
    # ties go to even: 1 + 2^-8 is halfway between two bf16 values and rounds down to 1.0
    assert _bf16(np.float32([1 + 2**-8]))[0] == 0x3F80
    half = x[np.isfinite(x) & (np.abs(x) < 60000)].astype(np.float16)
    assert convert(half.tobytes(), f16, f32).tobytes() == half.astype(np.float32).tobytes()
    b = _bf16(x)
    widened = convert(b.tobytes(), bf16, f32).view(np.uint32)
    assert (widened == b.astype(np.uint32) << 16).all()
    assert convert(x.tobytes(), f32, f32).tobytes() == x.tobytes()


def test_predictions_cover_chunks_that_cut_elements_and_tensors(tmp_path: Path) -> None:
    """Chunk boundaries fall anywhere: inside an element, across two tensors, in the header.
    Every byte of a tensor is predicted exactly; other bytes are predicted as zero."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal(1000).astype(np.float32)
    b = rng.standard_normal(700).astype(np.float32)
    base = a.tobytes() + b.tobytes()  # a base "file" with two F32 tensors at 0 and 4000
    new_a, new_b = a.astype(np.float16), b.astype(np.float16)
    head = b"H" * 37  # the new file's tensors start at an odd offset
    new = head + new_a.tobytes() + new_b.tobytes()
    plan = Plan.build(
        b"\x01" * 32,
        [Tensor("a", "F16", (1000,), 37, 2037), Tensor("b", "F16", (700,), 2037, 3437)],
        [Tensor("a", "F32", (1000,), 0, 4000), Tensor("b", "F32", (700,), 4000, 6800)],
    )
    assert plan is not None

    class Fixed(RangeReader):
        def __init__(self) -> None:
            pass

        def read(self, clist_id: bytes, offset: int, length: int) -> tuple[bytes, int]:
            return base[offset : offset + length], 0

    for offset, n in [(0, 40), (38, 101), (2000, 100), (2036, 2), (37, 3400), (3400, 37)]:
        pred, depth = predict(plan.segments(offset, n), n, plan.base, Fixed())
        want = bytearray(new[offset : offset + n])
        if offset < 37:
            want[: 37 - offset] = bytes(37 - offset)  # the header is not predicted
        assert bytes(pred) == bytes(want), (offset, n)
        assert depth == 1


def test_fine_tunes_and_conversions_cost_only_their_residual(tmp_path: Path) -> None:
    w = _weights()
    store = Store.init(tmp_path / "store")
    store.add("m", _save(tmp_path / "v1", w))
    base = _store_bytes(store)
    size = (tmp_path / "v1" / "model.safetensors").stat().st_size

    tuned = dict(w)
    tuned["layer.3.weight"] = w["layer.3.weight"] + np.float32(1e-5) * np.sign(
        w["layer.3.weight"])  # a small update of one layer: exponents and high bits stay
    store.add("m", _save(tmp_path / "v2", tuned))
    grew_tuned = _store_bytes(store) - base
    one_layer = tuned["layer.3.weight"].nbytes
    assert 0 < grew_tuned < 0.6 * one_layer  # grouped zstd alone keeps ~0.84 of float32

    before = _store_bytes(store)
    store.add("m", _save(tmp_path / "v3", {k: v.astype(np.float16) for k, v in tuned.items()}))
    assert _store_bytes(store) - before < 0.03 * size / 2  # an F16 copy is almost free

    before = _store_bytes(store)
    _save_bf16(tmp_path / "v4", {k: _bf16(v) for k, v in tuned.items()})
    store.add("m", tmp_path / "v4")
    # predicted from the F16 version: double rounding leaves a few percent of the elements
    # one bit off, which the residual carries
    assert _store_bytes(store) - before < 0.15 * size / 2

    assert _derived_payloads(store)
    store.close()
    store = Store.open(tmp_path / "store")  # nothing cached: every base is read again
    for seq in (1, 2, 3, 4):
        out = tmp_path / f"out{seq}"
        store.checkout(f"m@{seq}", out)
        assert (out / "model.safetensors").read_bytes() == \
            (tmp_path / f"v{seq}" / "model.safetensors").read_bytes()
    assert store.verify("m").ok
    store.close()


def test_chains_of_fine_tunes_stay_shallow(tmp_path: Path) -> None:
    w = _weights(2)
    store = Store.init(tmp_path / "store")
    rng = np.random.default_rng(3)
    for v in range(ENCODE_DEPTH + 3):
        w = {k: x + (rng.standard_normal(x.shape) * 1e-6).astype(np.float32)
             for k, x in w.items()}
        store.add("m", _save(tmp_path / f"v{v}", w))
    depths = [p[1] for p in _derived_payloads(store)]
    assert depths and max(depths) == ENCODE_DEPTH  # chains grow, then restart
    assert 1 in depths
    store.close()
    store = Store.open(tmp_path / "store")
    last = ENCODE_DEPTH + 3
    store.checkout(f"m@{last}", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        (tmp_path / f"v{last - 1}" / "model.safetensors").read_bytes()
    store.close()


def test_damaged_base_blocks_the_derived_version(tmp_path: Path) -> None:
    w = _weights(4)
    store = Store.init(tmp_path / "store")
    store.add("m", _save(tmp_path / "v1", w))
    store.add("m", _save(tmp_path / "v2", {k: v.astype(np.float16) for k, v in w.items()}))
    derived = _derived_payloads(store)
    assert derived
    # flip one byte in the middle of every v1 pack's data (only v1 has non-derived chunks)
    first_pack = min(store.packs_dir.glob("*.pack"), key=lambda p: p.stat().st_mtime_ns)
    store.close()
    data = bytearray(first_pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first_pack.write_bytes(bytes(data))
    store = Store.open(tmp_path / "store")
    with pytest.raises(VerifyError):
        store.checkout("m@2", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert not store.verify("m@2").ok
    store.close()


@pytest.mark.parametrize("mutate", [
    lambda p: p[:10],  # truncated header
    lambda p: bytes([9]) + p[1:],  # unknown version
    lambda p: p[:1] + bytes([0]) + p[2:],  # depth 0
    lambda p: p[:1] + bytes([200]) + p[2:],  # depth beyond the limit
    lambda p: p[:34] + struct.pack("<H", 5000) + p[36:],  # too many segments
    lambda p: p[:36] + struct.pack("<q", 1 << 40) + p[44:],  # segment outside the chunk
    lambda p: p[:44] + struct.pack("<I", 1 << 30) + p[48:],  # segment far too long
    lambda p: p[:56] + bytes([7]) + p[57:],  # unknown source dtype
    lambda p: p[:-1] + bytes([p[-1] ^ 1]),  # damaged residual (fails the content check)
])
def test_crafted_payloads_are_refused(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    w = _weights(5)
    store = Store.init(tmp_path / "store")
    store.add("m", _save(tmp_path / "v1", w))
    store.add("m", _save(tmp_path / "v2", {k: v.astype(np.float16) for k, v in w.items()}))
    payload = _derived_payloads(store)[0]
    entry = next(e for p in store.packs.packs.values() for e in p.entries()
                 if e.codec == CODEC_DERIVED)
    assert blake3_id(decode(payload, entry.raw_len, store.packs.ranges, object_id="x")) == \
        entry.oid
    with pytest.raises(VerifyError):
        out = decode(mutate(payload), entry.raw_len, store.packs.ranges, object_id="x")
        if blake3_id(out) != entry.oid:  # decoded, but to other bytes: the reader's check
            raise VerifyError("content check")
    store.close()


def test_a_store_made_without_derive_stores_conversions_whole(tmp_path: Path) -> None:
    w = _weights(6)
    store = Store.init(tmp_path / "store", derive=False)
    store.add("m", _save(tmp_path / "v1", w))
    store.add("m", _save(tmp_path / "v2", {k: v.astype(np.float16) for k, v in w.items()}))
    assert not _derived_payloads(store)
    store.close()


@pytest.mark.parametrize("derive_field", ["absent", "true"])
def test_stores_made_before_derived_chunks_never_get_them(tmp_path: Path,
                                                           derive_field: str) -> None:
    """A format version 1 store (written by cas 0.1) never gets derived chunks, so readers
    that know only version 1 never meet codec 3 in it."""
    store = Store.init(tmp_path / "store")
    store.close()
    cfg = tmp_path / "store" / "config.json"
    doc = json.loads(cfg.read_text())
    assert doc["version"] == 3
    assert doc["compression"].pop("derive") is True
    del doc["uuid"], doc["features"], doc["checksum"]
    doc["version"] = 1
    if derive_field == "true":
        doc["compression"]["derive"] = True  # meaningless in version 1: ignored
    cfg.write_text(json.dumps(doc))
    store = Store.open(tmp_path / "store")
    w = _weights(7)
    store.add("m", _save(tmp_path / "v1", w))
    store.add("m", _save(tmp_path / "v2", {k: v.astype(np.float16) for k, v in w.items()}))
    assert not _derived_payloads(store)
    store.close()


def test_a_new_model_is_predicted_from_its_parent(tmp_path: Path) -> None:
    """A fine-tune registered under its own name with --parent is derived from the parent."""
    w = _weights(8)
    store = Store.init(tmp_path / "store")
    store.add("org/base", _save(tmp_path / "v1", w))
    before = _store_bytes(store)
    from cas import AddOptions

    store.add("org/base-f16", _save(tmp_path / "f16", {k: v.astype(np.float16)
                                                       for k, v in w.items()}),
              AddOptions(parents=["org/base@1"]))
    size = (tmp_path / "f16" / "model.safetensors").stat().st_size
    assert _store_bytes(store) - before < 0.03 * size
    derived, before = len(_derived_payloads(store)), _store_bytes(store)
    _save_bf16(tmp_path / "other", {k: _bf16(v) for k, v in w.items()})
    store.add("org/other", tmp_path / "other")  # no parent, no earlier version: no base
    assert len(_derived_payloads(store)) == derived
    assert _store_bytes(store) - before > 0.5 * size
    store.close()
    store = Store.open(tmp_path / "store")
    store.checkout("org/base-f16", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        (tmp_path / "f16" / "model.safetensors").read_bytes()
    store.close()


def test_derived_chunks_read_back_next_to_any_encoding_of_their_base(tmp_path: Path) -> None:
    """Portable objects: chunks derived in one store (from a base that was itself derived
    there) are copied as stored bytes into a store that holds the same base plainly; they
    decode there, since the recorded depth bounds nothing a reader needs."""
    from cas.packwriter import PackWriter

    rng = np.random.default_rng(8)
    w1 = _weights(8)
    w2 = {k: x + (rng.standard_normal(x.shape) * 1e-6).astype(np.float32) for k, x in w1.items()}
    w3 = {k: x + (rng.standard_normal(x.shape) * 1e-6).astype(np.float32) for k, x in w2.items()}
    a = Store.init(tmp_path / "a")
    for i, w in enumerate((w1, w2, w3), 1):
        a.add("m", _save(tmp_path / f"v{i}", w))
    b = Store.init(tmp_path / "b", derive=False)
    for i in (1, 2):
        b.add("m", tmp_path / f"v{i}")
    assert not _derived_payloads(b)
    writer = PackWriter(b.backend, 1 << 30)
    copied_depths = []
    for pack in a.packs.packs.values():
        for e in pack.entries():
            if not b.packs.has(e.oid):
                stored = bytes(pack.read_stored(e))
                if e.codec == CODEC_DERIVED:
                    copied_depths.append(stored[1])
                writer.add(e.oid, e.kind, e.codec, e.raw_len, stored)
    writer.finish()
    assert 2 in copied_depths  # derived from chunks that were derived in store a
    b.registry.add_version("m", 3, a.registry.manifest_bytes(a.resolve("m@3")), "copied")
    a.close()
    b.close()
    b = Store.open(tmp_path / "b")
    b.checkout("m@3", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        (tmp_path / "v3" / "model.safetensors").read_bytes()
    assert b.verify().ok
    b.close()
