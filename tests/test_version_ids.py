"""Stable version ids: chosen by add, recorded in the add commit (Cas-Id) and the manifest,
kept by annotate and rm/restore, resolved by prefix; versions from before ids are named by
their add commit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cas.commits import commit_message, parse_trailers
from cas.errors import SchemaError
from cas.format.manifest import Manifest
from cas.registry import model_ref
from conftest import registry_git

ID = re.compile(r"[0-9a-f]{32}\Z")


def _dir(tmp_path: Path, name: str, content: bytes) -> Path:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "w.bin").write_bytes(content)
    return d



def _manifest_at(store: Path, seq: int, rev: str = "refs/models/org/m") -> dict:
    return json.loads(registry_git(store, "cat-file", "-p", f"{rev}:versions/{seq:06d}.json"))


def test_add_records_the_id_in_commit_manifest_and_listings(cas, tmp_path, git):
    cas("add", "org/m", str(_dir(tmp_path, "a", b"one" * 100)))
    cas("add", "org/m", str(_dir(tmp_path, "b", b"two" * 100)))
    shown = [cas("--json", "show", f"org/m@{s}").json for s in (1, 2)]
    ids = [d["id"] for d in shown]
    assert all(ID.match(i) for i in ids) and ids[0] != ids[1]
    for seq, d in zip((1, 2), shown, strict=True):
        assert d["manifest"]["id"] == d["id"] == _manifest_at(cas.store, seq)["id"]
        assert f"Cas-Id: {d['id']}" in registry_git(cas.store, "log", "-1", "--format=%B",
                                                     d["commit"])
    rows = cas("--json", "ls", "--long").json["versions"]
    assert [r["id"] for r in rows] == ids
    assert cas("--json", "ls").json["models"][0]["latest_id"] == ids[1]
    history = cas("--json", "log", "org/m").json["history"]
    assert [h["ids"] for h in history] == [[ids[1]], [ids[0]]]
    # people see a 12-character prefix in tables, the whole id in show
    assert ids[0][:12] in cas("ls", "--long").out and ids[1][:12] in cas("log", "org/m").out
    assert f"org/m@1  id {ids[0]}" in cas("show", "org/m@1").out


def _prefix(vid: str, n: int) -> str:
    """The shortest prefix of at least ``n`` characters that is not all digits (digits alone
    name a sequence number)."""
    while vid[:n].isdigit():
        n += 1
    return vid[:n]


def test_annotate_rm_and_restore_keep_the_id(cas, tmp_path, git):
    cas("add", "org/m", str(_dir(tmp_path, "a", b"one" * 100)), "--tag", "prod")
    vid = cas("--json", "show", "org/m").json["id"]
    cas("annotate", "org/m@1", "--metric", "acc=0.5", "-m", "eval")
    assert _manifest_at(cas.store, 1)["id"] == vid  # the annotated manifest keeps it
    shown = cas("--json", "show", f"org/m@{_prefix(vid, 8)}").json
    assert shown["id"] == vid and shown["manifest"]["metadata"]["metrics"] == {"acc": 0.5}
    cas("rm", "org/m@1", "--force")
    err = cas("--json", "show", f"org/m@{_prefix(vid, 8)}", ok=False).json["error"]
    assert err["code"] == "E_NOT_FOUND" and "cas restore org/m@1" in err["message"]
    # a removed version is still found by its id where removed versions are wanted
    assert cas("--json", "log", f"org/m@{_prefix(vid, 10)}").json["history"][0]["action"] == "rm"
    assert cas("--json", "restore", f"org/m@{_prefix(vid, 6)}").json["restored"] == ["org/m@1"]
    again = cas("--json", "show", f"org/m@{vid}").json
    assert again["id"] == vid and again["tags"] == ["prod"]
    assert _manifest_at(cas.store, 1)["id"] == vid


def _registry_version(cas, manifest: dict, seq: int, version_id: str | None = None,
                      message: str = "crafted") -> str:
    """Commit ``manifest`` as version ``seq`` of org/m through the library (as an importer
    would); returns the add commit."""
    from cas import Store

    store = Store.open(cas.store)
    try:
        with store.writing():
            v = store.registry.add_version("org/m", seq, json.dumps(manifest).encode(), message,
                                           version_id=version_id)
    finally:
        store.close()
    return v.commit


def test_prefix_matching_two_versions_is_ambiguous_and_names_them(cas, tmp_path):
    cas("add", "org/m", str(_dir(tmp_path, "a", b"one" * 100)))
    base = cas("--json", "show", "org/m@1").json["manifest"]
    for seq, vid in ((2, "abcd" + "0" * 28), (3, "abcd" + "1" * 28)):
        _registry_version(cas, {**base, "seq": seq, "id": vid}, seq)
    err = cas("--json", "show", "org/m@abcd", ok=False).json["error"]
    assert err["code"] == "E_ARGS" and "ambiguous" in err["message"]
    assert "org/m@2" in err["message"] and "org/m@3" in err["message"]
    assert cas("--json", "show", "org/m@abcd1").json["seq"] == 3
    assert cas("--json", "show", "org/m@abcd0").json["seq"] == 2
    nothing = cas("--json", "show", "org/m@abcdef", ok=False).json["error"]
    assert nothing["code"] == "E_NOT_FOUND"


def test_a_version_from_before_ids_is_named_by_its_add_commit(cas, tmp_path):
    cas("add", "org/m", str(_dir(tmp_path, "a", b"one" * 100)))
    old = cas("--json", "show", "org/m@1").json["manifest"]
    del old["id"]
    commit = _registry_version(cas, {**old, "seq": 2}, 2, message="as an older cas wrote it")
    assert "Cas-Id" not in registry_git(cas.store, "log", "-1", "--format=%B", commit)
    shown = cas("--json", "show", f"org/m@{commit[:10]}").json
    assert shown["seq"] == 2 and shown["id"] == commit and shown["manifest"]["id"] is None
    assert cas("--json", "ls", "--long").json["versions"][1]["id"] == commit
    # annotating it writes no id (the manifest keeps its bytes' shape)
    cas("annotate", "org/m@2", "--license", "mit")
    assert "id" not in _manifest_at(cas.store, 2)
    assert cas("--json", "show", "org/m@2").json["id"] == commit


def test_add_version_refuses_an_id_that_disagrees_with_the_manifest(cas, tmp_path):
    cas("add", "org/m", str(_dir(tmp_path, "a", b"one" * 100)))
    base = cas("--json", "show", "org/m@1").json["manifest"]
    with pytest.raises(SchemaError, match="differs"):
        _registry_version(cas, {**base, "seq": 2, "id": "a" * 32}, 2, version_id="b" * 32)
    with pytest.raises(SchemaError, match="hex"):
        _registry_version(cas, {**base, "seq": 2, "id": "A" * 32}, 2)
    head = registry_git(cas.store, "rev-parse", model_ref("org/m").decode()).strip()
    assert head == cas("--json", "show", "org/m@1").json["commit"]  # nothing was committed


@pytest.mark.parametrize("bad", ["A" * 32, "a" * 31, "a" * 33, "a" * 64, "g" * 32, 7, ""])
def test_manifest_refuses_a_malformed_id(bad):
    doc = json.loads(Manifest(name="m", seq=1, files=[], total_size=0).encode())
    doc["id"] = bad
    with pytest.raises(SchemaError, match="id"):
        Manifest.decode(json.dumps(doc).encode())


def test_manifest_encoding_carries_the_id_and_leaves_out_none():
    with_id = Manifest(name="m", seq=1, files=[], total_size=0, id="0" * 32)
    assert Manifest.decode(with_id.encode()) == with_id
    assert json.loads(with_id.encode())["id"] == "0" * 32
    without = Manifest(name="m", seq=1, files=[], total_size=0)
    assert "id" not in json.loads(without.encode())
    assert Manifest.decode(without.encode()).id is None
    old_commit = "1" * 40
    assert Manifest.decode(Manifest(name="m", seq=1, files=[], total_size=0,
                                    id=old_commit).encode()).id == old_commit


def test_trailers_carry_the_id_and_refuse_a_malformed_one():
    vid = "c" * 32
    msg = commit_message("add m v1", "add", [1], [], version_id=vid).encode()
    assert parse_trailers(msg).id == vid
    assert parse_trailers(commit_message("add m v1", "add", [1], []).encode()).id is None
    for bad in ("C" * 32, "c" * 12, f"{vid}\nCas-Id: {'d' * 32}"):
        with pytest.raises(SchemaError):
            parse_trailers(f"add m v1\n\nCas-Action: add\nCas-Version: 1\nCas-Id: {bad}\n"
                           .encode())
    with pytest.raises(SchemaError):  # only an add records an id
        parse_trailers(f"rm m v1\n\nCas-Action: rm\nCas-Version: 1\nCas-Id: {vid}\n".encode())
    # a user's subject cannot forge one
    forged = commit_message(f"Cas-Id: {vid}", "add", [1], []).encode()
    assert parse_trailers(forged).id is None


def test_digits_are_an_id_prefix_when_no_such_sequence_number(cas, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Ids and commits are hex: a prefix may be all digits. It resolves when the model has no
    version of that number; a sequence number that exists wins."""
    cas("add", "org/m", str(_dir(tmp_path, "a", b"one" * 100)))
    base = cas("--json", "show", "org/m@1").json["manifest"]
    vid = "20" + "7" * 30
    _registry_version(cas, {**base, "seq": 2, "id": vid}, 2)
    assert cas("--json", "show", "org/m@2077").json["seq"] == 2  # no version 2077: a prefix
    assert cas("--json", "show", "org/m@2").json["id"] == vid  # version 2 exists: a number
    cas("rm", "org/m@2")
    assert cas("--json", "restore", "org/m@20777").json["restored"] == ["org/m@2"]
    err = cas("--json", "show", "org/m@99999999", ok=False).json["error"]
    assert err["code"] == "E_NOT_FOUND"
