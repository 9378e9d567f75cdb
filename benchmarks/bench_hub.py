#!/usr/bin/env python3
"""Hub import against a real loopback Hub (olah, offline over git mirrors built here).

Sections, each a ratio measured in this run:

1. ``cas import hf://org/big@<v1>`` of a 1 GiB bf16 repository into an empty store vs
   ``huggingface_hub.snapshot_download`` of the same commit into an empty cache (target
   <= 1.3x), and the peak disk each used while it ran (cas: one compressed copy, no staging).
2. ``cas import`` of the second revision (5% of the tensors changed, one tensor added):
   stored bytes grow by at most 8% of the file.
3. ``cas import --hf-cache`` of a cache that huggingface_hub filled with three revisions of
   the real model (the model, its last layer fine-tuned, an F16 conversion): stored bytes at
   most 0.5x the cache's size on disk.

Usage: ``python benchmarks/bench_hub.py [--size-mib 1024] [--runs 3] [--smoke]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

MiB = 1 << 20
REPO = "org/big"
REAL = "org/minilm"


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (st_blocks: sparse files count what they hold)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


class PeakDisk:
    """Samples the disk used under some folders while a command runs (a measurement, not a
    synchronisation: the command's result does not depend on it)."""

    def __init__(self, *paths: Path) -> None:
        self.paths, self.peak, self._stop = paths, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(disk_usage(p) for p in self.paths if p.exists()))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakDisk:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, sum(disk_usage(p) for p in self.paths if p.exists()))


def hub_env(url: str, home: Path) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "CAS_OFFLINE"):
        env.pop(k, None)
    return env


def timed(argv: list[str], env: dict[str, str], watch: list[Path]) -> dict:
    with PeakDisk(*watch) as peak:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    out = proc.stdout.strip()
    return {"wall": wall, "peak": peak.peak,
            "json": json.loads(out) if out.startswith("{") else None}


