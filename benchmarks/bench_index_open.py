#!/usr/bin/env python3
"""Store open time and pack-index lookups with 10 million indexed chunks.

Usage::

    python benchmarks/bench_index_open.py [--entries N] [--packs 1,3000] [--lookups 10000]
                                          [--budget S] [--workdir DIR] [--keep]

For each layout (number of packs the entries are spread over) it creates a store with
``cas.store.Store.init`` and writes pack index files (``pack-<id>.idx``) directly, with numpy, in
the layout of ``cas.format.pack.encode_index`` (16-byte header, 256 x u32 cumulative fanout,
48-byte records sorted by id, trailer = pack id + BLAKE3 of everything before; whether that
checksum also covers the pack id is probed from ``encode_index``). No chunk is
created and no ``.pack`` file is written: lookups only read indexes. Before that, the numpy
encoder is checked byte-for-byte against ``encode_index`` and with ``verify_index`` on a small
sample.

Then a fresh subprocess (forked from a small launcher so that its ru_maxrss is its own) times
``Store.open(path)`` and ``--lookups`` calls of ``store.packs.locate(id)``, half of ids present
in some pack and half absent, and reports open time, lookups per second and peak RSS. "+open MB" is the RSS that
``Store.open`` adds; "anon"/"file" split the RSS at the end: file pages are the mmapped index
pages the lookups touched (clean page cache, reclaimable), anon is heap.

The default layouts are one pack holding all entries, and ~3,000 packs (what 10 M chunks of
~80 KiB come to with the default 256 MiB pack target).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import blake3
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_local import spawn  # noqa: E402  (launcher that reports the child's own rusage)

MB = 1_000_000

REC = np.dtype([("id", "V32"), ("offset", "<u4"), ("stored_len", "<u4"), ("raw_len", "<u4"),
                ("kind", "u1"), ("codec", "u1"), ("reserved", "<u2")])


def sort_ids(ids: np.ndarray) -> np.ndarray:
    """Sort an (n, 32) uint8 array of ids bytewise; raise on duplicates."""
    cols = ids.view(">u8").reshape(len(ids), 4)
    order = np.argsort(cols[:, 0], kind="stable")
    c0 = cols[order, 0]
    if len(c0) > 1 and np.any(c0[1:] == c0[:-1]):  # a 64-bit prefix tie: sort on all columns
        order = np.lexsort((cols[:, 3], cols[:, 2], cols[:, 1], cols[:, 0]))
    out = ids[order]
    if len(out) > 1:
        same = np.all(out[1:] == out[:-1], axis=1)
        if same.any():
            raise ValueError("duplicate ids")
    return out


def build_index(sorted_ids: np.ndarray, rng: np.random.Generator) -> tuple[bytes, list]:
    """Return (pack id, [buffers]) of an index over ``sorted_ids`` (n, 32 uint8, sorted)."""
    from cas.format import pack as fmt

    assert REC.itemsize == fmt.IDX_RECORD_SIZE
    n = len(sorted_ids)
    rec = np.zeros(n, REC)
    rec["id"] = np.ascontiguousarray(sorted_ids).view("V32").ravel()
    stored = rng.integers(16384, 262144, n, dtype=np.uint64)
    ends = np.cumsum(stored + fmt.ENTRY_HEADER_SIZE) + fmt.PACK_HEADER_SIZE
    offsets = np.empty(n, np.uint64)
    offsets[0] = fmt.PACK_HEADER_SIZE
    offsets[1:] = ends[:-1]
    rec["offset"] = (offsets & 0xFFFFFFFF).astype(np.uint32)  # a huge single pack wraps; unused
    rec["stored_len"] = stored.astype(np.uint32)
    rec["raw_len"] = (stored + 1024).astype(np.uint32)
    rec["kind"] = fmt.KIND_CHUNK
    rec["codec"] = 1
    fanout = np.bincount(sorted_ids[:, 0], minlength=256).cumsum().astype("<u4")
    header = struct.pack("<8sII", fmt.IDX_MAGIC, fmt.IDX_VERSION, n)
    # The pack id is the BLAKE3 of the entry ids in pack order; here pack order = id order.
    pack_id = blake3.blake3(memoryview(sorted_ids).cast("B"), max_threads=blake3.blake3.AUTO).digest()
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    parts = [header, fanout.tobytes(), memoryview(rec).cast("B")]
    for p in parts:
        h.update(p)
    if _checksum_covers_pack_id():
        h.update(pack_id)
    parts.append(pack_id + h.digest())
    return pack_id, parts


_COVERS: list[bool] = []


def _checksum_covers_pack_id() -> bool:
    """Whether encode_index's trailer checksum covers the pack id too (it changed once)."""
    if not _COVERS:
        from cas.format import pack as fmt

        pid = bytes(range(32))
        probe = fmt.encode_index([fmt.Entry(b"\x01" * 32, 16, 10, 10, 1, 0)], pid)
        body, check = probe[: -fmt.IDX_TRAILER_SIZE], probe[-32:]
        if check == blake3.blake3(body + pid).digest():
            _COVERS.append(True)
        elif check == blake3.blake3(body).digest():
            _COVERS.append(False)
        else:
            raise RuntimeError("unknown index checksum layout in cas.format.pack.encode_index")
    return _COVERS[0]


