"""Peer tools for ``benchmarks/compare.py``: installing them and driving them as child processes.

Every timed command goes through ``bench_local.spawn`` (a tiny launcher that measures wall time
and the wait4 peak RSS of the command and all its waited-for descendants), run with the tool's
working directory and environment. One "operation" (e.g. git-lfs ingest = ``git add -A`` +
``git commit``) may be several commands: its wall time is their sum, its peak RSS their max.

Installation (``ensure_installed``): Debian packages ``git git-lfs git-annex restic borgbackup``
with ``apt-get update`` + ``apt-get install -y`` when a binary is missing; DVC from PyPI into
its own virtualenv ``benchmarks/out/tools/dvc-venv``. A tool that cannot be installed is skipped.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_local import CAS, OUT_DIR, fsync_path, settle, spawn

TOOLS_DIR = OUT_DIR / "tools"
DVC_VENV = TOOLS_DIR / "dvc-venv"
PLOT_VENV = TOOLS_DIR / "plot-venv"

# binary -> Debian package
APT = {"git": "git", "git-lfs": "git-lfs", "git-annex": "git-annex", "restic": "restic",
       "borg": "borgbackup"}

# Environment shared by every tool command (set once in os.environ, inherited by the launcher).
def tool_env(work: Path) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        "GIT_TERMINAL_PROMPT": "0",
        "DVC_NO_ANALYTICS": "1",
        "RESTIC_PASSWORD": "bench",
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
        "BORG_BASE_DIR": str(work / "borg-base"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }


class ToolError(RuntimeError):
    pass


@contextmanager
def _in(cwd: Path | None, env: dict[str, str] | None):
    old_cwd = os.getcwd()
    saved = {k: os.environ.get(k) for k in (env or {})}
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.environ.update(env or {})
        yield
    finally:
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> dict:
    """Run one command through the measuring launcher; return its rusage dict (+stdout)."""
    exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
    if exe is None:
        raise ToolError(f"not found: {argv[0]}")
    with _in(cwd, env):
        ru, out, err = spawn([exe, *argv[1:]])
    ru["argv"] = [Path(argv[0]).name, *argv[1:]]
    ru["stdout"] = out
    if check and ru["rc"] != 0:
        raise ToolError(f"{' '.join(argv)} (cwd {cwd}) failed with {ru['rc']}:\n{out[-2000:]}\n"
                        f"{err[-4000:]}")
    return ru


def combine(ops: list[dict]) -> dict:
    """One operation made of several commands: summed times, max peak RSS."""
    return {
        "wall": sum(o["wall"] for o in ops),
        "maxrss": max(o["maxrss"] for o in ops),
        "utime": sum(o["utime"] for o in ops),
        "stime": sum(o["stime"] for o in ops),
        "cmds": [{"argv": o["argv"], "wall": o["wall"], "maxrss": o["maxrss"]} for o in ops],
    }


def timed(argvs: list[tuple[list[str], Path | None]], env: dict | None = None) -> dict:
    ops = []
    for argv, cwd in argvs:
        settle()
        ops.append(run(argv, cwd, env))
    out = combine(ops)
    out["stdout"] = ops[-1]["stdout"]
    return out


def tree_bytes(path: Path, skip: tuple[str, ...] = ()) -> int:
    """Apparent size (sum of st_size) of the regular files under ``path``; symlinks not followed."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if skip:
            dirnames[:] = [d for d in dirnames
                           if os.path.relpath(os.path.join(dirpath, d), path) not in skip]
        for f in filenames:
            st = os.lstat(os.path.join(dirpath, f))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def rmtree_force(path: Path) -> None:
    """rm -rf, also through git-annex's read-only object directories."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_file() or path.is_symlink():
        path.unlink()
        return

    def onerror(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, 0o755)
        except OSError:
            pass
        func(p)

    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            try:
                os.chmod(os.path.join(dirpath, d), 0o755)
            except OSError:
                pass
    shutil.rmtree(path, onerror=onerror)


def sync_workspace(src: Path, ws: Path, changed: list[str], removed: list[str]) -> None:
    """Make ``ws`` hold the files of version dir ``src`` (untimed): replace the changed files
    by fresh copies (new inode, new mtime; an annexed symlink is replaced by the file), delete
    the removed ones, leave unchanged files alone. Everything written is fsynced."""
    for rel in removed:
        p = ws / rel
        if p.exists() or p.is_symlink():
            p.unlink()
    for rel in changed:
        dst = ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        shutil.copyfile(src / rel, dst)
        fsync_path(dst)


# ---------------------------------------------------------------------------------------------
# installation


def _log_default(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _apt_install(pkgs: list[str], log) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None or not shutil.which("apt-get"):
        log(f"[install] cannot install {pkgs}: no apt-get or not root")
        return
    log(f"[install] apt-get update && apt-get install -y {' '.join(pkgs)}")
    r = subprocess.run([*prefix, "apt-get", "update", "-q"], env=env, capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        log(f"[install] apt-get update failed: {r.stderr[-500:]}")
    r = subprocess.run([*prefix, "apt-get", "install", "-y", "-q", *pkgs], env=env,
                       capture_output=True, text=True, check=False)
    if r.returncode == 0:
        return
    log(f"[install] apt-get install {pkgs} failed, trying one by one: {r.stderr[-500:]}")
    for p in pkgs:
        r = subprocess.run([*prefix, "apt-get", "install", "-y", "-q", p], env=env,
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            log(f"[install] apt-get install {p} failed: {r.stderr[-300:]}")


def _venv_install(venv: Path, pkgs: list[str], log) -> bool:
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"[install] python -m venv {venv}")
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            log(f"[install] venv failed: {r.stderr[-500:]}")
            return False
    log(f"[install] {venv.name}: pip install {' '.join(pkgs)}")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *pkgs], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        log(f"[install] pip install {pkgs} failed: {r.stderr[-800:]}")
        return False
    return True


def ensure_installed(install: bool = True, log=_log_default) -> dict[str, str]:
    """Install what is missing (if ``install``); return {tool: reason} for unavailable tools."""
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    missing = [pkg for b, pkg in APT.items() if not shutil.which(b)]
    if missing and install:
        _apt_install(missing, log)
    if install and not (DVC_VENV / "bin" / "dvc").exists():
        _venv_install(DVC_VENV, ["dvc"], log)
    unavailable = {}
    for tool in TOOLS:
        why = tool.missing()
        if why:
            unavailable[tool.name] = why
    return unavailable


def plot_python(install: bool = True, log=_log_default) -> str | None:
    """An interpreter that has matplotlib (and numpy): this one, else the suite's plot venv."""
    try:
        import matplotlib  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    py = PLOT_VENV / "bin" / "python"
    ok = py.exists() and subprocess.run([str(py), "-c", "import matplotlib, numpy"],
                                        capture_output=True, check=False).returncode == 0
    if not ok and install:
        ok = _venv_install(PLOT_VENV, ["matplotlib", "numpy"], log)
    return str(py) if ok else None


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"


