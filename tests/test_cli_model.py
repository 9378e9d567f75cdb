"""End to end through the CLI on the real all-MiniLM-L6-v2 model: versions, dedupe, checkout,
addressing, tags, rm, metadata."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from cas.demo import add_tensor_copy, finetune_copy

NAME = "sentence-transformers/all-MiniLM-L6-v2"


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    files_b = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def stored(cas, name: str) -> int:
    return cas("--json", "du", name).json["stored"]


@pytest.fixture
def versions(tmp_path: Path, real_model: Path) -> dict[str, Path]:
    """v2: the last encoder layer and the pooler fine-tuned (safetensors + numpy); v3: v2 with
    one small tensor added, so the header grows and every later byte shifts."""
    import shutil

    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    v2 = tmp_path / "v2"
    shutil.copytree(real_model, v2, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(real_model / "model.safetensors"))
    with safe_open(str(real_model / "model.safetensors"), "np") as f:
        metadata = f.metadata()
    rng = np.random.default_rng(0)
    for name, value in tensors.items():
        if name.startswith(("encoder.layer.5.", "pooler.")):
            tensors[name] = value + rng.normal(0, 1e-3, value.shape).astype(value.dtype)
    save_file(tensors, str(v2 / "model.safetensors"), metadata=metadata)
    a = np.frombuffer((real_model / "model.safetensors").read_bytes(), np.uint8)
    b = np.frombuffer((v2 / "model.safetensors").read_bytes(), np.uint8)
    assert len(a) == len(b)  # same layout: only the tuned tensors' bytes differ
    changed = np.flatnonzero(a != b)
    assert 7_000_000 < changed[-1] - changed[0] < 8_500_000  # ~7.7 MB at the end of the data
    # The demo's helper, which rewrites tensor bytes in place, makes the same kind of file.
    assert 7_000_000 < finetune_copy(real_model, tmp_path / "demo-v2") < 8_500_000
    v3 = tmp_path / "v3"
    shutil.copytree(v2, v3, ignore=shutil.ignore_patterns("model.safetensors"))
    add_tensor_copy(v2 / "model.safetensors", v3 / "model.safetensors")
    return {"v1": real_model, "v2": v2, "v3": v3}


def test_versions_dedupe_checkout(cas, versions, tmp_path):
    size = (versions["v1"] / "model.safetensors").stat().st_size
    r1 = cas("--json", "add", NAME, str(versions["v1"]), "-m", "upstream", "--tag", "base").json
    assert r1["ok"] and r1["created"] and r1["seq"] == 1 and r1["files"] == 13
    s1 = stored(cas, NAME)

    r2 = cas("--json", "add", NAME, str(versions["v2"]), "-m", "last layer tuned").json
    assert r2["created"] and r2["seq"] == 2 and r2["reused_chunks"] > r2["new_chunks"]
    s2 = stored(cas, NAME)
    assert s2 - s1 <= 0.10 * size, (s2 - s1) / size

    r3 = cas("--json", "add", NAME, str(versions["v3"]), "-m", "one tensor added").json
    assert r3["seq"] == 3
    s3 = stored(cas, NAME)
    assert s3 - s2 <= 0.02 * size, (s3 - s2) / size

    du = cas("--json", "du", NAME).json
    assert du["logical"] == sum(tree_size(versions[v]) for v in ("v1", "v2", "v3"))
    assert du["dedupe_ratio"] > 2.5
    assert [v["version"] for v in du["versions"]] == [f"{NAME}@1", f"{NAME}@2", f"{NAME}@3"]
    assert du["versions"][1]["new_stored"] == s2 - s1

    # A second model holding v2's bytes shares almost everything with the first.
    cas("add", "team/minilm-copy", str(versions["v2"]))
    other = cas("--json", "du", "team/minilm-copy").json
    assert other["shared"] >= 0.99 * other["stored"], other
    assert other["unique"] < 0.01 * other["stored"], other

    for spec, src in ((f"{NAME}@1", "v1"), (f"{NAME}@base", "v1"), (f"{NAME}@2", "v2"),
                      (NAME, "v3"), (f"{NAME}@{r2['commit'][:10]}", "v2")):
        dest = tmp_path / "out" / spec.replace("/", "_")
        got = cas("--json", "checkout", spec, str(dest)).json
        assert same_tree(versions[src], dest), spec
        assert got["bytes_written"] == tree_size(versions[src])
    assert not list((tmp_path / "out").rglob("*.cas-tmp"))
    assert cas("--json", "verify", "--all").json["ok"]
    assert cas("--json", "verify", f"{NAME}@2").json["ok"]


def test_unchanged_add_and_rehash(cas, real_model):
    first = cas("--json", "add", NAME, str(real_model)).json
    again = cas("--json", "add", NAME, str(real_model)).json
    assert not again["created"] and again["seq"] == first["seq"] == 1
    assert again["bytes_hashed"] == 0 and again["stat_cache_hits"] == again["files"] == 13
    text = cas("add", NAME, str(real_model)).out
    assert "unchanged" in text and "no new version" in text
    rehash = cas("--json", "add", "--rehash", NAME, str(real_model)).json
    assert not rehash["created"] and rehash["bytes_hashed"] == first["total_size"]
    assert rehash["new_chunks"] == 0
    assert len(cas("--json", "log", NAME).json["history"]) == 1


def test_metadata_show_log_tag_rm(cas, real_model, versions):
    cas("add", NAME, str(real_model), "--role", "base", "--license", "apache-2.0",
        "--meta", "team=search", "--metric", "stsb=0.82")
    cas("add", "demo/tuned", str(versions["v2"]), "--role", "finetune", "--base-model", NAME,
        "--parent", f"{NAME}@1", "-m", "tuned")
    shown = cas("--json", "show", NAME).json
    md = shown["manifest"]["metadata"]
    assert md["format"] == "safetensors" and md["architecture"] == "BertModel"
    assert md["parameter_count"] == 22_713_728 and "F32" in md["dtypes"]
    assert md["license"] == "apache-2.0" and md["extra"] == {"team": "search"}
    assert md["metrics"] == {"stsb": 0.82} and md["created_on"]
    files = {f["path"]: f for f in shown["manifest"]["files"]}
    import hashlib

    want = hashlib.sha256((real_model / "model.safetensors").read_bytes()).hexdigest()
    assert files["model.safetensors"]["sha256"] == want
    tuned = cas("--json", "show", "demo/tuned").json["manifest"]["metadata"]
    assert tuned["parents"] == [f"{NAME}@{shown['commit']}"] and tuned["base_model"] == NAME

    rows = cas("--json", "ls").json["models"]
    assert [r["name"] for r in rows] == ["demo/tuned", NAME]
    assert [r["name"] for r in cas("--json", "ls", "--role", "finetune").json["models"]] == [
        "demo/tuned"]
    assert [r["name"] for r in cas("--json", "ls", "sentence-*/*").json["models"]] == [NAME]
    assert cas("--json", "ls", "--format", "gguf").json["models"] == []

    cas("tag", f"{NAME}@1", "prod")
    assert cas("--json", "ls", "--tag", "prod").json["models"][0]["name"] == NAME
    cas("tag", f"{NAME}@1", "prod")  # already names that version: a no-op
    # v2 of the base model, then rm of the tagged v1 needs --force; tags keep naming it.
    cas("add", NAME, str(versions["v3"]))
    dup = cas("--json", "tag", f"{NAME}@2", "prod", ok=False)
    assert dup.code == 10 and dup.json["error"]["code"] == "E_CONFLICT"
    refused = cas("--json", "rm", f"{NAME}@1", ok=False)
    assert refused.json["error"]["code"] == "E_CONFLICT"
    cas("tag", "-d", f"{NAME}@1", "prod")
    cas("tag", f"{NAME}@1", "keep")
    out = cas("rm", "--force", f"{NAME}@1").out
    assert "garbage collection" in out
    assert cas("--json", "show", f"{NAME}@1", ok=False).json["error"]["code"] == "E_NOT_FOUND"
    assert cas("--json", "show", f"{NAME}@2").json["seq"] == 2
    history = cas("--json", "log", NAME).json["history"]
    assert [(h["action"], h["seq"]) for h in history] == [
        ("rm", 1), ("tag", 1), ("untag", 1), ("add", 2), ("tag", 1), ("add", 1)]
    assert history[0]["tags"] == ["keep"] and history[2]["tags"] == ["prod"]
    assert cas("--json", "verify", "--all").json["ok"]
    cas("rm", NAME)
    assert [r["name"] for r in cas("--json", "ls").json["models"]] == ["demo/tuned"]
    # The removed model keeps its history.
    history = cas("--json", "log", NAME).json["history"]
    assert [(h["action"], h["versions"]) for h in history][:2] == [("rm", [2]), ("rm", [1])]


def test_single_file_and_executable_bit(cas, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\x00" * 100_000 + bytes(range(256)) * 1000)
    script = tmp_path / "pkg" / "run.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (tmp_path / "pkg" / "empty.txt").write_bytes(b"")
    cas("add", "one/file", str(f))
    cas("add", "one/dir", str(tmp_path / "pkg"))
    cas("checkout", "one/file", str(tmp_path / "o1"))
    assert (tmp_path / "o1" / "weights.bin").read_bytes() == f.read_bytes()
    cas("checkout", "one/dir", str(tmp_path / "o2"))
    assert (tmp_path / "o2" / "run.sh").stat().st_mode & 0o111
    assert (tmp_path / "o2" / "empty.txt").read_bytes() == b""
    assert not (tmp_path / "o2" / "empty.txt").stat().st_mode & 0o111


def test_progress_quiet_and_not_a_terminal(cas, real_model):
    # Output is not a terminal here: no progress bar, and --quiet prints nothing at all.
    run = cas("--quiet", "add", NAME, str(real_model))
    assert run.out == "" and run.err == ""
    run = cas("checkout", NAME, "/dev/null", ok=False)
    assert run.code == 2 and "\r" not in run.err and "not a directory" in run.err


def test_progress_bar_on_a_terminal(cas, real_model, tmp_path):
    """On a terminal, add and checkout draw a progress bar with bytes, rate and ETA."""
    import os
    import pty
    import subprocess
    import sys

    for args in (["add", NAME, str(real_model)], ["checkout", NAME, str(tmp_path / "out")]):
        primary, secondary = pty.openpty()
        proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(cas.store),
                               *args], stderr=secondary, stdout=subprocess.PIPE, env=cas.env)
        os.close(secondary)
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(primary)
        drawn = b"".join(chunks).decode(errors="replace")
        assert proc.returncode == 0
        assert "\r" in drawn and "ETA" in drawn and "MiB/s" in drawn, drawn[-300:]


def test_global_flags_after_the_command(cas, tmp_path):
    import json
    import subprocess
    import sys

    f = tmp_path / "w.bin"
    f.write_bytes(b"\x01" * 50_000)
    run = subprocess.run([sys.executable, "-m", "cas.cli.main", "add", "late/flags", str(f),
                          "--store", str(cas.store), "--json"], capture_output=True, text=True)
    assert run.returncode == 0 and json.loads(run.stdout)["seq"] == 1
    run = subprocess.run([sys.executable, "-m", "cas.cli.main", "show", "late/nope",
                          "--store", str(cas.store), "--json"], capture_output=True, text=True)
    assert run.returncode == 3 and json.loads(run.stdout)["error"]["code"] == "E_NOT_FOUND"
    run = subprocess.run([sys.executable, "-m", "cas.cli.main", "ls", "-q", "--store",
                          str(cas.store)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == ""


def test_store_inside_the_added_folder_is_skipped_and_the_reverse_refused(tmp_path):
    import json
    import subprocess
    import sys

    top = tmp_path / "home"
    (top / "model").mkdir(parents=True)
    (top / "model" / "w.bin").write_bytes(b"\x02" * 100_000)
    store = top / "store"

    def cas(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store),
                               "--json", *args], capture_output=True, text=True)

    assert cas("init").returncode == 0
    added = cas("add", "everything", str(top))
    assert added.returncode == 0, added.stdout + added.stderr
    files = [f["path"] for f in json.loads(cas("show", "everything").stdout)["manifest"]["files"]]
    assert files == ["model/w.bin"]
    inside = cas("add", "x", str(store / "config.json"))
    assert inside.returncode == 2 and json.loads(inside.stdout)["error"]["code"] == "E_ARGS"


def test_stat_cache_sees_a_rewrite_that_restores_the_old_mtime(cas, tmp_path):
    import os

    f = tmp_path / "w.bin"
    f.write_bytes(b"\x05" * 200_000)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))  # old enough to be cached
    first = cas("--json", "add", "m", str(f)).json
    assert cas("--json", "add", "m", str(f)).json["stat_cache_hits"] == 1
    old = f.stat()
    with open(f, "r+b") as fh:  # same size, different bytes, mtime put back
        fh.write(b"\x06")
    os.utime(f, ns=(old.st_atime_ns, old.st_mtime_ns))
    again = cas("--json", "add", "m", str(f)).json
    assert again["created"] and again["seq"] == first["seq"] + 1 and again["stat_cache_hits"] == 0


def test_add_with_a_tag_is_idempotent_but_never_moves_a_tag(cas, tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"\x08" * 100_000)
    assert cas("--json", "add", "t/m", str(f), "--tag", "prod").json["seq"] == 1
    again = cas("--json", "add", "t/m", str(f), "--tag", "prod").json  # same content, same tag
    assert not again["created"] and again["seq"] == 1
    f.write_bytes(b"\x09" * 100_000)
    moved = cas("--json", "add", "t/m", str(f), "--tag", "prod", ok=False)
    assert moved.code == 10 and moved.json["error"]["code"] == "E_CONFLICT"
    assert cas("--json", "show", "t/m@prod").json["seq"] == 1
    history = cas("--json", "log", "t/m").json["history"]
    assert [(h["action"], h["seq"]) for h in history] == [("tag", 1), ("add", 1)]


def test_a_closed_pipe_is_not_an_error(cas, tmp_path):
    """``cas ls --long | head -n 1``: the reader closes the pipe early; cas exits 0 quietly
    (click would exit 1 on EPIPE)."""
    for i in range(40):
        f = tmp_path / f"w{i}.bin"
        f.write_bytes(bytes([i]) * 10)
        cas("add", f"pipe/model-{i:02d}-with-a-long-name-to-fill-the-pipe-buffer", str(f))
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "cas.cli.main", "--store",
                                 str(cas.store), "ls", "--long"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=cas.env)
        proc.stdout.read(1)
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait() == 0 and b"Traceback" not in err, err
