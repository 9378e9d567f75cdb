#!/usr/bin/env python3
"""``cas push`` and ``cas pull`` against rsync, git and ssh measured in the same run.

Usage::

    python benchmarks/bench_sync.py [--size-mib 1024] [--models 200] [--runs 3]
                                    [--sections 1,2,3,4] [--profile] [--workdir DIR]
                                    [--keep] [--smoke]

A real OpenSSH server on a loopback port (``tests/sshd.py``: its own config, host key and
client key) serves every ssh remote; the far side runs this interpreter's cas. Every
command is a child process timed by ``bench_local.spawn`` (wall time, and the wait4 peak RSS of
the command and its waited-for children); the far ``cas serve`` of the big transfers runs
under a small wrapper that records its own child's ``ru_maxrss``. Inputs are written and
fsynced first and ``os.sync()`` runs before every timed command; the measured command and its
baseline alternate (A/B, then B/A); medians of ``--runs``.

Sections, with the targets (PASS/FAIL lines at the end):

1. The real model (all-MiniLM-L6-v2) v1 on a directory remote and an ssh remote; v2 (last
   encoder layer and pooler fine-tuned, ``cas.demo.finetune_copy``) added here, then pushed:
   bytes sent <= 1.1x the pack bytes v2 added to the local store, and <= 10% of the file.
   Printed for both remotes (the directory remote is the target), with the far store's own
   pack growth as an independent count.
2. First push of a 1 GiB bf16 safetensors model (``compare.build_synthetic`` v1) over ssh to a
   path where no store is: time <= 1.2x ``rsync --fsync -e SSH`` of the same file to the same
   filesystem through the same sshd. Printed with the carrier's ceiling: the file through the
   same ssh into ``cat >/dev/null``.
3. Pull of its v2 (5% of the tensors rewritten, a small tensor inserted first: later bytes
   shift) over ssh into a store that holds v1 (a copy of one, made untimed before each run):
   <= 0.5x the time of rsync updating v1's file to v2 (rsync's delta transfer; v1 copied to
   the target untimed first), and the pull plus ``cas checkout`` of v2 <= 1.0x of it. The pull
   must move only what v2 added (checked: a store without v1's content would time a full pull).
4. No-op push and no-op pull of a store with 200 models (``bench_gc.build_store``, 2 versions
   each) over ssh: each <= 2x ``git ls-remote`` over the same ssh of a bare repository with
   200 refs. Printed with their parts: one ssh connection (``ssh HOST true``), the start-up of
   the local cas (``cas --version``) and of the far one (``ssh HOST cas --version``), and the
   same no-ops on a one-model store (the fixed cost; the rest is per model).
5. (From sections 2 and 3.) Peak RSS of push, of pull and of the far ``cas serve`` <= 150 MB.

``--profile`` prints cProfiles of the client and of the far ``cas serve`` for the 1 GiB push
and the no-op push and pull; a failed time target prints its own. ``--smoke`` runs everything
tiny (32 MiB, 10 models, one run, section 1 on the directory remote only, no ssh ceiling and no
one-model store) in the test suite and asserts correctness only (what moved arrived intact
and no more moved than needed); time and RSS targets are printed, not judged.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (HERE, HERE.parent / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_local import MB, MiB, fsync_path, run_cas, settle, spawn  # noqa: E402

SSHD = "/usr/sbin/sshd"
RSS_LIMIT = 150 * MB

#: Runs the far command (argv after the output file) and appends its peak RSS to the file.
_RSS_WRAPPER = r"""
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(out, "a") as f:
    f.write(f"{ru.ru_maxrss * 1024}\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def missing_tools() -> list[str]:
    """What this benchmark needs and the machine lacks."""
    out = [] if os.access(SSHD, os.X_OK) else [SSHD]
    out += [t for t in ("ssh", "rsync", "git", "git-upload-pack") if not shutil.which(t)]
    return out


# ---------------------------------------------------------------------------------------------
# the ssh side


class Far:
    """The loopback sshd, the commands that reach it, and the far cas commands."""

    def __init__(self, work: Path) -> None:
        from sshd import Sshd

        root = work / "sshd"
        root.mkdir()
        try:  # sshd's privilege separation folder (Debian's package makes it)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        except OSError:
            pass  # sshd then says why it cannot start
        self.sshd = Sshd(root, work)
        self.ssh = self.sshd.ssh_command()
        self.dest = f"{self.sshd.user}@127.0.0.1"
        self.rsync_e = f"{self.ssh} -p {self.sshd.port}"
        self.cas = self.sshd.cas
        wrapper = work / "rss_wrapper.py"
        wrapper.write_text(_RSS_WRAPPER)
        self.rss_file = work / "far-rss.txt"
        py = shlex.quote(sys.executable)
        self.cas_rss = (f"{py} -I -S {shlex.quote(str(wrapper))} "
                        f"{shlex.quote(str(self.rss_file))} {self.cas}")
        self.profile_file = work / "far.prof"
        self.cas_profile = f"{py} -P -m cProfile -o {shlex.quote(str(self.profile_file))} " \
                           "-m cas.cli.main"

    def url(self, path: Path) -> str:
        return self.sshd.url(path)

    def ssh_argv(self, command: str) -> list[str]:
        return [*shlex.split(self.ssh), "-p", str(self.sshd.port), self.dest, command]

    def take_rss(self) -> int:
        """The largest peak RSS the wrapper recorded since the last call (0: none)."""
        try:
            lines = self.rss_file.read_text().split()
        except FileNotFoundError:
            return 0
        self.rss_file.unlink()
        return max((int(x) for x in lines), default=0)

    def stop(self) -> None:
        self.sshd.stop()


# ---------------------------------------------------------------------------------------------
# helpers


def cas(store: Path, *args: str, check: bool = True) -> dict:
    """``cas --store STORE --json ARGS`` as a timed child (``bench_local.run_cas``)."""
    return run_cas(["--store", str(store), "--json", *args], check=check)


def cmd(argv: list[str]) -> dict:
    """A timed child; its rusage dict with ``stdout``."""
    exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0]) or argv[0]
    ru, out, err = spawn([exe, *argv[1:]])
    if ru["rc"] != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({ru['rc']}):\n{out[-2000:]}\n"
                           f"{err[-2000:]}")
    return {**ru, "stdout": out}


