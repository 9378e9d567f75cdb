"""gc on the real model series: the F16 conversion survives the removal of what it derives from.

v1 all-MiniLM-L6-v2, v2 and v3 fine-tunes, v4 with a tensor added first (every later byte
shifts), v5 every F32 tensor of v4 converted to F16, added with ``--parent NAME@4``: its
chunks are derived from v4's file. ``rm`` v1..v4 and ``gc --now`` must keep everything v5
needs (through the chain of derived chunks, that is most of v1..v4), and ``du`` must count it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cas import graph
from cas.demo import add_tensor_copy, finetune_copy
from cas.format.pack import ENTRY_HEADER_SIZE
from cas.store import Store

NAME = "org/minilm"

pytestmark = pytest.mark.slow


def _f16_copy(src: Path, dst: Path) -> None:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    save_file({k: t.astype(np.float16) if t.dtype == np.float32 else t
               for k, t in tensors.items()}, str(dst / "model.safetensors"))


def _series(real_model: Path, base: Path) -> list[Path]:
    d = [base / f"v{i}" for i in range(1, 6)]
    shutil.copytree(real_model, d[0], ignore=shutil.ignore_patterns(".gitattributes"))
    finetune_copy(d[0], d[1])
    finetune_copy(d[0], d[2], ("encoder.layer.4.", "encoder.layer.5.", "pooler."), seed=1)
    shutil.copytree(d[2], d[3])
    add_tensor_copy(d[2] / "model.safetensors", d[3] / "model.safetensors",
                    name="embeddings.aaa_extra.bias")
    _f16_copy(d[3], d[4])
    return d


def _needs(store_path: Path, spec: str) -> tuple[int, set[bytes], list[str]]:
    """Bytes (stored + entry header) and ids of what ``spec`` needs per the graph, and the
    recorded bases of its model.safetensors."""
    with Store.open(store_path) as store:
        m = store.manifest(store.resolve(spec))
        ids = graph.needs(store, [m]).ids
        sizes: dict[bytes, int] = {}
        for pack in store.packs.packs.values():
            for e in pack.entries():
                sizes.setdefault(e.oid, e.stored_len + ENTRY_HEADER_SIZE)
        bases = next(f.bases for f in m.files if f.path == "model.safetensors") or []
        return sum(sizes.get(o, 0) for o in ids), ids - sizes.keys(), bases


def test_f16_conversion_survives_rm_of_its_base_and_gc(cas, store_path: Path, real_model: Path,
                                                        tmp_path: Path) -> None:
    src = _series(real_model, tmp_path / "src")
    for i, d in enumerate(src, 1):
        cas("add", NAME, str(d), *(["--parent", f"{NAME}@4"] if i == 5 else []))
    needed, missing, bases = _needs(store_path, f"{NAME}@5")
    assert bases and not missing  # v5 is derived from v4's file, and all of it is stored

    for i in range(1, 5):
        cas("rm", f"{NAME}@{i}")
    gc = cas("--json", "gc", "--now").json
    # v5's F16 chunks are predicted from v4's file, whose changed chunks are predicted from
    # v3's, and so on back to v1: everything stays, and gc counts it all live.
    assert gc["live_bytes"] == needed

    after, missing, _ = _needs(store_path, f"{NAME}@5")
    assert not missing and after == needed
    out = tmp_path / "out"
    cas("checkout", f"{NAME}@5", str(out))
    files = sorted(p.relative_to(src[4]) for p in src[4].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for p in files:
        assert (out / p).read_bytes() == (src[4] / p).read_bytes(), p
    cas("verify", "--all")

    du = cas("--json", "du", NAME).json
    (row,) = [r for r in du["versions"] if r["version"] == f"{NAME}@5"]
    assert row["needs"] == needed  # the F16 version's bytes, its v4 bases included
    assert row["borrowed"] > 0
    store = cas("--json", "du").json
    assert store["stored"] >= needed and store["live"] == needed
