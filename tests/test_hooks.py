"""The pre-commit hooks: run by the real `pre-commit` from a git clone of this project (built
offline from a wheelhouse), and their entry points run directly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import lockcheck
from tests.conftest import write_files

PROJECT = Path(__file__).resolve().parents[1]


def sh(cwd: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True
       ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env,
                       timeout=600)
    if ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def commit_all(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm",
       message)


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git clone of this project's working tree (try-repo needs the hooks committed)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    dest = tmp_path_factory.mktemp("hookrepo")
    files = sh(PROJECT, "git", "ls-files", "-co", "--exclude-standard", "-z").stdout
    for rel in filter(None, files.split("\0")):
        src = PROJECT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    sh(dest, "git", "init", "-q")
    commit_all(dest, "snapshot")
    return dest


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pre-commit's home in tmp, and pip limited to a wheelhouse that `cas hooks wheelhouse`
    made from this installation: no package index is used."""
    base = tmp_path_factory.mktemp("precommit")
    wheels = base / "wheels"
    r = sh(base, sys.executable, "-m", "cas.cli.main", "hooks", "wheelhouse", str(wheels),
           "--json")
    import json

    doc = json.loads(r.stdout)
    if doc["missing"]:
        pytest.skip(f"not installed here, so not in the wheelhouse: {doc['missing']}")
    return {**os.environ, "PRE_COMMIT_HOME": str(base / "home"), "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull,
            "PRE_COMMIT_COLOR": "never"}


HOOKS = ("cas-verify-files", "cas-verify-lock", "cas-no-large-weights")


@pytest.fixture
def user_repo(tmp_path: Path, cas, offline_env, hook_repo) -> tuple[Path, dict[str, str]]:
    """A code repository locking org/bert@1 (checked out under models/, ignored by git), with
    a .pre-commit-config.yaml that uses the hooks of ``hook_repo``."""
    model = write_files(tmp_path / "m", {"config.json": b'{"a": 1}\n',
                                         "model.safetensors": os.urandom(200_000)})
    cas("add", "org/bert", str(model), "-q")
    repo = tmp_path / "repo"
    sh(tmp_path, "git", "init", "-q", str(repo))
    env = {**offline_env, "CAS_HOME": str(cas.store)}
    sh(repo, sys.executable, "-m", "cas.cli.main", "lock", "org/bert", env=env)
    sh(repo, sys.executable, "-m", "cas.cli.main", "checkout", "--lock", env=env)
    (repo / ".gitignore").write_text("models/\n")
    rev = sh(hook_repo, "git", "rev-parse", "HEAD").stdout.strip()
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {hook_repo}\n  rev: {rev}\n  hooks:\n"
        + "".join(f"  - id: {h}\n" for h in HOOKS))
    commit_all(repo, "lock org/bert")
    return repo, env


def pc_run(repo: Path, env: dict[str, str], hook: str, *args: str
           ) -> subprocess.CompletedProcess[str]:
    """``pre-commit run HOOK``: the hook environment is built once per module (try-repo
    builds a new one on every call)."""
    return sh(repo, sys.executable, "-m", "pre_commit", "run", hook, *args, env=env, ok=False)


def try_repo(repo: Path, env: dict[str, str], hook_repo: Path, hook: str, *args: str
             ) -> subprocess.CompletedProcess[str]:
    return sh(repo, sys.executable, "-m", "pre_commit", "try-repo", str(hook_repo), hook,
              *args, env=env, ok=False)


@pytest.mark.slow  # builds two hook environments (try-repo's own, and the config's): ~30 s
def test_verify_files_blocks_a_truncated_weight_file(user_repo, hook_repo):
    repo, env = user_repo
    r = pc_run(repo, env, "cas-verify-files")
    assert r.returncode == 0, r.stdout + r.stderr
    weights = repo / "models/org/bert/model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    # try-repo: the hooks straight from a clone of this project, as their author would
    r = try_repo(repo, env, hook_repo, "cas-verify-files", "--all-files")
    assert r.returncode == 1
    assert ("models/org/bert/model.safetensors: 1000 bytes, cas.lock records 200000 "
            "(truncated?)") in r.stdout
    # the same hook, installed from .pre-commit-config.yaml, stops a real commit
    sh(repo, sys.executable, "-m", "pre_commit", "install", env=env)
    (repo / "train.py").write_text("print('hi')\n")
    sh(repo, "git", "add", "train.py")
    git_commit = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit",
                  "-qm", "code"]
    r = sh(repo, *git_commit, env=env, ok=False)
    assert r.returncode != 0 and "truncated?" in r.stdout + r.stderr
    assert sh(repo, "git", "log", "--oneline").stdout.count("\n") == 1  # nothing committed
    sh(repo, sys.executable, "-m", "cas.cli.main", "checkout", "--lock", env=env)
    sh(repo, *git_commit, env=env)