def pack_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "packs").glob("pack-*.pack"))


def alternated(runs: int, ops: dict[str, Callable[[], dict]]) -> dict[str, list[dict]]:
    """Run each op ``runs`` times, the order reversed every other run; each op's results."""
    out: dict[str, list[dict]] = {k: [] for k in ops}
    names = list(ops)
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            settle()
            out[name].append(ops[name]())
    return out


def med(results: list[dict], key: str = "wall") -> float:
    return statistics.median(r[key] for r in results)


def profile_text(path: Path, top: int = 14) -> str:
    """A cProfile output file: the project's functions with the most cumulative time, then
    the functions with the most time of their own (waits on the other side show up as
    ``read``/``write`` of the pipe)."""
    import io

    out = []
    for key, restrict in (("cumulative", r"/cas/|/cli/cmd"), ("tottime", "")):
        buf = io.StringIO()
        stats = pstats.Stats(str(path), stream=buf).sort_stats(key)
        stats.print_stats(*([restrict] if restrict else []), top)
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
        if not out:
            out.append(next((ln for ln in lines if "function calls" in ln), "").strip())
        out += [f"by {key}:", *lines[start:]]
    return "\n".join(out)


def init_store(path: Path) -> Path:
    """A new store at ``path`` (untimed setup: through the library, no child process)."""
    from cas.store import Store

    Store.init(path).close()
    return path


def set_remote(store: Path, name: str, url: str, cas_command: str = "",
               replace: bool = False) -> None:
    """Configure remote ``name`` of ``store`` (``replace``: one of that name exists), as
    ``cas remote add`` does (untimed setup, through the library)."""
    from cas import remotes as rem
    from cas.store import Store

    with Store.open(store) as opened, opened.writing():
        if replace:
            rem.remove(opened.backend, name)
        rem.add(opened.backend, name, url, cas_command)


