"""Checkout assembles large files in windows: chunks that cross window edges, unaligned tails,
empty files and damage in the middle of a file. Small files are batched: each is durable
before its name appears, and every folder whose entries changed is synced."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from cas import Store, checkout
from cas.errors import VerifyError
from cas.fsutil import DIRECT_ALIGN


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows of three pages and decode tasks of two, so that a few hundred KB cross many
    window edges (chunks average 64 KiB, far larger than a window)."""
    monkeypatch.setattr(checkout, "WINDOW", 3 * DIRECT_ALIGN)
    monkeypatch.setattr(checkout, "PART", 2 * DIRECT_ALIGN)


def _files(d: Path) -> dict[str, bytes]:
    rng = random.Random(7)
    sizes = {"empty": 0, "one": 1, "page": DIRECT_ALIGN, "window": 3 * DIRECT_ALIGN,
             "window+1": 3 * DIRECT_ALIGN + 1, "big": 700_001, "bigger": 2_000_000}
    out = {}
    d.mkdir()
    for name, n in sizes.items():
        data = rng.randbytes(n)
        (d / name).write_bytes(data)
        out[name] = data
    return out


@pytest.mark.parametrize("windows", ["small", "default"])
def test_every_size_round_trips(tmp_path: Path, windows: str,
                                request: pytest.FixtureRequest) -> None:
    if windows == "small":
        request.getfixturevalue("small_windows")
    want = _files(tmp_path / "src")
    store = Store.init(tmp_path / "store")
    store.add("m", tmp_path / "src")
    store.checkout("m", tmp_path / "out")
    for name, data in want.items():
        assert (tmp_path / "out" / name).read_bytes() == data, name
    store.close()


