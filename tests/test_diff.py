"""Tests for ``cas diff``: files, tensors of safetensors and GGUF files, and what it reads."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cas.compression import CODEC_DERIVED
from cas.demo import LAST_LAYER, add_tensor_copy, finetune_copy, perturb_in_place
from cas.packs import Pack
from cas.store import Store

MiB = 1 << 20


def _model(root: Path, tensors: dict[str, np.ndarray], **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "model.safetensors"))
    for name, text in files.items():
        (root / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (root / name.replace("__", "/")).write_text(text)
    return root


def _random(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _differing(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(a.view(np.uint8) != b.view(np.uint8)))


def _diff(cas, a: str, b: str, *args: str) -> dict:  # type: ignore[no-untyped-def]
    run = cas("diff", a, b, "--json", *args)
    doc = run.json
    assert doc["ok"] is True
    return doc


def _changes(doc: dict, path: str = "model.safetensors") -> dict[str, dict]:
    (w,) = [w for w in doc["weights"] if w["path"] == path]
    return {c["name"]: c for c in w["changes"]}


# -- files ----------------------------------------------------------------------------------------


def test_files_added_removed_modified_renamed(cas, tmp_path: Path) -> None:
    t = {"w": _random(0, 64, 64)}
    v1 = _model(tmp_path / "v1", t, **{"config.json": '{"n": 1}', "vocab.txt": "a b c",
                                       "old__notes.md": "notes", "same.txt": "same"})
    v2 = _model(tmp_path / "v2", t, **{"config.json": '{"n": 2}', "tokenizer.json": "{}",
                                       "docs__notes.md": "notes", "same.txt": "same"})
    cas("add", "org/m", str(v1))
    cas("add", "org/m", str(v2))
    doc = _diff(cas, "org/m@1", "org/m@2")
    files = {f["path"]: f for f in doc["files"]}
    assert {p: f["status"] for p, f in files.items()} == {
        "config.json": "modified", "tokenizer.json": "added", "vocab.txt": "removed",
        "docs/notes.md": "renamed"}
    assert files["docs/notes.md"]["old_path"] == "old/notes.md"
    assert doc["files_unchanged"] == 2  # model.safetensors, same.txt
    assert doc["identical"] is False and doc["weights"] == []

    text = cas("diff", "org/m@1", "org/m@2").out
    lines = text.splitlines()
    assert lines[0] == "diff org/m@1 org/m@2"
    assert any(line.startswith("R old/notes.md -> docs/notes.md") for line in lines)
    assert any(line.startswith("A tokenizer.json") for line in lines)
    assert any(line.startswith("D vocab.txt") for line in lines)
    assert any(line.startswith("M config.json") for line in lines)
    assert "files: 1 modified, 1 added, 1 removed, 1 renamed, 2 unchanged" in text


def test_identical_versions_and_exit_code(cas, tmp_path: Path) -> None:
    v1 = _model(tmp_path / "v1", {"w": _random(0, 8, 8)})
    cas("add", "org/m", str(v1))
    cas("add", "org/other", str(v1))
    doc = _diff(cas, "org/m", "org/other")
    assert doc["identical"] is True and doc["files"] == [] and doc["stats"]["bytes_read"] == 0
    assert "no differences (1 files)" in cas("diff", "org/m", "org/other").out
    assert cas("diff", "org/m", "org/other", "--exit-code").code == 0

    v2 = _model(tmp_path / "v2", {"w": _random(1, 8, 8)})
    cas("add", "org/m", str(v2))
    assert cas("diff", "org/m@1", "org/m@2").code == 0
    run = cas("diff", "org/m@1", "org/m@2", "--exit-code", "--json", ok=False)
    assert run.code == 1 and run.json["ok"] is True and run.json["identical"] is False
    assert cas("diff", "org/m@1", "org/m@2", "--exit-code", "-q", ok=False).out == ""


def test_unknown_version_is_a_clean_error(cas, tmp_path: Path) -> None:
    cas("add", "org/m", str(_model(tmp_path / "v1", {"w": _random(0, 4)})))
    run = cas("diff", "org/m@1", "org/m@7", "--json", ok=False)
    assert run.code == 3 and run.json["error"]["code"] == "E_NOT_FOUND"
    run = cas("diff", "org/m@1", "nope", ok=False)
    assert run.code == 3 and "Traceback" not in run.err


# -- tensors --------------------------------------------------------------------------------------


def test_tensor_changes(cas, tmp_path: Path) -> None:
    keep, tuned = _random(1, 128, 64), _random(2, 256)
    tuned2 = tuned.copy()
    tuned2[:10] += 1.0
    raw = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8)
    raw2 = raw.copy()
    raw2[::4] ^= 0xFF  # exactly a quarter of the bytes
    v1 = _model(tmp_path / "v1", {"keep": keep, "tuned": tuned, "raw": raw,
                                  "reshaped": _random(4, 4, 6), "recast": _random(5, 8),
                                  "gone": _random(6, 3)})
    v2 = _model(tmp_path / "v2", {"keep": keep, "tuned": tuned2, "raw": raw2,
                                  "reshaped": _random(4, 4, 6).reshape(6, 4),
                                  "recast": _random(5, 8).astype(np.float16),
                                  "new": np.zeros(5, np.float32)})
    cas("add", "org/m", str(v1))
    cas("add", "org/m", str(v2))
    doc = _diff(cas, "org/m@1", "org/m@2")
    (w,) = doc["weights"]
    changes = _changes(doc)
    assert {n: c["change"] for n, c in changes.items()} == {
        "tuned": "value", "raw": "value", "reshaped": "shape", "recast": "dtype",
        "new": "added", "gone": "removed"}
    assert changes["raw"]["fraction"] == 0.25 and changes["raw"]["differing_bytes"] == 1024
    assert changes["tuned"]["differing_bytes"] == _differing(tuned, tuned2)
    assert changes["tuned"]["nbytes"] == tuned.nbytes
    assert changes["reshaped"]["shape_a"] == [4, 6] and changes["reshaped"]["shape_b"] == [6, 4]
    assert (changes["recast"]["dtype_a"], changes["recast"]["dtype_b"]) == ("F32", "F16")
    assert changes["new"]["shape_b"] == [5] and changes["gone"]["dtype_a"] == "F32"
    assert (w["unchanged"], w["added"], w["removed"], w["changed"], w["changed_value"]) == \
        (1, 1, 1, 4, 2)
    assert (w["tensors_a"], w["tensors_b"]) == (6, 6)

    lines = cas("diff", "org/m@1", "org/m@2").out.splitlines()
    assert "model.safetensors (safetensors): 6 -> 6 tensors" in lines
    assert any(line.split()[:2] == ["~", "raw"] and "25.00%" in line for line in lines)
    assert any(line.split()[:2] == ["+", "new"] for line in lines)
    assert any(line.split()[:2] == ["-", "gone"] for line in lines)
    assert any("dtype F32 -> F16" in line for line in lines)
    assert "  1 unchanged, 1 added, 1 removed, 4 changed (2 in value)" in lines
    assert not any(line.split()[:2] == ["~", "keep"] for line in lines)


def _big_tensors(n: int, elems: int) -> dict[str, np.ndarray]:
    return {f"layer.{i:02d}.weight": _random(10 + i, elems) for i in range(n)}


@pytest.mark.parametrize("derive", [True, False])
def test_moved_tensors_are_unchanged_and_only_edges_are_read(cas, tmp_path: Path,
                                                             derive: bool) -> None:
    if not derive:
        shutil.rmtree(cas.store)
        cas("init", "--no-derive")
    v1 = _model(tmp_path / "v1", _big_tensors(8, 256 * 1024))  # 8 MiB
    (tmp_path / "v2").mkdir()
    add_tensor_copy(v1 / "model.safetensors", tmp_path / "v2" / "model.safetensors")
    cas("add", "org/m", str(v1))
    cas("add", "org/m", str(tmp_path / "v2"))
    doc = _diff(cas, "org/m@1", "org/m@2")
    (w,) = doc["weights"]
    assert [(c["name"], c["change"]) for c in w["changes"]] == [("extra.bias", "added")]
    assert w["unchanged"] == 8 and w["changed"] == 0
    # Every tensor moved, so each is read at its edges only: far less than the file.
    assert doc["stats"]["tensors_read"] >= 1
    assert doc["stats"]["bytes_compared"] < 2 * MiB
    assert doc["stats"]["bytes_read"] < 4 * MiB


@pytest.mark.parametrize("derive", [True, False])
def test_fast_path_reads_only_chunks_near_changed_tensors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, derive: bool) -> None:
    v1 = _model(tmp_path / "v1", _big_tensors(8, 256 * 1024))  # 8 MiB, ~100 chunks
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    perturb_in_place(v2 / "model.safetensors", ["layer.05."], seed=1)
    store = Store.init(tmp_path / "store", derive=derive)
    store.add("org/m", v1)
    store.add("org/m", v2)
    store.close()

    reads: list[tuple[Path, int, int]] = []
    orig = Pack._pread

    def counting(pack: Pack, n: int, offset: int) -> bytes:
        data = orig(pack, n, offset)
        reads.append((pack.pack_path, offset, len(data)))
        return data

    with Store.open(tmp_path / "store") as store:
        monkeypatch.setattr(Pack, "_pread", counting)
        r = store.diff("org/m@1", "org/m@2")
        monkeypatch.undo()
        by_offset = {(p.pack_path, e.offset): e.oid for p in store.packs.packs.values()
                     for e in p.entries()}
        with open(v1 / "model.safetensors", "rb") as f:  # same layout in v2
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        lo, hi = (8 + n + o for o in header["layer.05.weight"]["data_offsets"])
        layouts = []
        for spec in ("org/m@1", "org/m@2"):
            clist_id = bytes.fromhex(store.manifest(store.resolve(spec)).files[0].chunks)
            chunks, pos = [], 0
            for oid, length in store.read_chunk_list(clist_id).chunks:
                chunks.append((oid, pos, pos + length))
                pos += length
            layouts.append((clist_id, chunks))
    # The span of the chunks that hold bytes of the changed tensor, in either file, widened
    # by an element (a derived chunk predicts whole elements, so reads up to 4 bytes before).
    span_lo = min(a for _, chunks in layouts for _, a, b in chunks if a < hi and b > lo) - 8
    span_hi = max(b for _, chunks in layouts for _, a, b in chunks if a < hi and b > lo) + 8
    near = {oid for _, chunks in layouts for oid, a, b in chunks
            if a < 8 + n or (a < span_hi and b > span_lo)}
    far = {oid for _, chunks in layouts for oid, a, b in chunks} - near
    read = {by_offset[(path, offset)] for path, offset, _ in reads}
    assert len(far) > 50
    assert not read & far, "read chunks of unchanged tensors"
    assert read - {clist for clist, _ in layouts} <= near
    assert r.stats.bytes_read == sum(size for *_, size in reads)
    (w,) = r.weights
    assert [(c.name, c.change) for c in w.changes] == [("layer.05.weight", "value")]
    assert w.unchanged == 7 and r.stats.tensors_by_chunks >= 5


def test_diff_across_two_models(cas, tmp_path: Path) -> None:
    base = {"shared": _random(1, 32, 32), "head": _random(2, 16)}
    other = {"shared": base["shared"], "head": _random(3, 16), "extra": _random(4, 2)}
    cas("add", "org/base", str(_model(tmp_path / "a", base, **{"README.md": "base"})))
    cas("add", "team/variant", str(_model(tmp_path / "b", other, **{"README.md": "variant"})))
    doc = _diff(cas, "org/base", "team/variant")
    assert (doc["a"], doc["b"]) == ("org/base@1", "team/variant@1")
    assert {f["path"]: f["status"] for f in doc["files"]} == {
        "README.md": "modified", "model.safetensors": "modified"}
    changes = _changes(doc)
    assert {n: c["change"] for n, c in changes.items()} == {"head": "value", "extra": "added"}
    assert changes["head"]["differing_bytes"] == _differing(base["head"], other["head"])


# -- GGUF -----------------------------------------------------------------------------------------


def _gguf_str(s: str) -> bytes:
    return struct.pack("<Q", len(s.encode())) + s.encode()


def _gguf(kvs: dict[str, str], tensors: list[tuple[str, list[int], int, bytes]]) -> bytes:
    """A GGUF v3 file with string key/values and tensors ``(name, dims, ggml type, data)``."""
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
    for key, value in kvs.items():
        out += [_gguf_str(key), struct.pack("<I", 8), _gguf_str(value)]
    offset, data = 0, []
    for name, dims, ggml_type, blob in tensors:
        out += [_gguf_str(name), struct.pack(f"<I{len(dims)}Q", len(dims), *dims),
                struct.pack("<IQ", ggml_type, offset)]
        padded = blob + bytes(-len(blob) % 32)
        data.append(padded)
        offset += len(padded)
    head = b"".join(out)
    return head + bytes(-len(head) % 32) + b"".join(data)


def test_gguf_pair(cas, tmp_path: Path) -> None:
    norm, attn = _random(1, 64), _random(2, 32, 16)
    attn2 = attn.copy()
    attn2[0] = 0.0
    q8 = np.random.default_rng(3).integers(0, 256, 68, dtype=np.uint8).tobytes()  # 2 blocks
    kvs = {"general.architecture": "llama", "general.name": "tiny"}
    tensors = [("norm", [64], 0, norm.tobytes()), ("attn", [16, 32], 0, attn.tobytes()),
               ("ffn", [64], 8, q8)]
    for d in ("v1", "v2"):
        (tmp_path / d).mkdir()
    (tmp_path / "v1" / "m.gguf").write_bytes(_gguf(kvs, tensors))
    tensors2 = [("norm", [64], 0, norm.tobytes()), ("attn", [16, 32], 0, attn2.tobytes()),
                ("ffn", [32, 2], 8, q8), ("new", [4], 1, bytes(8))]
    (tmp_path / "v2" / "m.gguf").write_bytes(_gguf({**kvs, "general.name": "tiny-ft"}, tensors2))
    cas("add", "org/g", str(tmp_path / "v1"))
    cas("add", "org/g", str(tmp_path / "v2"))
    doc = _diff(cas, "org/g@1", "org/g@2")
    (w,) = doc["weights"]
    assert w["format"] == "gguf" and w["metadata_changed"] == ["general.name"]
    changes = _changes(doc, "m.gguf")
    assert {n: c["change"] for n, c in changes.items()} == {
        "attn": "value", "ffn": "shape", "new": "added"}
    assert changes["attn"]["differing_bytes"] == _differing(attn, attn2)
    assert changes["attn"]["nbytes"] == attn.nbytes and changes["attn"]["dtype_a"] == "F32"
    assert changes["new"]["dtype_b"] == "F16" and w["unchanged"] == 1


# -- damaged headers ------------------------------------------------------------------------------


def test_unparseable_header_is_a_warning(cas, tmp_path: Path) -> None:
    v1 = _model(tmp_path / "v1", {"w": _random(0, 16)})
    v2 = tmp_path / "v2"
    v2.mkdir()
    blob = b'{"w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 999999]}}'
    (v2 / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(64))
    cas("add", "org/m", str(v1))
    cas("add", "org/m", str(v2))
    run = cas("diff", "org/m@1", "org/m@2")
    assert run.code == 0 and "Traceback" not in run.err
    assert "cas: warning: model.safetensors in org/m@2: safetensors header is malformed" in run.err
    assert "[W_DIFF_HEADER]" in run.err
    assert run.out.splitlines()[1].startswith("M model.safetensors")
    doc = _diff(cas, "org/m@1", "org/m@2")
    assert doc["weights"] == [] and doc["files"][0]["status"] == "modified"
    assert [w["code"] for w in doc["warnings"]] == ["W_DIFF_HEADER"]


# -- the real model -------------------------------------------------------------------------------


def test_real_model_finetune(cas, tmp_path: Path, real_model: Path) -> None:
    tuned = tmp_path / "tuned"
    finetune_copy(real_model, tuned)
    cas("add", "st/minilm", str(real_model))
    cas("add", "demo/minilm-ft", str(tuned))
    doc = _diff(cas, "st/minilm", "demo/minilm-ft")
    assert [f["path"] for f in doc["files"]] == ["model.safetensors"]
    with open(real_model / "model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    expect = {k for k, v in header.items() if k.startswith(LAST_LAYER) and v["dtype"] == "F32"}
    (w,) = doc["weights"]
    assert {c["name"] for c in w["changes"]} == expect
    assert all(c["change"] == "value" and 0 < c["fraction"] <= 1 for c in w["changes"])
    assert w["unchanged"] == len(header) - len(expect)
    size = (real_model / "model.safetensors").stat().st_size
    assert doc["stats"]["bytes_read"] < size / 4


# -- how bytes are read ---------------------------------------------------------------------------


def _two_versions(tmp_path: Path, derive: bool, changed: list[str]) -> tuple[Path, Path, Path]:
    """A store holding ``org/m@1`` (8 tensors of 1 MiB) and ``org/m@2`` (``changed`` perturbed)."""
    v1 = _model(tmp_path / "v1", _big_tensors(8, 256 * 1024))
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2)
    perturb_in_place(v2 / "model.safetensors", changed, seed=1)
    store = Store.init(tmp_path / "store", derive=derive)
    store.add("org/m", v1)
    store.add("org/m", v2)
    store.close()
    return tmp_path / "store", v1 / "model.safetensors", v2 / "model.safetensors"


def _expected_differences(a: Path, b: Path) -> dict[str, int]:
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    return {name: _differing(ta[name], tb[name]) for name in ta if _differing(ta[name], tb[name])}


@pytest.mark.parametrize("derive", [True, False])
@pytest.mark.parametrize(("window", "workers"), [(256 * 1024, 2), (700 * 1024, 1)])
def test_windows_smaller_than_a_tensor_count_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, derive: bool, window: int,
        workers: int) -> None:
    import cas.diff

    root, a, b = _two_versions(tmp_path, derive, ["layer.02.", "layer.03.", "layer.06."])
    expected = _expected_differences(a, b)
    with Store.open(root) as store:
        whole = store.diff("org/m@1", "org/m@2")
        # Small windows on several threads: neighbouring windows share chunks of A, which
        # each holds for its derived chunks of B while the other reuses its arrays.
        monkeypatch.setattr(cas.diff, "WINDOW", window)
        monkeypatch.setattr(cas.diff, "WORKERS", workers)
        cut = store.diff("org/m@1", "org/m@2")
    for r in (whole, cut):
        (w,) = r.weights
        assert {c.name: c.differing_bytes for c in w.changes} == expected
        assert w.unchanged == 5
    assert cut.stats.bytes_compared == whole.stats.bytes_compared
    # A window boundary may cut through a chunk of A, which each window then decodes: a few
    # chunks more, never the file.
    assert cut.stats.bytes_read <= whole.stats.bytes_read * 1.25


def _stored_bytes(store: Store, oids: set[bytes]) -> int:
    from cas.format.pack import ENTRY_HEADER_SIZE

    return sum(ENTRY_HEADER_SIZE + store.packs.locate(oid).entry.stored_len for oid in oids)


def test_derived_chunks_find_their_base_already_read(tmp_path: Path) -> None:
    root, _, _ = _two_versions(tmp_path, True, ["layer.01.", "layer.05."])
    with Store.open(root) as store:
        lists, header_chunks = [], set()
        for spec in ("org/m@1", "org/m@2"):
            clist_id = bytes.fromhex(store.manifest(store.resolve(spec)).files[0].chunks)
            clist = store.read_chunk_list(clist_id)
            lists.append((clist_id, {oid for oid, _ in clist.chunks}))
            header_chunks.add(clist.chunks[0][0])
        (_, ids_a), (_, ids_b) = lists
        derived = [oid for oid in ids_b - ids_a
                   if store.packs.locate(oid).entry.codec == CODEC_DERIVED]
        assert len(derived) > 10  # the store did derive v2's changed chunks from v1
        r = store.diff("org/m@1", "org/m@2")
        need = _stored_bytes(store, (ids_a ^ ids_b) | header_chunks | {c for c, _ in lists})
    # Each chunk of A under a changed tensor is read once, for the comparison and for the
    # derived chunks of B predicted from it.
    assert r.stats.bytes_read <= need * 1.1
    assert sorted(c.name for c in r.weights[0].changes) == ["layer.01.weight", "layer.05.weight"]


def test_damaged_chunk_is_a_verify_error(cas, tmp_path: Path) -> None:
    root, _, _ = _two_versions(tmp_path, True, ["layer.04."])
    assert root == cas.store
    with Store.open(root) as store:
        ids = [{oid for oid, _ in store.read_chunk_list(bytes.fromhex(
            store.manifest(store.resolve(spec)).files[0].chunks)).chunks}
            for spec in ("org/m@1", "org/m@2")]
        victim = store.packs.locate(sorted(ids[1] - ids[0])[0])
        path, at = victim.pack.pack_path, victim.entry.data_offset + victim.entry.stored_len // 2
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    run = cas("diff", "org/m@1", "org/m@2", "--json", ok=False)
    assert run.code != 0 and "Traceback" not in run.err
    assert run.json["ok"] is False and run.json["error"]["code"] == "E_VERIFY"


def test_gguf_duplicate_tensor_name_is_a_warning(cas, tmp_path: Path) -> None:
    blob = np.zeros(8, np.float32).tobytes()
    for d, tensors in (("v1", [("a", [8], 0, blob)]),
                       ("v2", [("a", [8], 0, blob), ("a", [8], 0, bytes(32))])):
        (tmp_path / d).mkdir()
        (tmp_path / d / "m.gguf").write_bytes(_gguf({"general.name": d}, tensors))
        cas("add", "org/g", str(tmp_path / d))
    doc = _diff(cas, "org/g@1", "org/g@2")
    assert doc["weights"] == []
    (warning,) = doc["warnings"]
    assert warning["code"] == "W_DIFF_HEADER" and "appears twice" in warning["message"]


def test_a_chunk_held_by_two_windows_stays_readable_when_one_lets_go(tmp_path: Path) -> None:
    import cas.diff

    root, _, _ = _two_versions(tmp_path, True, ["layer.01."])
    with Store.open(root) as store:
        reader = cas.diff._Reader(store)
        f = reader.open(store.manifest(store.resolve("org/m@1")).files[0])
        locs = reader.locate(f, 3, 6)
        first = reader.decode(f, 3, locs, into=np.empty(f.starts[6] - f.starts[3], "u1"),
                              hold=True)
        second = reader.decode(f, 4, locs[1:], hold=True)  # another window, chunks 4 and 5
        chunk4 = bytes(first[f.starts[4] - f.starts[3] : f.starts[5] - f.starts[3]])
        reader.release(locs, first)
        first[:] = 0  # the first window's array is reused for the next window
        assert reader._read_object(locs[1].entry.oid) == (chunk4, 0)
        reader.release(locs[1:], second)
        assert reader._held == {}
