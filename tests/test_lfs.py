"""git-lfs with cas as its transfer agent, driven by the real ``git`` and ``git-lfs``: push,
clone, dedupe across versions, damaged and missing objects, and the agent's protocol."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import damage_chunk

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or subprocess.run(
        ["git", "lfs", "version"], capture_output=True).returncode != 0,
    reason="needs git and git-lfs (Debian package git-lfs)")


class Repo:
    """A git working tree driven with a private HOME (no user or system git config)."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path = path
        self.env = env

    def git(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["git", *args], cwd=self.path, env=self.env, capture_output=True,
                              text=True, timeout=300)
        if ok and proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def cas(self, store: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store),
                               *args], cwd=self.path, env=self.env, capture_output=True,
                              text=True, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        if ok and proc.returncode != 0:
            raise AssertionError(f"cas {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def write(self, rel: str, data: bytes) -> str:
        (self.path / rel).write_bytes(data)
        return hashlib.sha256(data).hexdigest()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x",
            "GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1"}


@pytest.fixture
def origin(tmp_path: Path, env: dict[str, str]) -> Path:
    bare = tmp_path / "models.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], env=env,
                   check=True)
    return bare


def new_repo(tmp_path: Path, env: dict[str, str], origin: Path, store: Path,
             remote: Path) -> Repo:
    """A repository tracking ``*.safetensors`` with cas as its LFS agent."""
    repo = Repo(tmp_path / "work", env)
    repo.path.mkdir()
    repo.git("init", "-q", "-b", "main")
    repo.git("remote", "add", "origin", str(origin))
    repo.git("lfs", "track", "*.safetensors")
    repo.cas(store, "lfs", "install", "--remote", str(remote))
    return repo


def clone(tmp_path: Path, env: dict[str, str], origin: Path, store: Path, remote: Path,
          name: str = "clone") -> Repo:
    """``git clone`` (pointers only) + ``cas lfs install`` + ``git lfs pull``; the pull's
    outcome is left to the caller (``last``)."""
    subprocess.run(["git", "clone", "-q", str(origin), str(tmp_path / name)], env=env,
                   check=True, capture_output=True)
    repo = Repo(tmp_path / name, env)
    repo.cas(store, "lfs", "install", "--remote", str(remote))
    repo.last = repo.git("lfs", "pull", ok=False)  # type: ignore[attr-defined]
    return repo


def weights(seed: int, size: int = 1 << 20) -> bytes:
    return random.Random(seed).randbytes(size)


def finetune(data: bytes, at: int, seed: int) -> bytes:
    """``data`` with 4 KiB rewritten at ``at`` (one "layer" changed)."""
    return data[:at] + random.Random(seed).randbytes(4096) + data[at + 4096:]


def pack_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "packs").glob("*.pack"))


