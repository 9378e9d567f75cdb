#!/usr/bin/env python3
"""git-lfs with ``cas lfs-agent`` against plain git-lfs, measured in the same run.

Usage::

    python benchmarks/bench_lfs.py [--versions 10] [--workdir DIR] [--keep] [--smoke]

Ten fine-tunes of the real model (all-MiniLM-L6-v2, ``model.safetensors`` about 90 MB; each
one rewrites one encoder layer of the previous, about 7 MB, with ``cas.demo.perturb_in_place``)
are committed one after another, and each commit is pushed, in two repositories that differ
only in where git-lfs puts the objects:

- **plain**: git-lfs's own ``file://`` remote (objects land whole in ``<bare>/lfs/objects``);
- **cas**: ``cas lfs install --remote DIR`` (objects go through ``cas lfs-agent`` into a cas
  store and a cas directory remote, chunked and deduplicated).

Targets (PASS/FAIL at the end):

1. after all versions, the cas remote (every file of it: packs, indexes, registry) holds
   <= 0.25x the bytes of the plain remote's ``lfs/objects``;
2. the ``git push`` of the last version grows the cas remote by <= 0.2x what it adds to the
   plain remote's ``lfs/objects`` (the bytes each push moves to a directory remote).

The git repositories themselves (commits and pointer files) are the same for both and are
printed for information. Correctness check: a fresh clone of the cas repository
(``cas lfs install`` + ``git lfs pull`` into a new store) gets the last version byte-identical.
git-lfs still keeps a whole copy of every version in each working repository's
``.git/lfs/objects``, with either transfer agent; that is printed too. ``--smoke`` uses three
versions (for a quick run of the whole path; the targets are printed, not judged).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
MB = 1_000_000


def tree_bytes(path: Path) -> int:
    """Apparent size of every regular file under ``path`` (0 if it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.stat(p).st_size
    return total


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        home = work / "home"
        home.mkdir(parents=True)
        self.env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
                    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
                    "GIT_COMMITTER_NAME": "bench",
                    "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
        self.env.pop("CAS_HOME", None)

    def run(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
        t0 = time.monotonic()
        proc = subprocess.run(argv, cwd=cwd, env=env or self.env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}")
        return time.monotonic() - t0

    def cas(self, store: Path, cwd: Path, *args: str) -> float:
        return self.run([sys.executable, "-m", "cas.cli.main", "--store", str(store), *args],
                        cwd)

    def repo(self, name: str, origin: str) -> Path:
        path = self.work / name
        path.mkdir()
        self.run(["git", "init", "-q", "-b", "main"], path)
        self.run(["git", "remote", "add", "origin", origin], path)
        self.run(["git", "lfs", "install", "--local"], path)
        self.run(["git", "lfs", "track", "*.safetensors"], path)
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--smoke", action="store_true", help="three versions, targets shown")
    args = parser.parse_args(argv)
    versions = 3 if args.smoke else args.versions
    for tool in ("git", "git-lfs"):
        if shutil.which(tool) is None:
            print(f"SKIP: {tool} is not installed (apt-get install git git-lfs)")
            return 0
    from cas.demo import perturb_in_place, real_model_dir, safetensors_layout

    try:
        src = real_model_dir() / "model.safetensors"
    except SystemExit as exc:
        print(f"SKIP: {exc}")
        return 0
    OUT_DIR.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-lfs-", dir=args.workdir or OUT_DIR))
    try:
        return run(Bench(work), src, versions, args.smoke, perturb_in_place,
                   safetensors_layout)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(b: Bench, src: Path, versions: int, smoke: bool, perturb, layout) -> int:  # noqa: ANN001
    work = b.work
    plain_bare, cas_bare = work / "plain.git", work / "cas.git"
    for bare in (plain_bare, cas_bare):
        b.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], work)
    store, remote = work / "store", work / "cas-remote"
    plain = b.repo("plain", plain_bare.as_uri())
    casrepo = b.repo("cas", str(cas_bare))
    b.cas(store, casrepo, "lfs", "install", "--remote", str(remote))

    _, header = layout(src)
    layers = sorted({".".join(k.split(".")[:3]) + "." for k in header
                     if k.startswith("encoder.layer.")})
    size = src.stat().st_size
    model = work / "model.safetensors"
    shutil.copyfile(src, model)
    print(f"model.safetensors {size / MB:.1f} MB, {versions} fine-tunes, each rewriting one "
          f"encoder layer of the previous ({len(layers)} layers)")
    print(f"{'v':>3}{'changed MB':>12}{'plain +MB':>11}{'cas +MB':>9}{'ratio':>7}"
          f"{'plain push s':>14}{'cas push s':>12}")
    grew: list[tuple[int, int]] = []
    for v in range(1, versions + 1):
        changed = perturb(model, [layers[(v - 1) % len(layers)]], seed=v)
        row = []
        for repo, measure in ((plain, plain_bare / "lfs"), (casrepo, remote)):
            shutil.copyfile(model, repo / "model.safetensors")
            b.run(["git", "add", "-A"], repo)
            b.run(["git", "commit", "-qm", f"fine-tune {v}"], repo)
            before = tree_bytes(measure)
            secs = b.run(["git", "push", "-q", "origin", "main"], repo)
            row.append((tree_bytes(measure) - before, secs))
        (pg, ps), (cg, cs) = row
        grew.append((pg, cg))
        print(f"{v:>3}{changed / MB:>12.2f}{pg / MB:>11.2f}{cg / MB:>9.2f}{cg / pg:>7.3f}"
              f"{ps:>14.2f}{cs:>12.2f}")

    plain_lfs, cas_remote = tree_bytes(plain_bare / "lfs"), tree_bytes(remote)
    held = cas_remote / plain_lfs
    last = grew[-1][1] / grew[-1][0]
    print(f"\nremote holdings after {versions} versions:")
    print(f"  plain git-lfs file:// remote, lfs/objects   {plain_lfs / MB:>9.1f} MB")
    print(f"  cas remote (packs, indexes, registry)       {cas_remote / MB:>9.1f} MB"
          f"   {held:.3f}x")
    plain_git = tree_bytes(plain_bare) - plain_lfs
    print(f"  git repositories (commits, pointers): plain {plain_git / MB:.2f} MB, "
          f"cas {tree_bytes(cas_bare) / MB:.2f} MB")
    own = [tree_bytes(r / ".git" / "lfs" / "objects") / MB for r in (plain, casrepo)]
    print(f"  local: cas store {tree_bytes(store) / MB:.1f} MB; git-lfs's own copies in "
          f".git/lfs/objects: plain {own[0]:.1f} MB, cas {own[1]:.1f} MB (whole files, "
          "either way)")
    print(f"git push of version {versions}: plain git-lfs moved {grew[-1][0] / MB:.2f} MB, "
          f"cas {grew[-1][1] / MB:.2f} MB   {last:.3f}x")

    clone = work / "clone"
    env = {**b.env, "GIT_LFS_SKIP_SMUDGE": "1"}
    b.run(["git", "clone", "-q", str(cas_bare), str(clone)], work, env)
    b.cas(work / "store2", clone, "lfs", "install", "--remote", str(remote))
    secs = b.run(["git", "lfs", "pull"], clone, env)
    intact = _same(clone / "model.safetensors", model)
    print(f"fresh clone + cas lfs install + git lfs pull: {secs:.2f} s, version {versions} "
          + ("byte-identical" if intact else "DIFFERS"))

    checks = [(f"cas remote <= 0.25x the plain git-lfs remote ({held:.3f}x)", held <= 0.25),
              (f"git push of version {versions} moves <= 0.2x plain git-lfs ({last:.3f}x)",
               last <= 0.2),
              ("clone gets the last version byte-identical", intact)]
    failed = False
    for text, ok in checks:
        judged = not smoke or "clone" in text
        print(f"{'PASS' if ok else 'FAIL'}{'' if judged else ' (not judged: --smoke)'}: {text}")
        failed |= judged and not ok
    return 1 if failed else 0


def _same(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


if __name__ == "__main__":
    sys.exit(main())
