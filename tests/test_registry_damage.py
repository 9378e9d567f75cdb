"""A damaged or crafted registry, through the CLI: every command gives a one-line error with a
stable code, never a traceback, and commands about other models keep working.

A store holds two models, ``org/good`` and ``org/bad`` (two versions each, a tag each). Each
scenario damages only ``org/bad``'s registry objects or refs, as a crafted commit from another
host or bit rot would: a commit whose tree has the wrong shape (``versions`` as a blob, a
manifest as a tree or as a gitlink), a manifest nested a thousand levels deep, a ref or a tag
to a missing object, a missing parent commit, a deleted manifest blob, a flipped byte in a
loose object. Then every command runs against ``org/bad`` and must end in success or in
``E_SCHEMA``, ``E_VERIFY`` or ``E_NOT_FOUND`` (one line; never ``E_BUG``); ``verify`` must not
call the damaged model sound; the whole-store commands (``ls``, ``du``, ``verify --all``)
report and go on, and the commands about ``org/good`` still work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

GOOD, BAD = "org/good", "org/bad"
ALLOWED = {"E_SCHEMA", "E_VERIFY", "E_NOT_FOUND"}
MISSING = b"0123456789abcdef0123456789abcdef01234567"  # a sha no object has


def run(store: Path, *args: str) -> tuple[int, dict, str]:
    """Run the CLI with --json; return the exit code, the JSON document and stderr."""
    proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store), "--json",
                           *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CAS_HOME": str(store)})
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = {"ok": False, "error": {"code": "E_BUG", "message": proc.stdout + proc.stderr}}
    return proc.returncode, doc, proc.stderr


def expect_clean(store: Path, *args: str) -> dict:
    """The command succeeded, or failed with an allowed code and a one-line message."""
    code, doc, err = run(store, *args)
    assert "Traceback" not in err, f"cas {' '.join(args)}: traceback:\n{err}"
    if doc.get("ok"):
        assert code == 0
        return doc
    error = doc["error"]
    assert error["code"] in ALLOWED, f"cas {' '.join(args)}: {error}"
    assert "\n" not in error["message"]
    assert code not in (0, 70)
    return doc


# --------------------------------------------------------------------------- the template store


def _write_model(folder: Path, name: str, n: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": name, "v": n}))
    (folder / "weights.bin").write_bytes(f"{name} weights {n} ".encode() * 300)
    return folder


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("registry-damage")
    store = root / "store"
    subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store), "init"],
                   check=True, capture_output=True)
    for name in (GOOD, BAD):
        for n in (1, 2):
            src = _write_model(root / "src" / name / str(n), name, n)
            code, doc, err = run(store, "add", name, str(src), "-m", f"v{n}")
            assert code == 0, (doc, err)
        code, doc, err = run(store, "tag", f"{name}@1", "stable")
        assert code == 0, (doc, err)
    return store


@pytest.fixture
def make_store(template: Path, tmp_path: Path) -> Callable[[str], Path]:
    def make(scenario: str) -> Path:
        store = tmp_path / "store"
        shutil.copytree(template, store, symlinks=True)
        with Repo(str(store / "registry")) as repo:
            DAMAGE[scenario](repo, store / "registry")
        return store
    return make


# --------------------------------------------------------------------------- damage


def _ref(name: str) -> bytes:
    return f"refs/models/{name}".encode()


def _loose(registry: Path, sha: bytes) -> Path:
    return registry / "objects" / sha[:2].decode() / sha[2:].decode()


def _commit_on_bad(repo: Repo, tree: Tree, *, seq: int = 3,
                   parents: list[bytes] | None = None) -> None:
    """A new head commit of org/bad that adds version ``seq``, with the trailers cas writes."""
    repo.object_store.add_object(tree)
    c = Commit()
    c.tree = tree.id
    c.parents = parents if parents is not None else [repo.refs[_ref(BAD)]]
    c.author = c.committer = b"Mallory <m@example.com>"
    c.author_time = c.commit_time = int(time.time())
    c.author_timezone = c.commit_timezone = 0
    c.message = f"add {BAD} v{seq}\n\nCas-Action: add\nCas-Version: {seq}\n".encode()
    repo.object_store.add_object(c)
    repo.refs[_ref(BAD)] = c.id


def _versions_tree(repo: Repo) -> Tree:
    """A copy of org/bad's current ``versions`` tree."""
    root = repo[repo[repo.refs[_ref(BAD)]].tree]
    sub = repo[root[b"versions"][1]]
    out = Tree()
    for item in sub.items():
        out.add(item.path, item.mode, item.sha)
    return out