def profiled(far: Far, store: Path, remote: str, url: str, cas_command: str,
             args: list[str], work: Path) -> str:
    """cProfiles of ``cas ARGS`` (the client, in this store) and of its far ``cas serve``
    (remote ``remote`` at ``url`` is pointed at the profiling far command for the call, then
    back at ``cas_command``)."""
    client = work / "client.prof"
    far.profile_file.unlink(missing_ok=True)
    set_remote(store, remote, url, far.cas_profile, replace=True)
    try:
        ru, _, err = spawn([sys.executable, "-P", "-m", "cProfile", "-o", str(client), "-m",
                            "cas.cli.main", "--store", str(store), *args])
    finally:
        set_remote(store, remote, url, cas_command, replace=True)
    if ru["rc"] != 0:
        return f"(the profiled run failed: {err[-800:]})"
    text = f"client ({ru['wall']:.2f} s under the profiler):\n{profile_text(client)}"
    if far.profile_file.exists():
        text += f"\n\nfar cas serve:\n{profile_text(far.profile_file)}"
    return text


def alternated_ops(runs: int, ops: dict[str, tuple[Callable[[], None], Callable[[], dict]]]
                   ) -> dict[str, list[dict]]:
    """Like :func:`alternated` for ops made of an untimed ``prepare`` and a timed ``run``
    (``os.sync()`` between them)."""
    def timed(prepare: Callable[[], None], run: Callable[[], dict]) -> Callable[[], dict]:
        def op() -> dict:
            prepare()
            settle()
            return run()
        return op

    out: dict[str, list[dict]] = {k: [] for k in ops}
    names = list(ops)
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(timed(*ops[name])())
    return out


def same_file(a: Path, b: Path) -> bool:
    return filecmp.cmp(a, b, shallow=False)


def verified(store: Path) -> bool:
    doc = cas(store, "verify", "--all", check=False)["json"]
    return bool(doc and doc.get("ok"))


def rsync_stats(stdout: str) -> dict[str, int]:
    """``Literal data``, ``Matched data``, ``Total bytes sent`` / ``received`` of
    ``rsync --stats`` (bytes)."""
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("Literal data", "Matched data", "Total bytes sent",
                                   "Total bytes received"):
            digits = "".join(c for c in value.split("bytes")[0] if c.isdigit())
            out[key.strip()] = int(digits or 0)
    return out


Checks = list[tuple[str, bool, bool]]


# ---------------------------------------------------------------------------------------------
# 1. the real model's fine-tune


def section_real_model(far: Far, work: Path, smoke: bool, results: dict,
                       checks: Checks) -> None:
    print("\n== 1. push of the real model's v2 (last layer fine-tuned) to remotes holding v1 ==")
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
    store, dir_remote, ssh_remote = base / "store", base / "dir-remote", base / "ssh-remote"
    name = "org/minilm"
    init_store(store)
    # --smoke: the directory remote only (the ssh remote's push is the same exchange).
    remotes = [("usb", dir_remote, "directory")] + (
        [] if smoke else [("far", ssh_remote, "ssh")])
    set_remote(store, "usb", str(dir_remote))
    if not smoke:
        set_remote(store, "far", far.url(ssh_remote), far.cas)
    cas(store, "add", name, str(v1))
    for remote, _, _ in remotes:
        cas(store, "push", remote)
    before = pack_bytes(store)
    add = cas(store, "add", name, str(v2))["json"]
    added = pack_bytes(store) - before
    size = (v2 / "model.safetensors").stat().st_size
    print(f"model.safetensors {size / MB:.2f} MB; v2 rewrites {changed / MB:.2f} MB of it "
          f"({100 * changed / size:.1f}%: encoder.layer.5.* and pooler.*)")
    print(f"v2 added {added:,} B of packs to the local store (add says {add['new_chunks']} "
          f"new chunks, {add['new_stored_bytes']:,} B stored)")
    print(f"{'remote':<12}{'bytes sent':>14}{'far packs +':>14}{'x added':>9}"
          f"{'% of file':>11}{'objects':>9}{'wall s':>8}")
    for remote, path, label in remotes:
        grew = pack_bytes(path)
        r = cas(store, "push", remote)
        grew = pack_bytes(path) - grew
        sent = r["json"]["bytes_sent"]
        print(f"{label:<12}{sent:>14,}{grew:>14,}{sent / added:>9.3f}{100 * sent / size:>10.2f}%"
              f"{r['json']['objects_sent']:>9}{r['wall']:>8.2f}")
        results[f"real_{label}_bytes_sent"] = sent
        results[f"real_{label}_over_added"] = sent / added
        results[f"real_{label}_share_of_file"] = sent / size
    results["real_added"] = added
    out = base / "out"
    cas(dir_remote, "checkout", f"{name}@2", str(out))
    # --smoke: the byte-identical checkout is the check (verify --all of the remotes: full).
    intact = same_file(out / "model.safetensors", v2 / "model.safetensors") and (
        smoke or all(verified(path) for _, path, _ in remotes))
    print(f"v2 checked out of the directory remote {'byte-identical' if intact else 'DIFFERS'}"
          + ("" if smoke else "; verify --all of the remotes: "
             + ("clean" if intact else "see above")))
    checks.append(("1. real model v2 arrives intact on the remotes", intact, True))
    for _, _, label in remotes:
        tag = " (information)" if label == "ssh" else ""
        checks.append((f"1. push of v2 ({label}): bytes sent <= 1.1x bytes v2 added "
                       f"locally{tag}", results[f"real_{label}_over_added"] <= 1.1, False))
        checks.append((f"1. push of v2 ({label}): bytes sent <= 10% of the file{tag}",
                       results[f"real_{label}_share_of_file"] <= 0.10, False))