def lfs_object(repo: Repo, oid: str) -> Path:
    return repo.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def test_install_points_git_lfs_at_the_running_cas(tmp_path: Path, env: dict[str, str],
                                                   origin: Path) -> None:
    repo = new_repo(tmp_path, env, origin, tmp_path / "store", tmp_path / "remote")
    cfg = dict(line.split("=", 1) for line in
               repo.git("config", "--local", "--list").stdout.splitlines())
    assert cfg["lfs.standalonetransferagent"] == "cas"
    assert cfg["lfs.customtransfer.cas.concurrent"] == "false"
    exe = Path(cfg["lfs.customtransfer.cas.path"])
    assert exe.is_absolute() and os.access(exe, os.X_OK)
    args = cfg["lfs.customtransfer.cas.args"].split()
    assert args[args.index("lfs-agent") + 1:] == [
        "--store", str(tmp_path / "store"), "--model", "lfs/models",
        "--remote", str(tmp_path / "remote")]
    assert cfg["filter.lfs.process"] == "git-lfs filter-process"  # git lfs install --local
    # The configured command runs without PATH (a venv that is not activated).
    bare_env = {**env, "PATH": "/nonexistent"}
    proc = subprocess.run([str(exe), *args[:args.index("lfs-agent")], "--version"],
                          env=bare_env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # --json, and a folder that is not a git repository
    doc = json.loads(repo.cas(tmp_path / "store", "--json", "lfs", "install", "--model",
                              "lfs/other").stdout)
    assert doc["model"] == "lfs/other" and doc["remote"] == ""
    outside = Repo(tmp_path / "plain", env)
    outside.path.mkdir()
    bad = outside.cas(tmp_path / "store", "--json", "lfs", "install", ok=False)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "E_ARGS"


def test_global_install_names_the_model_after_each_repository(
        tmp_path: Path, env: dict[str, str], origin: Path) -> None:
    store, remote = tmp_path / "store", tmp_path / "remote"
    repo = Repo(tmp_path / "work", env)
    repo.path.mkdir()
    repo.git("init", "-q", "-b", "main")
    doc = json.loads(repo.cas(store, "--json", "lfs", "install", "--global", "--remote",
                              str(remote)).stdout)
    assert doc["scope"] == "global" and doc["model"] == ""
    assert "--model" not in repo.git("config", "--global",
                                     "lfs.customtransfer.cas.args").stdout
    assert repo.git("config", "--local", "--list").stdout.count("customtransfer") == 0
    repo.git("remote", "add", "origin", str(origin))
    repo.git("lfs", "track", "*.safetensors")
    oid = repo.write("m.safetensors", weights(4, 4096))
    repo.git("add", ".")
    repo.git("commit", "-qm", "m")
    repo.git("push", "-q", "origin", "main")
    repo.cas(remote, "show", f"lfs/models@sha256-{oid}")


def test_push_clone_byte_exact_and_versions_share_chunks(tmp_path: Path, env: dict[str, str],
                                                         origin: Path) -> None:
    remote = tmp_path / "remote"
    repo = new_repo(tmp_path, env, origin, tmp_path / "store", remote)
    v1 = weights(1)
    oids = [repo.write("model.safetensors", v1)]
    repo.write("README.md", b"a model\n")
    repo.git("add", ".")
    repo.git("commit", "-qm", "v1")
    repo.git("push", "-q", "origin", "main")
    after_v1 = pack_bytes(remote)
    v2 = finetune(v1, 500_000, 2)
    oids.append(repo.write("model.safetensors", v2))
    repo.git("commit", "-qam", "v2")
    repo.git("push", "-q", "origin", "main")
    # The second version cost the remote a few chunks, not a second copy.
    assert pack_bytes(remote) - after_v1 < len(v2) // 4
    assert not (origin / "lfs").exists()  # nothing went to git-lfs's own file store

    other = clone(tmp_path, env, origin, tmp_path / "store2", remote)
    assert other.last.returncode == 0, other.last.stderr  # type: ignore[attr-defined]
    assert (other.path / "model.safetensors").read_bytes() == v2
    assert (other.path / "README.md").read_bytes() == b"a model\n"
    # An ordinary checkout smudges through the agent (v1 is not in .git/lfs yet).
    other.env = {k: v for k, v in env.items() if k != "GIT_LFS_SKIP_SMUDGE"}
    other.git("checkout", "-q", "HEAD~1")
    assert (other.path / "model.safetensors").read_bytes() == v1
    assert not (other.path / ".git" / "lfs" / "tmp").exists() or not any(
        (other.path / ".git" / "lfs" / "tmp").iterdir())
    # The clone's store registered what it fetched, under the oid tags.
    shown = json.loads(other.cas(tmp_path / "store2", "--json", "ls").stdout)
    assert [m["name"] for m in shown["models"]] == ["lfs/models"]
    for oid in oids:
        other.cas(tmp_path / "store2", "show", f"lfs/models@sha256-{oid}")
    other.cas(tmp_path / "store2", "verify", "--all")


def test_clones_pushing_at_the_same_time_both_land(tmp_path: Path, env: dict[str, str],
                                                   origin: Path) -> None:
    remote = tmp_path / "remote"
    repo = new_repo(tmp_path, env, origin, tmp_path / "store", remote)
    repo.write("a.safetensors", weights(1, 4096))
    repo.git("add", ".")
    repo.git("commit", "-qm", "a")
    repo.git("push", "-q", "origin", "main")
    other = clone(tmp_path, env, origin, tmp_path / "store2", remote)
    # Both add an object; the second pusher's model diverged from the remote's.
    b = other.write("b.safetensors", weights(2, 4096))
    other.git("add", ".")
    other.git("commit", "-qm", "b")
    other.git("push", "-q", "origin", "main")
    c = repo.write("c.safetensors", weights(3, 4096))
    repo.git("add", ".")
    repo.git("commit", "-qm", "c")
    repo.git("pull", "-q", "--no-rebase", "origin", "main")
    repo.git("push", "-q", "origin", "main")
    third = clone(tmp_path, env, origin, tmp_path / "store3", remote, "third")
    assert third.last.returncode == 0, third.last.stderr  # type: ignore[attr-defined]
    for rel, oid in (("b.safetensors", b), ("c.safetensors", c)):
        assert hashlib.sha256((third.path / rel).read_bytes()).hexdigest() == oid


@pytest.mark.parametrize("where", ["remote", "store"])
def test_a_damaged_object_is_refused_not_written(tmp_path: Path, env: dict[str, str],
                                                  origin: Path, where: str) -> None:
    remote = tmp_path / "remote"
    repo = new_repo(tmp_path, env, origin, tmp_path / "store", remote)
    oid = repo.write("model.safetensors", weights(5, 256 * 1024))
    repo.git("add", ".")
    repo.git("commit", "-qm", "v1")
    repo.git("push", "-q", "origin", "main")
    if where == "remote":
        damage_chunk(remote, f"lfs/models@sha256-{oid}", oid)
        other = clone(tmp_path, env, origin, tmp_path / "store2", remote)
        pull = other.last  # type: ignore[attr-defined]
    else:
        # The repository's own store is damaged and git-lfs lost its copy.
        damage_chunk(tmp_path / "store", f"lfs/models@sha256-{oid}", oid)
        lfs_object(repo, oid).unlink()
        (repo.path / "model.safetensors").unlink()
        repo.git("checkout", "--", "model.safetensors")
        other, pull = repo, repo.git("lfs", "pull", ok=False)
    assert pull.returncode != 0
    assert "E_VERIFY" in pull.stderr, pull.stderr
    assert not lfs_object(other, oid).exists()
    # The working file is still the pointer, not damaged bytes.
    assert (other.path / "model.safetensors").read_bytes().startswith(
        b"version https://git-lfs.github.com/spec/v1")
    tmp = other.path / ".git" / "lfs" / "tmp"
    assert not tmp.exists() or not [p for p in tmp.iterdir() if p.name.startswith("cas-")]


def test_missing_object_is_a_per_object_error(tmp_path: Path, env: dict[str, str],
                                              origin: Path) -> None:
    remote = tmp_path / "remote"
    repo = new_repo(tmp_path, env, origin, tmp_path / "store", remote)
    kept = repo.write("kept.safetensors", weights(6, 8192))
    lost = repo.write("lost.safetensors", weights(7, 8192))
    repo.git("add", ".")
    repo.git("commit", "-qm", "two")
    repo.git("push", "-q", "origin", "main")
    # The remote loses one object's version (its tag deleted, then removed).
    repo.cas(remote, "rm", "--force", f"lfs/models@sha256-{lost}")
    other = clone(tmp_path, env, origin, tmp_path / "store2", remote)
    pull = other.last  # type: ignore[attr-defined]
    assert pull.returncode != 0
    assert "E_NOT_FOUND" in pull.stderr and lost in pull.stderr, pull.stderr
    assert hashlib.sha256((other.path / "kept.safetensors").read_bytes()).hexdigest() == kept


def test_agent_protocol(tmp_path: Path, env: dict[str, str], origin: Path) -> None:
    """The agent driven directly: every request gets its answer, failures in the object's
    ``complete`` event, and the run ends with exit 0 at ``terminate``."""
    store = tmp_path / "store"
    repo = new_repo(tmp_path, env, origin, store, tmp_path / "remote")
    data = weights(8, 300_000)
    good = repo.write("w.bin", data)
    repo.write("wrong.bin", b"not what the oid says")
    missing = "0" * 64
    requests = [
        {"event": "init", "operation": "upload", "remote": "origin", "concurrent": False,
         "concurrenttransfers": 1},
        {"event": "upload", "oid": good, "size": len(data), "path": str(repo.path / "w.bin"),
         "action": None},
        {"event": "upload", "oid": hashlib.sha256(b"x").hexdigest(), "size": 21,
         "path": str(repo.path / "wrong.bin"), "action": None},
        {"event": "download", "oid": missing, "size": 3, "action": None},
        {"event": "download", "oid": "../../etc/passwd", "size": 3, "action": None},
        {"event": "download", "oid": good, "size": len(data), "action": None},
        {"event": "download", "oid": good, "size": len(data) + 1, "action": None},
        {"event": "terminate"},
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "cas.cli.main", "--store", str(store), "lfs-agent",
         "--model", "lfs/models"],
        input="".join(json.dumps(r) + "\n" for r in requests), cwd=repo.path, env=env,
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out[0] == {}
    done = [m for m in out[1:] if m["event"] == "complete"]
    assert [m["oid"] for m in done] == [r["oid"] for r in requests[1:-1]]
    assert "error" not in done[0]
    progress = [m for m in out if m.get("event") == "progress" and m["oid"] == good]
    assert progress and progress[-1]["bytesSoFar"] == len(data)
    assert done[1]["error"]["message"].startswith("E_VERIFY")
    assert done[2]["error"]["message"].startswith("E_NOT_FOUND")
    assert done[3]["error"]["message"].startswith("E_ARGS")
    assert "error" not in done[4] and Path(done[4]["path"]).read_bytes() == data
    assert Path(done[4]["path"]).parent == repo.path / ".git" / "lfs" / "tmp"
    assert done[5]["error"]["message"].startswith("E_VERIFY")
    assert all(isinstance(m["error"]["code"], int) for m in done if "error" in m)
    # The wrong upload left nothing registered under its oid; the good one is tagged.
    shown = json.loads(repo.cas(store, "--json", "show", f"lfs/models@sha256-{good}").stdout)
    assert [(f["path"], f["sha256"]) for f in shown["manifest"]["files"]] == [(good, good)]
    gone = repo.cas(store, "show", f"lfs/models@sha256-{hashlib.sha256(b'x').hexdigest()}",
                    ok=False)
    assert gone.returncode == 3


def test_retention_and_gc_keep_every_object(tmp_path: Path, env: dict[str, str],
                                            origin: Path) -> None:
    """The oid tags keep objects: a keep-last-1 rule, gc --now and rm leave them all."""
    store = tmp_path / "store"
    repo = new_repo(tmp_path, env, origin, store, tmp_path / "remote")
    blobs = {}
    for i in range(3):
        data = weights(10 + i, 64 * 1024)
        blobs[repo.write("m.safetensors", data)] = data
        repo.git("add", ".")
        repo.git("commit", "-qm", f"v{i}")
    repo.git("push", "-q", "origin", "main")
    repo.cas(store, "retain", "lfs/models", "--keep-last", "1")
    repo.cas(store, "gc", "--now")
    first = next(iter(blobs))
    refused = repo.cas(store, "--json", "rm", f"lfs/models@sha256-{first}", ok=False)
    assert refused.returncode != 0
    assert json.loads(refused.stdout)["error"]["code"] == "E_CONFLICT"
    shutil.rmtree(repo.path / ".git" / "lfs" / "objects")
    shutil.rmtree(tmp_path / "remote")  # so what comes back can only come from the store
    for f in repo.path.glob("*.safetensors"):
        f.unlink()
    repo.git("checkout", "-q", "HEAD~2")
    repo.env = {k: v for k, v in env.items() if k != "GIT_LFS_SKIP_SMUDGE"}
    repo.git("lfs", "fetch", "--all")  # every version
    for oid, data in blobs.items():
        assert lfs_object(repo, oid).read_bytes() == data


def test_a_remote_that_cannot_take_the_object_stops_git_push(
        tmp_path: Path, env: dict[str, str], origin: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"a file where the cas remote should be\n")
    repo = new_repo(tmp_path, env, origin, tmp_path / "store", blocker)
    repo.write("m.safetensors", weights(20, 4096))
    repo.git("add", ".")
    repo.git("commit", "-qm", "m")
    push = repo.git("push", "origin", "main", ok=False)
    assert push.returncode != 0
    assert "E_" in push.stderr, push.stderr
    assert repo.git("ls-remote", str(origin), ok=False).stdout == ""  # no ref went out