def _root(entry: bytes, mode: int, sha: bytes) -> Tree:
    root = Tree()
    root.add(entry, mode, sha)
    return root


def _manifest_blob_sha(repo: Repo, seq: int = 1) -> bytes:
    return _versions_tree(repo)[f"{seq:06d}.json".encode()][1]


def versions_as_blob(repo: Repo, registry: Path) -> None:
    blob = Blob.from_string(b"not a tree\n")
    repo.object_store.add_object(blob)
    _commit_on_bad(repo, _root(b"versions", 0o100644, blob.id))


def manifest_as_tree(repo: Repo, registry: Path) -> None:
    versions = _versions_tree(repo)
    inner = Tree()
    inner.add(b"x", 0o100644, _manifest_blob_sha(repo))
    repo.object_store.add_object(inner)
    versions.add(b"000003.json", 0o040000, inner.id)
    repo.object_store.add_object(versions)
    _commit_on_bad(repo, _root(b"versions", 0o040000, versions.id))


def manifest_as_gitlink(repo: Repo, registry: Path) -> None:
    versions = _versions_tree(repo)
    versions.add(b"000003.json", 0o160000, MISSING)
    repo.object_store.add_object(versions)
    _commit_on_bad(repo, _root(b"versions", 0o040000, versions.id))


def manifest_nested_1000(repo: Repo, registry: Path) -> None:
    doc = json.loads(repo[_manifest_blob_sha(repo)].as_raw_string())
    text = json.dumps({**doc, "seq": 3})
    deep = "[" * 1000 + "]" * 1000
    blob = Blob.from_string((text[:-1] + ', "deep": ' + deep + "}").encode())
    repo.object_store.add_object(blob)
    versions = _versions_tree(repo)
    versions.add(b"000003.json", 0o100644, blob.id)
    repo.object_store.add_object(versions)
    _commit_on_bad(repo, _root(b"versions", 0o040000, versions.id))


def ref_to_missing_object(repo: Repo, registry: Path) -> None:
    (registry / "refs" / "models" / "org" / "bad").write_bytes(MISSING + b"\n")


def tag_to_missing_object(repo: Repo, registry: Path) -> None:
    (registry / "refs" / "tags" / "org" / "bad@stable").write_bytes(MISSING + b"\n")


def missing_parent_commit(repo: Repo, registry: Path) -> None:
    head = repo[repo.refs[_ref(BAD)]]
    _loose(registry, head.parents[0]).unlink()


def deleted_manifest_blob(repo: Repo, registry: Path) -> None:
    _loose(registry, _manifest_blob_sha(repo, 2)).unlink()


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def flipped_byte_in_manifest_blob(repo: Repo, registry: Path) -> None:
    _flip(_loose(registry, _manifest_blob_sha(repo, 2)))


def flipped_byte_in_head_commit(repo: Repo, registry: Path) -> None:
    _flip(_loose(registry, repo.refs[_ref(BAD)]))


DAMAGE: dict[str, Callable[[Repo, Path], None]] = {
    f.__name__: f for f in (
        versions_as_blob, manifest_as_tree, manifest_as_gitlink, manifest_nested_1000,
        ref_to_missing_object, tag_to_missing_object, missing_parent_commit,
        deleted_manifest_blob, flipped_byte_in_manifest_blob, flipped_byte_in_head_commit,
    )
}

# --------------------------------------------------------------------------- the commands