# ---------------------------------------------------------------------------------------------
# 2. first push of the big model


def section_first_push(far: Far, work: Path, big: dict, runs: int, profile: bool, smoke: bool,
                       results: dict, checks: Checks) -> None:
    print("\n== 2. first push of the big bf16 model over ssh vs rsync --fsync -e ssh ==")
    store, far_path, v1 = big["store"], big["far"], big["v1"]
    rsync_dir = work / "rsync-first"
    url = far.url(far_path)
    far.take_rss()

    def fresh_far() -> None:
        shutil.rmtree(far_path, ignore_errors=True)

    def push() -> dict:
        r = cas(store, "push", "first")
        r["far_rss"] = far.take_rss()
        return r

    def fresh_rsync() -> None:
        shutil.rmtree(rsync_dir, ignore_errors=True)
        rsync_dir.mkdir()

    def rsync() -> dict:
        return cmd(["rsync", "--fsync", "-e", far.rsync_e, str(v1), f"{far.dest}:{rsync_dir}/"])

    def pipe() -> dict:
        # The carrier's own ceiling: the file's bytes through the same ssh, thrown away.
        return cmd(["/bin/sh", "-c", f"{shlex.join(far.ssh_argv('cat > /dev/null'))} "
                                     f"< {shlex.quote(str(v1))}"])

    ops = {"push": (fresh_far, push), "rsync": (fresh_rsync, rsync)}
    if not smoke:
        ops["pipe"] = (lambda: None, pipe)
    got = alternated_ops(runs, ops)
    size = v1.stat().st_size
    sent = got["push"][-1]["json"]["bytes_sent"]
    t_push, t_rsync = med(got["push"]), med(got["rsync"])
    ratio = t_push / t_rsync
    print(f"file {size / MB:.1f} MB; cas sends {sent / MB:.1f} MB ({100 * sent / size:.1f}% "
          f"of it: stored as the local store holds it), rsync {size / MB:.1f} MB")
    print(f"{'(medians of ' + str(runs) + ')':<26}{'wall s':>8}{'x rsync':>9}"
          f"{'MB/s of file':>14}{'peak RSS MB':>13}{'far RSS MB':>12}")
    print(f"{'cas push (first)':<26}{t_push:>8.2f}{ratio:>9.2f}{size / MB / t_push:>14.0f}"
          f"{max(r['maxrss'] for r in got['push']) / MB:>13.0f}"
          f"{max(r['far_rss'] for r in got['push']) / MB:>12.0f}")
    print(f"{'rsync --fsync -e ssh':<26}{t_rsync:>8.2f}{1:>9.2f}{size / MB / t_rsync:>14.0f}"
          f"{max(r['maxrss'] for r in got['rsync']) / MB:>13.0f}")
    if "pipe" in got:
        t_pipe = results["ssh_pipe_s"] = med(got["pipe"])
        print(f"{'ssh HOST cat >/dev/null':<26}{t_pipe:>8.2f}{t_pipe / t_rsync:>9.2f}"
              f"{size / MB / t_pipe:>14.0f}   (the file through the same ssh, nothing "
              "written)")
    print("runs: " + "; ".join(f"{k} " + ", ".join(f"{r['wall']:.2f}" for r in v)
                               for k, v in got.items()))
    intact = verified(far_path) and same_file(rsync_dir / v1.name, v1)
    results.update({"first_push_s": t_push, "first_rsync_s": t_rsync,
                    "first_push_over_rsync": ratio, "first_push_bytes_sent": sent,
                    "push_rss": max(r["maxrss"] for r in got["push"]),
                    "push_far_rss": max(r["far_rss"] for r in got["push"])})
    checks.append(("2. the pushed store verifies clean, rsync's copy is identical", intact,
                   True))
    checks.append(("2. first push over ssh <= 1.2x rsync --fsync -e ssh", ratio <= 1.2, False))
    if profile or (ratio > 1.2 and not smoke):
        fresh_far()
        print("\nprofile of the first push:")
        print(profiled(far, store, "first", url, far.cas_rss, ["push", "first"], work))
        far.take_rss()