def versions() -> dict[str, str]:
    out = {}
    for t in TOOLS:
        if not t.missing():
            out[t.name] = t.version()
    out["sha256sum"] = _first_line(["sha256sum", "--version"])
    out["cp"] = _first_line(["cp", "--version"])
    return out


# ---------------------------------------------------------------------------------------------
# tools


class Tool:
    """One tool driven over a version series in its own root directory."""

    name = "?"
    bins: tuple[str, ...] = ()
    #: how the restore is done, for the docs
    how = ""

    def __init__(self, root: Path, model: str) -> None:
        self.root = root
        self.model = model  # a name for the series (cas model name, tags)
        self.ws = root / "model"  # the workspace holding the current version's files
        self.n = 0

    @classmethod
    def missing(cls) -> str | None:
        for b in cls.bins:
            if not (os.path.isabs(b) and os.access(b, os.X_OK)) and not shutil.which(b):
                return f"{b} not installed"
        return None

    @classmethod
    def version(cls) -> str:
        return "?"

    def setup(self) -> None:  # untimed: create an empty repository
        self.root.mkdir(parents=True)
        self.ws.mkdir()

    def ingest(self) -> dict:  # timed: add + commit/backup the workspace's current content
        raise NotImplementedError

    def stored(self) -> dict:
        raise NotImplementedError

    def restore(self, dest: Path) -> tuple[dict, Path]:
        """Timed: restore the last version into the fresh directory ``dest``; return the
        operation and the directory that holds the version's files."""
        raise NotImplementedError


