"""cas.lock: its format, `cas lock`, `cas checkout --lock`, and its errors (through the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import codelock
from cas.errors import FormatError, SchemaError
from tests.conftest import CasRun, write_files


def run(cwd: Path, store: Path, *args: str, ok: bool = True) -> CasRun:
    """The real CLI, run in ``cwd`` (the code repository) against ``store``."""
    proc = subprocess.run([sys.executable, "-m", "cas.cli.main", *args], cwd=cwd,
                          capture_output=True, text=True,
                          env={**os.environ, "CAS_HOME": str(store)}, timeout=300)
    r = CasRun(proc.returncode, proc.stdout, proc.stderr)
    if ok and r.code != 0:
        raise AssertionError(f"cas {' '.join(args)} exited {r.code}:\n{r.out}\n{r.err}")
    return r


def git_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


@pytest.fixture
def setup(tmp_path: Path, cas, git) -> tuple[Path, Path]:
    """A store with org/bert@1 and @2 (v2 changes one file) and an empty git repository."""
    v1 = write_files(tmp_path / "v1", {"config.json": b'{"a": 1}\n',
                                       "model.safetensors": os.urandom(300_000),
                                       "sub/tok.json": b"{}"})
    cas("add", "org/bert", str(v1), "-q")
    v2 = tmp_path / "v2"
    write_files(v2, {"config.json": b'{"a": 2}\n',
                     "model.safetensors": (v1 / "model.safetensors").read_bytes(),
                     "sub/tok.json": b"{}"})
    cas("add", "org/bert", str(v2), "-q")
    return cas.store, git_repo(tmp_path / "repo")


def version_id(store: Path, spec: str) -> str:
    from cas.store import Store

    with Store.open(store) as s:
        return s.resolve(spec).id


def test_lock_writes_canonical_file(setup):
    store, repo = setup
    r = run(repo, store, "lock", "org/bert@1", "--path", "models/bert", "--json")
    assert r.json["action"] == "added"
    text = (repo / "cas.lock").read_text()
    doc = json.loads(text)
    assert list(doc) == ["format", "version", "models"]
    assert doc["format"] == "cas.lock" and doc["version"] == 1
    [m] = doc["models"]
    assert list(m) == ["path", "name", "id", "seq", "files"]
    assert (m["path"], m["name"], m["seq"]) == ("models/bert", "org/bert", 1)
    assert m["id"] == version_id(store, "org/bert@1")
    assert [f["path"] for f in m["files"]] == ["config.json", "model.safetensors",
                                              "sub/tok.json"]
    import hashlib
    assert m["files"][0]["sha256"] == hashlib.sha256(b'{"a": 1}\n').hexdigest()
    # one file per line, so that a diff names the files that changed
    assert sum('"sha256"' in line for line in text.splitlines()) == 3
    assert text.endswith("}\n")
    # locking the same version again changes nothing; v2 changes only config.json's line
    assert run(repo, store, "lock", "org/bert@1", "--json").json["action"] == "unchanged"
    assert (repo / "cas.lock").read_text() == text
    assert run(repo, store, "lock", "org/bert@2", "--json").json["action"] == "updated"
    new = (repo / "cas.lock").read_text().splitlines()
    changed = [a for a, b in zip(text.splitlines(), new) if a != b]
    assert len(changed) == 3  # id, seq and config.json's line
    assert any('"config.json"' in c for c in changed)


def test_lock_from_subfolder_paths_and_listing(setup):
    store, repo = setup
    (repo / "src").mkdir()
    run(repo / "src", store, "lock", "org/bert@1", "--path", "../weights/bert")
    run(repo, store, "lock", "org/bert@2", "--path", "weights/bert2")
    lock = codelock.read(repo)
    assert [m.path for m in lock.models] == ["weights/bert", "weights/bert2"]
    listing = run(repo, store, "lock").out
    assert "weights/bert " in listing and "org/bert@2" in listing
    # two paths for one name: a bare `cas lock NAME` must say which
    r = run(repo, store, "lock", "org/bert", ok=False)
    assert r.code == 2 and "--path" in r.err
    r = run(repo, store, "lock", "org/bert", "--path", "../../elsewhere", ok=False)
    assert r.code == 2 and "outside the repository" in r.err
    r = run(repo, store, "lock", "org/bert", "--path", "weights/bert/inner", ok=False)
    assert r.code == 2 and "overlap" in r.err
    run(repo, store, "lock", "org/bert", "--remove", "--path", "weights/bert")
    assert [m.path for m in codelock.read(repo).models] == ["weights/bert2"]
    run(repo, store, "lock", "org/bert", "--remove")
    assert codelock.read(repo).models == []
    assert run(repo, store, "lock", "org/bert", "--remove", ok=False).code == 3


def test_root_is_the_cwd_outside_git(setup, tmp_path):
    store, _ = setup
    plain = tmp_path / "plain"
    plain.mkdir()
    run(plain, store, "lock", "org/bert")
    assert codelock.read(plain).models[0].path == "models/org/bert"


def test_checkout_lock_materialises_and_verifies(setup, tmp_path):
    store, repo = setup
    run(repo, store, "lock", "org/bert@1", "--path", "models/a")
    run(repo, store, "lock", "org/bert@2", "--path", "models/b")
    (repo / "src").mkdir()
    r = run(repo / "src", store, "checkout", "--lock", "--json")
    assert [(m["path"], m["seq"]) for m in r.json["models"]] == [("models/a", 1),
                                                                  ("models/b", 2)]
    assert (repo / "models/a/config.json").read_bytes() == b'{"a": 1}\n'
    assert (repo / "models/b/config.json").read_bytes() == b'{"a": 2}\n'
    assert ((repo / "models/a/model.safetensors").read_bytes()
            == (tmp_path / "v1/model.safetensors").read_bytes())
    # checkout --lock takes no NAME/DEST; checkout without --lock needs both
    assert run(repo, store, "checkout", "--lock", "org/bert", ok=False).code == 2
    assert run(repo, store, "checkout", ok=False).code == 2


def test_checkout_lock_refuses_a_version_that_differs_from_the_lock(setup):
    store, repo = setup
    run(repo, store, "lock", "org/bert@1", "--path", "models/a")
    lock = codelock.read(repo)
    f = lock.models[0].files[1]
    lock.models[0].files[1] = codelock.LockedFile(f.path, f.size, "0" * 64)
    codelock.write(repo, lock)
    r = run(repo, store, "checkout", "--lock", "--json", ok=False)
    assert r.code == 4 and r.json["error"]["code"] == "E_VERIFY"
    assert "model.safetensors" in r.json["error"]["message"]
    assert not (repo / "models/a").exists()


def test_checkout_lock_pulls_a_version_from_the_lock_remote(setup, tmp_path):
    store, repo = setup
    remote = tmp_path / "remote"
    run(repo, store, "push", str(remote))
    run(repo, store, "lock", "org/bert@2", "--remote", str(remote))
    other = tmp_path / "other-store"
    run(repo, other, "init")
    r = run(repo, other, "checkout", "--lock", "--json")
    assert r.json["models"][0]["fetched"] is True
    assert (repo / "models/org/bert/config.json").read_bytes() == b'{"a": 2}\n'
    # without a remote, a version the store lacks is a clear E_NOT_FOUND
    run(repo, store, "lock", "--remote", "")
    run(repo, tmp_path / "empty", "init")
    r = run(repo, tmp_path / "empty", "checkout", "--lock", "--json", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    assert "cas.remote" in r.json["error"]["message"]


GOOD = {"format": "cas.lock", "version": 1, "models": [
    {"path": "m", "name": "org/m", "id": "a" * 32, "seq": 1,
     "files": [{"path": "w.bin", "size": 1, "sha256": "b" * 64}]}]}


def _with(**changes: object) -> dict:
    doc = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        target = doc["models"][0]
        if key.startswith("file_"):
            target = target["files"][0]
            key = key[5:]
        elif key.startswith("top_"):
            target = doc
            key = key[4:]
        target[key] = value
    return doc


BAD = [
    ("not json", b"{", "E_SCHEMA"),
    ("array", b"[]", "E_SCHEMA"),
    ("other format", json.dumps(_with(top_format="cas.manifest")).encode(), "E_SCHEMA"),
    ("newer version", json.dumps(_with(top_version=2)).encode(), "E_FORMAT"),
    ("unknown field", json.dumps(_with(top_extra=1)).encode(), "E_SCHEMA"),
    ("dotdot path", json.dumps(_with(path="../m")).encode(), "E_SCHEMA"),
    ("absolute path", json.dumps(_with(path="/m")).encode(), "E_SCHEMA"),
    (".git path", json.dumps(_with(path=".git/hooks")).encode(), "E_SCHEMA"),
    ("file dotdot", json.dumps(_with(file_path="../../x")).encode(), "E_SCHEMA"),
    ("bad sha", json.dumps(_with(file_sha256="B" * 64)).encode(), "E_SCHEMA"),
    ("negative size", json.dumps(_with(file_size=-1)).encode(), "E_SCHEMA"),
    ("bad id", json.dumps(_with(id="xyz")).encode(), "E_SCHEMA"),
    ("seq 0", json.dumps(_with(seq=0)).encode(), "E_SCHEMA"),
    ("bad name", json.dumps(_with(name="a/../b")).encode(), "E_SCHEMA"),
    ("string size", json.dumps(_with(file_size="1")).encode(), "E_SCHEMA"),
]


@pytest.mark.parametrize("data,code", [(d, c) for _, d, c in BAD], ids=[b[0] for b in BAD])
def test_bad_lock_files_are_refused_with_a_code(setup, data, code):
    store, repo = setup
    (repo / "cas.lock").write_bytes(data)
    r = run(repo, store, "lock", "--json", ok=False)
    assert r.json["error"]["code"] == code  # a bad cas.lock is never the writer lock's E_LOCK
    assert "cas.lock" in r.json["error"]["message"]
    r = run(repo, store, "checkout", "--lock", ok=False)
    assert f"[{code}]" in r.err and "Traceback" not in r.err


def test_overlapping_and_duplicate_paths_are_refused():
    two = json.loads(json.dumps(GOOD))
    two["models"].append({**two["models"][0], "path": "m/inner"})
    with pytest.raises(SchemaError, match="overlap"):
        codelock.decode(json.dumps(two).encode())
    dup = _with(files=[GOOD["models"][0]["files"][0]] * 2)
    with pytest.raises(SchemaError):
        codelock.decode(json.dumps(dup).encode())
    case = _with(files=[{"path": "W.bin", "size": 1, "sha256": "b" * 64},
                        {"path": "w.bin", "size": 1, "sha256": "b" * 64}])
    with pytest.raises(SchemaError):
        codelock.decode(json.dumps(case).encode())
    with pytest.raises(FormatError):
        codelock.decode(json.dumps(_with(top_version=9)).encode())


_seg = st.text("abcxyz019_-", min_size=1, max_size=6).filter(lambda s: s[0].isalnum())
_file = st.builds(codelock.LockedFile, st.lists(_seg, min_size=1, max_size=3).map("/".join),
                  st.integers(0, 2**50), st.text("0123456789abcdef", min_size=64,
                                                 max_size=64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_seg, st.lists(_file, max_size=4, unique_by=lambda f: f.path)),
                max_size=4, unique_by=lambda t: t[0]),
       st.text("abc/:.-", max_size=10))
def test_encode_decode_round_trip_and_order(models, remote):
    lock = codelock.LockFile("cas.lock", 1, [
        codelock.LockedModel(f"models/{p}", "org/m", "c" * 32, 3,
                             [f for f in files])
        for p, files in models], remote)
    try:
        codelock.check(lock)
    except SchemaError:
        return  # e.g. two files equal up to case
    data = codelock.encode(lock)
    back = codelock.decode(data)
    assert codelock.encode(back) == data
    assert [m.path for m in back.models] == sorted(m.path for m in lock.models)
    for m in back.models:
        assert [f.path for f in m.files] == sorted(f.path for f in m.files)