# ---------------------------------------------------------------------------------------------
# 3. pull of the 5%-changed v2


def section_pull(far: Far, work: Path, big: dict, runs: int, results: dict,
                 checks: Checks) -> None:
    print("\n== 3. pull of the 5%-changed v2 over ssh into a store holding v1 vs rsync's delta "
          "transfer ==")
    store, far_path, v1, v2 = big["store"], big["far"], big["v1"], big["v2"]
    name = big["name"]
    url = far.url(far_path)
    if not (far_path / "config.json").exists():
        cas(store, "push", "first")
    template, run_store, co = work / "pull-template", work / "pull-store", work / "pull-out"
    init_store(template)
    set_remote(template, "origin", url, far.cas_rss)
    base = cas(template, "pull", "origin")
    print(f"the store holding v1: pulled {base['json']['objects_sent']} objects, "
          f"{base['json']['bytes_sent']:,} B in {base['wall']:.2f} s")
    add = cas(store, "add", name, str(v2.parent))
    pushed = cas(store, "push", "first")["json"]
    far.take_rss()
    print(f"v2 {v2.stat().st_size / MB:.1f} MB: its add stored {add['json']['new_stored_bytes']:,}"
          f" B in {add['wall']:.2f} s; pushed to the far store: {pushed['bytes_sent']:,} B")
    rsync_target = work / "rsync-pull" / v1.name

    def fresh_store() -> None:
        shutil.rmtree(run_store, ignore_errors=True)
        shutil.rmtree(co, ignore_errors=True)
        shutil.copytree(template, run_store, symlinks=True)

    def pull() -> dict:
        p = cas(run_store, "pull", "origin")
        far_rss = far.take_rss()
        c = cas(run_store, "checkout", f"{name}@2", str(co))
        return {"wall": p["wall"] + c["wall"], "pull": p, "checkout": c, "far_rss": far_rss}

    def fresh_target() -> None:
        shutil.rmtree(rsync_target.parent, ignore_errors=True)
        rsync_target.parent.mkdir()
        shutil.copyfile(v1, rsync_target)
        fsync_path(rsync_target)

    def rsync() -> dict:
        r = cmd(["rsync", "--fsync", "--stats", "-e", far.rsync_e, f"{far.dest}:{v2}",
                 str(rsync_target)])
        r["stats"] = rsync_stats(r["stdout"])
        return r

    got = alternated_ops(runs, {"pull": (fresh_store, pull), "rsync": (fresh_target, rsync)})
    t_pull = statistics.median(r["pull"]["wall"] for r in got["pull"])
    t_co = statistics.median(r["checkout"]["wall"] for r in got["pull"])
    t_both = med(got["pull"])
    t_rsync = med(got["rsync"])
    doc = got["pull"][-1]["pull"]["json"]
    stats = got["rsync"][-1]["stats"]
    print(f"cas pull moves {doc['bytes_sent']:,} B ({doc['objects_sent']} objects, "
          f"{doc['objects_skipped']} already there); rsync: literal data "
          f"{stats.get('Literal data', 0):,} B, matched {stats.get('Matched data', 0):,} B, "
          f"received {stats.get('Total bytes received', 0):,} B")
    print(f"{'(medians of ' + str(runs) + ')':<26}{'wall s':>8}{'x rsync':>9}"
          f"{'peak RSS MB':>13}{'far RSS MB':>12}")
    for label, t, rss, far_rss in (
            ("cas pull", t_pull, max(r["pull"]["maxrss"] for r in got["pull"]),
             max(r["far_rss"] for r in got["pull"])),
            ("cas checkout", t_co, max(r["checkout"]["maxrss"] for r in got["pull"]), 0),
            ("pull + checkout", t_both, 0, 0),
            ("rsync --fsync -e ssh", t_rsync, max(r["maxrss"] for r in got["rsync"]), 0)):
        print(f"{label:<26}{t:>8.2f}{t / t_rsync:>9.2f}"
              + (f"{rss / MB:>13.0f}" if rss else f"{'':>13}")
              + (f"{far_rss / MB:>12.0f}" if far_rss else ""))
    print("runs: pull " + ", ".join(f"{r['pull']['wall']:.2f}" for r in got["pull"])
          + "; checkout " + ", ".join(f"{r['checkout']['wall']:.2f}" for r in got["pull"])
          + "; rsync " + ", ".join(f"{r['wall']:.2f}" for r in got["rsync"]))
    intact = same_file(co / v2.name, v2) and same_file(rsync_target, v2)
    results.update({"pull_s": t_pull, "pull_checkout_s": t_both, "pull_rsync_s": t_rsync,
                    "pull_over_rsync": t_pull / t_rsync,
                    "pull_checkout_over_rsync": t_both / t_rsync,
                    "pull_bytes_sent": doc["bytes_sent"],
                    "pull_rss": max(r["pull"]["maxrss"] for r in got["pull"]),
                    "pull_far_rss": max(r["far_rss"] for r in got["pull"]),
                    "checkout_rss": max(r["checkout"]["maxrss"] for r in got["pull"])})
    checks.append(("3. v2 checked out after the pull, and rsync's copy, are identical to v2",
                   intact, True))
    checks.append(("3. the pull moves only what v2 added (<= 1.1x what its push sent)",
                   0 < doc["bytes_sent"] <= 1.1 * pushed["bytes_sent"], True))
    checks.append(("3. pull of v2 <= 0.5x rsync's delta update", t_pull <= 0.5 * t_rsync,
                   False))
    checks.append(("3. pull + checkout of v2 <= 1.0x rsync's delta update", t_both <= t_rsync,
                   False))