def write_index(packs_dir: Path, sorted_ids: np.ndarray, rng: np.random.Generator) -> str:
    pack_id, parts = build_index(sorted_ids, rng)
    hex_id = pack_id.hex()
    with open(packs_dir / f"pack-{hex_id}.idx", "wb") as f:
        for p in parts:
            f.write(p)
    return hex_id


def self_check(work: Path) -> None:
    """The numpy layout must equal encode_index's and pass verify_index."""
    from cas.format import pack as fmt
    from cas.packs import Pack

    rng = np.random.default_rng(5)
    ids = sort_ids(np.frombuffer(rng.bytes(1000 * 32), np.uint8).reshape(1000, 32).copy())
    pack_id, parts = build_index(ids, np.random.default_rng(6))
    mine = b"".join(bytes(p) for p in parts)
    rec = np.frombuffer(mine, REC, count=1000, offset=fmt.IDX_RECORDS_START)
    entries = [fmt.Entry(bytes(r["id"]), int(r["offset"]), int(r["stored_len"]),
                         int(r["raw_len"]), int(r["kind"]), int(r["codec"])) for r in rec]
    rng.shuffle(entries)  # encode_index sorts itself
    theirs = fmt.encode_index(entries, pack_id)
    assert mine == theirs, "numpy index bytes differ from encode_index"
    fmt.verify_index(mine, "sample")
    d = work / "selfcheck"
    d.mkdir(parents=True, exist_ok=True)
    hex_id = write_index(d, ids, np.random.default_rng(6))
    p = Pack(d, hex_id)
    p.verify_index()
    assert p.lookup(bytes(ids[500])) is not None and p.lookup(b"\x00" * 32) is None
    p.close()
    shutil.rmtree(d)


