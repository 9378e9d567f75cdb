"""The registry's objects and refs through the storage backend: what git leaves in a registry
(packed refs, stray files) and what a crash leaves (empty folders) never confuse cas."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_json as run


def ok(store: Path, *args: str) -> dict:
    code, doc = run(store, *args)
    assert code == 0, doc
    return doc


@pytest.fixture
def store(tmp_path: Path) -> Path:
    st = tmp_path / "store"
    ok(st, "init")
    src = tmp_path / "m"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(50_000))
    ok(st, "add", "org/m", str(src))
    ok(st, "tag", "org/m@1", "prod")
    return st


def test_files_no_ref_could_be_named_are_ignored_as_git_ignores_them(store: Path) -> None:
    models = store / "registry" / "refs" / "models" / "org"
    (models / "x..y").write_bytes(b"0" * 40 + b"\n")
    (models / "bad.lock.d").mkdir()
    os.close(os.open(os.fsencode(models) + b"/\xff\xfe", os.O_CREAT | os.O_WRONLY))
    assert [m["name"] for m in ok(store, "ls")["models"]] == ["org/m"]
    assert ok(store, "verify", "--all")["ok"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_refs_packed_by_git_are_read_moved_and_deleted(store: Path, tmp_path: Path) -> None:
    reg = store / "registry"
    subprocess.run(["git", "-C", str(reg), "pack-refs", "--all"], check=True)
    assert not (reg / "refs" / "tags" / "org" / "m@prod").exists()
    assert "refs/tags/org/m@prod" in (reg / "packed-refs").read_text()
    assert ok(store, "show", "org/m@prod")["seq"] == 1
    src = tmp_path / "m2"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(50_000))
    assert ok(store, "add", "org/m", str(src))["seq"] == 2  # moves a packed model ref
    ok(store, "tag", "org/m", "prod", "--delete")  # deletes a packed tag
    assert "m@prod" not in (reg / "packed-refs").read_text()
    code, doc = run(store, "show", "org/m@prod")
    assert code == 3 and doc["error"]["code"] == "E_NOT_FOUND"
    fsck = subprocess.run(["git", "-C", str(reg), "fsck", "--no-dangling"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr
    assert ok(store, "verify", "--all")["ok"]
