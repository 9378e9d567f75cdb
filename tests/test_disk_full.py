"""A full disk (or a write the OS refuses) during add: a clear E_DISK, nothing half-visible,
and the next add succeeds once there is room."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CAS = [sys.executable, "-m", "cas.cli.main"]


def model_dir(path: Path, seed: int, mb: int) -> Path:
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    (path / "w.bin").write_bytes(rng.bytes(mb << 20))
    (path / "config.json").write_text('{"model_type": "test"}')
    return path


def run(store: Path, *args: str, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CAS, "--store", str(store), "--json", *args], capture_output=True,
                          text=True, preexec_fn=preexec, timeout=300)


def check_consistent_and_recovers(store: Path, tmp_path: Path) -> None:
    verify = run(store, "verify", "--all")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert json.loads(run(store, "ls").stdout)["models"][0]["latest"] == 1


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))


def test_refused_write_during_add_is_e_disk(tmp_path):
    store = tmp_path / "store"
    assert run(store, "init").returncode == 0
    assert run(store, "add", "m", str(model_dir(tmp_path / "v1", 1, 1))).returncode == 0
    big = model_dir(tmp_path / "v2", 2, 12)
    failed = run(store, "add", "m", str(big), preexec=_limit_file_size)
    assert failed.returncode == 6, failed.stdout + failed.stderr
    err = json.loads(failed.stdout)["error"]
    assert err["code"] == "E_DISK" and "\n" not in err["message"]
    assert "Traceback" not in failed.stderr
    check_consistent_and_recovers(store, tmp_path)
    ok = run(store, "add", "m", str(big))
    assert ok.returncode == 0 and json.loads(ok.stdout)["seq"] == 2
    assert not [p for p in (store / "tmp").iterdir()]
    assert run(store, "verify", "m@2").returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_during_add_is_e_disk(tmp_path, small_fs):
    store = small_fs / "store"
    assert run(store, "init").returncode == 0
    assert run(store, "add", "m", str(model_dir(tmp_path / "v1", 1, 1))).returncode == 0
    too_big = model_dir(tmp_path / "v2", 3, 24)  # random bytes: does not compress
    failed = run(store, "add", "m", str(too_big))
    assert failed.returncode == 6, failed.stdout + failed.stderr
    err = json.loads(failed.stdout)["error"]
    assert err["code"] == "E_DISK" and "No space left" in err["message"]
    check_consistent_and_recovers(store, tmp_path)
    # Room again: a smaller version lands, and the failed attempt's temp files are gone.
    fits = model_dir(tmp_path / "v3", 4, 4)
    ok = run(store, "add", "m", str(fits))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["seq"] == 2
    assert not [p for p in (store / "tmp").iterdir()]
    assert run(store, "verify", "--all").returncode == 0
    used = sum(f.stat().st_size for f in (store / "packs").iterdir())
    assert used < 12 << 20, "the failed add's partial pack must not stay"
