"""Crash and concurrency safety: writers killed with SIGKILL, concurrent writers, the lock.

Everything runs the real CLI in subprocesses on real files under ``tmp_path``. Random kill
delays come from a seeded RNG; they only decide where a kill lands, never whether a test passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cas.format.config import seal

MB = 1 << 20

_SCRIPT = Path(sys.executable).parent / "cas"
CAS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cas.cli.main"]


def argv(store: Path, *args: str) -> list[str]:
    return [*CAS, "--store", str(store), "--json", *args]


def run(store: Path, *args: str) -> tuple[int, dict, str]:
    p = subprocess.run(argv(store, *args), capture_output=True, text=True, timeout=180)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(lines[0]), p.stderr


def ok(store: Path, *args: str) -> dict:
    rc, doc, err = run(store, *args)
    assert rc == 0 and doc["ok"] is True, (rc, doc, err)
    return doc


def model_bytes(seed: int, size: int) -> bytes:
    """Half random bytes, half low-entropy (compressible) bytes."""
    rng = np.random.default_rng(seed)
    half = size // 2
    return rng.bytes(half) + rng.integers(0, 4, size - half, dtype=np.uint8).tobytes()


def make_input(d: Path, seed: int, size: int) -> dict[str, str]:
    """Two files under ``d``; returns rel path -> sha256."""
    d.mkdir(parents=True)
    data = model_bytes(seed, size)
    cut = size * 3 // 4
    files = {"model.bin": data[:cut], "extra/head.bin": data[cut:]}
    out = {}
    for rel, b in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b)
        out[rel] = hashlib.sha256(b).hexdigest()
    return out


def temp_files_of(store: Path, pid: int) -> list[str]:
    """Temp files in the store's tmp/ made by process ``pid`` (the pid is in their name)."""
    return [n for n in os.listdir(store / "tmp") if f".{pid}." in n]