def cas_argv(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cas.cli.main", "--store", str(store), "--json", *args]


def download_argv(repo: str, commit: str, cache: Path) -> list[str]:
    code = ("from huggingface_hub import snapshot_download as s\n"
            f"s({repo!r}, revision={commit!r}, cache_dir={str(cache)!r})\n")
    return [sys.executable, "-c", code]


def init(store: Path) -> None:
    subprocess.run(cas_argv(store, "init"), check=True, capture_output=True)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def section_big(work: Path, size: int, runs: int, results: dict) -> list[str]:
    from compare import build_synthetic
    from hubserver import Olah, mirror_repo

    from cas.demo import real_model_dir

    series = build_synthetic(work / "data", size)
    extra = {p: (real_model_dir() / p).read_bytes() for p in ("config.json", "README.md")}
    revs = [{**extra, **files_of(v["dir"])} for v in series["versions"][:2]]
    weights = len(revs[0]["model.safetensors"])
    commits = mirror_repo(work / "mirrors", REPO, revs, lfs=frozenset({"model.safetensors"}))
    del revs
    failures = []
    with Olah(work / "mirrors", work / "olah") as server:
        env = hub_env(server.url, work / "hfhome")
        timed(download_argv(REPO, commits[0], work / "warm"), env, [])  # olah's first serve
        shutil.rmtree(work / "warm")
        hf, cas = [], []
        for i in range(runs):
            cache, store = work / f"cache{i}", work / f"store{i}"
            hf.append(timed(download_argv(REPO, commits[0], cache), env, [cache]))
            init(store)
            cas.append(timed(cas_argv(store, "import", f"hf://{REPO}@{commits[0]}"), env,
                             [store, store.parent / f"{store.name}.hub"]))
            shutil.rmtree(cache)
            if i + 1 < runs:
                shutil.rmtree(store)
        hf_wall = statistics.median(r["wall"] for r in hf)
        cas_wall = statistics.median(r["wall"] for r in cas)
        ratio = cas_wall / hf_wall
        peak_hf = max(r["peak"] for r in hf)
        peak_cas = max(r["peak"] for r in cas)
        print(f"\n1. import of {weights / MiB:.0f} MiB ({series['title']}), median of {runs}:")
        print(f"   snapshot_download {hf_wall:6.2f} s   peak disk {peak_hf / MiB:8.1f} MiB")
        print(f"   cas import        {cas_wall:6.2f} s   peak disk {peak_cas / MiB:8.1f} MiB")
        print(f"   ratio {ratio:.2f}x (target <= 1.3x); peak disk cas/download "
              f"{peak_cas / peak_hf:.2f}")
        results["import"] = {"hf_s": hf_wall, "cas_s": cas_wall, "ratio": ratio,
                             "peak_hf": peak_hf, "peak_cas": peak_cas,
                             "hf_runs": [r["wall"] for r in hf],
                             "cas_runs": [r["wall"] for r in cas]}
        if ratio > 1.3:
            failures.append(f"import {ratio:.2f}x > 1.3x")
        if peak_cas >= peak_hf:
            failures.append("the import's peak disk is not below the download's")

        second = timed(cas_argv(store, "import", f"hf://{REPO}@{commits[1]}"), env, [store])
        grew = second["json"]["new_stored_bytes"]
        frac = grew / weights
        print(f"\n2. second revision (the data line above says what changed): stored "
              f"{grew / MiB:.1f} MiB = {100 * frac:.2f}% of the file (target <= 8%)")
        results["second"] = {"new_stored_bytes": grew, "fraction": frac}
        if frac > 0.08:
            failures.append(f"second revision grew {100 * frac:.1f}% > 8%")
    return failures


def real_revisions(work: Path) -> list[dict[str, bytes]]:
    """The real model, its last layer fine-tuned, and an F16 conversion."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from cas.demo import LAST_LAYER, finetune_copy, real_model_dir

    src = real_model_dir()
    tuned = work / "tuned"
    finetune_copy(src, tuned, LAST_LAYER)
    f16 = work / "f16"
    shutil.copytree(src, f16)
    tensors = load_file(str(src / "model.safetensors"))
    save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v
               for k, v in tensors.items()}, str(f16 / "model.safetensors"))
    return [files_of(d) for d in (src, tuned, f16)]


def section_cache(work: Path, results: dict) -> list[str]:
    from hubserver import Olah, mirror_repo

    revs = real_revisions(work / "real")
    commits = mirror_repo(work / "real-mirrors", REAL, revs,
                          lfs=frozenset({"model.safetensors"}))
    cache = work / "real-cache"
    with Olah(work / "real-mirrors", work / "real-olah") as server:
        env = hub_env(server.url, work / "hfhome")
        for c in commits:
            timed(download_argv(REAL, c, cache), env, [])
    store = work / "real-store"
    init(store)
    r = timed(cas_argv(store, "import", "--hf-cache", str(cache), REAL),
              {**os.environ, "HF_HUB_OFFLINE": "1"}, [store])
    versions = r["json"]["versions"]
    stored = sum(v["new_stored_bytes"] for v in versions)
    on_disk = disk_usage(cache)
    ratio = stored / on_disk
    print(f"\n3. --hf-cache import of {len(versions)} revisions of the real model "
          f"(model, last layer fine-tuned, F16): stored {stored / MiB:.1f} MiB of a "
          f"{on_disk / MiB:.1f} MiB cache = {ratio:.2f}x (target <= 0.5x), {r['wall']:.2f} s")
    results["hf_cache"] = {"stored": stored, "cache_on_disk": on_disk, "ratio": ratio,
                           "versions": len(versions)}
    return [f"--hf-cache stored {ratio:.2f}x > 0.5x"] if ratio > 0.5 else []


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sections", default="1,3")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="32 MiB, one run")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size_mib, args.runs = 32, 1
    if shutil.which("git") is None or not (Path(sys.executable).parent / "olah-cli").exists():
        print("SKIP: this benchmark needs git and olah")
        return {"skipped": True}
    print(f"command: python benchmarks/bench_hub.py "
          f"{shlex.join(argv if argv is not None else sys.argv[1:])}")
    work = Path(tempfile.mkdtemp(prefix="bench-hub-", dir=args.workdir))
    results: dict = {}
    failures: list[str] = []
    try:
        sections = {int(s) for s in args.sections.split(",")}
        if 1 in sections:
            failures += section_big(work, args.size_mib * MiB, args.runs, results)
        if 3 in sections:
            failures += section_cache(work, results)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\nmissed: " + "; ".join(failures) if failures else "\nall targets met")
    results["failures"] = failures
    return results


if __name__ == "__main__":
    res = main()
    sys.exit(1 if res.get("failures") and "--smoke" not in sys.argv else 0)
