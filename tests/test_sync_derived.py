"""Derived chunks across a sync: a fine-tune stored as residuals travels with its bases (and
decodes on arrival); a receiver made with --no-derive gets plain copies instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from cas import Store, sync
from cas.compression import CODEC_DERIVED


def _save(d: Path, tensors: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(d / "model.safetensors"))
    return d


def _derived(store: Store) -> int:
    store.packs.refresh()
    return sum(1 for pack in store.packs.packs.values() for e in pack.entries()
               if e.codec == CODEC_DERIVED)


def _two_versions(tmp_path: Path) -> Store:
    rng = np.random.default_rng(3)
    base = {f"layer.{i}.weight": (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
            for i in range(4)}
    tuned = {k: v + (rng.standard_normal(v.shape) * 1e-4).astype(np.float32)
             for k, v in base.items()}
    store = Store.init(tmp_path / "src")
    store.add("org/m", _save(tmp_path / "v1", base))
    store.add("org/m", _save(tmp_path / "v2", tuned))
    assert _derived(store) > 0  # the fine-tune is stored as residuals
    return store


def test_derived_chunks_travel_with_their_bases(tmp_path: Path) -> None:
    src = _two_versions(tmp_path)
    r = sync.push(src, str(tmp_path / "far"))
    assert r.packs >= 2  # bases in an earlier transfer pack than what is derived from them
    with Store.open(tmp_path / "far") as far:
        assert _derived(far) == _derived(src)
        assert far.verify(None).ok
        far.checkout("org/m@2", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        (tmp_path / "v2" / "model.safetensors").read_bytes()


def test_a_no_derive_receiver_gets_plain_copies(tmp_path: Path) -> None:
    src = _two_versions(tmp_path)
    Store.init(tmp_path / "plain", derive=False).close()
    sync.push(src, str(tmp_path / "plain"))
    with Store.open(tmp_path / "plain") as far:
        assert _derived(far) == 0
        assert far.verify(None).ok
        far.checkout("org/m@2", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        (tmp_path / "v2" / "model.safetensors").read_bytes()
    # and the other way: a pull into a --no-derive store
    dst = Store.init(tmp_path / "plain2", derive=False)
    sync.pull(dst, str(tmp_path / "src"))
    assert _derived(dst) == 0 and dst.verify(None).ok
