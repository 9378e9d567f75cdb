#!/usr/bin/env python3
"""Benchmark of ``cas diff`` against same-run baselines.

Usage::

    python benchmarks/bench_diff.py [--quick] [--workdir DIR] [--runs N] [--keep]

A safetensors file of about 1 GiB (128 MiB with --quick) made of 200 F32 tensors of seeded
normal values is registered as ``bench/model@1``; a copy in which 5% of the tensors (10, spread
over the file) got a small perturbation (``cas.demo.perturb_in_place``) as ``bench/model@2``.
Both go into a default store (the changed chunks of v2 are stored as residuals against v1) and a
``--no-derive`` store (stored whole). For each store:

* **bytes read**: every ``pread`` on a pack file during the diff is counted (``Pack._pread`` is
  wrapped in this process), and compared with the stored bytes (entry headers included) of the
  chunks whose ids differ between the two chunk lists plus those covering both headers.
  Target: at most 1.2x.
* **wall time** of the diff (``Store.diff`` in this process after one warm-up diff, median of
  N runs, store opened before the clock starts) against Python's ``hashlib.sha256`` over v1
  read in 1 MiB blocks (page-cache warm, median of N). Target: at most 0.2x. Also printed:
  the wall time of the whole ``cas diff`` command (interpreter start-up included) over the
  same baseline; the CPU time of the diff over the CPU time of the hash, which other load on
  the machine disturbs less than wall time; and the wall time of the diff with two worker
  threads instead of ``cas.diff.WORKERS`` (``2 threads``), which shows what a second thread
  would gain.

The diff's own counter (``stats.bytes_read`` of the result) is printed next to the measured
reads as a cross-check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cas import diff as diff_module
from cas.demo import perturb_in_place
from cas.format import pack as fmt
from cas.packs import Pack
from cas.store import Store

MiB = 1 << 20
TENSORS = 200
CHANGED_EVERY = 20  # 10 of 200 tensors: 5%


def write_model(path: Path, total: int, seed: int = 0) -> list[str]:
    """A safetensors file of ``TENSORS`` F32 tensors of about ``total`` bytes, written one
    tensor at a time (memory stays at one tensor)."""
    rng = np.random.default_rng(seed)
    rows = max(1, total // TENSORS // (4 * 1024))
    names = [f"model.layers.{i:03d}.weight" for i in range(TENSORS)]
    nbytes = rows * 1024 * 4
    header = {n: {"dtype": "F32", "shape": [rows, 1024],
                  "data_offsets": [i * nbytes, (i + 1) * nbytes]} for i, n in enumerate(names)}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _ in names:
            f.write(rng.standard_normal(rows * 1024, dtype=np.float32).__imul__(0.02).tobytes())
    return names


def sha256_file(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of hashing ``path`` with ``hashlib.sha256``."""
    t0, c0 = time.perf_counter(), time.process_time()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MiB):
            h.update(block)
    h.hexdigest()
    return time.perf_counter() - t0, time.process_time() - c0


class PreadCounter:
    """Counts the bytes of every ``pread`` on a pack file made in this process."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self._orig = Pack._pread

    def __enter__(self) -> PreadCounter:
        orig = self._orig

        def counting(pack: Pack, n: int, offset: int) -> bytes:
            data = orig(pack, n, offset)
            self.bytes += len(data)
            self.calls += 1
            return data

        Pack._pread = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Pack._pread = self._orig  # type: ignore[method-assign]


def baseline_bytes(store: Store) -> dict[str, int]:
    """Stored bytes (with entry headers) of the chunks whose ids differ between the two chunk
    lists, and of the chunks covering each file's header."""
    lists, headers = [], 0
    for spec in ("bench/model@1", "bench/model@2"):
        entry = store.manifest(store.resolve(spec)).files[0]
        clist = store.read_chunk_list(bytes.fromhex(entry.chunks))
        lists.append(clist)
        first = store.packs.read(clist.chunks[0][0])
        header_end = 8 + struct.unpack_from("<Q", first)[0]
        pos = 0
        for oid, n in clist.chunks:
            if pos >= header_end:
                break
            headers += store.packs.locate(oid).entry.stored_len + fmt.ENTRY_HEADER_SIZE
            pos += n
    a, b = ({oid for oid, _ in c.chunks} for c in lists)
    differ = sum(store.packs.locate(oid).entry.stored_len + fmt.ENTRY_HEADER_SIZE
                 for oid in a ^ b)
    return {"differing_chunks": differ, "headers": headers, "differing_ids": len(a ^ b)}


def cas(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store), *args],
                          capture_output=True, text=True, check=True)