# ---------------------------------------------------------------------------------------------
# 4. no-op push and pull of many models


def bare_repo(path: Path, refs: int) -> None:
    """A bare git repository with ``refs`` refs (each its own commit of the empty tree)."""
    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(["git", "--git-dir", str(path), *args], input=stdin,
                              capture_output=True, text=True, check=True).stdout.strip()

    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    empty = git("hash-object", "-t", "tree", "-w", "--stdin", stdin="")
    lines = []
    for i in range(refs):
        sha = git("commit-tree", empty, "-m", f"m{i:03d}")
        lines.append(f"create refs/heads/models/m{i:03d} {sha}")
    git("update-ref", "--stdin", stdin="\n".join(lines) + "\n")


def section_noop(far: Far, work: Path, models: int, runs: int, profile: bool, smoke: bool,
                 results: dict, checks: Checks) -> None:
    print(f"\n== 4. no-op push and pull of {models} models over ssh vs git ls-remote ==")
    from bench_gc import build_store

    git_repo = work / "git-many.git"
    stores = {}
    # --smoke: no one-model store and no start-up rows (the parts of the figure).
    for key, n in (("many", models), ("one", 1))[:1 if smoke else 2]:
        path = work / f"noop-{key}"
        build_store(path, n, 2, chunks=4, chunk_size=1024)
        url = far.url(work / f"far-{key}")
        set_remote(path, "far", url, far.cas)
        first = cas(path, "push", "far")
        stores[key] = (path, n, url)
        print(f"{n} model(s) x 2 versions: first push {first['wall']:.2f} s")
    bare_repo(git_repo, models)
    git_url = f"ssh://{far.dest}:{far.sshd.port}{git_repo}"

    def noop(verb: str, key: str) -> Callable[[], dict]:
        path, n, _ = stores[key]

        def run() -> dict:
            r = cas(path, verb, "far")
            refs = r["json"]["refs"]
            r["noop"] = (len(refs) == n and r["json"]["objects_sent"] == 0
                         and all(x["status"] == "up-to-date" for x in refs))
            return r
        return run

    def ls_remote() -> dict:
        r = cmd(["git", "ls-remote", git_url])
        r["refs"] = len(r["stdout"].splitlines())
        return r

    ops = {"ssh": lambda: cmd(far.ssh_argv("true")), "push": noop("push", "many"),
           "pull": noop("pull", "many"), "git": ls_remote}
    if not smoke:
        ops.update({"push1": noop("push", "one"), "pull1": noop("pull", "one"),
                    "local": lambda: run_cas(["--version"]),
                    "far": lambda: cmd(far.ssh_argv(f"{far.cas} --version"))})
    got = alternated(runs, ops)
    m = {k: med(v) for k, v in got.items()}
    rows = [("ssh HOST true (one connection)", "ssh"),
            (f"git ls-remote ({models} refs)", "git"),
            (f"cas push, {models} models, no-op", "push"),
            (f"cas pull, {models} models, no-op", "pull"),
            ("cas push, 1 model, no-op", "push1"),
            ("cas pull, 1 model, no-op", "pull1"),
            ("cas --version (local start-up)", "local"),
            ("ssh HOST cas --version", "far")]
    print(f"{'(medians of ' + str(runs) + ')':<34}{'wall s':>8}{'x git':>8}{'peak RSS MB':>13}")
    for label, key in rows:
        if key in m:
            print(f"{label:<34}{m[key]:>8.3f}{m[key] / m['git']:>8.2f}"
                  f"{max(r['maxrss'] for r in got[key]) / MB:>13.0f}")
    print(f"ssh connection setup {m['ssh']:.3f} s")
    results.update({"ssh_connect_s": m["ssh"], "ls_remote_s": m["git"],
                    "noop_push_s": m["push"], "noop_pull_s": m["pull"],
                    "noop_push_over_git": m["push"] / m["git"],
                    "noop_pull_over_git": m["pull"] / m["git"]})
    if not smoke:
        floor = m["local"] + m["far"]
        per_model = {v: (m[v] - m[v + "1"]) / max(1, models - 1) for v in ("push", "pull")}
        print(f"the two cas start-ups over ssh (local start-up + ssh HOST cas --version) "
              f"{floor:.3f} s = {floor / m['git']:.2f}x git ls-remote, before any work")
        print(f"each further model adds {1000 * per_model['push']:.1f} ms to a no-op push "
              f"and {1000 * per_model['pull']:.1f} ms to a no-op pull")
        results.update({"noop_push_one_s": m["push1"], "noop_pull_one_s": m["pull1"],
                        "noop_push_ms_per_model": 1000 * per_model["push"],
                        "noop_pull_ms_per_model": 1000 * per_model["pull"],
                        "cas_startup_s": m["local"], "far_startup_s": m["far"]})
    ok = all(r["noop"] for k in ("push", "pull", "push1", "pull1") if k in got
             for r in got[k]) and got["git"][-1]["refs"] == models
    checks.append(("4. no-op push and pull report every model up to date, nothing sent",
                   ok, True))
    checks.append(("4. no-op push <= 2x git ls-remote", m["push"] <= 2 * m["git"], False))
    checks.append(("4. no-op pull <= 2x git ls-remote", m["pull"] <= 2 * m["git"], False))
    path, _, url = stores["many"]
    for verb in ("push", "pull"):
        if profile or (not smoke and m[verb] > 2 * m["git"]):
            print(f"\nprofile of the no-op {verb} of {models} models:")
            print(profiled(far, path, "far", url, far.cas, [verb, "far"], work))