def test_verify_files_catches_an_edit_of_the_same_size(user_repo):
    repo, env = user_repo
    cfg = repo / "models/org/bert/config.json"
    cfg.write_bytes(b'{"a": 9}\n')
    r = pc_run(repo, env, "cas-verify-files")
    assert r.returncode == 1 and "models/org/bert/config.json: SHA-256" in r.stdout


def test_no_large_weights_names_cas_add(user_repo):
    repo, env = user_repo
    write_files(repo / "ckpt", {"model.safetensors": b"\0" * (2 << 20), "notes.txt": b"x"})
    sh(repo, "git", "add", "ckpt")
    r = pc_run(repo, env, "cas-no-large-weights")
    assert r.returncode == 1
    lines = [line for line in r.stdout.splitlines() if "committed to git" in line]
    assert lines == ["ckpt/model.safetensors: 2.0 MiB weight file (.safetensors) committed to "
                     "git: store it with `cas add NAME ckpt` and `cas lock NAME --path ckpt`, "
                     "then `git rm --cached ckpt/model.safetensors`"]
    sh(repo, "git", "rm", "-q", "--cached", "ckpt/model.safetensors")
    r = pc_run(repo, env, "cas-no-large-weights")
    assert r.returncode == 0, r.stdout


def test_verify_lock_needs_every_version(user_repo, tmp_path):
    repo, env = user_repo
    r = pc_run(repo, env, "cas-verify-lock", "--all-files")
    assert r.returncode == 0, r.stdout
    assert "Passed" in r.stdout
    empty = tmp_path / "empty-store"
    sh(repo, sys.executable, "-m", "cas.cli.main", "--store", str(empty), "init", env=env)
    r = pc_run(repo, {**env, "CAS_HOME": str(empty)}, "cas-verify-lock", "--all-files")
    assert r.returncode == 1
    assert "cas.lock: models/org/bert: org/bert version" in r.stdout
    assert "is not in the local store and no cas remote is configured" in r.stdout


# -- the entry points, run directly ----------------------------------------------------------


def run_hook(repo: Path, env: dict[str, str], module: str, *args: str
             ) -> subprocess.CompletedProcess[str]:
    return sh(repo, sys.executable, "-m", f"cas.hooks.{module}", *args, env=env, ok=False)


def test_verify_files_cache_reads_only_changed_files(user_repo, monkeypatch):
    repo, _ = user_repo
    for p in (repo / "models/org/bert").iterdir():
        os.utime(p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))  # not racily clean
    hashed: list[Path] = []
    real = lockcheck._sha256_of
    monkeypatch.setattr(lockcheck, "_sha256_of", lambda p: hashed.append(p) or real(p))
    git_dir = repo / ".git"
    assert lockcheck.verify_files(repo, git_dir) == (2, [])
    assert len(hashed) == 2 and (git_dir / lockcheck.CACHE_NAME).is_file()
    hashed.clear()
    assert lockcheck.verify_files(repo, git_dir) == (2, [])
    assert hashed == []  # nothing changed, nothing read
    # same size, mtime put back: the ctime differs, so the file is read again
    cfg = repo / "models/org/bert/config.json"
    cfg.write_bytes(b'{"a": 7}\n')
    os.utime(cfg, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    n, problems = lockcheck.verify_files(repo, git_dir)
    assert hashed == [cfg] and len(problems) == 1 and "config.json: SHA-256" in problems[0]
    # a damaged cache is ignored, never trusted
    cache = git_dir / lockcheck.CACHE_NAME
    data = bytearray(cache.read_bytes())
    data[20] ^= 1
    cache.write_bytes(bytes(data))
    hashed.clear()
    assert len(lockcheck.verify_files(repo, git_dir)[1]) == 1 and len(hashed) == 2
    # the working tree holds no cache file
    assert sh(repo, "git", "status", "--porcelain", "--ignored").stdout.split() == \
        ["!!", "models/"]


def test_verify_files_imports_neither_dulwich_nor_msgspec_when_unchanged(user_repo):
    repo, env = user_repo
    probe = ("import sys; from cas.hooks.verify_files import main; rc = main([]); "
             "print(rc, 'dulwich' in sys.modules, 'msgspec' in sys.modules)")
    first = sh(repo, sys.executable, "-c", probe, env=env).stdout.split()
    assert first == ["0", "False", "True"]  # parses cas.lock once
    second = sh(repo, sys.executable, "-c", probe, env=env).stdout.split()
    assert second == ["0", "False", "False"]


def test_verify_files_reports_a_bad_lock_and_missing_files(user_repo):
    repo, env = user_repo
    shutil.rmtree(repo / "models/org/bert")
    r = run_hook(repo, env, "verify_files")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        "models/org/bert/config.json: missing (run `cas checkout --lock`)",
        "models/org/bert/model.safetensors: missing (run `cas checkout --lock`)"]
    (repo / "cas.lock").write_text('{"format": "cas.lock", "version": 1, "models": 3}')
    r = run_hook(repo, env, "verify_files")
    assert r.returncode == 1 and r.stdout.rstrip().endswith("[E_SCHEMA]")
    (repo / "cas.lock").unlink()
    assert run_hook(repo, env, "verify_files").returncode == 0  # nothing locked


