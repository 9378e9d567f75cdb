"""The library API, driven from Python exactly as the README shows: no CLI involved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cas
from cas import AddOptions, Store
from cas.errors import CasError, NotFoundError


def test_readme_library_example(tmp_path: Path) -> None:
    run = tmp_path / "checkpoints" / "run-7"
    run.mkdir(parents=True)
    (run / "weights.bin").write_bytes(bytes(range(256)) * 2000)
    (run / "config.json").write_text('{"architectures": ["TinyNet"]}')

    store = Store.init(tmp_path / "cas")
    r = store.add("org/model", run, AddOptions(message="run 7", tags=["candidate"]))
    assert (r.seq, r.created, r.reused_chunks) == (1, True, 0) and r.new_chunks > 0
    out = tmp_path / "serve"
    store.checkout("org/model@candidate", out)
    assert (out / "weights.bin").read_bytes() == (run / "weights.bin").read_bytes()
    report = store.verify("org/model")
    assert report.ok, report.summary()
    assert store.du("org/model").dedupe_ratio > 0
    assert store.show("org/model").manifest.metadata.architecture == "TinyNet"
    assert [row.name for row in store.ls()] == ["org/model"]
    store.close()


def test_errors_are_typed_with_codes(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        Store.open(tmp_path / "nowhere")
    assert isinstance(info.value, CasError) and isinstance(info.value, LookupError)
    assert info.value.code == "E_NOT_FOUND" and info.value.exit_code == 3


def test_lazy_public_names() -> None:
    assert cas.Store is Store and cas.AddOptions is AddOptions
    with pytest.raises(AttributeError):
        cas.no_such_name  # noqa: B018


def test_init_finishes_an_interrupted_init_but_refuses_foreign_folders(tmp_path: Path) -> None:
    from cas.errors import ConflictError

    half = tmp_path / "half"
    (half / "packs").mkdir(parents=True)
    (half / "tmp").mkdir()  # killed before the registry and config.json were written
    Store.init(half).close()
    assert Store.open(half).config.version == 3
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConflictError):
        Store.init(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_default_store_path_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    from cas.store import default_store_path

    monkeypatch.setenv("CAS_HOME", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "explicit"
    monkeypatch.delenv("CAS_HOME")
    assert default_store_path() == tmp_path / "xdg" / "cas"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / ".local" / "share" / "cas"


def test_add_auto_creates_only_the_default_store(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    f = tmp_path / "w.bin"
    f.write_bytes(b"\x07" * 10_000)
    env = {**os.environ, "CAS_HOME": str(tmp_path / "default")}
    cmd = [sys.executable, "-m", "cas.cli.main", "--json"]
    run = subprocess.run([*cmd, "add", "m", str(f)], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and (tmp_path / "default" / "config.json").exists()
    typo = subprocess.run([*cmd, "--store", str(tmp_path / "typo"), "add", "m", str(f)],
                          capture_output=True, text=True, env=env)
    assert typo.returncode == 3 and json.loads(typo.stdout)["error"]["code"] == "E_NOT_FOUND"
    assert not (tmp_path / "typo").exists()


def test_a_store_opened_before_another_process_adds_reads_what_it_added(tmp_path: Path) -> None:
    """Readers never go stale: a Store opened before another process's add finds the packs
    that add wrote (a miss re-lists the pack folder once) and checks the new version out."""
    import subprocess
    import sys

    from cas import Store

    a = tmp_path / "a"
    a.mkdir()
    (a / "w.bin").write_bytes(os.urandom(300_000))
    store = Store.init(tmp_path / "store")
    store.add("first", a)
    b = tmp_path / "b"
    b.mkdir()
    (b / "w.bin").write_bytes(os.urandom(300_000))
    proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store",
                           str(tmp_path / "store"), "add", "second", str(b)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    store.checkout("second", tmp_path / "out")
    assert (tmp_path / "out" / "w.bin").read_bytes() == (b / "w.bin").read_bytes()
    assert store.verify("second").ok
    store.close()
