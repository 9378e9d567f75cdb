"""gc keeps what every stored object needs, not only what live versions need: a derived chunk
left in a pack that stays keeps its base (an add may deduplicate against it later), and a pack
rewritten under the same name after gc judged it is not deleted."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cas import Store, gc
from cas.compression import CODEC_DERIVED
from cas.gc import GcOptions, collect


def _save(d: Path, tensors: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "a.safetensors"))
    return d


def _new_pack(store: Store, before: set[str]) -> str:
    store.packs.refresh()
    (pack,) = set(store.packs.packs) - before
    return pack


def test_a_derived_chunk_that_stays_keeps_its_base(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    w = {"t": (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)}
    store = Store.init(tmp_path / "s")
    before = set(store.packs.packs)
    store.add("m", _save(tmp_path / "v1", w))
    p1 = _new_pack(store, before)
    before = set(store.packs.packs)
    tuned = {"t": w["t"] + np.float32(1e-5) * np.sign(w["t"])}
    store.add("m", _save(tmp_path / "v2", tuned))
    p2 = _new_pack(store, before)
    assert any(e.codec == CODEC_DERIVED for e in store.packs.packs[p2].entries())
    store.rm("m")
    old = time.time() - 3 * 3600
    os.utime(store.packs_dir / f"pack-{p1}.pack", (old, old))  # p1 old, p2 young
    r = collect(store, GcOptions(expire_removed=0.0))
    actions = {p.pack: p.action for p in r.packs}
    assert actions[p2] == "young"
    assert actions[p1] != "delete", actions  # p2's derived chunks need p1's list and chunks
    assert p1 in {n[5:-5] for n in os.listdir(store.packs_dir) if n.endswith(".pack")}
    # an add of the same content deduplicates against p2's derived chunks, and reads back
    again = store.add("m2", _save(tmp_path / "v3", tuned))
    assert again.new_chunks == 0
    store.checkout("m2", tmp_path / "out")
    assert (tmp_path / "out" / "a.safetensors").read_bytes() == \
        (tmp_path / "v2" / "a.safetensors").read_bytes()
    assert store.verify().ok


def test_a_pack_rewritten_under_its_name_after_the_plan_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that avoided a doomed pack may store the same objects in the same order, which
    makes a pack of the same name: gc must not delete the new file."""
    store = Store.init(tmp_path / "s")
    d = tmp_path / "x"
    d.mkdir()
    (d / "f.bin").write_bytes(os.urandom(100_000))
    before = set(store.packs.packs)
    store.add("x", d)
    pack = _new_pack(store, before)
    store.rm("x")
    real = gc._repack

    def rewrite_then_repack(*args, **kwargs):  # type: ignore[no-untyped-def]
        for ext in ("pack", "idx"):  # same bytes, new files (as the writer's rename leaves)
            path = store.packs_dir / f"pack-{pack}.{ext}"
            shutil.copy(path, tmp_path / "copy")
            os.replace(tmp_path / "copy", path)
        return real(*args, **kwargs)

    monkeypatch.setattr(gc, "_repack", rewrite_then_repack)
    r = collect(store, GcOptions(grace=0.0, expire_removed=0.0))
    assert r.packs_deleted == 0
    assert (store.packs_dir / f"pack-{pack}.pack").exists()