# ---------------------------------------------------------------------------------------------
# 5. memory, and the run


def section_rss(results: dict, checks: Checks) -> None:
    print("\n== 5. peak RSS (max over the runs of sections 2 and 3) ==")
    rows = [("cas push (client)", "push_rss"), ("far cas serve of the push", "push_far_rss"),
            ("cas pull (client)", "pull_rss"), ("far cas serve of the pull", "pull_far_rss"),
            ("cas checkout (information)", "checkout_rss")]
    for label, key in rows:
        if key in results:
            print(f"{label:<32}{results[key] / MB:>8.0f} MB")
    judged = [results[k] for _, k in rows[:4] if k in results]
    if judged:
        checks.append(("5. peak RSS of push, pull and the far cas serve <= 150 MB",
                       max(judged) <= RSS_LIMIT, False))


def big_model(far: Far, work: Path, size: int) -> dict:
    """The synthetic bf16 v1 and v2 (``compare.build_synthetic``) and a store holding v1,
    with remote ``first`` (where its first push goes, through the RSS-recording far cas)."""
    from compare import build_synthetic

    series = build_synthetic(work / "data", size)
    v1, v2 = (v["dir"] / "model.safetensors" for v in series["versions"])
    store = work / "store"
    name = "org/big"
    init_store(store)
    set_remote(store, "first", far.url(work / "far-first"), far.cas_rss)
    add = cas(store, "add", name, str(v1.parent))
    print(f"{series['title']}: v1 added in {add['wall']:.2f} s, stored "
          f"{add['json']['new_stored_bytes'] / MB:.1f} MB of {v1.stat().st_size / MB:.1f} MB "
          f"({100 * (1 - add['json']['new_stored_bytes'] / v1.stat().st_size):.0f}% smaller)")
    return {"store": store, "name": name, "v1": v1, "v2": v2, "far": work / "far-first"}