class Cas(Tool):
    name = "cas"
    bins = (CAS,)
    how = "`cas add NAME DIR`; restore: `cas checkout NAME DEST`"

    @classmethod
    def version(cls) -> str:
        return _first_line([CAS, "--version"])

    def setup(self) -> None:
        super().setup()
        self.store = self.root / "store"
        run([CAS, "init", str(self.store)])

    def ingest(self) -> dict:
        self.n += 1
        op = timed([([CAS, "--store", str(self.store), "--json", "add", self.model,
                      str(self.ws)], None)])
        op["json"] = _json_last(op.pop("stdout"))
        return op

    def stored(self) -> dict:
        settle()
        du = run([CAS, "--store", str(self.store), "--json", "du"])
        doc = _json_last(du["stdout"])
        return {"bytes": tree_bytes(self.store), "du_stored": doc.get("stored"),
                "du_logical": doc.get("logical"), "pack_bytes": doc.get("pack_bytes"),
                "packs_dir": tree_bytes(self.store / "packs"),
                "du_op": {"wall": du["wall"], "maxrss": du["maxrss"]}}

    def restore(self, dest: Path) -> tuple[dict, Path]:
        op = timed([([CAS, "--store", str(self.store), "--json", "checkout", self.model,
                      str(dest)], None)])
        op["json"] = _json_last(op.pop("stdout"))
        return op, dest


class GitLfs(Tool):
    name = "git-lfs"
    bins = ("git", "git-lfs")
    how = ("`git lfs track '*.safetensors'`; ingest `git add -A` + `git commit`; restore: "
           "`git worktree add --detach DEST HEAD` (a fresh worktree of the same repository, "
           "so the LFS objects are local; the smudge filter copies them out)")

    @classmethod
    def version(cls) -> str:
        return _first_line(["git", "lfs", "version"]) + "; " + _first_line(["git", "--version"])

    def setup(self) -> None:
        self.root.mkdir(parents=True)
        run(["git", "init", "-q", "-b", "main", str(self.root)])
        run(["git", "lfs", "install", "--local"], self.root)
        run(["git", "lfs", "track", "*.safetensors"], self.root)
        run(["git", "add", ".gitattributes"], self.root)
        run(["git", "commit", "-q", "-m", "init"], self.root)
        self.ws.mkdir()

    def ingest(self) -> dict:
        self.n += 1
        op = timed([(["git", "add", "-A"], self.root),
                    (["git", "commit", "-q", "-m", f"v{self.n}"], self.root)])
        op.pop("stdout")
        return op

    def stored(self) -> dict:
        lfs = tree_bytes(self.root / ".git" / "lfs" / "objects")
        objs = tree_bytes(self.root / ".git" / "objects")
        return {"bytes": lfs + objs, "lfs_objects": lfs, "git_objects": objs}

    def restore(self, dest: Path) -> tuple[dict, Path]:
        op = timed([(["git", "worktree", "add", "-q", "--detach", str(dest), "HEAD"],
                     self.root)])
        op.pop("stdout")
        return op, dest / "model"


class GitAnnex(Tool):
    name = "git-annex"
    bins = ("git", "git-annex")
    how = ("`git annex init`; ingest `git annex add .` + `git commit` (annex moves the file "
           "into .git/annex/objects and leaves a symlink); restore: `git clone REPO DEST` + "
           "`git annex get .` (local copy from the origin; files stay locked symlinks)")

    @classmethod
    def version(cls) -> str:
        return _first_line(["git", "annex", "version"])

    def setup(self) -> None:
        self.root.mkdir(parents=True)
        run(["git", "init", "-q", "-b", "main", str(self.root)])
        run(["git", "annex", "init", "-q", "bench"], self.root)
        self.ws.mkdir()

    def ingest(self) -> dict:
        self.n += 1
        op = timed([(["git", "annex", "add", "-q", "."], self.root),
                    (["git", "commit", "-q", "-m", f"v{self.n}"], self.root)])
        op.pop("stdout")
        return op

    def stored(self) -> dict:
        ann = tree_bytes(self.root / ".git" / "annex" / "objects")
        objs = tree_bytes(self.root / ".git" / "objects")
        return {"bytes": ann, "annex_objects": ann, "git_objects": objs}

    def restore(self, dest: Path) -> tuple[dict, Path]:
        op = timed([(["git", "clone", "-q", str(self.root), str(dest)], None),
                    (["git", "annex", "get", "-q", "."], dest)])
        op.pop("stdout")
        return op, dest / "model"