def build_store(path: Path, entries: int, packs: int, n_present: int, seed: int,
                log) -> np.ndarray:
    """Create a store whose ``packs`` indexes hold ``entries`` ids; return a sample of them."""
    from cas.store import Store

    if path.exists():
        shutil.rmtree(path)
    Store.init(path).close()
    rng = np.random.default_rng(seed)
    per = [entries // packs + (1 if i < entries % packs else 0) for i in range(packs)]
    sample_rows = []
    takes = rng.multinomial(n_present, np.array(per) / entries)  # present ids, spread by size
    t0 = time.perf_counter()
    for i, n in enumerate(per):
        ids = np.frombuffer(rng.bytes(n * 32), np.uint8).reshape(n, 32)
        ids = sort_ids(ids)
        write_index(path / "packs", ids, rng)
        sample_rows.append(ids[rng.choice(n, takes[i], replace=False)])
        if packs > 1 and (i + 1) % max(1, packs // 10) == 0:
            log(f"  {i + 1}/{packs} indexes written ({time.perf_counter() - t0:.0f} s)")
    os.sync()
    sample = np.concatenate(sample_rows)
    return sample[rng.permutation(len(sample))]


# Run with ``python -c`` in a fresh process so that it imports nothing but cas (no numpy).
CHILD_CODE = r"""
import json, sys, time
from pathlib import Path

def vm(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0

store_path, ids_file, budget = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = Path(ids_file).read_bytes()
n = len(data) // 33
queries = [(data[i * 33 : i * 33 + 32], data[i * 33 + 32]) for i in range(n)]
rss_start = vm("VmRSS")
t0 = time.perf_counter()
from cas.store import Store
t1 = time.perf_counter()
store = Store.open(store_path)
t2 = time.perf_counter()
rss_open = vm("VmRSS")
found = wrong = done = 0
times = {0: 0.0, 1: 0.0}
counts = {0: 0, 1: 0}
deadline = t2 + budget
for oid, present in queries:
    s = time.perf_counter()
    loc = store.packs.locate(oid)
    e = time.perf_counter()
    times[present] += e - s
    counts[present] += 1
    done += 1
    found += loc is not None
    wrong += (loc is not None) != bool(present)
    if e > deadline:
        break
t3 = time.perf_counter()
print(json.dumps({
    "import_s": t1 - t0, "open_s": t2 - t1, "packs_open": len(store.packs.packs),
    "broken": len(store.packs.broken), "lookups": done, "lookup_s": t3 - t2,
    "present_lookups": counts[1], "present_s": times[1],
    "absent_lookups": counts[0], "absent_s": times[0], "found": found, "wrong": wrong,
    "rss_before_import": rss_start, "rss_after_open": rss_open, "rss_end": vm("VmRSS"),
    "hwm": vm("VmHWM"), "rss_anon_end": vm("RssAnon"), "rss_file_end": vm("RssFile"),
}))
store.close()
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--packs", default="1,3000",
                    help="comma-separated pack counts to spread the entries over")
    ap.add_argument("--lookups", type=int, default=10_000)
    ap.add_argument("--budget", type=float, default=120.0,
                    help="stop the lookups after this many seconds (rate from those done)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    base = args.workdir or Path("/tmp")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-idx-", dir=base))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = []
    try:
        self_check(work)
        log("self-check: numpy index == encode_index, verify_index OK")
        for packs in (int(x) for x in args.packs.split(",")):
            store = work / f"store-{packs}"
            t0 = time.perf_counter()
            log(f"building {args.entries:,} entries in {packs} pack index(es) ...")
            n_present = args.lookups // 2
            present = build_store(store, args.entries, packs, n_present, seed=packs, log=log)
            build_s = time.perf_counter() - t0
            rng = np.random.default_rng(99)
            absent = np.frombuffer(rng.bytes((args.lookups - len(present)) * 32),
                                   np.uint8).reshape(-1, 32)
            q = [(bytes(r), 1) for r in present] + [(bytes(r), 0) for r in absent]
            rng.shuffle(q)
            ids_file = work / f"ids-{packs}.bin"
            ids_file.write_bytes(b"".join(oid + bytes([p]) for oid, p in q))
            idx_bytes = sum(f.stat().st_size for f in (store / "packs").iterdir())
            ru, out, err = spawn([sys.executable, "-c", CHILD_CODE,
                                  str(store), str(ids_file), str(args.budget)])
            if ru["rc"] != 0:
                raise RuntimeError(f"child failed: {err}")
            r = json.loads(out.strip().splitlines()[-1])
            r.update(packs=packs, entries=args.entries, index_bytes=idx_bytes, build_s=build_s,
                     child_wall_s=ru["wall"], child_maxrss=ru["maxrss"])
            results.append(r)
            log(f"  {json.dumps(r)}")
            if packs >= 8:
                # The same store once a writer has covered its packs with a multi-pack index.
                from cas.multipack import maintain
                from cas.packs import PackSet
                from cas.storage.local import LocalBackend

                t0 = time.perf_counter()
                pset = PackSet(store / "packs")
                maintain(pset, LocalBackend(store), store / "tmp")
                pset.close()
                midx_s = time.perf_counter() - t0
                log(f"  multi-pack index over {packs} packs written in {midx_s:.1f} s")
                ru, out, err = spawn([sys.executable, "-c", CHILD_CODE,
                                      str(store), str(ids_file), str(args.budget)])
                if ru["rc"] != 0:
                    raise RuntimeError(f"child failed: {err}")
                r = json.loads(out.strip().splitlines()[-1])
                r.update(packs=f"{packs}+midx", entries=args.entries, index_bytes=idx_bytes,
                         build_s=build_s, midx_build_s=midx_s, child_wall_s=ru["wall"],
                         child_maxrss=ru["maxrss"])
                results.append(r)
                log(f"  {json.dumps(r)}")
            shutil.rmtree(store)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'packs':>6} {'entries':>11} {'idx MB':>8} {'import s':>9} {'open s':>8} "
          f"{'lookups':>8} {'lookup/s':>10} {'present/s':>10} {'absent/s':>10} {'RSS MB':>7} "
          f"{'+open MB':>8} {'anon MB':>8} {'file MB':>8}")
    for r in results:
        def rate(n: int, s: float) -> str:
            return f"{n / s:,.0f}" if s > 0 else "-"
        print(f"{r['packs']:>6} {r['entries']:>11,} {r['index_bytes'] / MB:>8.0f} "
              f"{r['import_s']:>9.3f} {r['open_s']:>8.3f} {r['lookups']:>8} "
              f"{rate(r['lookups'], r['lookup_s']):>10} "
              f"{rate(r['present_lookups'], r['present_s']):>10} "
              f"{rate(r['absent_lookups'], r['absent_s']):>10} {r['child_maxrss'] / MB:>7.1f} "
              f"{(r['rss_after_open'] - r['rss_before_import']) / MB:>8.1f} "
              f"{r['rss_anon_end'] / MB:>8.1f} {r['rss_file_end'] / MB:>8.1f}")
    print()
    ok = True
    for r in results:
        good = r["open_s"] < 1.0
        ok &= good
        print(f"{'PASS' if good else 'FAIL'}  Store.open with {r['entries']:,} entries in "
              f"{r['packs']} pack(s) < 1 s: {r['open_s']:.3f} s")
        if r["wrong"]:
            ok = False
            print(f"FAIL  {r['wrong']} lookups returned the wrong presence")
        if r["lookups"] < args.lookups:
            print(f"note  only {r['lookups']} of {args.lookups} lookups ran within the "
                  f"{args.budget:g} s budget")
    out_dir = HERE / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_index_open.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out_dir / 'bench_index_open.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