def _src(store: Path) -> str:
    return str(_write_model(store.parent / "new", "new", 9))


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "show": lambda s: ["show", BAD],
    "show@tag": lambda s: ["show", f"{BAD}@stable"],
    "log": lambda s: ["log", BAD],
    "checkout": lambda s: ["checkout", BAD, str(s.parent / "dest")],
    "cat": lambda s: ["cat", f"{BAD}@1", "config.json", "-o", str(s.parent / "out")],
    "verify NAME": lambda s: ["verify", BAD],
    "diff": lambda s: ["diff", f"{BAD}@1", f"{BAD}@2"],
    "add": lambda s: ["add", BAD, _src(s)],
    "tag": lambda s: ["tag", f"{BAD}@1", "other"],
    "rm": lambda s: ["rm", f"{BAD}@1", "--force"],
}
STORE_WIDE: dict[str, list[str]] = {
    "ls": ["ls"],
    "ls --long": ["ls", "--long"],
    "du": ["du"],
    "verify --all": ["verify", "--all"],
}

#: Scenarios that damage nothing ``verify NAME`` (the latest version) reads.
LATEST_INTACT = {"tag_to_missing_object"}

#: (scenario, command) pairs that fail today, with what breaks. Keep them strict: a fix makes
#: the test pass, and the mark must go.
KNOWN: dict[tuple[str, str], str] = {}


def _params(names: list[str]) -> list:
    out = []
    for scenario in DAMAGE:
        for name in names:
            reason = KNOWN.get((scenario, name))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(scenario, name, marks=marks, id=f"{scenario}-{name}"))
    return out


@pytest.mark.parametrize(("scenario", "command"), _params(list(COMMANDS)))
def test_command_on_the_damaged_model(make_store, scenario: str, command: str) -> None:
    store = make_store(scenario)
    doc = expect_clean(store, *COMMANDS[command](store))
    if command == "verify NAME" and scenario not in LATEST_INTACT:
        assert not doc.get("ok"), f"verify called {BAD} sound after {scenario}: {doc}"


@pytest.mark.parametrize(("scenario", "command"), _params(list(STORE_WIDE)))
def test_store_wide_command_reports_and_goes_on(make_store, scenario: str, command: str) -> None:
    """ls, du and verify --all name the bad model's problem and still cover the good one."""
    store = make_store(scenario)
    code, doc, err = run(store, *STORE_WIDE[command])
    assert "Traceback" not in err, err
    assert code != 70, doc
    if command.startswith("ls"):
        assert GOOD in [m["name"] for m in doc.get("models", [])], doc
    elif command == "verify --all":
        assert not doc.get("ok") and code != 0, f"verify --all called the store sound: {doc}"
        assert BAD in json.dumps(doc), f"verify --all does not name {BAD}: {doc}"
    else:
        assert doc.get("ok") or doc["error"]["code"] in ALLOWED, doc


@pytest.mark.parametrize("scenario", list(DAMAGE))
def test_other_models_keep_working(make_store, scenario: str) -> None:
    store = make_store(scenario)
    for args in (["show", f"{GOOD}@stable"], ["checkout", GOOD, str(store.parent / "good-dest")],
                 ["verify", f"{GOOD}@1"], ["add", GOOD, _src(store)]):
        code, doc, err = run(store, *args)
        assert code == 0 and doc.get("ok"), f"cas {' '.join(args)} after {scenario}: {doc} {err}"
    assert (store.parent / "good-dest" / "weights.bin").read_bytes().startswith(b"org/good")


def test_a_tag_to_a_missing_object_is_named_and_can_be_deleted(make_store) -> None:
    store = make_store("tag_to_missing_object")
    code, doc, _ = run(store, "show", f"{BAD}@stable")
    assert code != 0 and f"tag {BAD}@stable" in doc["error"]["message"]
    assert f"cas tag {BAD} stable --delete" in doc["error"]["message"]
    code, doc, err = run(store, "tag", BAD, "stable", "--delete")
    assert code == 0, (doc, err)
    code, doc, err = run(store, "verify", "--all")
    assert code == 0 and doc["ok"], (doc, err)
