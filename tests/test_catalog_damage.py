"""One bad model never takes down the catalog: with one model's history or manifest damaged
(or crafted), ``ls``, ``ls --long``, ``du`` and ``verify --all`` still report every other
model, name the bad one with its error, and ``du`` and ``verify`` exit non-zero."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
from dulwich.objects import Commit
from dulwich.repo import Repo
from conftest import run_json as run


def loose(store: Path, sha: bytes) -> Path:
    return store / "registry" / "objects" / sha[:2].decode() / sha[2:].decode()


def trailerless_commit(store: Path, model: str) -> None:
    r = Repo(str(store / "registry"))
    ref = b"refs/models/" + model.encode()
    c = Commit()
    c.tree = r[r.refs[ref]].tree
    c.parents = [r.refs[ref]]
    c.author = c.committer = b"t <t@example.com>"
    c.author_time = c.commit_time = int(time.time())
    c.author_timezone = c.commit_timezone = 0
    c.message = b"no trailers here\n"
    r.object_store.add_object(c)
    r.refs[ref] = c.id
    r.close()


def delete_tip_manifest(store: Path, model: str) -> None:
    r = Repo(str(store / "registry"))
    root = r[r[r.refs[b"refs/models/" + model.encode()]].tree]
    (item,) = r[root[b"versions"][1]].items()
    r.close()
    os.remove(loose(store, item.sha))


def dangling_tag(store: Path, model: str) -> None:
    """A tag ref naming an object that does not exist."""
    path = store / "registry" / "refs" / "tags" / f"{model}@broken"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("12" * 20 + "\n")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    st = tmp_path / "store"
    assert run(st, "init")[0] == 0
    rng = random.Random(2)
    for name in ("a", "b", "c"):
        src = tmp_path / f"{name}.bin"
        src.write_bytes(rng.randbytes(150_000))
        assert run(st, "add", name, str(src))[0] == 0
    return st


def delete_tip_commit(store: Path, model: str) -> None:
    r = Repo(str(store / "registry"))
    tip = r.refs[b"refs/models/" + model.encode()]
    r.close()
    os.remove(loose(store, tip))


DAMAGE = {"history": trailerless_commit, "manifest": delete_tip_manifest,
          "commit": delete_tip_commit}


@pytest.mark.parametrize("kind", ["commit", "manifest"])  # du reads only tips
def test_du_counts_the_others_and_names_the_bad_model(store: Path, kind: str) -> None:
    DAMAGE[kind](store, "b")
    code, doc = run(store, "du")
    assert code == 5 and doc["error"]["code"] == "E_SCHEMA", doc
    assert "b" in doc["error"]["message"]
    usage = doc["usage"]
    assert [e["name"] for e in usage["errors"]] == ["b"]
    assert usage["logical"] == 2 * 150_000  # a and c are counted
    code, doc = run(store, "du", "a")  # b only blurs a's shared bytes: a warning
    assert code == 0 and doc["logical"] == 150_000
    assert [w["code"] for w in doc["warnings"]] == ["W_MODEL_UNREADABLE"]
    code, doc = run(store, "du", "b")
    assert code == 5 and doc["usage"]["errors"][0]["name"] == "b"


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_ls_and_ls_long_go_on(store: Path, kind: str) -> None:
    DAMAGE[kind](store, "b")
    for args in (["ls"], ["ls", "--long"]):
        code, doc = run(store, *args)
        assert code == 0 or doc.get("models"), doc
        rows = doc["models"]
        assert [r["name"] for r in rows] == ["a", "b", "c"]
        assert [r["name"] for r in rows if r["error"]] == ["b"]


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_verify_all_reports_the_bad_model_and_checks_the_rest(store: Path, kind: str) -> None:
    DAMAGE[kind](store, "b")
    code, doc = run(store, "verify", "--all")
    assert code == 4
    report = doc["report"]
    text = json.dumps(report)
    assert "model b" in text or "b@1" in text
    assert report["versions_checked"] >= 2
    assert report["bad_objects"] == []


def test_a_dangling_tag_does_not_hide_the_catalog(store: Path) -> None:
    dangling_tag(store, "b")
    code, doc = run(store, "ls")
    assert [r["name"] for r in doc["models"]] == ["a", "b", "c"]
    # Only the tag's model carries the error, naming the tag; the exit code says so.
    assert code != 0 and [r["name"] for r in doc["models"] if r["error"]] == ["b"]
    assert "tag b@" in doc["error"]["message"]
    code, doc = run(store, "du")
    assert code != 0 and doc["usage"]["logical"] == 3 * 150_000
    code, doc = run(store, "verify", "--all")
    assert code == 4 and any(p.startswith("tag b@") for p in doc["report"]["problems"])
    assert doc["report"]["bad_models"] == ["b"]