class Dvc(Tool):
    name = "dvc"
    bins = ("git", str(DVC_VENV / "bin" / "dvc"))
    how = ("git + `dvc init`; ingest `dvc add model` + `git add model.dvc .gitignore` + "
           "`git commit`; restore: `git clone REPO DEST` + `dvc cache dir --local CACHE` + "
           "`dvc checkout` (default cache.type reflink,copy: a copy unless the filesystem "
           "has reflinks)")
    DVC = str(DVC_VENV / "bin" / "dvc")

    @classmethod
    def version(cls) -> str:
        return "dvc " + _first_line([cls.DVC, "--version"])

    def setup(self) -> None:
        self.root.mkdir(parents=True)
        run(["git", "init", "-q", "-b", "main", str(self.root)])
        run([self.DVC, "init", "-q"], self.root)
        run(["git", "commit", "-q", "-m", "init"], self.root)
        self.ws.mkdir()

    def ingest(self) -> dict:
        self.n += 1
        op = timed([([self.DVC, "add", "-q", "model"], self.root),
                    (["git", "add", "model.dvc", ".gitignore"], self.root),
                    (["git", "commit", "-q", "-m", f"v{self.n}"], self.root)])
        op.pop("stdout")
        return op

    def stored(self) -> dict:
        return {"bytes": tree_bytes(self.root / ".dvc" / "cache")}

    def restore(self, dest: Path) -> tuple[dict, Path]:
        op = timed([(["git", "clone", "-q", str(self.root), str(dest)], None),
                    ([self.DVC, "cache", "dir", "--local", str(self.root / ".dvc" / "cache")],
                     dest),
                    ([self.DVC, "checkout", "-q"], dest)])
        op.pop("stdout")
        return op, dest / "model"


class Restic(Tool):
    name = "restic"
    bins = ("restic",)
    how = ("`restic init --repository-version 2` (zstd compression, default `auto` level); "
           "ingest `restic backup .` in the workspace; restore: `restic restore latest "
           "--target DEST`")

    @classmethod
    def version(cls) -> str:
        return _first_line(["restic", "version"])

    def setup(self) -> None:
        super().setup()
        self.repo = self.root / "repo"
        run(["restic", "-r", str(self.repo), "init", "-q", "--repository-version", "2"])

    def ingest(self) -> dict:
        self.n += 1
        op = timed([(["restic", "-r", str(self.repo), "backup", "-q", "--host", "bench", "."],
                     self.ws)])
        op.pop("stdout")
        return op

    def stored(self) -> dict:
        return {"bytes": tree_bytes(self.repo)}

    def restore(self, dest: Path) -> tuple[dict, Path]:
        op = timed([(["restic", "-r", str(self.repo), "restore", "-q", "latest", "--target",
                      str(dest)], None)])
        op.pop("stdout")
        return op, dest


class Borg(Tool):
    name = "borg"
    bins = ("borg",)
    how = ("`borg init -e none`; ingest `borg create --compression zstd,3 REPO::vN .` in the "
           "workspace; restore: `borg extract REPO::vN` in DEST")

    @classmethod
    def version(cls) -> str:
        return _first_line(["borg", "--version"])

    def setup(self) -> None:
        super().setup()
        self.repo = self.root / "repo"
        run(["borg", "init", "-e", "none", str(self.repo)])

    def ingest(self) -> dict:
        self.n += 1
        op = timed([(["borg", "create", "--compression", "zstd,3", f"{self.repo}::v{self.n}",
                      "."], self.ws)])
        op.pop("stdout")
        return op

    def stored(self) -> dict:
        return {"bytes": tree_bytes(self.repo)}

    def restore(self, dest: Path) -> tuple[dict, Path]:
        dest.mkdir(parents=True)
        op = timed([(["borg", "extract", f"{self.repo}::v{self.n}"], dest)])
        op.pop("stdout")
        return op, dest


TOOLS: list[type[Tool]] = [Cas, GitLfs, GitAnnex, Dvc, Restic, Borg]
PEERS = [t.name for t in TOOLS if t is not Cas]


def _json_last(stdout: str) -> dict:
    import json

    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
