#!/usr/bin/env python3
"""``cas bundle`` (air-gapped sync) against baselines measured in the same run.

Usage::

    python benchmarks/bench_bundle.py [--size-mib 1024] [--runs 3] [--sections 1,2,3]
                                      [--profile] [--workdir DIR] [--keep] [--smoke]

Two stores on this machine play the sender and the disconnected site; everything between
them travels as bundle files. Every command is a child process timed by
``bench_local.spawn`` (wall time, and the wait4 peak RSS of the command and its waited-for
children). Inputs are written and fsynced first and ``os.sync()`` runs before every timed
command; a measured command and its baseline alternate (A/B, then B/A); medians of ``--runs``.

Sections, with the targets (PASS/FAIL lines at the end):

1. The real model (all-MiniLM-L6-v2): v1 reaches the site in a full bundle; the site exports
   its state (``cas state export``); v2 (last encoder layer and pooler fine-tuned,
   ``cas.demo.finetune_copy``) is added at the sender and cut as an incremental bundle
   (``cas bundle create --since``). The bundle file <= 1.1x the bytes v2 added to the
   sender's store (``cas add --json`` ``new_stored_bytes``; ``cas du --json`` ``new_stored``
   and the packs' growth are printed beside it), and <= 10% of the file.
2. A 1 GiB bf16 safetensors model (``compare.build_synthetic``): v1 reaches the site in a full
   bundle; its v2 (5% of the tensors rewritten, a small tensor inserted first: later bytes
   shift) is cut against the site's state. The bundle file <= 8% of the v2 file, which is
   what a whole-file copy (git-lfs, DVC, git-annex) would carry.
3. The full bundle of that v1: ``cas bundle import`` into an empty store <= 1.5x the time of
   ``cas verify NAME@1`` in the importing store afterwards (alternated, medians); peak RSS
   of ``cas bundle create`` and of the import <= 150 MB. ``cas bundle create`` of the full
   bundle and ``cas checkout NAME@1`` (which reads, decodes and hashes what verify does, and
   writes the file) are timed in the same alternation, for information.

Every bundle is imported and the version it carries verified (section 1 also checks out v2
byte-identical): those are the correctness checks. ``--profile`` prints cProfiles of the
import and of the verify; a failed time target prints them on its own. ``--smoke`` runs
everything tiny (32 MiB, one run) in the test suite and asserts correctness only; the size
targets of section 1 are judged as in a full run, those of section 2 and the time and RSS
targets are printed, not judged (a 32 MiB file does not show them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_local import MB, MiB, spawn  # noqa: E402
from bench_sync import (  # noqa: E402
    Checks,
    alternated_ops,
    cas,
    init_store,
    med,
    pack_bytes,
    profile_text,
    same_file,
)

RSS_LIMIT = 150 * MB


# ---------------------------------------------------------------------------------------------
# helpers


def bundle_to(sender: Path, site: Path, out: Path, *names: str) -> dict:
    """Cut a bundle at ``sender`` against ``site``'s exported state (a full bundle when the
    site holds nothing) and return ``cas bundle create``'s run with ``size`` (the file's
    bytes). The state file travels next to the bundle."""
    state = out.with_suffix(".state.json")
    cas(site, "state", "export", str(state))
    r = cas(sender, "bundle", "create", str(out), *names, "--since", str(state))
    r["size"] = out.stat().st_size
    return r


def version_verified(store: Path, spec: str) -> bool:
    doc = cas(store, "verify", spec, check=False)["json"]
    return bool(doc and doc.get("ok"))


def du_new_stored(store: Path, name: str, seq: int) -> int:
    """``cas du NAME --json``: the ``new_stored`` of version ``seq``."""
    doc = cas(store, "du", name)["json"]
    return next(v["new_stored"] for v in doc["versions"] if v["version"] == f"{name}@{seq}")


def profiled(store: Path, args: list[str], work: Path, label: str) -> str:
    """A cProfile of ``cas --store STORE ARGS`` (``bench_sync.profile_text``)."""
    out = work / f"{label}.prof"
    ru, _, err = spawn([sys.executable, "-P", "-m", "cProfile", "-o", str(out), "-m",
                        "cas.cli.main", "--store", str(store), *args])
    if ru["rc"] != 0:
        return f"(the profiled run failed: {err[-800:]})"
    return f"{label} ({ru['wall']:.2f} s under the profiler):\n{profile_text(out)}"


# ---------------------------------------------------------------------------------------------
# 1. the real model's fine-tune


def section_real_model(work: Path, results: dict, checks: Checks) -> None:
    print("\n== 1. incremental bundle of the real model's v2 (last layer fine-tuned) for a site "
          "holding v1 ==")
    from cas.demo import finetune_copy, real_model_dir

    try:
        src = real_model_dir()
    except SystemExit as exc:
        print(f"SKIP: {exc}")
        return
    base = work / "real"
    base.mkdir()
    v1, v2 = base / "v1", base / "v2"
    shutil.copytree(src, v1)
    changed = finetune_copy(v1, v2)
    sender, site = init_store(base / "sender"), init_store(base / "site")
    name = "org/minilm"
    cas(sender, "add", name, str(v1))
    full = bundle_to(sender, site, base / "v1.cbundle")
    cas(site, "bundle", "import", str(base / "v1.cbundle"))
    before = pack_bytes(sender)
    add = cas(sender, "add", name, str(v2))["json"]
    grew = pack_bytes(sender) - before
    added = add["new_stored_bytes"]
    du_new = du_new_stored(sender, name, 2)
    inc = bundle_to(sender, site, base / "v2.cbundle")
    size = (v2 / "model.safetensors").stat().st_size
    bundle = inc["size"]
    print(f"model.safetensors {size / MB:.2f} MB; v2 rewrites {changed / MB:.2f} MB of it "
          f"({100 * changed / size:.1f}%: encoder.layer.5.* and pooler.*); v1's full bundle "
          f"{full['size']:,} B")
    print(f"v2 added to the sender's store: {added:,} B (cas add new_stored_bytes, "
          f"{add['new_chunks']} new chunks); cas du new_stored {du_new:,} B; packs grew "
          f"{grew:,} B")
    print(f"{'':<34}{'bytes':>14}{'x add':>8}{'x du':>8}{'% of file':>11}")
    print(f"{'incremental bundle (the file)':<34}{bundle:>14,}{bundle / added:>8.3f}"
          f"{bundle / du_new:>8.3f}{100 * bundle / size:>10.2f}%")
    print(f"{'  of which transfer packs':<34}{inc['json']['bytes']:>14,}"
          f"{inc['json']['bytes'] / added:>8.3f}")
    print(f"bundle create: {inc['json']['objects']} objects, {inc['json']['registry_objects']} "
          f"registry objects, {inc['json']['prerequisites']} prerequisites, "
          f"{inc['wall']:.2f} s")
    imp = cas(site, "bundle", "import", str(base / "v2.cbundle"))
    out = base / "out"
    cas(site, "checkout", f"{name}@2", str(out))
    intact = same_file(out / "model.safetensors", v2 / "model.safetensors") and \
        version_verified(site, f"{name}@2")
    print(f"import at the site {imp['wall']:.2f} s; v2 checked out there "
          + ("byte-identical, verify clean" if intact else "DIFFERS or does not verify"))
    results.update({"real_added": added, "real_du_new_stored": du_new, "real_pack_growth": grew,
                    "real_bundle_bytes": bundle, "real_file_bytes": size,
                    "real_bundle_over_added": bundle / added,
                    "real_bundle_share_of_file": bundle / size})
    checks.append(("1. real model v2 imported from the incremental bundle is intact", intact,
                   True))
    checks.append(("1. incremental bundle of v2 <= 1.1x the bytes v2 added to the sender's "
                   "store", bundle <= 1.1 * added, True))
    checks.append(("1. incremental bundle of v2 <= 10% of the file", bundle <= 0.10 * size,
                   True))


# ---------------------------------------------------------------------------------------------
# the 1 GiB model


def big_model(work: Path, size: int) -> dict:
    """The synthetic bf16 v1 and v2 (``compare.build_synthetic``), a sender store holding v1,
    its full bundle, and a site that imported it (untimed setup)."""
    from compare import build_synthetic

    series = build_synthetic(work / "data", size)
    v1, v2 = (v["dir"] / "model.safetensors" for v in series["versions"])
    sender, site = init_store(work / "sender"), init_store(work / "site")
    name = "org/big"
    add = cas(sender, "add", name, str(v1.parent))
    full = work / "v1-full.cbundle"
    made = bundle_to(sender, site, full)
    imp = cas(site, "bundle", "import", str(full))
    print(f"{series['title']}: v1 {v1.stat().st_size / MB:.1f} MB added in {add['wall']:.2f} s, "
          f"stored {add['json']['new_stored_bytes'] / MB:.1f} MB; its full bundle "
          f"{made['size'] / MB:.1f} MB, created in {made['wall']:.2f} s, imported at the site in "
          f"{imp['wall']:.2f} s")
    return {"sender": sender, "site": site, "name": name, "v1": v1, "v2": v2, "full": full,
            "full_bytes": made["size"]}


# ---------------------------------------------------------------------------------------------
# 2. the 5%-changed v2


def section_changed(work: Path, big: dict, smoke: bool, results: dict,
                    checks: Checks) -> None:
    print("\n== 2. bundle of the 5%-changed v2 for a site holding v1 ==")
    sender, site, name, v2 = big["sender"], big["site"], big["name"], big["v2"]
    add = cas(sender, "add", name, str(v2.parent))["json"]
    du_new = du_new_stored(sender, name, 2)
    out = work / "v2.cbundle"
    inc = bundle_to(sender, site, out)
    size = v2.stat().st_size
    bundle = inc["size"]
    print(f"{'':<42}{'bytes':>16}{'% of file':>11}")
    for label, n in (("v2 file (what a whole-file copy carries)", size),
                     ("incremental bundle of v2 (the file)", bundle),
                     ("  of which transfer packs", inc["json"]["bytes"]),
                     ("v2 added to the sender (cas add)", add["new_stored_bytes"]),
                     ("v2 new_stored (cas du)", du_new),
                     ("full bundle of v1, for comparison", big["full_bytes"])):
        print(f"{label:<42}{n:>16,}{100 * n / size:>10.2f}%")
    print(f"bundle create {inc['wall']:.2f} s: {inc['json']['objects']} objects, "
          f"{inc['json']['prerequisites']} prerequisites; "
          f"{bundle / add['new_stored_bytes']:.3f}x what v2 added to the sender")
    imp = cas(site, "bundle", "import", str(out))
    intact = version_verified(site, f"{name}@2")
    print(f"import at the site {imp['wall']:.2f} s; verify {name}@2 there: "
          + ("clean" if intact else "FAILED"))
    results.update({"changed_bundle_bytes": bundle, "changed_file_bytes": size,
                    "changed_added": add["new_stored_bytes"],
                    "changed_bundle_share_of_file": bundle / size})
    checks.append(("2. the 5%-changed v2 imported from its bundle verifies clean", intact, True))
    checks.append(("2. bundle of the 5%-changed v2 <= 8% of the file", bundle <= 0.08 * size,
                   not smoke))


# ---------------------------------------------------------------------------------------------
# 3. import of the full bundle against verify


def section_import(work: Path, big: dict, runs: int, profile: bool, smoke: bool,
                   results: dict, checks: Checks) -> None:
    print("\n== 3. import of v1's full bundle into an empty store vs cas verify of v1 there ==")
    sender, name, full = big["sender"], big["name"], big["full"]
    spec = f"{name}@1"
    store, created, dest = work / "imported", work / "created.cbundle", work / "checkout"

    def empty_store() -> None:
        shutil.rmtree(store, ignore_errors=True)
        init_store(store)

    def import_() -> dict:
        return cas(store, "bundle", "import", str(full))

    def verify() -> dict:
        r = cas(store, "verify", spec, check=False)
        r["clean"] = bool(r["json"] and r["json"].get("ok"))
        return r

    def no_bundle() -> None:
        created.unlink(missing_ok=True)

    def no_dest() -> None:
        shutil.rmtree(dest, ignore_errors=True)

    def checkout() -> dict:
        return cas(store, "checkout", spec, str(dest))

    def create() -> dict:
        return cas(sender, "bundle", "create", str(created), name)

    # The first import is untimed: in the B/A runs verify goes first, in the store the
    # previous run's import made.
    empty_store()
    import_()
    got = alternated_ops(runs, {"import": (empty_store, import_),
                                "verify": (lambda: None, verify),
                                "create": (no_bundle, create),
                                "checkout": (no_dest, checkout)})
    t_imp, t_ver, t_cre = med(got["import"]), med(got["verify"]), med(got["create"])
    t_co = med(got["checkout"])
    rss = {k: max(r["maxrss"] for r in v) for k, v in got.items()}
    size = big["v1"].stat().st_size
    print(f"bundle {big['full_bytes'] / MB:.1f} MB for a {size / MB:.1f} MB file")
    print(f"{'(medians of ' + str(runs) + ')':<30}{'wall s':>8}{'x verify':>10}"
          f"{'MB/s of file':>14}{'peak RSS MB':>13}")
    for label, key, t in (("cas bundle import", "import", t_imp),
                          (f"cas verify {spec}", "verify", t_ver),
                          ("cas bundle create (full)", "create", t_cre),
                          (f"cas checkout {spec}", "checkout", t_co)):
        print(f"{label:<30}{t:>8.2f}{t / t_ver:>10.2f}{size / MB / t:>14.0f}"
              f"{rss[key] / MB:>13.0f}")
    print("runs: " + "; ".join(f"{k} " + ", ".join(f"{r['wall']:.2f}" for r in v)
                               for k, v in got.items()))
    last = got["import"][-1]["json"]
    print(f"import: {last['objects']} objects, {last['bytes']:,} B in {last['packs']} packs")
    clean = all(r["clean"] for r in got["verify"]) and version_verified(store, spec)
    ratio = t_imp / t_ver
    results.update({"import_s": t_imp, "verify_s": t_ver, "create_s": t_cre,
                    "checkout_s": t_co, "import_over_checkout": t_imp / t_co,
                    "import_over_verify": ratio, "create_over_verify": t_cre / t_ver,
                    "import_rss": rss["import"], "create_rss": rss["create"],
                    "verify_rss": rss["verify"]})
    checks.append((f"3. the imported store verifies {spec} clean", clean, True))
    checks.append((f"3. import of the full bundle <= 1.5x cas verify {spec}", ratio <= 1.5,
                   False))
    checks.append(("3. peak RSS of bundle create and import <= 150 MB",
                   max(rss["import"], rss["create"]) <= RSS_LIMIT, False))
    if profile or (ratio > 1.5 and not smoke):
        print("\nprofiles of the import and of the verify:")
        empty_store()
        print(profiled(store, ["bundle", "import", str(full)], work, "import"))
        print(profiled(store, ["verify", spec], work, "verify"))


# ---------------------------------------------------------------------------------------------
# the run


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big model")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sections", default="1,2,3")
    ap.add_argument("--profile", action="store_true",
                    help="print cProfiles of the full import and of the verify")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="everything tiny, one run, correctness asserted")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size_mib, args.runs = 32, 1
    sections = {int(s) for s in args.sections.split(",")}
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=args.workdir))
    results: dict = {}
    checks: Checks = []
    try:
        print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; command: "
              f"python benchmarks/bench_bundle.py "
              f"{shlex.join(argv if argv is not None else sys.argv[1:])}")
        if 1 in sections:
            section_real_model(work, results, checks)
        if sections & {2, 3}:
            print(f"\n== the {args.size_mib} MiB model ==")
            big = big_model(work, args.size_mib * MiB)
            if 3 in sections:
                section_import(work, big, args.runs, args.profile, args.smoke, results,
                               checks)
            if 2 in sections:
                section_changed(work, big, args.smoke, results, checks)
        print("\n" + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                 for k, v in results.items()}))
        for name, passed, _ in checks:
            print(f"{'PASS' if passed else 'FAIL'}: {name}")
        if args.smoke:
            failed = [n for n, passed, judged in checks if judged and not passed]
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
