"""The object graph (cas.graph): roots, closure through derived-chunk bases, recorded bases."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
from safetensors.numpy import save_file

from cas import AddOptions, Store, graph
from cas.compression import CODEC_DERIVED
from cas.format.manifest import Manifest
from cas.ids import parse_hex
from cas.names import parse_version_spec


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.weight": (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
            for i in range(3)}


def _save(d: Path, tensors: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    return d


def _derived_ids(store: Store) -> set[bytes]:
    return {e.oid for p in store.packs.packs.values() for e in p.entries()
            if e.codec == CODEC_DERIVED}


def _f16_series(tmp_path: Path) -> Store:
    """org/base v1 (F32), org/base-f16 (its F16 conversion, --parent), then a fine-tune of
    the F16 model (derived from the F16 version, so its bases are transitive)."""
    w = _weights(1)
    store = Store.init(tmp_path / "store")
    store.add("org/base", _save(tmp_path / "f32", w))
    h = {k: v.astype(np.float16) for k, v in w.items()}
    store.add("org/base-f16", _save(tmp_path / "f16", h), AddOptions(parents=["org/base@1"]))
    h2 = dict(h)
    h2["layer.1.weight"] = (h["layer.1.weight"] + np.float16(1e-3)).astype(np.float16)
    store.add("org/base-f16", _save(tmp_path / "f16b", h2))
    return store


def test_add_records_transitive_bases(tmp_path: Path) -> None:
    store = _f16_series(tmp_path)
    assert _derived_ids(store)
    base = store.manifest(store.resolve("org/base@1")).files[0]
    f16 = store.manifest(store.resolve("org/base-f16@1")).files[0]
    tuned = store.manifest(store.resolve("org/base-f16@2")).files[0]
    assert base.bases == []
    assert f16.bases == [base.chunks]
    assert tuned.bases == sorted({f16.chunks, base.chunks})


def test_closure_follows_bases_after_the_base_version_is_removed(tmp_path: Path) -> None:
    store = _f16_series(tmp_path)
    store.rm("org/base@1")
    roots = graph.find_roots(store, window=0)
    assert roots.complete
    assert sorted(r.ref for r in roots.roots) == ["org/base-f16@1", "org/base-f16@2"]
    errors: list[str] = []
    closure = graph.needs(store, [m for _, m in graph.root_manifests(store, roots.roots,
                                                                    errors)])
    assert not errors
    removed = store.registry.resolve(parse_version_spec("org/base@1"), removed_ok=True)
    old = Manifest.decode(store.registry.manifest_bytes(removed))
    base_list = parse_hex(old.files[0].chunks)
    assert base_list in closure.ids
    assert set(store.read_chunk_list(base_list).ids()) <= closure.ids
    marks = closure.mark()
    assert not marks.missing
    # the live-manifest walk alone (no bases) would miss the base version's objects
    plain = graph.Closure(store)
    for _, m in graph.root_manifests(store, roots.roots, []):
        for f in m.files:
            plain.add_file(f.chunks, [])
    assert base_list not in plain.ids


def test_edges_rebuilt_for_manifests_without_bases(tmp_path: Path) -> None:
    """A file entry written before bases were recorded (bases None) is followed through the
    edge map, which one scan of the packs' derived objects builds and a file keeps."""
    store = _f16_series(tmp_path)
    roots = graph.find_roots(store)
    manifests = [m for _, m in graph.root_manifests(store, roots.roots, [])]
    recorded = graph.needs(store, manifests)
    stripped = [msgspec.structs.replace(m, files=[msgspec.structs.replace(f, bases=None)
                                                  for f in m.files]) for m in manifests]
    (store.path / graph.EDGES_NAME).unlink(missing_ok=True)
    edges = graph.EdgeMap(store)
    rebuilt = graph.needs(store, stripped, edges)
    assert rebuilt.ids == recorded.ids
    assert edges.scanned == len(store.packs.packs)
    edges.save()
    again = graph.EdgeMap(Store.open(store.path))
    assert graph.needs(store, stripped, again).ids == recorded.ids
    assert again.scanned == 0  # read from the file, no pack scanned


def test_damaged_edge_file_is_rebuilt(tmp_path: Path) -> None:
    store = _f16_series(tmp_path)
    edges = graph.EdgeMap(store)
    edges.bases(b"\0" * 32)
    edges.save()
    path = store.path / graph.EDGES_NAME
    raw = bytearray(path.read_bytes())
    raw[20] ^= 1
    path.write_bytes(bytes(raw))
    fresh = graph.EdgeMap(store)
    derived = next(iter(_derived_ids(store)))
    assert fresh.bases(derived)
    assert fresh.scanned == len(store.packs.packs)


def test_roots_live_tagged_removed_window(tmp_path: Path) -> None:
    store = Store.init(tmp_path / "store")
    for i in range(4):
        d = tmp_path / f"v{i}"
        d.mkdir()
        (d / "f.bin").write_bytes(bytes([i]) * 1000)
        store.add("m", d)
    store.tag("m@1", "best")
    store.rm("m@1", force=True)
    store.rm("m@2")
    # tags were deleted by rm --force: m@1 is a removed root within the window
    r = graph.find_roots(store)
    assert {x.ref: x.why for x in r.roots} == {
        "m@1": graph.REMOVED, "m@2": graph.REMOVED, "m@3": graph.LIVE, "m@4": graph.LIVE}
    r0 = graph.find_roots(store, window=0)
    assert {x.ref for x in r0.roots} == {"m@3", "m@4"}
    store.tag("m@4", "prod")
    assert {x.ref: x.why for x in graph.find_roots(store, window=0).roots}["m@4"] == graph.LIVE


def test_du_counts_what_a_derived_version_borrows(tmp_path: Path) -> None:
    """du accounts every byte a version needs: an F16 conversion registered with --parent
    needs its F32 parent's chunks, also once the parent version is removed."""
    store = _f16_series(tmp_path)
    parent_stored = store.du("org/base").stored
    store.rm("org/base@1")
    u = store.du("org/base-f16")
    first = u.versions[0]
    assert first.version == "org/base-f16@1"
    # what it borrows is the parent's file: its chunk list and chunks
    assert first.borrowed >= parent_stored * 0.99
    assert first.needs == first.borrowed + (first.needs - first.borrowed) > first.borrowed
    assert u.stored >= first.needs
    whole = store.du()
    # the removed parent's bytes are live (the F16 versions need them), not reclaimable
    assert whole.live == u.stored and whole.restore_window == 0
    assert whole.reclaimable == 0
    store.rm("org/base-f16@2")
    after = store.du()
    assert after.restore_window > 0  # only the removed fine-tune needs its residuals
    assert after.live + after.restore_window == whole.live
