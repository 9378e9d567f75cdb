"""``cas ls REMOTE:``, ``cas show REMOTE:NAME[@V]`` and ``cas log REMOTE:NAME``: a remote's
catalog read without pulling its content."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import CasCli, write_files


def _remote(tmp_path: Path) -> Path:
    a = CasCli(tmp_path / "a")
    a("init")
    a("add", "org/m", str(write_files(tmp_path / "m1", {"w.bin": os.urandom(300_000)})),
      "--tag", "prod")
    a("add", "org/m", str(write_files(tmp_path / "m2", {"w.bin": os.urandom(300_000)})))
    a("add", "other/x", str(write_files(tmp_path / "x", {"x.bin": os.urandom(1000)})))
    remote = tmp_path / "remote"
    a("push", str(remote))
    return remote


def test_ls_show_log_of_a_remote(tmp_path: Path, cas: CasCli, store_path: Path) -> None:
    remote = _remote(tmp_path)
    cas("remote", "add", "origin", str(remote))
    models = cas("ls", "origin:", "--json").json["models"]
    assert [(m["name"], m["latest"], m["tags"]) for m in models] == [
        ("org/m", 2, {"prod": 1}), ("other/x", 1, {})]
    assert [m["name"] for m in cas("ls", "origin:org/*", "--json").json["models"]] == ["org/m"]
    versions = cas("ls", "origin:", "--long", "--json").json["versions"]
    assert [f"{v['name']}@{v['seq']}" for v in versions] == ["org/m@1", "org/m@2", "other/x@1"]
    shown = cas("show", "origin:org/m@prod", "--json").json
    assert (shown["name"], shown["seq"]) == ("org/m", 1)
    history = cas("log", "origin:org/m", "--json").json["history"]
    assert [r["seq"] for r in history if r["action"] == "add"] == [2, 1]
    # Nothing became a model here, and no content came.
    assert cas("ls", "--json").json["models"] == []
    assert not list((store_path / "packs").glob("*.pack"))
    # A URL works too, and leaves no tracking refs behind.
    url_models = cas("ls", f"{remote}:", "--json").json["models"]
    assert [m["name"] for m in url_models] == ["org/m", "other/x"]
    refs = subprocess.run(["git", "--git-dir", str(store_path / "registry"), "for-each-ref",
                           "--format=%(refname)", "refs/remotes/"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert refs and all(r.startswith("refs/remotes/origin/") for r in refs)


def test_show_of_a_missing_remote_version_is_not_found(tmp_path: Path, cas: CasCli) -> None:
    remote = _remote(tmp_path)
    cas("remote", "add", "origin", str(remote))
    r = cas("show", "origin:org/m@9", "--json", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    r = cas("ls", "nosuch:", "--json", ok=False)
    assert r.json["error"]["code"] == "E_ARGS" and "nosuch" in r.json["error"]["message"]
