"""The Hugging Face cache layout: ``cas import --hf-cache`` of a cache that huggingface_hub
itself filled from a real server (olah), and ``cas export --hf-cache`` read back by
huggingface_hub and transformers with ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import Olah, finetuned, git_blob_id, mirror_repo, small_model

REPO = "org/mini"


def run_python(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def filled_cache(tmp_path_factory, real_model):
    """A cache that huggingface_hub's snapshot_download filled with both revisions."""
    root = tmp_path_factory.mktemp("hfcache")
    rev1 = small_model(real_model, seed=5)
    rev2 = finetuned(rev1)
    commits = mirror_repo(root / "mirrors", REPO, [rev1, rev2],
                          lfs=frozenset({"model.safetensors"}))
    cache = root / "cache"
    with Olah(root / "mirrors", root / "work") as server:
        env = {**os.environ, "HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(cache),
               "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("HF_TOKEN", None)
        run_python("from huggingface_hub import snapshot_download as s\n"
                   f"s({REPO!r}, revision={commits[0]!r})\ns({REPO!r})\n", env)
    return cache, commits, rev1, rev2


def copy_cache(cache: Path, dest: Path) -> Path:
    shutil.copytree(cache, dest, symlinks=True)
    return dest


def test_import_registers_every_snapshot_once(cas, filled_cache, tmp_path):
    cache, commits, rev1, rev2 = filled_cache
    r = cas("--json", "import", "--hf-cache", str(cache)).json
    got = [(v["snapshot"], v["status"], v["seq"]) for v in r["versions"]]
    # refs/main's snapshot is registered last: it is the latest version.
    assert got == [(commits[0], "registered", 1), (commits[1], "registered", 2)], r
    weights = len(rev1["model.safetensors"])
    assert r["versions"][1]["new_stored_bytes"] < weights * 0.25
    assert r["versions"][0]["license"] == "apache-2.0"
    dest = tmp_path / "co"
    cas("checkout", f"{REPO}@2", str(dest))
    assert {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()} == rev2
    again = cas("--json", "import", "--hf-cache", str(cache), REPO).json
    assert [v["status"] for v in again["versions"]] == ["present", "present"]
    assert len(cas("--json", "log", REPO).json["history"]) == 2


def test_a_damaged_or_incomplete_snapshot_is_skipped_the_rest_imported(cas, filled_cache,
                                                                       tmp_path):
    cache, commits, rev1, _ = filled_cache
    cache = copy_cache(cache, tmp_path / "cache")
    blobs = cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    weights = blobs / hashlib.sha256(rev1["model.safetensors"]).hexdigest()
    data = bytearray(weights.read_bytes())
    data[1000] ^= 1
    weights.write_bytes(bytes(data))
    r = cas("--json", "import", "--hf-cache", str(cache)).json
    status = {v["snapshot"]: v["status"] for v in r["versions"]}
    assert status == {commits[0]: "skipped", commits[1]: "registered"}
    assert [w["code"] for w in r["warnings"]] == ["W_HF_CACHE_SKIPPED"]
    assert "SHA-256" in r["warnings"][0]["message"]
    # A missing blob (an interrupted download) is skipped too.
    (blobs / git_blob_id(rev1["config.json"])).unlink()
    r = cas("--json", "import", "--hf-cache", str(cache)).json
    status = {v["snapshot"]: v["status"] for v in r["versions"]}
    assert status == {commits[0]: "skipped", commits[1]: "present"}


def test_unknown_repository_and_missing_cache(cas, filled_cache, tmp_path):
    cache, *_ = filled_cache
    r = cas("--json", "import", "--hf-cache", str(cache), "org/absent", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    r = cas("--json", "import", "--hf-cache", str(tmp_path / "nothing"), ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"


def load_offline(cache: Path, repo: str) -> dict:
    """What huggingface_hub and transformers see of ``repo`` in ``cache``, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_ENDPOINT": "http://127.0.0.1:9", "TRANSFORMERS_OFFLINE": "1"}
    out = run_python(
        "import json\n"
        "from huggingface_hub import snapshot_download\n"
        "from transformers import AutoConfig, AutoTokenizer\n"
        f"path = snapshot_download({repo!r}, local_files_only=True)\n"
        f"cfg = AutoConfig.from_pretrained({repo!r})\n"
        f"tok = AutoTokenizer.from_pretrained({repo!r})\n"
        "print(json.dumps({'path': path, 'model_type': cfg.model_type,\n"
        "                  'ids': tok('hello world')['input_ids']}))\n", env)
    return json.loads(out.strip().splitlines()[-1])


def test_export_of_a_hub_version_loads_offline(cas, filled_cache, tmp_path):
    cache, commits, rev1, _ = filled_cache
    cas("import", "--hf-cache", str(cache))
    out = tmp_path / "exported"
    r = cas("--json", "export", f"{REPO}@1", "--hf-cache", str(out)).json
    assert r["snapshot"] == commits[0] and r["repo"] == REPO and r["blobs_written"] == 7
    top = out / f"models--{REPO.replace('/', '--')}"
    assert (top / "refs" / "main").read_text() == commits[0]
    snap = top / "snapshots" / commits[0]
    for rel, data in rev1.items():
        link = snap / rel
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        name = Path(os.readlink(link)).name
        want = hashlib.sha256(data).hexdigest() if rel == "model.safetensors" \
            else git_blob_id(data)
        assert name == want and link.read_bytes() == data
    # The blob names are those huggingface_hub itself chose when it filled the cache.
    assert sorted(p.name for p in (top / "blobs").iterdir()) == sorted(
        os.readlink(p).split("/")[-1] for p in
        (cache / top.name / "snapshots" / commits[0]).iterdir())
    seen = load_offline(out, REPO)
    assert seen["path"].endswith(commits[0]) and seen["model_type"] == "bert"
    assert seen["ids"] == [101, 7592, 2088, 102]
    again = cas("--json", "export", f"{REPO}@1", "--hf-cache", str(out)).json
    assert again["blobs_written"] == 0 and again["blobs_reused"] == 7


def test_export_of_a_local_version(cas, tmp_path, real_model):
    src = tmp_path / "src"
    src.mkdir()
    files = small_model(real_model, seed=6, size=64 << 10)
    files["sub/extra.txt"] = b"nested\n"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    added = cas("--json", "add", "team/local", str(src)).json
    out = tmp_path / "exported"
    r = cas("--json", "export", "team/local", "--hf-cache", str(out)).json
    assert r["snapshot"] == added["commit"] and r["repo"] == "team/local"
    top = out / "models--team--local"
    assert (top / "refs" / "main").read_text() == added["commit"]
    link = top / "snapshots" / added["commit"] / "sub" / "extra.txt"
    assert os.readlink(link) == f"../../../blobs/{git_blob_id(b'nested' + bytes([10]))}"
    assert load_offline(out, "team/local")["model_type"] == "bert"
    # A second version: a new snapshot holding exactly its files; refs/main moves.
    (src / "sub" / "extra.txt").unlink()
    added2 = cas("--json", "add", "team/local", str(src)).json
    r2 = cas("--json", "export", "team/local", "--hf-cache", str(out)).json
    assert r2["snapshot"] == added2["commit"] and r2["blobs_written"] == 0
    snap2 = top / "snapshots" / added2["commit"]
    assert sorted(p.relative_to(snap2).as_posix() for p in snap2.rglob("*")) == \
        sorted(p for p in files if p != "sub/extra.txt")
    assert (top / "refs" / "main").read_text() == added2["commit"]
    # A model name that is no Hub repository id needs --repo.
    cas("add", "a/b/c", str(src))
    bad = cas("--json", "export", "a/b/c", "--hf-cache", str(out), ok=False)
    assert bad.json["error"]["code"] == "E_ARGS"
    ok = cas("--json", "export", "a/b/c", "--hf-cache", str(out), "--repo", "a/c").json
    assert ok["repo"] == "a/c"


def test_export_refuses_to_write_through_a_planted_symlink(cas, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_bytes(b"{}")
    cas("add", "team/m", str(src))
    out = tmp_path / "exported"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "models--team--m").mkdir(parents=True)
    (out / "models--team--m" / "snapshots").symlink_to(elsewhere)
    r = cas("--json", "export", "team/m", "--hf-cache", str(out), ok=False)
    assert r.json["error"]["code"] == "E_CONFLICT", r.out
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_real_model_export_loads_offline(cas, tmp_path, real_model):
    added = cas("--json", "add", "sentence-transformers/all-MiniLM-L6-v2",
                str(real_model)).json
    out = tmp_path / "exported"
    r = cas("--json", "export", "sentence-transformers/all-MiniLM-L6-v2", "--hf-cache",
            str(out)).json
    assert r["snapshot"] == added["commit"]
    seen = load_offline(out, "sentence-transformers/all-MiniLM-L6-v2")
    assert seen["model_type"] == "bert" and seen["ids"] == [101, 7592, 2088, 102]
