"""``cas add --tag``: conflicts are found before any data is stored; --force-tag moves a tag;
a tag already on the version that ends up registered is a no-op."""

from __future__ import annotations

import os
from pathlib import Path

from cas.registry import tag_ref
from cas.store import Store


def _packs(store: Path) -> list[str]:
    return sorted(p for p in os.listdir(store / "packs") if p.endswith(".pack"))


def _tag_object(store: Path, name: str, tag: str) -> bytes:
    s = Store.open(store)
    try:
        return s.registry.repo.refs[tag_ref(name, tag)]
    finally:
        s.close()


def _model(src: Path, seed: int, size: int = 3 << 20) -> Path:
    """A folder with one big file (a late refusal would have packed it) and a small one."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "weights.bin").write_bytes(os.urandom(size) if seed else bytes(size))
    (src / "config.json").write_bytes(b'{"seed": %d}' % seed)
    _age(src / "weights.bin", src / "config.json")
    return src


def _age(*paths: Path) -> None:
    """Move mtimes a minute back: the stat cache keeps only files older than the add."""
    for p in paths:
        t = p.stat().st_mtime - 60
        os.utime(p, (t, t))


def test_a_tag_on_the_latest_version_is_refused_before_changed_content_is_stored(
        cas, store_path, tmp_path):
    src = _model(tmp_path / "src", 1)
    assert cas("--json", "add", "m", str(src), "--tag", "prod").json["seq"] == 1
    (src / "weights.bin").write_bytes(os.urandom(3 << 20))  # same size, new bytes
    packs = _packs(store_path)
    r = cas("--json", "add", "m", str(src), "--tag", "prod", ok=False)
    assert r.code == 10 and r.json["error"]["code"] == "E_CONFLICT"
    assert "m@prod" in r.json["error"]["message"] and "--force-tag" in r.json["error"]["message"]
    assert _packs(store_path) == packs  # nothing was stored
    assert os.listdir(store_path / "tmp") == []
    (src / "extra.bin").write_bytes(os.urandom(1 << 20))  # a new file: refused without reading
    r = cas("--json", "add", "m", str(src), "--tag", "prod", ok=False)
    assert r.json["error"]["code"] == "E_CONFLICT" and "extra.bin" in r.json["error"]["message"]
    assert _packs(store_path) == packs
    assert cas("--json", "show", "m").json["seq"] == 1


def test_a_tag_on_an_older_version_is_refused_before_anything_is_read(cas, store_path,
                                                                      tmp_path):
    cas("add", "m", str(_model(tmp_path / "v1", 1)), "--tag", "prod")
    cas("add", "m", str(_model(tmp_path / "v2", 2)))
    packs = _packs(store_path)
    for content in (tmp_path / "v2", _model(tmp_path / "v3", 3)):  # unchanged, changed
        r = cas("--json", "add", "m", str(content), "--tag", "prod", ok=False)
        assert r.json["error"]["code"] == "E_CONFLICT"
        assert _packs(store_path) == packs
    assert cas("--json", "show", "m@prod").json["seq"] == 1


def test_force_tag_moves_the_tag_in_the_same_command(cas, tmp_path):
    cas("add", "m", str(_model(tmp_path / "v1", 1)), "--tag", "prod", "--tag", "stable")
    r = cas("--json", "add", "m", str(_model(tmp_path / "v2", 2)), "--tag", "prod",
            "--force-tag").json
    assert r["created"] and r["seq"] == 2 and r["tags"] == ["prod"]
    assert cas("--json", "show", "m@prod").json["seq"] == 2
    assert cas("--json", "show", "m@stable").json["seq"] == 1
    # Unchanged content: the tag moves back onto the latest version, and no version is made.
    cas("add", "m", str(_model(tmp_path / "v3", 3)))
    r = cas("--json", "add", "m", str(tmp_path / "v3"), "--tag", "stable", "--force-tag").json
    assert not r["created"] and r["seq"] == 3
    assert cas("--json", "show", "m@stable").json["seq"] == 3


def test_a_tag_already_on_the_unchanged_version_is_a_no_op(cas, store_path, tmp_path):
    src = _model(tmp_path / "src", 1)
    cas("add", "m", str(src), "--tag", "prod")
    before = _tag_object(store_path, "m", "prod")
    packs = _packs(store_path)
    _age(src / "weights.bin")  # the stat cache no longer vouches: the file is re-read
    r = cas("--json", "add", "m", str(src), "--tag", "prod", "--tag", "prod", "--tag", "new").json
    assert not r["created"] and r["seq"] == 1 and r["tags"] == ["prod", "new"]
    assert _tag_object(store_path, "m", "prod") == before  # not rewritten
    assert cas("--json", "show", "m@new").json["seq"] == 1
    assert _packs(store_path) == packs
    # The files read to prove it are now known to the stat cache.
    again = cas("--json", "add", "m", str(src), "--tag", "prod").json
    assert again["stat_cache_hits"] == 2 and again["bytes_hashed"] == 0


def test_a_new_tag_on_changed_content_tags_the_new_version(cas, tmp_path):
    cas("add", "m", str(_model(tmp_path / "v1", 1)), "--tag", "prod")
    r = cas("--json", "add", "m", str(_model(tmp_path / "v2", 2)), "--tag", "next").json
    assert r["created"] and r["seq"] == 2
    assert cas("--json", "show", "m@next").json["seq"] == 2
    assert cas("--json", "show", "m@prod").json["seq"] == 1


def test_a_tag_differing_only_in_case_is_refused_before_anything_is_stored(cas, store_path,
                                                                            tmp_path):
    cas("add", "m", str(_model(tmp_path / "a", 1, 1000)), "--tag", "prod")
    before = _packs(store_path)
    r = cas("--json", "add", "m", str(_model(tmp_path / "b", 2, 1000)), "--tag", "PROD",
            ok=False).json
    assert r["error"]["code"] == "E_CONFLICT" and "case" in r["error"]["message"]
    assert _packs(store_path) == before
    assert [v["seq"] for v in cas("--json", "ls", "-l").json["versions"]] == [1]


def test_a_failure_after_the_commit_point_is_a_warning_not_an_error(cas, store_path, tmp_path):
    """The stat cache cannot be saved (its path is a folder): the version is registered, so
    the add exits 0 with W_STAT_CACHE_NOT_SAVED instead of E_DISK (a script would retry a
    success)."""
    (store_path / "cache" / "stat.msgpack").mkdir(parents=True)
    (store_path / "cache" / "stat.msgpack" / "someone's file").write_text("kept")
    r = cas("--json", "add", "m", str(_model(tmp_path / "a", 1, 1000)), "--tag", "prod")
    assert r.json["created"] and r.json["tags"] == ["prod"]
    assert [w["code"] for w in r.json["warnings"]] == ["W_STAT_CACHE_NOT_SAVED"]
    assert cas("--json", "show", "m@prod").json["seq"] == 1
    text = cas("add", "m2", str(_model(tmp_path / "b", 2, 1000)))
    assert text.code == 0 and "W_STAT_CACHE_NOT_SAVED" in text.err