def start_writing(store: Path, *args: str) -> subprocess.Popen:
    """Start ``cas ARGS`` and return once it has written its first temp file (or exited)."""
    proc = subprocess.Popen(argv(store, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not temp_files_of(store, proc.pid) and proc.poll() is None:
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.002)  # polling for a file event; the timing decides nothing
    return proc


def pack_files(store: Path) -> set[str]:
    return set(os.listdir(store / "packs"))


def live_versions(store: Path, name: str) -> list[int]:
    hist = ok(store, "log", name)["history"]
    return sorted(h["seq"] for h in hist if h["action"] == "add")


# -- kill -9 -----------------------------------------------------------------------------------


@pytest.mark.slow  # about 300 MB of generated input per case
@pytest.mark.parametrize("pack_target", [None, 1 << 20], ids=["default-packs", "small-packs"])
def test_sigkill_during_add_never_breaks_the_store(tmp_path: Path, pack_target: int | None) -> None:
    """With small packs, kills also land in pack roll-overs and multi-pack index upkeep."""
    store = tmp_path / "S"
    ok(store, "init")
    if pack_target is not None:
        cfg = json.loads((store / "config.json").read_text())
        cfg["pack_target_bytes"] = pack_target
        (store / "config.json").write_bytes(seal(cfg))
    expected: dict[str, dict[str, str]] = {}  # input dir -> files
    first = tmp_path / "in-first"
    expected[str(first)] = make_input(first, 1000, 8 * MB)
    assert ok(store, "add", "m", str(first), "-m", "v1")["seq"] == 1

    # One uncontended add of the same size as the loop's, timed from its first write to its
    # exit, to scale the kill delays.
    timing = tmp_path / "in-timing"
    expected[str(timing)] = make_input(timing, 1001, 12 * MB)
    proc = start_writing(store, "add", "m", str(timing))
    started = time.monotonic()
    assert proc.wait(timeout=180) == 0
    typical = time.monotonic() - started

    rng = random.Random(20240601)
    outcomes = {"killed": 0, "killed leaving temp files": 0, "finished": 0}
    left_behind: set[str] = set()  # temp files of killed writers, until a later writer runs
    for i in range(22):
        src = tmp_path / f"in-{i:02d}"
        expected[str(src)] = make_input(src, 2000 + i, rng.randint(8, 16) * MB)
        proc = start_writing(store, "add", "m", str(src), "-m", f"iteration {i}")
        # This writer took the lock and recovered before its first write: what killed writers
        # left in tmp/ is gone.
        assert not left_behind & set(os.listdir(store / "tmp")), left_behind
        left_behind.clear()
        delay = rng.uniform(0.0, 1.2 * typical)  # most adds are cut short, some finish
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode == -signal.SIGKILL:
            # The kill landed on a live process that had started writing.
            outcomes["killed"] += 1
            left_behind.update(temp_files_of(store, proc.pid))
            outcomes["killed leaving temp files"] += bool(left_behind)
        else:
            assert proc.returncode == 0, f"add {i} exited {proc.returncode}"
            outcomes["finished"] += 1
    print(f"typical add {typical:.2f}s from its first write; {outcomes}")
    assert outcomes["killed"] >= 5, outcomes
    assert outcomes["killed leaving temp files"] >= 1, outcomes

    # Readers see a consistent store without any writer having cleaned up.
    report = ok(store, "verify", "--all")
    assert report["bad_objects"] == [] and report["broken_versions"] == []
    models = ok(store, "ls")["models"]
    assert [r["name"] for r in models] == ["m"]
    seqs = live_versions(store, "m")
    assert seqs[:2] == [1, 2] and seqs == sorted(set(seqs))
    assert models[0]["latest"] == seqs[-1] and models[0]["versions"] == len(seqs)
    # Every registered version holds exactly the bytes of one of the inputs.
    known = {tuple(sorted(files.items())) for files in expected.values()}
    for seq in seqs:
        shown = ok(store, "show", f"m@{seq}")
        files = tuple(sorted((f["path"], f["sha256"]) for f in shown["manifest"]["files"]))
        assert files in known, f"m@{seq} holds bytes that were never added"

    # The next writer recovers and succeeds; it leaves no temp files behind.
    final = tmp_path / "in-final"
    expected[str(final)] = make_input(final, 3000, 8 * MB)
    res = ok(store, "add", "m", str(final), "-m", "after the crashes")
    assert res["created"] and res["seq"] > seqs[-1]
    assert os.listdir(store / "tmp") == []
    names = pack_files(store)
    assert {n[:-5] for n in names if n.endswith(".pack")} == \
        {n[:-4] for n in names if n.endswith(".idx")}
    ok(store, "verify", "--all")
    ok(store, "verify", "m")
    if pack_target is not None:
        from cas.multipack import list_midx

        assert list_midx(store / "packs"), "small packs must have been covered by a midx"
    dest = tmp_path / "out"
    ok(store, "checkout", "m", str(dest))
    for rel, sha in expected[str(final)].items():
        assert hashlib.sha256((dest / rel).read_bytes()).hexdigest() == sha


# -- concurrency and the lock ------------------------------------------------------------------


@pytest.mark.parametrize("same_model", [True, False], ids=["same-model", "two-models"])
def test_concurrent_adds_both_succeed(tmp_path: Path, same_model: bool) -> None:
    store = tmp_path / "S"
    ok(store, "init")
    base = tmp_path / "base"
    make_input(base, 50, 2 * MB)
    ok(store, "add", "m", str(base))
    names = ["m", "m"] if same_model else ["m", "other"]
    srcs = []
    for i in range(2):
        src = tmp_path / f"in-{i}"
        make_input(src, 60 + i, 8 * MB)
        srcs.append(src)
    procs = [subprocess.Popen(argv(store, "add", n, str(s)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n, s in zip(names, srcs)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, (out, err)
        docs.append(json.loads(out))
    assert all(d["created"] for d in docs)
    if same_model:
        assert sorted(d["seq"] for d in docs) == [2, 3]
        assert live_versions(store, "m") == [1, 2, 3]
    else:
        assert [d["seq"] for d in docs] == [2, 1]
        assert live_versions(store, "other") == [1]
    ok(store, "verify", "--all")
    for d in docs:
        ok(store, "verify", f"{d['name']}@{d['seq']}")


def test_lock_timeout_zero_fails_with_e_lock(tmp_path: Path) -> None:
    from cas.locking import WriteLock

    store = tmp_path / "S"
    ok(store, "init")
    src = tmp_path / "in"
    make_input(src, 70, 2 * MB)
    before = pack_files(store)
    with WriteLock(store / "lock", 0):
        rc, doc, err = run(store, "--lock-timeout", "0", "add", "m", str(src))
    assert rc == 9, (doc, err)
    assert doc["ok"] is False and doc["error"]["code"] == "E_LOCK"
    msg = doc["error"]["message"]
    assert "locked" in msg and f"pid {os.getpid()}" in msg and "--lock-timeout" in msg
    assert pack_files(store) == before
    assert not (store / "registry" / "refs" / "models" / "m").exists()
    # Once the holder is gone the same command succeeds at once.
    assert ok(store, "--lock-timeout", "0", "add", "m", str(src))["seq"] == 1


# -- killed between packs and ref --------------------------------------------------------------

_KILL_BEFORE_REF = """
import os, signal, sys
from cas.registry import Registry

def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

Registry.add_version = _die  # packs are finished and visible; the ref has not moved
from cas.cli.main import main
main(sys.argv[1:])
"""


def test_orphan_pack_from_killed_add_dedupes_the_retry(tmp_path: Path) -> None:
    store = tmp_path / "S"
    ok(store, "init")
    first = tmp_path / "first"
    make_input(first, 80, 2 * MB)
    ok(store, "add", "m", str(first))
    src = tmp_path / "in"
    make_input(src, 81, 8 * MB)
    packs_before = pack_files(store)

    p = subprocess.run([sys.executable, "-c", _KILL_BEFORE_REF, "--store", str(store),
                        "add", "m", str(src)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr)
    orphans = pack_files(store) - packs_before
    assert orphans and any(n.endswith(".pack") for n in orphans)
    assert live_versions(store, "m") == [1]
    ok(store, "verify", "--all")  # an orphan pack is sound, just unreferenced

    res = ok(store, "add", "m", str(src))
    assert res["created"] and res["seq"] == 2
    assert res["new_chunks"] == 0 and res["reused_chunks"] > 0
    assert res["new_stored_bytes"] == 0
    assert pack_files(store) == packs_before | orphans
    ok(store, "verify", "--all")
    ok(store, "verify", "m@2")


# -- killed while the registry held a ref lock ---------------------------------------------------


@pytest.mark.parametrize("lock_file, command", [
    ("refs/models/m.lock", ["add", "m", "{src}"]),
    ("refs/tags/m@t.lock", ["tag", "m@1", "t"]),
], ids=["model-ref", "tag-ref"])
def test_stale_registry_ref_lock_is_recovered(tmp_path: Path, lock_file: str,
                                              command: list[str]) -> None:
    store = tmp_path / "S"
    ok(store, "init")
    first = tmp_path / "first"
    make_input(first, 90, MB)
    ok(store, "add", "m", str(first))
    # What a SIGKILL between dulwich creating a ref's lock file and renaming it leaves behind.
    (store / "registry" / lock_file).write_bytes(b"0" * 20)
    src = tmp_path / "in"
    make_input(src, 91, MB)
    ok(store, *[c.format(src=src) for c in command])
    assert not (store / "registry" / lock_file).exists()
    ok(store, "verify", "--all")


@pytest.mark.parametrize("folder, command", [
    ("refs/models/n", ["add", "n", "{src}"]),
    ("refs/models/org/n/deeper", ["add", "org/n", "{src}"]),
    ("refs/tags/m@t", ["tag", "m@1", "t"]),
], ids=["model-ref", "nested-model-ref", "tag-ref"])
def test_empty_folder_left_where_a_ref_belongs(tmp_path: Path, folder: str,
                                              command: list[str]) -> None:
    """A crash between the two steps of a ref deletion (the ref unlinked, its folder not yet
    pruned; git leaves the same) leaves empty folders: they count as no ref."""
    store = tmp_path / "S"
    ok(store, "init")
    first = tmp_path / "first"
    make_input(first, 92, MB)
    ok(store, "add", "m", str(first))
    (store / "registry" / folder).mkdir(parents=True)
    assert [m["name"] for m in ok(store, "ls")["models"]] == ["m"]
    ok(store, *[c.format(src=first) for c in command])
    ok(store, "verify", "--all")
    # A folder that holds someone's file is never removed: a clear conflict instead.
    (store / "registry" / "refs/models/x/y").mkdir(parents=True)
    (store / "registry" / "refs/models/x/y/notes.txt").write_text("keep")
    rc, doc, _ = run(store, "add", "x/y", str(first))
    assert rc == 10 and doc["error"]["code"] == "E_CONFLICT", doc
    assert (store / "registry" / "refs/models/x/y/notes.txt").read_text() == "keep"


@pytest.mark.slow  # a 256 MB input
def test_ctrl_c_during_add_is_a_clean_e_interrupted(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C) mid-add: exit 130 with E_INTERRUPTED, nothing half-visible, no temp files.
    The signal's timing only decides whether the add is cut short; both outcomes are checked."""
    store = tmp_path / "S"
    ok(store, "init")
    src = tmp_path / "in"
    src.mkdir()
    (src / "w.bin").write_bytes(np.random.default_rng(4242).bytes(256 * MB))  # incompressible
    proc = subprocess.Popen(argv(store, "add", "m", str(src)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # Signal once the add is writing its first pack (a file event, not a guess at timing).
    deadline = time.monotonic() + 60
    while not os.listdir(store / "tmp") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    print(f"add exited {proc.returncode}")
    assert "Traceback" not in err
    if proc.returncode in (0, -signal.SIGINT) and json.loads(out)["ok"]:
        assert json.loads(out)["seq"] == 1  # finished before the signal landed
    else:
        assert proc.returncode == 130, (out, err)
        assert json.loads(out)["error"]["code"] == "E_INTERRUPTED"
        assert os.listdir(store / "tmp") == []
        assert ok(store, "ls")["models"] == []
    report = ok(store, "verify", "--all")
    assert report["bad_objects"] == [] and report["broken_versions"] == []