def versions_line() -> str:
    def first(argv: list[str]) -> str:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]

    return "; ".join([first(["ssh", "-V"]), first(["rsync", "--version"]),
                      first(["git", "--version"]), f"python {sys.version.split()[0]}"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big model")
    ap.add_argument("--models", type=int, default=200, help="models of the no-op store")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sections", default="1,2,3,4")
    ap.add_argument("--profile", action="store_true",
                    help="print cProfiles of the 1 GiB push and the no-op push")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="everything tiny, one run, correctness asserted")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size_mib, args.models, args.runs = 32, 10, 1
    missing = missing_tools()
    if missing:
        print(f"SKIP: this benchmark needs {', '.join(missing)}")
        return {"skipped": missing}
    sections = {int(s) for s in args.sections.split(",")}
    work = Path(tempfile.mkdtemp(prefix="bench-sync-", dir=args.workdir))
    results: dict = {}
    checks: Checks = []
    saved = {k: os.environ.get(k) for k in ("CAS_SSH", "GIT_SSH_COMMAND")}
    far = Far(work)
    try:
        os.environ["CAS_SSH"] = far.ssh
        os.environ["GIT_SSH_COMMAND"] = far.ssh
        print(f"loopback sshd on port {far.sshd.port}; {versions_line()}")
        print(f"command: python benchmarks/bench_sync.py "
              f"{shlex.join(argv if argv is not None else sys.argv[1:])}")
        if 1 in sections:
            section_real_model(far, work, args.smoke, results, checks)
        if sections & {2, 3}:
            big = big_model(far, work, args.size_mib * MiB)
            if 2 in sections:
                section_first_push(far, work, big, args.runs, args.profile, args.smoke,
                                   results, checks)
            if 3 in sections:
                section_pull(far, work, big, args.runs, results, checks)
        if 4 in sections:
            section_noop(far, work, args.models, args.runs, args.profile, args.smoke,
                         results, checks)
        section_rss(results, checks)
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
        far.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
