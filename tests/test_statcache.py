"""The stat cache cannot lie: a damaged cache is discarded with a warning and rebuilt; an
entry whose claims the store contradicts is read again; nothing it says can register a
version that restores other bytes than the files added."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from cas import Store
from cas.statcache import DAMAGED, StatCache, _Entry, decode, encode

SIZE = 6000  # files of the same size: a swap of their chunk lists keeps every size right


def _age(*paths: Path) -> None:
    """Move mtimes a minute back: the stat cache keeps only files older than the add."""
    for p in paths:
        t = p.stat().st_mtime - 60
        os.utime(p, (t, t))


def _model(src: Path) -> Path:
    src.mkdir(parents=True, exist_ok=True)
    for name, fill in (("a.bin", b"a"), ("b.bin", b"b"), ("c.bin", b"c")):
        (src / name).write_bytes(fill * SIZE)
    _age(*src.iterdir())
    return src


def _cache_file(store: Path) -> Path:
    return store / "cache" / "stat.msgpack"


def _digest(store: Path, src: Path, name: str) -> tuple[str, str]:
    """(sha256, chunk list id) of ``name`` as version 1 registered it."""
    s = Store.open(store)
    try:
        f = next(f for f in s.manifest(s.resolve("m@1")).files if f.path == name)
        return f.sha256, f.chunks
    finally:
        s.close()


def _second_version(cas, src: Path) -> dict:
    """Change c.bin and add again: a.bin and b.bin come from the stat cache."""
    (src / "c.bin").write_bytes(b"C" * SIZE)
    return cas("--json", "add", "m", str(src)).json


def _restores(cas, tmp_path: Path, src: Path) -> None:
    """Version 2 checks out to exactly the files added, and verify agrees."""
    dest = tmp_path / "out"
    cas("checkout", "m@2", str(dest))
    for name in ("a.bin", "b.bin", "c.bin"):
        assert (dest / name).read_bytes() == (src / name).read_bytes(), name
    assert cas("--json", "verify", "--all").json["ok"]


def _replace_in_file(path: Path, pairs: list[tuple[str, str]]) -> None:
    data = path.read_bytes()
    marker = [f"\x00{i}\x00".encode() for i in range(len(pairs))]
    for (old, _), m in zip(pairs, marker):
        assert data.count(old.encode()) == 1, old
        data = data.replace(old.encode(), m)
    for (_, new), m in zip(pairs, marker):
        data = data.replace(m, new.encode())
    path.write_bytes(data)


def test_one_changed_digit_of_a_cached_sha256_never_registers_a_wrong_version(
        cas, store_path, tmp_path):
    src = _model(tmp_path / "src")
    cas("add", "m", str(src))
    sha, _ = _digest(store_path, src, "a.bin")
    wrong = sha[:10] + ("0" if sha[10] != "0" else "1") + sha[11:]
    _replace_in_file(_cache_file(store_path), [(sha, wrong)])
    r = _second_version(cas, src)
    assert r["seq"] == 2
    assert [w["code"] for w in r["warnings"]] == [DAMAGED]
    assert "stat cache" in r["warnings"][0]["message"]
    _restores(cas, tmp_path, src)
    assert hashlib.sha256((src / "a.bin").read_bytes()).hexdigest() == sha


def test_swapped_chunk_lists_of_two_same_size_files_never_register_a_wrong_version(
        cas, store_path, tmp_path):
    src = _model(tmp_path / "src")
    cas("add", "m", str(src))
    _, a = _digest(store_path, src, "a.bin")
    _, b = _digest(store_path, src, "b.bin")
    _replace_in_file(_cache_file(store_path), [(a, b), (b, a)])
    r = _second_version(cas, src)
    assert [w["code"] for w in r["warnings"]] == [DAMAGED]
    _restores(cas, tmp_path, src)


def test_a_non_hex_digit_in_the_cache_does_not_stop_every_add(cas, store_path, tmp_path):
    src = _model(tmp_path / "src")
    cas("add", "m", str(src))
    _, a = _digest(store_path, src, "a.bin")
    _replace_in_file(_cache_file(store_path), [(a, "g" + a[1:])])
    r = _second_version(cas, src)
    assert [w["code"] for w in r["warnings"]] == [DAMAGED]
    # The damaged cache was rebuilt: the next add trusts it again, without a warning.
    (src / "c.bin").write_bytes(b"3" * SIZE)
    _age(src / "c.bin")
    again = cas("--json", "add", "m", str(src)).json
    assert again["seq"] == 3 and again["warnings"] == [] and again["stat_cache_hits"] == 2
    text = cas("add", "m", str(src))
    assert text.code == 0 and DAMAGED not in text.err


def _reseal(store: Path, edit) -> None:
    """Rewrite the cache with ``edit`` applied to its entries and a valid checksum: a cache
    whose checksum cannot catch the lie (a bug in a writer, or a crafted file)."""
    s = Store.open(store)
    uuid = s.config.uuid
    s.close()
    path = _cache_file(store)
    entries, contents, damage = decode(path.read_bytes(), uuid)
    assert damage is None and entries
    edit(entries)
    path.write_bytes(encode(uuid, entries, contents))


def _entry(entries: dict, name: str):
    return next(e for p, e in entries.items() if p.endswith("/" + name))


@pytest.mark.parametrize("lie", ["sha256", "swap", "other-size", "missing"])
def test_what_a_sealed_cache_vouches_for_is_confirmed_before_a_version_names_it(
        cas, store_path, tmp_path, lie):
    src = _model(tmp_path / "src")
    (src / "small.bin").write_bytes(b"s" * 100)
    _age(src / "small.bin")
    cas("add", "m", str(src))
    _, small = _digest(store_path, src, "small.bin")

    def edit(entries: dict) -> None:
        a, b = _entry(entries, "a.bin"), _entry(entries, "b.bin")
        if lie == "sha256":
            a.digest = msgspec.structs.replace(a.digest, sha256="0" * 64)
        elif lie == "swap":
            a.digest, b.digest = (msgspec.structs.replace(a.digest, chunks=b.digest.chunks),
                                  msgspec.structs.replace(b.digest, chunks=a.digest.chunks))
        elif lie == "other-size":
            a.digest = msgspec.structs.replace(a.digest, chunks=small)
        else:
            a.digest = msgspec.structs.replace(a.digest, chunks="e" * 64)

    _reseal(store_path, edit)
    r = _second_version(cas, src)
    assert r["seq"] == 2 and r["warnings"] == []
    # small.bin stays a hit; a.bin (and b.bin, for the swap) are read again.
    assert r["stat_cache_hits"] == (1 if lie == "swap" else 2)
    if lie == "sha256":
        assert r["stale_cache"] == ["a.bin"]  # read, and found to differ from what it said
    _restores(cas, tmp_path, src)


def test_a_cache_of_an_older_layout_is_discarded_silently_and_rewritten(cas, store_path,
                                                                         tmp_path):
    src = _model(tmp_path / "src")
    cas("add", "m", str(src))
    path = _cache_file(store_path)
    # The layout cas wrote before the cache carried a checksum (format version 3 of it).
    path.write_bytes(msgspec.msgpack.encode({"version": 3, "entries": {}, "contents": {}}))
    r = _second_version(cas, src)
    assert r["warnings"] == [] and r["stat_cache_hits"] == 0
    assert path.read_bytes().startswith(b"CASSTAT\x00")
    _restores(cas, tmp_path, src)


def test_a_cache_of_another_store_is_not_used(tmp_path):
    src = _model(tmp_path / "src")
    a = Store.init(tmp_path / "a")
    a.add("m", src)
    a.close()
    b = Store.init(tmp_path / "b")
    (tmp_path / "b" / "cache" / "stat.msgpack").write_bytes(
        _cache_file(tmp_path / "a").read_bytes())
    r = b.add("m", src)
    assert r.stat_cache_hits == 0 and r.warnings == []
    assert b.add("m", src).stat_cache_hits == 3  # its own cache, rebuilt
    b.close()


def test_invalid_entries_are_dropped_and_the_others_kept(tmp_path):
    good = [[SIZE, 1, 2, 0o100644, 3], [SIZE, "a" * 64, "b" * 64, False]]
    body = {
        "store": "",
        "entries": {
            "/ok": good,
            "/non-hex": [good[0], [SIZE, "g" * 64, "b" * 64, False]],
            "/short-id": [good[0], [SIZE, "a" * 64, "b" * 63, False]],
            "/sizes-disagree": [good[0], [SIZE + 1, "a" * 64, "b" * 64, False]],
            "relative": good,
            "/negative": [[-1, 1, 2, 3, 4], [-1, "a" * 64, "b" * 64, False]],
            "/not-a-list": 7,
        },
        "contents": {"c" * 40: "d" * 64, "short": "d" * 64, "e" * 40: 5},
    }
    from cas.ids import blake3_id
    from cas.statcache import _HEADER, MAGIC, VERSION
    from cas.storage.local import LocalBackend

    raw = _HEADER.pack(MAGIC, VERSION, 0) + msgspec.msgpack.encode(body)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "stat.msgpack").write_bytes(raw + blake3_id(raw))
    cache = StatCache(LocalBackend(tmp_path))
    assert list(cache.entries) == ["/ok"] and cache.contents == {"c" * 40: "d" * 64}
    assert [w.code for w in cache.warnings] == [DAMAGED]
    assert "8 invalid entries" in cache.warnings[0].message
    cache.save()  # rewritten without them
    again = StatCache(LocalBackend(tmp_path))
    assert list(again.entries) == ["/ok"] and again.warnings == []


def test_damage_anywhere_in_the_file_is_found(tmp_path):
    """Every single-bit flip and every truncation discards the file with a warning."""
    key = [SIZE, 1, 2, 0o100644, 3]
    entry = msgspec.convert([key, [SIZE, "a" * 64, "b" * 64, False]], type=_Entry)
    data = encode("", {"/p": entry}, {"c" * 40: "d" * 64})
    assert decode(data, "")[2] is None
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            entries, contents, damage = decode(bytes(bad), "")
            assert damage is not None and not entries and not contents, (i, bit)
    for n in range(len(data)):
        entries, _, damage = decode(data[:n], "")
        assert not entries and damage is not None, n
