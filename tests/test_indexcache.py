"""Folder remotes: the far store's pack indexes and midxs are fetched once into the local
store's cache (verified), read from there afterwards, and pruned when the far side drops them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CasCli, model_folder


def _cache(store: Path, far: Path) -> Path:
    uuid = json.loads((far / "config.json").read_bytes())["uuid"]
    return store / "cache" / "remotes" / uuid


def _far_indexes(far: Path) -> set[str]:
    return {p.name for p in (far / "packs").iterdir() if p.suffix in (".idx", ".midx")}


def test_far_indexes_are_read_once_then_from_the_cache(tmp_path: Path) -> None:
    a = CasCli(tmp_path / "a")
    a("init")
    far = tmp_path / "far"
    a("remote", "add", "origin", str(far))
    a("add", "org/one", str(model_folder(tmp_path / "m1", 1, 300_000)))
    a("push")
    cache = _cache(tmp_path / "a", far)
    assert {p.name for p in cache.iterdir()} == _far_indexes(far) != set()
    # The far indexes are not read again: replaced by garbage, a no-op push still knows
    # everything is there, and a pull finds nothing to take.
    originals = {}
    for name in _far_indexes(far):
        originals[name] = (far / "packs" / name).read_bytes()
        (far / "packs" / name).write_bytes(b"garbage")
    again = a("push", "--json").json
    assert again["objects_sent"] == 0 and {r["status"] for r in again["refs"]} == {"up-to-date"}
    for name, data in originals.items():
        (far / "packs" / name).write_bytes(data)
    # A new pack is fetched once into the cache, next to the others.
    a("add", "org/two", str(model_folder(tmp_path / "m2", 2, 300_000)))
    a("push")
    assert {p.name for p in cache.iterdir()} == _far_indexes(far)
    assert len(_far_indexes(far)) == len(originals) + 1


def test_a_damaged_far_index_is_not_cached_and_gone_packs_are_pruned(tmp_path: Path) -> None:
    a, b = CasCli(tmp_path / "a"), CasCli(tmp_path / "b")
    a("init")
    b("init")
    far = tmp_path / "far"
    a("remote", "add", "origin", str(far))
    b("remote", "add", "origin", str(far))
    a("add", "org/one", str(model_folder(tmp_path / "m1", 1, 300_000)))
    a("push")
    # b has never seen the far store; its one index is damaged before b reads it.
    [name] = _far_indexes(far)
    good = (far / "packs" / name).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    (far / "packs" / name).write_bytes(bytes(bad))
    b("fetch")
    cache = _cache(tmp_path / "b", far)
    assert not (cache / name).exists()  # refused, not cached
    (far / "packs" / name).write_bytes(good)
    b("pull")
    assert (cache / name).read_bytes() == good
    b("verify", "--all")
    # The far store drops the model and collects its pack: the copy goes at the next contact.
    far_cli = CasCli(far)
    far_cli("rm", "org/one", "--force")
    far_cli("gc", "--now")
    assert name not in _far_indexes(far)
    b("fetch")
    assert not (cache / name).exists()
