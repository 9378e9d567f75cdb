#!/usr/bin/env python3
"""Many small files: ``cas add`` / re-add / ``checkout`` against ``cp -r`` + ``sync``.

Usage::

    python benchmarks/bench_small_files.py [--files 5000] [--runs 3] [--workdir DIR] [--keep]

The input is ``--files`` files of 1-4 KiB (random bytes, seeded) spread over a few nested
folders, written once and fsynced in a work dir (default: a new dir under the system temp dir;
store, input and outputs all live in it, so everything is on one filesystem). Each run times,
in this order, every step after an ``os.sync()`` so that no step pays for the dirty pages of
the one before:

* baseline: ``cp -r SRC DST`` followed by ``sync`` (the copy made durable);
* start-up: ``cas --version`` (interpreter and CLI import);
* ``cas add`` of the tree into a fresh store;
* ``cas add`` of the unchanged tree again (stat-cache hits, no new version);
* ``cas checkout`` of the version into a new directory.

Every ``cas`` command runs as a child process of the installed entry point (the ``cas`` script
next to ``sys.executable``; ``python -m cas.cli.main`` if there is none). The table gives the
median seconds of ``--runs`` runs and each cas figure as a ratio against the baseline median of
the same run set. The no-change re-add ratio has the start-up time subtracted from the cas
figure first (it is all start-up otherwise). Targets:

* checkout <= 2.0x baseline
* add <= 2.0x baseline
* no-change re-add, minus start-up, <= 0.3x baseline

Exit status 0 even when a target is missed: the table says PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"add": 2.0, "re-add": 0.3, "checkout": 2.0}


def cas_argv() -> list[str]:
    script = Path(sys.executable).parent / "cas"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "cas.cli.main"]


def make_tree(root: Path, files: int, seed: int = 1) -> int:
    """``files`` files of 1-4 KiB in nested folders under ``root``; returns the byte total.

    Layout: ``root/a{0..3}/b{0..4}/f{n}.bin`` plus a tenth of the files at the top, so the
    tree has a few levels and about twenty leaf folders of a few hundred files each.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True)
    folders = [root] + [root / f"a{i}" / f"b{j}" for i in range(4) for j in range(5)]
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)
    total = 0
    for n in range(files):
        d = root if n % 10 == 0 else folders[1 + n % (len(folders) - 1)]
        data = rng.randbytes(rng.randint(1024, 4096))
        fd = os.open(d / f"f{n:05d}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        total += len(data)
    os.sync()
    return total


def timed(argv: list[str]) -> float:
    """Wall seconds of one child process; raises if it fails."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                           f"{proc.stdout.decode(errors='replace')}"
                           f"{proc.stderr.decode(errors='replace')}")
    return wall


def rm(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def one_run(work: Path, src: Path, cas: list[str]) -> dict[str, float]:
    store, copy, out = work / "store", work / "copy", work / "out"
    for p in (store, copy, out):
        rm(p)
    timed([*cas, "init", str(store)])
    r: dict[str, float] = {}

    os.sync()
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(copy)], check=True)
    subprocess.run(["sync"], check=True)
    r["baseline"] = time.perf_counter() - t0

    os.sync()
    r["start-up"] = timed([*cas, "--version"])

    os.sync()
    r["add"] = timed([*cas, "--store", str(store), "add", "m", str(src), "-q"])

    os.sync()
    r["re-add"] = timed([*cas, "--store", str(store), "add", "m", str(src), "-q"])

    os.sync()
    r["checkout"] = timed([*cas, "--store", str(store), "checkout", "m", str(out), "-q"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000, help="number of files (default 5000)")
    ap.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="work dir (default: a new dir under the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="do not delete the work dir")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cas-small-", dir=args.workdir)).resolve()
    cas = cas_argv()
    try:
        src = work / "src"
        total = make_tree(src, args.files)
        # The stat cache trusts only files whose mtime is > 1 s older than the add: let the
        # tree age, so that the re-add measures the unchanged-tree path.
        age = time.time() - max(p.stat().st_mtime for p in src.rglob("*"))
        if age < 1.5:
            time.sleep(1.5 - age)
        runs = [one_run(work, src, cas) for _ in range(args.runs)]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base = med["baseline"]
    ratios = {
        "add": med["add"] / base,
        "re-add": max(med["re-add"] - med["start-up"], 0.0) / base,
        "checkout": med["checkout"] / base,
    }
    print(f"{args.files} files, {total / 1024:.0f} KiB, median of {args.runs} runs, "
          f"work dir {work}{' (kept)' if args.keep else ''}")
    print(f"{'operation':<34} {'seconds':>8} {'ratio':>7} {'target':>7}  verdict")
    print(f"{'cp -r + sync (baseline)':<34} {base:8.3f} {1.0:7.2f}")
    print(f"{'cas --version (start-up)':<34} {med['start-up']:8.3f} "
          f"{med['start-up'] / base:7.2f}")
    rows = [("add", "cas add (fresh store)", med["add"]),
            ("re-add", "cas add, no change, minus start-up", med["re-add"] - med["start-up"]),
            ("checkout", "cas checkout", med["checkout"])]
    for key, label, secs in rows:
        verdict = "PASS" if ratios[key] <= TARGETS[key] else "FAIL"
        print(f"{label:<34} {secs:8.3f} {ratios[key]:7.2f} {TARGETS[key]:6.1f}x  {verdict}")
    if args.json:
        print(json.dumps({"files": args.files, "bytes": total, "runs": runs, "median": med,
                          "ratios": ratios, "targets": TARGETS}))


if __name__ == "__main__":
    main()