def case(work: Path, v1: Path, v2: Path, derive: bool, runs: int, log) -> dict:
    store_dir = work / ("store-derive" if derive else "store-noderive")
    shutil.rmtree(store_dir, ignore_errors=True)
    cas(store_dir, "init", *([] if derive else ["--no-derive"]))
    cas(store_dir, "add", "bench/model", str(v1), "-q")
    cas(store_dir, "add", "bench/model", str(v2), "-q")
    with Store.open(store_dir) as store:
        base = baseline_bytes(store)
        store.diff("bench/model@1", "bench/model@2")  # warm-up: first-use imports
    times, cpu_times, cli_times, sha_times, sha_cpu, two_times = [], [], [], [], [], []
    result = None
    read = 0
    for _ in range(runs):
        wall, cpu = sha256_file(v1)
        sha_times.append(wall)
        sha_cpu.append(cpu)
        with Store.open(store_dir) as store, PreadCounter() as counter:
            t0, c0 = time.perf_counter(), time.process_time()
            result = store.diff("bench/model@1", "bench/model@2")
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        read = counter.bytes
        workers, diff_module.WORKERS = diff_module.WORKERS, 2
        try:
            with Store.open(store_dir) as store:
                t0 = time.perf_counter()
                store.diff("bench/model@1", "bench/model@2")
                two_times.append(time.perf_counter() - t0)
        finally:
            diff_module.WORKERS = workers
        t0 = time.perf_counter()
        cas(store_dir, "diff", "bench/model@1", "bench/model@2", "--json")
        cli_times.append(time.perf_counter() - t0)
    assert result is not None
    w = result.weights[0]
    if w.changed_value != TENSORS // CHANGED_EVERY or w.unchanged != TENSORS - w.changed_value:
        raise SystemExit(f"diff found {w.changed_value} changed tensors, expected "
                         f"{TENSORS // CHANGED_EVERY}")
    row = {
        "store": "default (derive)" if derive else "--no-derive",
        "diff_s": statistics.median(times), "cli_s": statistics.median(cli_times),
        "two_s": statistics.median(two_times),
        "sha256_s": statistics.median(sha_times), "pread_bytes": read,
        "counted_bytes": result.stats.bytes_read, **base,
    }
    row["time_ratio"] = row["diff_s"] / row["sha256_s"]
    row["cpu_ratio"] = statistics.median(cpu_times) / statistics.median(sha_cpu)
    row["cli_ratio"] = row["cli_s"] / row["sha256_s"]
    row["read_ratio"] = read / (base["differing_chunks"] + base["headers"])
    log(f"  {row['store']}: diff {row['diff_s'] * 1e3:.0f} ms, sha256 "
        f"{row['sha256_s'] * 1e3:.0f} ms, read {read / MiB:.1f} MiB")
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="128 MiB file, one run")
    ap.add_argument("--workdir", type=Path, help="where to build files and stores")
    ap.add_argument("--runs", type=int, help="repetitions (default 3, 1 with --quick)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    total = (128 if args.quick else 1024) * MiB
    runs = args.runs or (1 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-diff-", dir=args.workdir))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        (work / "v1").mkdir()
        (work / "v2").mkdir()
        v1, v2 = work / "v1" / "model.safetensors", work / "v2" / "model.safetensors"
        log(f"writing {total // MiB} MiB model ...")
        names = write_model(v1, total)
        shutil.copyfile(v1, v2)
        changed = perturb_in_place(v2, names[CHANGED_EVERY // 2 :: CHANGED_EVERY], seed=1)
        log(f"perturbed {len(names[CHANGED_EVERY // 2 :: CHANGED_EVERY])} tensors "
            f"({changed / MiB:.1f} MiB)")
        rows = [case(work, v1, v2, derive, runs, log) for derive in (True, False)]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\ncas diff of two versions of a {total // MiB} MiB safetensors file "
          f"({TENSORS} F32 tensors, {TENSORS // CHANGED_EVERY} changed), median of {runs}")
    head = (f"{'store':<18} {'diff':>8} {'2 threads':>9} {'cas diff':>9} {'sha256':>8} "
            f"{'diff/sha':>9} "
            f"{'cli/sha':>8} {'cpu/cpu':>8} {'read':>9} {'counted':>9} {'differ+hdr':>11} "
            f"{'read/base':>10}")
    print(head)
    for r in rows:
        print(f"{r['store']:<18} {r['diff_s'] * 1e3:>6.0f}ms {r['two_s'] * 1e3:>7.0f}ms "
              f"{r['cli_s'] * 1e3:>7.0f}ms "
              f"{r['sha256_s'] * 1e3:>6.0f}ms {r['time_ratio']:>8.3f}x {r['cli_ratio']:>7.3f}x "
              f"{r['cpu_ratio']:>7.3f}x "
              f"{r['pread_bytes'] / MiB:>6.1f}MiB {r['counted_bytes'] / MiB:>6.1f}MiB "
              f"{(r['differing_chunks'] + r['headers']) / MiB:>8.1f}MiB "
              f"{r['read_ratio']:>9.3f}x")
    ok = True
    print()
    for r in rows:
        for label, value, limit in (("bytes read / (differing chunks + headers)",
                                     r["read_ratio"], 1.2),
                                    ("diff wall time / sha256", r["time_ratio"], 0.2)):
            verdict = "PASS" if value <= limit else "FAIL"
            ok &= verdict == "PASS"
            print(f"{verdict}  {r['store']}: {label} = {value:.3f} (target <= {limit})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