def test_no_large_weights_options(tmp_path):
    write_files(tmp_path, {"a.safetensors": b"\0" * 5000, "b.onnx": b"\0" * 100,
                           "c.dat": b"\0" * 9000, "d.myw": b"\0" * 5000})
    env = dict(os.environ)

    def hook(*args: str) -> list[str]:
        r = run_hook(tmp_path, env, "no_large_weights", *args)
        assert r.returncode == (1 if r.stdout else 0)
        return [line.split(":")[0] for line in r.stdout.splitlines()]

    files = ["a.safetensors", "b.onnx", "c.dat", "d.myw", "gone.bin"]
    assert hook(*files) == []  # defaults: 1 MiB weights, 50 MiB anything
    assert hook("--max-size", "4k", *files) == ["a.safetensors"]
    assert hook("--max-size", "4k", "--also", "myw", *files) == ["a.safetensors", "d.myw"]
    assert hook("--max-size", "4k", "--allow", "a.safetensors", *files) == []
    assert hook("--max-size", "1", "--extensions", ".onnx", *files) == ["b.onnx"]
    assert hook("--max-any-size", "8KiB", *files) == ["c.dat"]
    r = run_hook(tmp_path, env, "no_large_weights", "--max-size", "lots", "a.safetensors")
    assert r.returncode == 2 and "not a size" in r.stderr


def test_the_shell_fast_path_runs_no_python_until_something_changes(tmp_path, cas):
    """hooks/cas-verify-files: with the record the last good full check left, one `stat`
    decides; any change (size, content with its ctime, a new lock) runs the full check."""
    if shutil.which("stat") is None or sh(tmp_path, "stat", "-c", "%Y", ".", ok=False
                                          ).returncode:
        pytest.skip("no GNU stat here: the fast path always hands over to the full check")
    model = write_files(tmp_path / "m", {"w.bin": os.urandom(50_000)})
    cas("add", "org/m", str(model), "-q")
    repo = tmp_path / "repo"
    sh(tmp_path, "git", "init", "-q", str(repo))
    env = {**os.environ, "CAS_HOME": str(cas.store)}
    sh(repo, sys.executable, "-m", "cas.cli.main", "lock", "org/m", env=env)
    sh(repo, sys.executable, "-m", "cas.cli.main", "checkout", "--lock", env=env)
    # The launcher next to a stand-in for the full check that says when it ran.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy2(PROJECT / "hooks" / "cas-verify-files", bin_dir / "cas-verify-files")
    ran = tmp_path / "full-ran"
    full = bin_dir / "cas-verify-files-full"
    full.write_text(f"#!/bin/sh\necho ran >> {ran}\nexit 3\n")
    full.chmod(0o755)

    def hook() -> int:
        return subprocess.run([str(bin_dir / "cas-verify-files")], cwd=repo).returncode

    assert hook() == 3 and ran.exists()  # no record yet: the full check runs
    ran.unlink()
    # A good full check whose files are old enough leaves the record ("now" moved on
    # rather than waiting: whole-second times need a second before they tell changes apart).
    assert lockcheck.verify_files(repo, repo / ".git", now=time.time() + 10) == (1, [])
    assert hook() == 0 and not ran.exists()
    # Paths with quotes and spaces are quoted for the shell: the record still matches.
    odd = repo / "models" / "it's a $dir"
    odd.mkdir(parents=True)
    (odd / "w x.bin").write_bytes(b"odd")
    rels = ["cas.lock", "models/it's a $dir/w x.bin"]
    lockcheck._fast_path(repo, repo / ".git", rels, True, time.time() + 10)
    assert hook() == 0 and not ran.exists()
    assert lockcheck.verify_files(repo, repo / ".git", now=time.time() + 10) == (1, [])
    target = next((repo / "models").rglob("w.bin"))
    with open(target, "ab") as f:
        f.write(b"x")
    assert hook() == 3 and ran.exists()  # changed: handed over
    ran.unlink()
    n, problems = lockcheck.verify_files(repo, repo / ".git", now=time.time() + 10)
    assert problems and not (repo / ".git" / lockcheck.FAST_SH).exists()
    assert hook() == 3 and ran.exists()  # a bad check leaves no record