def test_damage_in_the_middle_of_a_file_leaves_nothing_and_next_files_work(
        tmp_path: Path, small_windows: None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(9)
    (src / "a").write_bytes(rng.randbytes(1_500_000))
    store = Store.init(tmp_path / "store")
    store.add("good", src)
    (tmp_path / "src2").mkdir()
    (tmp_path / "src2" / "b").write_bytes(rng.randbytes(1_500_000))
    store.add("bad", tmp_path / "src2")
    store.close()
    # damage one byte in the middle of the second pack's data (model "bad")
    packs = sorted((tmp_path / "store" / "packs").glob("*.pack"), key=lambda p: p.stat().st_size)
    target = max(packs, key=lambda p: p.stat().st_mtime_ns)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x55
    target.write_bytes(bytes(data))
    store = Store.open(tmp_path / "store")
    with pytest.raises(VerifyError):
        store.checkout("bad", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no final file, no temp left behind
    store.checkout("good", tmp_path / "out2")
    assert (tmp_path / "out2" / "a").read_bytes() == (src / "a").read_bytes()
    store.close()


def test_cached_checkout_writes_the_same_bytes_without_direct_io(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--cached: the page cache is used (no O_DIRECT is ever turned on), the bytes are equal."""
    from cas import fsutil

    want = _files(tmp_path / "src")
    store = Store.init(tmp_path / "store")
    store.add("m", tmp_path / "src")
    turned_on = []
    real = fsutil._set_direct
    monkeypatch.setattr(fsutil, "_set_direct",
                        lambda fd, on: (turned_on.append(on) if on else None) or real(fd, on))
    store.checkout("m", tmp_path / "cached", cached=True)
    assert turned_on == []
    for name, data in want.items():
        assert (tmp_path / "cached" / name).read_bytes() == data, name
    store.checkout("m", tmp_path / "direct")
    assert True in turned_on  # the default does ask for direct writes on big files
    store.close()


def test_cli_cached_flag(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(11).randbytes(2_500_000)
    (src / "w.bin").write_bytes(data)
    cas("add", "m", str(src))
    r = cas("--json", "checkout", "m", str(tmp_path / "out"), "--cached")
    assert r.json["ok"] and r.json["files"] == 1
    assert (tmp_path / "out" / "w.bin").read_bytes() == data


def _final_name(temp: str) -> str:
    return re.sub(r"\.\d+\.[0-9a-f]{8}\.cas-tmp$", "", temp[1:])


def _small_tree(d: Path, n: int = 12) -> dict[str, bytes]:
    rng = random.Random(13)
    out = {}
    for i in range(n):
        rel = f"{'ab'[i % 2]}/{'xy'[i % 3 % 2]}/f{i}.bin" if i % 4 else f"top{i}.bin"
        out[rel] = rng.randbytes(rng.randint(0, 4096))
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(out[rel])
    return out


@pytest.mark.parametrize("batch_bytes", [64 << 20, 5000], ids=["one-batch", "many-batches"])
def test_small_files_are_durable_before_their_names_appear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_bytes: int) -> None:
    """Small files: one syncfs per batch, before any file of the batch is renamed."""
    want = _small_tree(tmp_path / "src")
    store = Store.init(tmp_path / "store")
    store.add("m", tmp_path / "src")
    dest = tmp_path / "out"
    seen: list[tuple[int, int]] = []  # per syncfs: (temps present, of which the final exists)

    def recording_syncfs(fd: int) -> None:
        temps = [p for p in dest.rglob("*.cas-tmp")]
        finals = [t.parent / _final_name(t.name) for t in temps]
        seen.append((len(temps), sum(1 for f in finals if f.exists())))
        os.sync()

    monkeypatch.setattr(checkout, "_syncfs_function", lambda: recording_syncfs)
    monkeypatch.setattr(checkout, "_syncfs_flushes", lambda fd: True)
    monkeypatch.setattr(checkout, "FSYNC_MAX_FILES", 4)
    monkeypatch.setattr(checkout, "BATCH_BYTES", batch_bytes)
    store.checkout("m", dest)
    assert sum(n for n, _ in seen) == len(want) and all(f == 0 for _, f in seen)
    assert len(seen) == 1 if batch_bytes > 1 << 20 else len(seen) > 2
    for rel, data in want.items():
        assert (dest / rel).read_bytes() == data
    assert not list(dest.rglob("*.cas-tmp"))
    store.close()


def test_without_syncfs_each_small_file_is_fsynced_and_folders_are_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _small_tree(tmp_path / "src")
    store = Store.init(tmp_path / "store")
    store.add("m", tmp_path / "src")
    dest = tmp_path / "new" / "out"
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".cas-tmp"):  # a temp: its final name must not exist yet
            name = _final_name(os.path.basename(path))
            assert not os.path.exists(os.path.join(os.path.dirname(path), name))
        synced.append(path)
        real_fsync(fd)

    monkeypatch.setattr(checkout, "_syncfs_function", lambda: None)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.checkout("m", dest)
    assert len([p for p in synced if p.endswith(".cas-tmp")]) == len(want)
    # every folder whose entries changed: the new ones, and the parents they were made in
    folders = {os.path.realpath(p) for p in synced if os.path.isdir(p)}
    expect = {dest, tmp_path / "new", tmp_path, *(dest / r for r in ("a", "b", "a/x", "a/y",
                                                                     "b/x", "b/y"))}
    assert {str(p) for p in expect if p.exists()} <= folders
    for rel, data in want.items():
        assert (dest / rel).read_bytes() == data
    store.close()


@pytest.mark.parametrize("case", ["few-files", "unknown-filesystem"])
def test_small_files_are_fsynced_one_by_one_where_syncfs_does_not_pay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Fewer than FSYNC_MAX_FILES small files, or a filesystem whose syncfs is not known to
    write files back (FUSE here): an fsync per temp before its rename, no syncfs."""
    want = _small_tree(tmp_path / "src", n=12 if case == "few-files" else 40)
    store = Store.init(tmp_path / "store")
    store.add("m", tmp_path / "src")
    syncfs_calls: list[int] = []
    monkeypatch.setattr(checkout, "_syncfs_function", lambda: syncfs_calls.append)
    if case == "unknown-filesystem":
        monkeypatch.setattr(checkout, "_fs_type", lambda fd: 0x65735546)  # FUSE_SUPER_MAGIC
    else:
        monkeypatch.setattr(checkout, "_fs_type", lambda fd: 0xEF53)  # ext4
    temps_synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(".cas-tmp"):
            assert not os.path.exists(os.path.join(os.path.dirname(path),
                                                   _final_name(os.path.basename(path))))
            temps_synced.append(path)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.checkout("m", tmp_path / "out")
    store.close()
    assert syncfs_calls == [] and len(temps_synced) == len(want)
    for rel, data in want.items():
        assert (tmp_path / "out" / rel).read_bytes() == data


def test_many_small_files_on_a_known_filesystem_take_one_syncfs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = _small_tree(tmp_path / "src", n=40)
    store = Store.init(tmp_path / "store")
    store.add("m", tmp_path / "src")
    syncfs_calls: list[int] = []
    monkeypatch.setattr(checkout, "_syncfs_function", lambda: syncfs_calls.append)
    monkeypatch.setattr(checkout, "_fs_type", lambda fd: 0x58465342)  # xfs
    store.checkout("m", tmp_path / "out")
    store.close()
    assert len(syncfs_calls) == 1 and len(want) >= checkout.FSYNC_MAX_FILES


def test_the_filesystem_type_is_read() -> None:
    """fstatfs's f_type, as the kernel's magic numbers (procfs: 0x9fa0)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no procfs")
    fd = os.open("/proc/self", os.O_RDONLY)
    try:
        assert checkout._fs_type(fd) == 0x9FA0
        assert not checkout._syncfs_flushes(fd)
    finally:
        os.close(fd)
