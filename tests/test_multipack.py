"""Multi-pack indexes: same answers as probing every pack, geometric merging, and damage or
staleness never turning into a wrong or missing answer."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cas import multipack
from cas.compression import CODEC_RAW
from cas.errors import SchemaError, VerifyError
from cas.format import midx as fmt
from cas.format.pack import KIND_CHUNK
from cas.ids import blake3_id
from cas.format.config import seal
from cas.packs import PackSet
from cas.packwriter import PackWriter
from cas.storage.local import LocalBackend


def make_packs(packs: Path, tmp: Path, n_packs: int, per_pack: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    ids = []
    for _ in range(n_packs):
        writer = PackWriter(LocalBackend(packs.parent), 1 << 30)
        for _ in range(per_pack):
            data = rng.randbytes(200)
            oid = blake3_id(data)
            writer.add(oid, KIND_CHUNK, CODEC_RAW, len(data), data)
            ids.append(oid)
        writer.finish()
    return ids


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "packs").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path / "packs", tmp_path / "tmp"


def test_format_round_trip_and_refusals():
    rng = random.Random(1)
    packs = [rng.randbytes(32) for _ in range(3)]
    pairs = sorted((rng.randbytes(32), rng.choice(packs)) for _ in range(500))
    data = fmt.encode(pairs, packs)
    m = fmt.Midx(data, "t")
    m.verify()
    assert all(m.lookup(oid) == p for oid, p in pairs)
    assert m.lookup(b"\xff" * 32) is None and m.lookup(b"\x00" * 32) is None
    assert list(m.pairs()) == pairs
    with pytest.raises(VerifyError, match="magic"):
        fmt.Midx(b"X" + data[1:], "t")
    with pytest.raises(VerifyError, match="size"):
        fmt.Midx(data[:-1], "t")
    bad = bytearray(data)
    bad[fmt.HEADER_SIZE + 3 * 32 + fmt.FANOUT_SIZE + 5] ^= 1
    with pytest.raises(VerifyError):
        fmt.Midx(bytes(bad), "t").verify()
    with pytest.raises(SchemaError):
        fmt.encode(list(reversed(pairs)), packs)


def test_midx_answers_like_the_packs(dirs):
    packs, tmp = dirs
    ids = make_packs(packs, tmp, 20, 30, seed=2)
    ps = PackSet(packs)
    before = {oid: ps.locate(oid).pack.id for oid in ids}
    written = multipack.maintain(ps, LocalBackend(packs.parent), tmp)
    assert written and ps.midxs and ps.uncovered() == []
    for oid in ids:
        loc = ps.locate(oid)
        assert loc is not None and loc.pack.id == before[oid] and loc.entry.oid == oid
    assert ps.locate(b"\x42" * 32) is None
    ps.close()
    # A fresh PackSet (a new process) uses the midx written on disk.
    ps2 = PackSet(packs)
    assert len(ps2.midxs) == 1 and all(ps2.has(oid) for oid in ids)
    ps2.close()


def test_geometric_merging_keeps_few_midxs(dirs):
    packs, tmp = dirs
    ids: list[bytes] = []
    ps = PackSet(packs)
    for round_ in range(12):
        ids += make_packs(packs, tmp, multipack.BATCH, 5, seed=100 + round_)
        ps.refresh()
        multipack.maintain(ps, LocalBackend(packs.parent), tmp)
        assert len(ps.midxs) <= 4, [m.midx.count for m in ps.midxs]
    assert ps.uncovered() == []
    assert len(multipack.list_midx(packs)) == len(ps.midxs)
    assert all(ps.has(oid) for oid in ids)
    assert sum(m.midx.count for m in ps.midxs) == len(ids)
    ps.close()


def test_stale_and_damaged_midxs_never_hide_objects(dirs):
    packs, tmp = dirs
    ids = make_packs(packs, tmp, 9, 20, seed=3)
    ps = PackSet(packs)
    multipack.maintain(ps, LocalBackend(packs.parent), tmp)
    (path,) = multipack.list_midx(packs)
    ps.close()
    # Damage a record's pack number: the midx points a lookup at the wrong pack.
    raw = bytearray(path.read_bytes())
    first = fmt.HEADER_SIZE + 9 * 32 + fmt.FANOUT_SIZE
    raw[first + 32] = (raw[first + 32] + 1) % 9
    path.write_bytes(bytes(raw))
    ps = PackSet(packs)
    assert all(ps.read(oid) for oid in ids)  # reads fall back to every pack index
    with pytest.raises(VerifyError):
        ps.midxs[0].midx.verify()
    ps.close()
    # A midx naming a pack that is gone is not used.
    victim = next(packs.glob("pack-*.idx"))
    victim.unlink()
    victim.with_suffix(".pack").unlink()
    ps = PackSet(packs)
    assert ps.midxs == [] and path.name in ps.stale_midx
    ps.close()


def test_store_with_many_packs_end_to_end(tmp_path):
    store = tmp_path / "store"
    cli = [sys.executable, "-m", "cas.cli.main", "--store", str(store), "--json"]
    assert subprocess.run([*cli, "init"], capture_output=True).returncode == 0
    cfg = json.loads((store / "config.json").read_text())
    cfg["pack_target_bytes"] = 1 << 20  # many small packs
    (store / "config.json").write_bytes(seal(cfg))
    src = tmp_path / "w.bin"
    src.write_bytes(random.Random(4).randbytes(28 << 20))
    assert subprocess.run([*cli, "add", "m", str(src)], capture_output=True).returncode == 0
    assert len(list((store / "packs").glob("*.pack"))) >= multipack.BATCH
    assert multipack.list_midx(store / "packs")
    out = tmp_path / "out"
    assert subprocess.run([*cli, "checkout", "m", str(out)], capture_output=True).returncode == 0
    assert (out / "w.bin").read_bytes() == src.read_bytes()
    again = subprocess.run([*cli, "add", "--rehash", "m", str(src)], capture_output=True, text=True)
    assert json.loads(again.stdout)["new_chunks"] == 0  # dedupe found everything via the midx
    (midx,) = multipack.list_midx(store / "packs")
    raw = bytearray(midx.read_bytes())
    raw[-1] ^= 1
    midx.write_bytes(bytes(raw))
    bad = subprocess.run([*cli, "verify", "--all"], capture_output=True, text=True)
    assert bad.returncode == 4 and json.loads(bad.stdout)["report"]["bad_midx"] == [midx.name]
    fixed = subprocess.run([*cli, "verify", "--all", "--repair"], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stdout
    (rebuilt,) = multipack.list_midx(store / "packs")  # same content, so the same name again
    fmt.Midx(rebuilt.read_bytes(), rebuilt.name).verify()
