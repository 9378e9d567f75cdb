"""Recovery never bricks the store: a pack that cannot be indexed (a stray empty file, a cut
pack without its index, a damaged pack whose index is unreadable) is moved to
``packs/quarantine/``, reported by ``verify``, never deleted; writers go on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from conftest import run_json as run


@pytest.fixture
def store(tmp_path: Path) -> Path:
    st = tmp_path / "store"
    assert run(st, "init")[0] == 0
    src = tmp_path / "w.bin"
    src.write_bytes(random.Random(1).randbytes(600_000))
    assert run(st, "add", "m", str(src))[0] == 0
    return st


def new_file(tmp_path: Path, seed: int) -> Path:
    src = tmp_path / f"n{seed}.bin"
    src.write_bytes(random.Random(seed).randbytes(300_000))
    return src


def test_stray_empty_pack_is_quarantined_and_writers_go_on(store: Path, tmp_path: Path) -> None:
    stray = store / "packs" / f"pack-{'ab' * 32}.pack"
    stray.touch()
    code, doc = run(store, "add", "n", str(new_file(tmp_path, 2)))
    assert code == 0, doc
    assert not stray.exists()
    assert (store / "packs" / "quarantine" / stray.name).stat().st_size == 0
    code, doc = run(store, "verify", "--all")
    assert code == 0, doc  # nothing a version needs was in it
    assert doc["quarantined"] == [f"quarantine/{stray.name}"]
    assert [w["code"] for w in doc["warnings"]] == ["W_QUARANTINED"]


def test_cut_pack_without_index_is_quarantined(store: Path, tmp_path: Path) -> None:
    (pack,) = (store / "packs").glob("pack-*.pack")
    (idx,) = (store / "packs").glob("pack-*.idx")
    data = pack.read_bytes()
    idx.unlink()
    pack.write_bytes(data[: len(data) // 2])
    code, doc = run(store, "verify", "--all")
    assert code == 4
    assert any("cannot be indexed" in p for p in doc["report"]["problems"])
    code, doc = run(store, "verify", "--all", "--repair")
    assert code == 4  # m@1's chunks are gone: the version is named as broken
    report = doc["report"]
    assert report["quarantined"] == [f"quarantine/{pack.name}"]
    assert report["repaired_indexes"] == []  # set aside, not rebuilt
    assert [b["version"] for b in report["broken_versions"]] == ["m@1"]
    assert (store / "packs" / "quarantine" / pack.name).read_bytes() == data[: len(data) // 2]
    assert run(store, "add", "n", str(new_file(tmp_path, 3)))[0] == 0
    assert run(store, "checkout", "n", str(tmp_path / "out"))[0] == 0


def test_damaged_pack_with_unreadable_index_is_quarantined_by_any_writer(
        store: Path, tmp_path: Path) -> None:
    (pack,) = (store / "packs").glob("pack-*.pack")
    (idx,) = (store / "packs").glob("pack-*.idx")
    with open(pack, "r+b") as f:
        f.write(b"garbage!")  # header: the pack cannot be scanned
    idx.write_bytes(b"not an index")
    assert run(store, "tag", "m", "kept")[0] == 0  # a writer: recovery runs first
    moved = sorted(p.name for p in (store / "packs" / "quarantine").iterdir())
    assert moved == sorted([pack.name, idx.name])
    code, doc = run(store, "verify", "--all")
    assert code == 4 and [b["version"] for b in doc["report"]["broken_versions"]] == ["m@1"]
    assert doc["report"]["bad_indexes"] == []  # nothing left to repair


def test_same_name_twice_keeps_both(store: Path, tmp_path: Path) -> None:
    stray = store / "packs" / f"pack-{'cd' * 32}.pack"
    for seed in (4, 5):
        stray.write_bytes(b"x" * seed)
        assert run(store, "add", f"n{seed}", str(new_file(tmp_path, seed)))[0] == 0
    q = store / "packs" / "quarantine"
    assert sorted(p.read_bytes() for p in q.iterdir()) == [b"x" * 4, b"x" * 5]


def test_an_index_whose_pack_is_gone_vouches_for_nothing(store: Path, tmp_path: Path) -> None:
    """An index left without its pack (damage, or a file put there by hand) must not make an
    add dedupe against objects nothing holds: readers set it aside, the next writer moves it to
    quarantine, and the re-added bytes are stored again."""
    src = new_file(tmp_path, 21)
    assert run(store, "add", "n", str(src))[0] == 0
    packs = store / "packs"
    newest = max(packs.glob("pack-*.pack"), key=lambda p: p.stat().st_mtime_ns)
    newest.unlink()  # its index stays
    code, doc = run(store, "add", "again", str(src))
    assert code == 0 and doc["new_chunks"] > 0, doc
    assert (packs / "quarantine" / (newest.stem + ".idx")).exists()
    code, doc = run(store, "verify", "--all")  # the bytes stored again restore n@1 too
    assert code == 0 and doc["ok"], doc
    assert doc["quarantined"] == [f"quarantine/{newest.stem}.idx"]
    out = tmp_path / "out"
    assert run(store, "checkout", "again", str(out))[0] == 0
    assert (out / src.name).read_bytes() == src.read_bytes()
