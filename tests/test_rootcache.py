"""The roots cache (cas.rootcache): a gc of an unchanged store walks no model history, and a
damaged or foreign cache is never believed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cas import Store
from cas.gc import GcOptions, collect
from cas.registry import Registry
from cas.rootcache import NAME


def _versions(tmp_path: Path, store: Store, name: str, n: int) -> None:
    for i in range(n):
        d = tmp_path / f"{name}-{i}"
        d.mkdir(parents=True)
        (d / "w.bin").write_bytes(bytes([i]) * 50_000 + name.encode())
        store.add(name, d)


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = Registry.state

    def counting(self: Registry, name: str):  # type: ignore[no-untyped-def]
        seen.append(name)
        return real(self, name)

    monkeypatch.setattr(Registry, "state", counting)
    return seen


NOW = GcOptions(grace=0.0, expire_removed=0.0)


def test_gc_of_an_unchanged_store_walks_no_history(tmp_path: Path, walks: list[str]) -> None:
    store = Store.init(tmp_path / "s")
    _versions(tmp_path, store, "a", 3)
    _versions(tmp_path, store, "b", 2)
    collect(store, NOW)
    assert sorted(set(walks)) == ["a", "b"]
    walks.clear()
    collect(store, NOW)
    assert walks == []  # both refs unchanged: summaries and manifests from the cache
    _versions(tmp_path / "more", store, "b", 1)
    walks.clear()
    store.rm("a@1")
    r = collect(store, NOW)
    assert sorted(set(walks)) == ["a", "b"]  # both moved (rm, add)
    assert r.packs_deleted == 1  # a@1's pack: removed and expired at once
    assert store.verify().ok


def test_a_damaged_or_foreign_cache_is_not_believed(tmp_path: Path, walks: list[str]) -> None:
    store = Store.init(tmp_path / "s")
    _versions(tmp_path, store, "a", 2)
    collect(store, NOW)
    path = store.path / NAME
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))
    walks.clear()
    collect(store, NOW)
    assert walks == ["a"]  # the damaged file was ignored and rebuilt
    # another store's cache copied in (same model name, other versions) is not used either
    other = Store.init(tmp_path / "o")
    _versions(tmp_path / "o-in", other, "a", 1)
    collect(other, NOW)
    shutil.copy(other.path / NAME, path)
    walks.clear()
    r = collect(store, NOW)
    assert walks == ["a"] and r.roots == {"live": 2}
    assert store.verify().ok
