#!/usr/bin/env python3
"""``gc --quota`` against gc's mark phase measured in the same run (issue 12 targets).

Usage::

    python benchmarks/bench_evict.py [--models 20] [--versions 100] [--chunks 1000]
                                     [--chunk-size 4096] [--evict 0.1] [--runs 3]
                                     [--workdir DIR] [--keep] [--smoke]

The store is issue 6's gc benchmark store (``bench_gc.build_store``: ``--models`` x
``--versions`` versions, 95% of each version's chunks shared with its predecessor). Every
version gets a real copy elsewhere: a second store ``far`` whose packs are hard links to the
store's (same bytes, no copy), into which ``cas push`` then sends only the registry, so the
location log names ``far`` for every version and each drop verifies its copy there live, as
in production. The quota is the store's size minus ``--evict`` of its pack bytes.

1. Planning. In-process, alternately, ``--runs`` times: :func:`cas.evict.plan` against gc's
   mark (``cas.gc._roots_closure``, timed inside a ``gc --dry-run --now``), medians; then as
   child processes ``cas gc --dry-run --now --quota Q`` against ``cas gc --dry-run --now``,
   with peak RSS. Targets: plan <= 1x the mark, peak RSS <= 150 MB.
2. A real ``cas gc --now --quota Q``: every file under the store sums to at most Q
   afterwards, the bytes freed (size before - size after, measured here from the files)
   equal the plan's prediction within 1%, and ``verify --all`` is clean.

``--smoke``: a tiny store (seconds); the run's correctness (drops as planned, verify clean)
is asserted, the targets (timing, RSS, quota reached, prediction within 1%) printed only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_gc import build_store, timed_gc  # noqa: E402
from bench_local import run_cas, settle  # noqa: E402

MB = 1_000_000


def store_bytes(path: Path) -> int:
    from cas.evict import store_bytes as sizes

    return sizes(path)


def pack_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "packs").glob("pack-*.pack"))


def far_copy(path: Path, far: Path) -> float:
    """Make ``far`` a store holding every version of ``path``: its packs hard-linked, the
    registry pushed (which also brings far's location entry back). Returns the seconds."""
    t0 = time.perf_counter()
    run_cas(["init", str(far)])
    for p in (path / "packs").iterdir():
        if p.name.startswith(("pack-", "midx-")):
            os.link(p, far / "packs" / p.name)
    run_cas(["--store", str(path), "remote", "add", "far", str(far)])
    r = run_cas(["--store", str(path), "--json", "push", "far"])
    assert r["json"]["ok"] and r["json"]["objects_sent"] == 0, r["json"]
    return time.perf_counter() - t0


def timed_plan(path: Path, quota: int) -> tuple[object, float]:
    from cas import evict
    from cas.store import Store

    t0 = time.perf_counter()
    store = Store.open(path)
    try:
        plan = evict.plan(store, quota, grace=0.0)
    finally:
        store.close()
    return plan, time.perf_counter() - t0


def section_plan(path: Path, quota: int, runs: int, results: dict,
                 checks: list[tuple[str, bool, bool]]) -> dict:
    print("\n== 1. planning an eviction vs gc's mark phase ==")
    times: dict[str, list[float]] = {k: [] for k in ("plan", "mark", "gc_wall", "dry_child",
                                                     "quota_child")}
    rss = {"dry_child": 0, "quota_child": 0}
    plan = None
    settle()
    timed_plan(path, quota)  # warm the page cache and the root cache
    for _ in range(runs):
        _r, wall, spent = timed_gc(path, dry_run=True, grace=0.0, expire_removed=0.0)
        times["mark"].append(spent["_roots_closure"])
        times["gc_wall"].append(wall)
        plan, seconds = timed_plan(path, quota)
        times["plan"].append(seconds)
    for _ in range(runs):
        for key, extra in (("dry_child", []), ("quota_child", ["--quota", str(quota)])):
            r = run_cas(["--store", str(path), "--json", "gc", "--dry-run", "--now", *extra],
                        check=False)
            assert r["json"] is not None, r
            times[key].append(r["wall"])
            rss[key] = max(rss[key], r["maxrss"])
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["plan"] / med["mark"]
    child_ratio = med["quota_child"] / med["dry_child"]
    assert plan is not None
    print(f"plan: {len(plan.drops)} drops predicted to free {plan.predicted / MB:.1f} MB "
          f"(garbage {plan.garbage} B), {len(plan.skipped)} passed over")
    print(f"in-process medians of {runs}: evict.plan {med['plan']:.3f} s, gc mark "
          f"(_roots_closure) {med['mark']:.3f} s, whole gc --dry-run {med['gc_wall']:.3f} s; "
          f"plan/mark = {ratio:.2f}x (target <= 1x)")
    print(f"children: gc --dry-run --now --quota {med['quota_child']:.3f} s, gc --dry-run "
          f"--now {med['dry_child']:.3f} s (ratio {child_ratio:.2f}x); peak RSS "
          f"{rss['quota_child'] / MB:.1f} MB with the quota, {rss['dry_child'] / MB:.1f} MB "
          "without (target <= 150 MB)")
    results.update(plan_s=med["plan"], mark_s=med["mark"], plan_over_mark=ratio,
                   child_quota_s=med["quota_child"], child_dry_s=med["dry_child"],
                   child_ratio=child_ratio, quota_rss_mb=rss["quota_child"] / MB,
                   drops_planned=len(plan.drops), predicted=plan.predicted)
    checks.append(("plan <= 1x gc's mark phase", ratio <= 1.0, False))
    checks.append(("gc --dry-run --quota peak RSS <= 150 MB", rss["quota_child"] <= 150 * MB,
                   False))
    checks.append(("the plan drops something (quota forces drops)", bool(plan.drops), True))
    return {"drops": len(plan.drops), "predicted": plan.predicted}


def section_run(path: Path, quota: int, expected: dict, results: dict,
                checks: list[tuple[str, bool, bool]]) -> None:
    print("\n== 2. gc --now --quota ==")
    settle()
    before = store_bytes(path)
    r = run_cas(["--store", str(path), "--json", "gc", "--now", "--quota", str(quota)],
                check=False)
    doc = r["json"]
    assert doc is not None, r
    if not doc.get("ok"):  # still over the quota (E_DISK): the result is reported as well
        print(f"gc --quota exited {r['rc']}: {doc['error']['code']}: {doc['error']['message']}")
        doc = doc["result"]
    after = store_bytes(path)
    freed = before - after
    predicted = doc["plan"]["predicted"]
    error = abs(freed - predicted) / max(predicted, 1)
    print(f"dropped {len(doc['dropped'])} versions ({len(doc['refused'])} refused) in "
          f"{r['wall']:.2f} s, peak RSS {r['maxrss'] / MB:.1f} MB")
    print(f"store {before} -> {after} bytes, quota {quota}: "
          f"{'under' if after <= quota else 'OVER'}; freed {freed} bytes, predicted "
          f"{predicted} ({error * 100:.3f}% off; target <= 1%)")
    v = run_cas(["--store", str(path), "--json", "verify", "--all"], check=False)
    verify_ok = bool(v["json"] and v["json"]["ok"])
    print(f"verify --all afterwards: {'clean' if verify_ok else 'FAILED'}; not present: "
          f"{len((v['json'] or {}).get('not_present', []))} versions")
    results.update(run_s=r["wall"], run_rss_mb=r["maxrss"] / MB, size_before=before,
                   size_after=after, freed=freed, freed_predicted=predicted,
                   freed_error=error, dropped=len(doc["dropped"]))
    checks.append(("after gc --quota the store is within the quota", after <= quota, False))
    checks.append(("freed equals the plan's prediction within 1%", error <= 0.01, False))
    checks.append(("the run dropped what the plan said",
                   len(doc["dropped"]) == expected["drops"], True))
    checks.append(("verify --all clean after gc --quota", verify_ok, True))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=1000, help="chunks per version")
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--evict", type=float, default=0.1,
                    help="share of the pack bytes the quota forces out")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny store, correctness asserted, targets printed only")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.versions, args.chunks, args.chunk_size = 3, 8, 40, 256
        args.runs, args.evict = 1, 0.4
    work = Path(tempfile.mkdtemp(prefix="bench-evict-", dir=args.workdir))
    results: dict = {}
    #: (name, passed, correctness): correctness checks are asserted in --smoke
    checks: list[tuple[str, bool, bool]] = []
    try:
        built = build_store(work / "store", args.models, args.versions, args.chunks,
                            args.chunk_size)
        path = built.path
        copy_s = far_copy(path, work / "far")
        size, packs = store_bytes(path), pack_bytes(path)
        quota = size - int(packs * args.evict)
        print(f"store: {args.models} models x {args.versions} versions, {args.chunks} chunks "
              f"of {args.chunk_size} B per version (95% shared); {size / MB:.1f} MB of files "
              f"({packs / MB:.1f} MB packs); built in {built.seconds:.1f} s, copy elsewhere "
              f"in {copy_s:.1f} s; quota {quota} bytes (evicting {args.evict:.0%} of the "
              "pack bytes)")
        expected = section_plan(path, quota, args.runs, results, checks)
        section_run(path, quota, expected, results, checks)
        print("\n" + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in results.items()}))
        for name, passed, _ in checks:
            print(f"{'PASS' if passed else 'FAIL'}: {name}")
        if args.smoke:
            failed = [n for n, passed, correctness in checks if correctness and not passed]
            assert not failed, failed
        results["checks"] = checks
        return results
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
