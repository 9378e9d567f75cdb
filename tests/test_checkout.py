"""Checkout assembles files in windows: chunks that cross window edges, unaligned tails,
empty files and damage in the middle of a file."""

from __future__ import annotations

import random
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
