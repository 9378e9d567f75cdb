"""The registry is a plain git repository: the real git CLI reads it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cas.format.manifest import Manifest


def git_out(git: str, registry: Path, *args: str) -> str:
    proc = subprocess.run([git, "--git-dir", str(registry), *args], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_real_git_reads_registry(cas, git, tmp_path):
    reg = cas.store / "registry"
    data = tmp_path / "m"
    data.mkdir()
    for i in range(3):
        (data / "w.bin").write_bytes(bytes([i]) * 300_000 + b"tail")
        cas("add", "org/model", str(data), "-m", f"round {i}")
    cas("tag", "org/model@2", "prod")
    cas("rm", "org/model@1")

    log = git_out(git, reg, "log", "--format=%an <%ae>|%s", "refs/models/org/model").splitlines()
    assert [line.split("|")[1] for line in log] == [
        "rm org/model v1", "tag org/model@prod -> v2", "add org/model v3: round 2",
        "add org/model v2: round 1", "add org/model v1: round 0"]
    assert all("@" in line.split("|")[0] for line in log)  # authored as user@host

    shown = git_out(git, reg, "show", "refs/models/org/model:versions/000003.json")
    manifest = Manifest.decode(shown.encode())
    assert manifest.name == "org/model" and manifest.seq == 3
    assert json.loads(shown)["files"][0]["path"] == "w.bin"

    # git show of a version's commit shows the manifest JSON it added.
    commit = git_out(git, reg, "rev-parse", "refs/models/org/model~2").strip()
    patch = git_out(git, reg, "show", commit)
    assert '"schema": "cas.manifest"' in patch and "versions/000003.json" in patch

    # The tip tree lists exactly the live versions.
    tree = git_out(git, reg, "ls-tree", "-r", "--name-only", "refs/models/org/model").split()
    assert tree == ["versions/000002.json", "versions/000003.json"]

    # Tags are annotated git tags named NAME@TAG on the commit that added the version.
    assert git_out(git, reg, "cat-file", "-t", "refs/tags/org/model@prod").strip() == "tag"
    tagged = git_out(git, reg, "rev-parse", "refs/tags/org/model@prod^{commit}").strip()
    assert tagged == cas("--json", "show", "org/model@2").json["commit"]

    fsck = subprocess.run([git, "--git-dir", str(reg), "fsck", "--strict", "--no-dangling"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "error" not in fsck.stderr.lower() and "warning" not in fsck.stderr.lower()


def test_git_clone_of_registry_carries_models(cas, git, tmp_path):
    data = tmp_path / "f.bin"
    data.write_bytes(b"x" * 70_000)
    cas("add", "solo", str(data), "--tag", "v1")
    clone = tmp_path / "clone.git"
    subprocess.run([git, "clone", "--quiet", "--bare", "--mirror", str(cas.store / "registry"),
                    str(clone)], check=True)
    refs = git_out(git, clone, "for-each-ref", "--format=%(refname)").split()
    assert "refs/models/solo" in refs and "refs/tags/solo@v1" in refs
