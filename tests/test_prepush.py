"""The pre-push hook: real `git push` to a bare repository with `cas hooks install`, and the
pre-commit form (PRE_COMMIT_FROM_REF/TO_REF)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cas.store import Store
from tests.conftest import write_files

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]


def sh(cwd: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True,
       stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env,
                       input=stdin, timeout=300)
    if ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def cas_in(repo: Path, env: dict[str, str], *args: str, ok: bool = True
           ) -> subprocess.CompletedProcess[str]:
    return sh(repo, sys.executable, "-m", "cas.cli.main", *args, env=env, ok=ok)


@pytest.fixture
def project(tmp_path: Path, cas, git) -> tuple[Path, Path, dict[str, str]]:
    """A store with org/bert@1 and @2, a code repository with a bare git remote ``origin``,
    and the environment that points cas at the store."""
    env = {**os.environ, "CAS_HOME": str(cas.store)}
    v1 = write_files(tmp_path / "v1", {"config.json": b"1", "w.bin": os.urandom(100_000)})
    cas("add", "org/bert", str(v1), "-q")
    (v1 / "config.json").write_bytes(b"2")
    cas("add", "org/bert", str(v1), "-q")
    sh(tmp_path, "git", "init", "-q", "--bare", "bare.git")
    repo = tmp_path / "repo"
    sh(tmp_path, "git", "init", "-q", str(repo))
    sh(repo, "git", "remote", "add", "origin", str(tmp_path / "bare.git"))
    return repo, tmp_path / "remote", env


def lock_and_commit(repo: Path, env: dict[str, str], spec: str, *lock_args: str) -> str:
    cas_in(repo, env, "lock", spec, *lock_args)
    sh(repo, "git", "add", "cas.lock")
    sh(repo, *GIT, "commit", "-qm", f"lock {spec}")
    return sh(repo, "git", "rev-parse", "HEAD").stdout.strip()


def remote_ids(remote: Path) -> set[str]:
    """Ids of the versions of org/bert whose content the remote holds (a push of NAME@V
    registers every version of NAME there, and sends the content of V)."""
    from cas import presence

    with Store.open(remote) as s:
        absent = presence.load(s.backend)
        return {v.id for v in s.registry.versions("org/bert") if v.id not in absent}


def local_id(env: dict[str, str], spec: str) -> str:
    with Store.open(env["CAS_HOME"]) as s:
        return s.resolve(spec).id


def bare_has(repo: Path, branch: str) -> bool:
    return sh(repo, "git", "ls-remote", "origin", branch).stdout.strip() != ""


def test_push_sends_every_locked_version_first(project):
    repo, remote, env = project
    cas_in(repo, env, "init", "--store", str(remote))
    lock_and_commit(repo, env, "org/bert@1", "--remote", str(remote))
    lock_and_commit(repo, env, "org/bert@2")
    r = cas_in(repo, env, "hooks", "install", "--json")
    assert '"action":"installed"' in r.stdout
    r = sh(repo, "git", "push", "origin", "HEAD:main", env=env)
    assert "2 locked model version(s) at the cas remote" in r.stderr
    # both commits' versions arrived, with their content: the remote verifies
    assert remote_ids(remote) == {local_id(env, "org/bert@1"), local_id(env, "org/bert@2")}
    cas_in(repo, env, "verify", "--all", "--store", str(remote))
    assert bare_has(repo, "main")
    # pushing again sends nothing new and still succeeds
    r = sh(repo, "git", "push", "origin", "HEAD:other", env=env)
    assert "0 objects" in r.stderr


@pytest.mark.parametrize("where", ["dir", "ssh"])
def test_unreachable_cas_remote_blocks_the_push(project, where, tmp_path):
    repo, _, env = project
    url = str(tmp_path / "unmounted") if where == "dir" else "ssh://127.0.0.1:1/srv/cas"
    lock_and_commit(repo, env, "org/bert@1", "--remote", url)
    cas_in(repo, env, "hooks", "install")
    r = sh(repo, "git", "push", "origin", "HEAD:main", env=env, ok=False)
    assert r.returncode != 0
    assert f"cas pre-push: cannot reach the cas remote {url!r}" in r.stderr
    assert "push stopped" in r.stderr
    assert not bare_has(repo, "main")
    assert not (tmp_path / "unmounted").exists()  # no store made where none was
    # git config cas.remote overrides the lock's field
    good = tmp_path / "good"
    cas_in(repo, env, "init", "--store", str(good))
    sh(repo, "git", "config", "cas.remote", str(good))
    sh(repo, "git", "push", "origin", "HEAD:main", env=env)
    assert remote_ids(good) == {local_id(env, "org/bert@1")}


def test_a_version_nobody_has_blocks_the_push(project, tmp_path):
    repo, remote, env = project
    cas_in(repo, env, "init", "--store", str(remote))
    lock_and_commit(repo, env, "org/bert@1", "--remote", str(remote))
    cas_in(repo, env, "hooks", "install")
    other = {**env, "CAS_HOME": str(tmp_path / "other")}
    cas_in(repo, other, "init")
    r = sh(repo, "git", "push", "origin", "HEAD:main", env=other, ok=False)
    assert r.returncode != 0
    assert "is neither in the local store nor at the cas remote" in r.stderr
    # once someone sent it, a clone without it locally may push
    sh(repo, "git", "push", "origin", "HEAD:main", env=env)
    sh(repo, *GIT, "commit", "-q", "--allow-empty", "-m", "code")
    sh(repo, "git", "push", "origin", "HEAD:main", env=other)


def test_install_chains_an_existing_hook(project, tmp_path):
    repo, remote, env = project
    cas_in(repo, env, "init", "--store", str(remote))
    lock_and_commit(repo, env, "org/bert@1", "--remote", str(remote))
    hooks = repo / ".git" / "hooks"
    seen = tmp_path / "seen.txt"
    old = hooks / "pre-push"
    old.write_text(f"#!/bin/sh\necho \"$1\" > {seen}\ncat >> {seen}\nexit 0\n")
    old.chmod(old.stat().st_mode | stat.S_IXUSR)
    r = cas_in(repo, env, "hooks", "install")
    assert "pre-push.cas-previous" in r.stdout
    assert "echo" in (hooks / "pre-push.cas-previous").read_text()
    assert cas_in(repo, env, "hooks", "install", "--json").stdout.count('"unchanged"') == 1
    sh(repo, "git", "push", "origin", "HEAD:main", env=env)
    lines = seen.read_text().splitlines()
    head = sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert lines[0] == "origin" and lines[1].split()[1] == head  # same arguments and input
    assert remote_ids(remote) == {local_id(env, "org/bert@1")}
    # the earlier hook's verdict still counts
    (hooks / "pre-push.cas-previous").write_text("#!/bin/sh\necho no >&2\nexit 3\n")
    sh(repo, *GIT, "commit", "-q", "--allow-empty", "-m", "more")
    r = sh(repo, "git", "push", "origin", "HEAD:main", env=env, ok=False)
    assert r.returncode != 0 and "no" in r.stderr
    # a foreign hook while a chained one exists: refused, nothing overwritten
    (hooks / "pre-push").write_text("#!/bin/sh\nexit 0\n")
    r = cas_in(repo, env, "hooks", "install", "--json", ok=False)
    assert '"E_CONFLICT"' in r.stdout
    assert (hooks / "pre-push").read_text() == "#!/bin/sh\nexit 0\n"


def test_pre_commit_stage_form_reads_the_range_from_the_environment(project):
    repo, remote, env = project
    cas_in(repo, env, "init", "--store", str(remote))
    first = lock_and_commit(repo, env, "org/bert@1", "--remote", str(remote))
    sh(repo, "git", "push", "--no-verify", "origin", "HEAD:main", env=env)
    lock_and_commit(repo, env, "org/bert@2")
    tip = sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    hook_env = {**env, "PRE_COMMIT_FROM_REF": first, "PRE_COMMIT_TO_REF": tip,
                "PRE_COMMIT_REMOTE_NAME": "origin"}
    r = sh(repo, sys.executable, "-m", "cas.hooks.pre_push", env=hook_env)
    # only the pushed commit's lock: org/bert@1 was in an already-pushed commit only
    assert remote_ids(remote) == {local_id(env, "org/bert@2")}
    assert "1 locked model version(s)" in r.stderr


def test_commits_without_a_lock_push_freely(project):
    repo, _, env = project
    (repo / "a.py").write_text("x = 1\n")
    sh(repo, "git", "add", "a.py")
    sh(repo, *GIT, "commit", "-qm", "code")
    cas_in(repo, env, "hooks", "install")
    sh(repo, "git", "push", "origin", "HEAD:main", env=env)
    assert bare_has(repo, "main")
