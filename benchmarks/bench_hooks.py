"""cas-verify-files on a repository with 20 locked models of 100 MB each, nothing changed,
against ``git status`` of the same repository (target: at most 2x).

Builds, in a temp folder: a store with 20 models (each one 100 MB file: a random head and a
sparse zero tail, so that the store and the build stay cheap; the hook's work does not depend
on the bytes once its stat cache knows the files), a git repository that locks all 20 in
cas.lock and has them checked out under models/ (ignored by git, as they should be), plus a
few source files committed. The hook's cache is warmed by one run, then both commands are
timed (median of N runs, each a fresh process: the entry point, as pre-commit runs it).
``cas-verify-files`` is a shell script whose fast path compares one ``stat`` of the locked
files with the record the last full check left (no Python); ``cas-verify-files-full`` (the
Python check with its stat cache, what runs when anything changed) and ``python -c pass``
(the floor any Python hook pays) are printed beside it.

    python benchmarks/bench_hooks.py [--models 20] [--size-mb 100] [--runs 30] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path, env: dict[str, str], runs: int) -> float:
    """Median wall seconds of ``cmd`` over ``runs`` runs (after one untimed run)."""
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed: {r.stdout!r} {r.stderr!r}")
    return statistics.median(times)


def build(work: Path, models: int, size: int, env: dict[str, str]) -> Path:
    cas = [sys.executable, "-m", "cas.cli.main"]
    subprocess.run([*cas, "init", "-q"], env=env, check=True)
    repo = work / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for i in range(models):
        src = work / "src" / f"m{i:02d}"
        src.mkdir(parents=True)
        with open(src / "model.safetensors", "wb") as f:
            f.write(os.urandom(1 << 20))
            f.truncate(size)
        (src / "config.json").write_text(f'{{"model": {i}}}\n')
        subprocess.run([*cas, "add", f"bench/m{i:02d}", str(src), "-q"], env=env, check=True)
        subprocess.run([*cas, "lock", f"bench/m{i:02d}", "-q"], cwd=repo, env=env, check=True)
        shutil.rmtree(src)
    subprocess.run([*cas, "checkout", "--lock", "-q"], cwd=repo, env=env, check=True)
    (repo / ".gitignore").write_text("models/\n")
    for k in range(20):
        (repo / f"mod{k}.py").write_text(f"X = {k}\n")
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.email=b@example.invalid", "-c", "user.name=b",
                    "commit", "-qm", "code"], cwd=repo, check=True)
    # older than the racy margin, so the warm-up run may record every file in the cache
    past = time.time_ns() - 10 * 10**9
    for p in (repo / "models").rglob("*"):
        if p.is_file():
            os.utime(p, ns=(past, past))
    return repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="3 models of 4 MB, 5 runs")
    args = ap.parse_args()
    if args.smoke:
        args.models, args.size_mb, args.runs = 3, 4, 5
    hook = BIN / "cas-verify-files"
    if not hook.exists():
        sys.exit(f"{hook} is missing: install cas (pip install -e .) first")
    with tempfile.TemporaryDirectory(prefix="bench-hooks-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "CAS_HOME": str(work / "store")}
        t0 = time.perf_counter()
        repo = build(work, args.models, args.size_mb << 20, env)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = subprocess.run([str(hook)], cwd=repo, env=env, capture_output=True, text=True)
        cold = time.perf_counter() - t0
        if first.returncode != 0:
            sys.exit(f"cas-verify-files failed on an unchanged repository:\n{first.stdout}")
        # The shell fast path is recorded once every file is more than a second old (whole
        # seconds cannot tell a newer change apart): a repository checked out just now gets
        # it at the first check after that, as a user's next commit would.
        time.sleep(2.1)
        again = subprocess.run([str(hook)], cwd=repo, env=env, capture_output=True)
        fast = (repo / ".git/cas/verify-files.sh").exists() and again.returncode == 0
        hook_s = timed([str(hook)], repo, env, args.runs)
        full_s = timed([str(BIN / "cas-verify-files-full")], repo, env, args.runs)
        git_s = timed(["git", "status"], repo, env, args.runs)
        floor = timed([sys.executable, "-c", "pass"], repo, env, args.runs)
        floor_s = timed([sys.executable, "-S", "-c", "pass"], repo, env, args.runs)
        # the check must be real: one byte changed, same size and mtime, is caught
        victim = repo / "models/bench/m00/config.json"
        st = victim.stat()
        victim.write_bytes(b"X" + victim.read_bytes()[1:])
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        caught = subprocess.run([str(hook)], cwd=repo, env=env, capture_output=True).returncode
    total = args.models * args.size_mb
    print(f"repository: {args.models} locked models x {args.size_mb} MB = {total} MB "
          f"(built in {built:.0f} s); first run (hashes everything): {cold:.2f} s")
    print(f"{'command':<34} {'median ms':>10} {'x git status':>13}")
    print(f"shell fast path recorded: {'yes' if fast else 'NO'}")
    for name, s in [("cas-verify-files (nothing changed)", hook_s),
                    ("cas-verify-files-full (stat cache)", full_s), ("git status", git_s),
                    ("python -c pass (floor)", floor), ("python -S -c pass", floor_s)]:
        print(f"{name:<34} {s * 1000:>10.1f} {s / git_s:>13.2f}")
    print(f"ratio cas-verify-files / git status: {hook_s / git_s:.2f}x (target <= 2x); "
          f"above the interpreter floor: {(hook_s - floor) * 1000:.1f} ms")
    print(f"an edit of the same size and mtime is caught: {'yes' if caught == 1 else 'NO'}")
    if caught != 1 or not fast:
        sys.exit(1)


if __name__ == "__main__":
    main()
