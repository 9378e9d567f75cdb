"""cas compat (host against model) and the free-disk check before a checkout writes."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_compat_report_of_the_real_model(cas, real_model, tmp_path):
    cas("add", "st/minilm", str(real_model))
    r = cas("--json", "compat", "st/minilm", "--dest", str(tmp_path)).json
    assert r["format"] == "safetensors" and "F32" in r["dtypes"]
    assert r["weight_bytes"] == (real_model / "model.safetensors").stat().st_size
    assert r["memory_needed"] == int(r["weight_bytes"] * 1.2)
    checks = {c["check"]: c for c in r["checks"]}
    assert checks["disk"]["ok"] and checks["ram"]["ok"] and r["runs"]
    assert r["host"]["ram_total"] > 0 and r["host"]["cpu_flags"]


def test_compat_reads_gpus_from_nvidia_smi(cas, real_model, tmp_path):
    cas("add", "st/minilm", str(real_model))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Tiny GPU, 64, 10'\necho 'Big GPU, 81920, 80000'\n")
    smi.chmod(0o755)
    cas.env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    r = cas("--json", "compat", "st/minilm").json
    assert [g["name"] for g in r["host"]["gpus"]] == ["Tiny GPU", "Big GPU"]
    assert {c["check"]: c["ok"] for c in r["checks"]}["gpu"]
    smi.write_text("#!/bin/sh\necho 'Tiny GPU, 64, 10'\n")
    r = cas("--json", "compat", "st/minilm")
    assert any(w["code"] == "W_COMPAT_GPU" for w in r.json["warnings"])
    assert "[W_COMPAT_GPU]" in cas("compat", "st/minilm").err


def test_compat_warns_on_small_disk_and_checkout_refuses_before_writing(cas, real_model,
                                                                        small_fs):
    cas("add", "st/minilm", str(real_model))
    r = cas("--json", "compat", "st/minilm", "--dest", str(small_fs))
    assert not r.json["runs"]
    assert any(w["code"] == "W_COMPAT_DISK" for w in r.json["warnings"])
    dest = small_fs / "co"
    c = cas("--json", "checkout", "st/minilm", str(dest), ok=False)
    assert c.json["error"]["code"] == "E_DISK" and "nothing was written" in c.out
    assert not dest.exists() and os.listdir(small_fs) == []
