"""git-lfs objects in a cas store: registration, lookup by oid, and the transfer agent.

An LFS object (a file git-lfs names by the SHA-256 of its bytes, its *oid*) is one version of
a model named after the git repository (``lfs/<repo>`` by default): the version holds one
file whose path is the oid, chunked and deduplicated like any other file, so ten fine-tunes
of one model share their unchanged chunks. The version carries the tag ``sha256-<oid>``:

- the tag is the **oid index**: finding an object is one ref read
  (``refs/tags/<model>@sha256-<oid>``), one tag object, the add commit and the model's tip
  tree; no manifest is scanned, whatever the number of objects;
- the tag **keeps the object alive**: tagged versions are roots of the object graph for
  ``gc``, are kept by every retention policy, and ``rm`` refuses them without ``--force``;
  eviction may drop the content of a version that a remote holds (it stays registered,
  absent), and the agent fetches it back from the remote when git-lfs asks for it;
- the tag travels with push and pull like any tag, so a clone that pulls the model finds
  every object by oid.

A lookup trusts nothing it reads: the version's file must be named by the oid, have the
size git-lfs expects and the SHA-256 that is the oid; every chunk is verified as it is read
and the whole file's SHA-256 at the end, before the agent reports the download complete.

The agent speaks git-lfs's custom transfer protocol (``docs/custom-transfers.md`` of
git-lfs): JSON lines on stdin/stdout (``init``, ``upload``, ``download``, ``terminate``;
``progress`` and ``complete`` events). A failure of one object is reported in that object's
``complete`` event (``error.code`` is the cas exit code, ``error.message`` starts with the
cas error code) and the agent goes on with the next request.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from cas import presence
from cas.errors import (
    ArgsError,
    CasError,
    ConflictError,
    NotFoundError,
    VerifyError,
    from_os_error,
)
from cas.format.manifest import FileEntry
from cas.names import validate_model_name
from cas.registry import TAG_REF_PREFIX
from cas.store import Store
from cas.versions import Version

#: Tags that index LFS objects: ``sha256-<oid>``.
TAG_PREFIX = "sha256-"
#: Models named after repositories start with this.
MODEL_PREFIX = "lfs/"
#: The name under which ``cas lfs install`` registers the agent with git-lfs.
AGENT_NAME = "cas"

_OID = re.compile(r"[0-9a-f]{64}\Z")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

#: ``(bytes_so_far, bytes_since_last)`` for one object.
ObjectProgress = Callable[[int, int], None]


def check_oid(oid: object) -> str:
    """``oid`` if it is an LFS oid (64 lowercase hex: a SHA-256).

    Raises:
        ArgsError: anything else (a path, a short or uppercase hash, not a string).
    """
    if not isinstance(oid, str) or not _OID.match(oid):
        raise ArgsError(f"LFS oid {oid!r}: not 64 lowercase hex characters")
    return oid


def oid_tag(oid: str) -> str:
    """The tag that indexes LFS object ``oid``."""
    return TAG_PREFIX + check_oid(oid)


class UploadResult(msgspec.Struct):
    """What storing one object did."""

    oid: str
    model: str
    seq: int
    #: False when the store held the object already.
    created: bool
    new_stored_bytes: int = 0
    #: Bytes the push sent to the remote (0 without a remote or when it held them).
    bytes_sent: int = 0


class LfsObjects:
    """The LFS objects of one model in ``store``, optionally backed by ``remote`` (a
    configured remote name or a URL) for uploads and for objects this store lacks."""

    def __init__(self, store: Store, model: str, remote: str | None = None) -> None:
        self.store = store
        self.model = validate_model_name(model)
        self.remote = remote or None

    # -- lookup ----------------------------------------------------------------------------------

    def find(self, oid: str) -> Version | None:
        """The live version that holds object ``oid`` here (None: not registered here).

        One ref read, one tag object, one commit and the model's tip tree; no manifest is
        read and no history walked.

        Raises:
            SchemaError: the tag or its objects are damaged.
        """
        reg = self.store.registry
        ref = f"{TAG_REF_PREFIX.decode()}{self.model}@{oid_tag(oid)}".encode()
        try:
            sha = reg.repo.refs[ref]
        except KeyError:
            return None
        commit, _message = reg.read_annotated(sha, "tag")
        version = reg.version_of_commit(self.model, commit)
        head = reg.head(self.model)
        if head is None or version.seq not in reg.commit_versions(head.decode()):
            return None  # removed (with --force): as good as absent
        return version

    def entry(self, version: Version, oid: str, size: int | None) -> FileEntry:
        """The file of ``version`` that is object ``oid``, checked against the oid.

        Raises:
            VerifyError: the version does not hold exactly that object (a damaged or crafted
                registry): its file is missing, has another SHA-256, or another size.
        """
        files = self.store.manifest(version).files
        if len(files) != 1 or files[0].path != oid:
            raise VerifyError(f"{version.ref} (tag {oid_tag(oid)}) does not hold the single "
                              f"file {oid}")
        entry = files[0]
        if entry.sha256 != oid:
            raise VerifyError(f"{version.ref}: file {oid} has SHA-256 {entry.sha256}")
        if size is not None and entry.size != size:
            raise VerifyError(f"{version.ref}: object {oid} has {entry.size} bytes, git-lfs "
                              f"expects {size}")
        return entry

    def _absent(self, version: Version) -> bool:
        return version.id in presence.load(self.store.backend)

    # -- upload ----------------------------------------------------------------------------------

    def upload(self, oid: str, size: int, path: Path,
               progress: ObjectProgress | None = None) -> UploadResult:
        """Store the file ``path`` as object ``oid`` (nothing to do if it is here) and, with a
        remote, push it there. Idempotent.

        Raises:
            ArgsError: a bad oid, or ``path`` is not a file of ``size`` bytes.
            VerifyError: the file's SHA-256 is not ``oid`` (nothing stays registered).
            NotFoundError | NetError | ConflictError: the remote did not take it.
        """
        check_oid(oid)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise from_os_error(exc, str(path)) from None
        if st.st_size != size:
            raise ArgsError(f"{path}: {st.st_size} bytes, git-lfs says object {oid} has {size}")
        version = self.find(oid)
        result = UploadResult(oid, self.model, version.seq if version else 0, False)
        if version is None:
            result = self._add(oid, path, progress)
        elif progress is not None:
            progress(size, size)
        if self.remote:
            result.bytes_sent = self._push(oid)
        return result

    def _add(self, oid: str, path: Path, progress: ObjectProgress | None) -> UploadResult:
        from cas.ingest import AddOptions

        done = [0]

        def on_progress(n: int, _total: int, _label: str) -> None:
            if progress is not None and n > done[0]:
                progress(n, n - done[0])
                done[0] = n

        tag = oid_tag(oid)
        with _named_as(path, oid) as named:
            added = self.store.add(self.model, named, AddOptions(
                message=f"git-lfs object {oid}", tags=[tag], source=f"git-lfs:{oid}"),
                on_progress)
        version = self.store.resolve(f"{self.model}@{added.seq}")
        files = self.store.manifest(version).files
        if len(files) != 1 or files[0].sha256 != oid:
            got = files[0].sha256 if len(files) == 1 else f"{len(files)} files"
            if added.created:
                self.store.rm(version.ref, force=True,
                              message=f"git-lfs object {oid} did not hash to its oid")
            raise VerifyError(f"{path}: SHA-256 {got}, not the LFS oid {oid}; not stored")
        if files[0].path != oid:
            raise VerifyError(f"{path}: registered as {files[0].path!r}, not {oid}")
        if tag not in added.tags:
            raise ConflictError(f"{version.ref}: the tag {tag} could not be set "
                                + "; ".join(w.message for w in added.warnings))
        return UploadResult(oid, self.model, added.seq, added.created,
                            added.new_stored_bytes)

    def _push(self, oid: str) -> int:
        """Push the object's version (its content only) to the remote; when the model moved
        there meanwhile (another clone pushed objects), replay this store's versions on the
        remote's (pull --rebase, registry only) and push again. Returns the bytes sent."""
        from cas import sync

        spec = f"{self.model}@{oid_tag(oid)}"
        assert self.remote is not None
        result = sync.push(self.store, self.remote, [spec])
        if self._refused(result.rejected, oid):
            sync.pull(self.store, self.remote, [self.model], content=False, rebase=True)
            result = sync.push(self.store, self.remote, [spec])
            refused = self._refused(result.rejected, oid)
            if refused:
                raise ConflictError(f"remote {self.remote} refused {refused[0].ref}: "
                                    f"{refused[0].reason}")
        return result.bytes_sent

    def _refused(self, rejected: list[Any], oid: str) -> list[Any]:
        """The rejections that matter: the remote holding a tag for this oid already (another
        clone uploaded the same object) is as good as success."""
        mine = f"{TAG_REF_PREFIX.decode()}{self.model}@{oid_tag(oid)}"
        return [r for r in rejected if r.ref != mine]

    # -- download --------------------------------------------------------------------------------

    def download(self, oid: str, size: int | None, dest_dir: Path,
                 progress: ObjectProgress | None = None) -> Path:
        """Write object ``oid`` to a new file in ``dest_dir`` and return its path: from this
        store, else (with a remote) from the remote, which it registers here. Every chunk is
        verified before it is written and the whole file's SHA-256 (the oid) before this
        returns; on any failure the file is removed.

        Raises:
            NotFoundError: neither this store nor the remote has the object.
            VerifyError: the stored or received bytes are damaged.
        """
        check_oid(oid)
        version = self.find(oid)
        if version is None and self.remote:
            version = self._pull(oid)
        if version is None:
            raise NotFoundError(f"LFS object {oid} is not in model {self.model} of this store"
                                + (" (cas lfs install --remote R names where to fetch it)"
                                   if not self.remote else ""))
        entry = self.entry(version, oid, size)
        if self.remote and self._absent(version):
            self._get(version)
        try:
            return self._write(version, entry, dest_dir, progress)
        except NotFoundError:
            if not self.remote:
                raise
            self._get(version)  # a chunk gone without a record (evicted): fetch and retry
            return self._write(version, entry, dest_dir, progress)

    def _pull(self, oid: str) -> Version | None:
        from cas import sync

        assert self.remote is not None
        try:
            sync.pull(self.store, self.remote, [f"{self.model}@{oid_tag(oid)}"], rebase=True)
        except NotFoundError as exc:
            raise NotFoundError(f"LFS object {oid} is neither here nor on remote "
                                f"{self.remote} ({exc.message})") from None
        return self.find(oid)

    def _get(self, version: Version) -> None:
        from cas import sync

        sync.get(self.store, version, self.remote)

    def _write(self, version: Version, entry: FileEntry, dest_dir: Path,
               progress: ObjectProgress | None) -> Path:
        from cas.cat import iter_file

        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"cas-{entry.sha256[:16]}-", dir=dest_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                done = 0
                for block in iter_file(self.store, version, entry.path):
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, len(block))
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path


@contextlib.contextmanager
def _named_as(path: Path, oid: str) -> Iterator[Path]:
    """``path`` under the name ``oid`` (the file's path in its version): itself when git-lfs
    named it so (``.git/lfs/objects/..../<oid>``), else a hard link (or, across filesystems,
    a copy) in a temp folder, removed afterwards."""
    if path.name == oid:
        yield path
        return
    for parent in (path.parent, None):
        try:
            folder = Path(tempfile.mkdtemp(prefix=".cas-lfs-", dir=parent))
        except OSError:
            continue
        try:
            try:
                os.link(path, folder / oid)
            except OSError:
                shutil.copyfile(path, folder / oid)
            yield folder / oid
            return
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    raise ArgsError(f"{path}: no temp folder to name it {oid}")


# -- the transfer agent --------------------------------------------------------------------------


def error_doc(exc: BaseException) -> dict[str, Any]:
    """The protocol's error form for ``exc``: ``{"code": N, "message": "E_X: ..."}``."""
    if isinstance(exc, CasError):
        return {"code": exc.exit_code, "message": f"{exc.code}: {exc.message}"}
    if isinstance(exc, OSError):
        err = from_os_error(exc, exc.filename or "")
        return {"code": err.exit_code, "message": f"{err.code}: {err.message}"}
    return {"code": 70, "message": f"E_BUG: {type(exc).__name__}: {exc}"}


class AgentStats(msgspec.Struct):
    """What one agent run did."""

    operation: str = ""
    uploaded: int = 0
    downloaded: int = 0
    failed: int = 0
    bytes_sent: int = 0


def run_agent(open_objects: Callable[[], LfsObjects], stdin: IO[str], stdout: IO[str],
              tmp_dir: Callable[[], Path]) -> AgentStats:
    """Serve git-lfs's custom transfer protocol on ``stdin``/``stdout`` until ``terminate``
    or end of input. ``open_objects`` is called at ``init`` (its failure is the init error);
    ``tmp_dir`` gives the folder downloads are written to (git-lfs renames them into its own
    storage, so it should be on the same filesystem as ``.git/lfs``).

    A request that fails is answered with its ``complete`` event carrying an error; only a
    malformed protocol line ends the run (ArgsError), as git-lfs expects of a fatal error.
    """
    stats = AgentStats()
    objects: LfsObjects | None = None

    def send(doc: dict[str, Any]) -> None:
        stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
        stdout.flush()

    for line in stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            raise ArgsError(f"git-lfs sent a line that is not JSON: {line[:80]!r}") from None
        if not isinstance(msg, dict):
            raise ArgsError(f"git-lfs sent a JSON value that is not an object: {line[:80]!r}")
        event = msg.get("event")
        if event == "terminate":
            break
        if event == "init":
            stats.operation = str(msg.get("operation", ""))
            try:
                objects = open_objects()
            except Exception as exc:  # noqa: BLE001 - reported to git-lfs, which shows it
                send({"error": error_doc(exc)})
                continue
            send({})
            continue
        if event not in ("upload", "download"):
            raise ArgsError(f"git-lfs sent an unknown event {event!r}")
        oid = msg.get("oid")
        if objects is None:
            send({"event": "complete", "oid": oid,
                  "error": {"code": 1, "message": "E_ARGS: no successful init"}})
            stats.failed += 1
            continue

        def progress(so_far: int, since: int, oid: Any = oid) -> None:
            send({"event": "progress", "oid": oid, "bytesSoFar": so_far,
                  "bytesSinceLast": since})

        try:
            check_oid(oid)
            size = msg.get("size")
            if size is not None and (not isinstance(size, int) or size < 0):
                raise ArgsError(f"object {oid}: bad size {size!r}")
            if event == "upload":
                path = msg.get("path")
                if not isinstance(path, str) or not path:
                    raise ArgsError(f"object {oid}: no path to read")
                up = objects.upload(oid, size if size is not None else os.stat(path).st_size,
                                    Path(path), progress)
                stats.uploaded += 1
                stats.bytes_sent += up.bytes_sent
                send({"event": "complete", "oid": oid})
            else:
                written = objects.download(oid, size, tmp_dir(), progress)
                stats.downloaded += 1
                send({"event": "complete", "oid": oid, "path": str(written)})
        except Exception as exc:  # noqa: BLE001 - one object's failure is its own answer
            stats.failed += 1
            send({"event": "complete", "oid": oid, "error": error_doc(exc)})
    return stats


def lfs_tmp_dir(cwd: Path | None = None) -> Path:
    """``<git common dir>/lfs/tmp`` of the repository git-lfs runs the agent in (downloads
    are renamed from there into ``.git/lfs/objects``), else the system temp folder."""
    try:
        out = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=cwd,
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return Path(tempfile.gettempdir())
    return (Path(cwd or Path.cwd()) / out / "lfs" / "tmp").absolute()


# -- installing the agent into a repository ------------------------------------------------------


class InstallResult(msgspec.Struct):
    """The git configuration ``cas lfs install`` wrote."""

    scope: str
    #: "" for the global scope: the agent then names the model after each repository.
    model: str
    remote: str
    store: str
    #: key -> value, as written.
    config: dict[str, str]


def _git(args: list[str], cwd: Path) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise NotFoundError("git is not installed (cas lfs needs git and git-lfs)") from None
    if proc.returncode != 0:
        raise ArgsError(f"git {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc.stdout.strip()


def default_model(repo: Path) -> str:
    """``lfs/<name>``: the last part of the ``origin`` remote's URL without ``.git`` (the same
    in every clone), else the name of the repository's top folder."""
    try:
        url = _git(["config", "--get", "remote.origin.url"], repo)
    except ArgsError:
        url = ""
    base = url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1] if url else ""
    if base.endswith(".git"):
        base = base[:-4]
    if not base:
        base = Path(_git(["rev-parse", "--show-toplevel"], repo)).name
    name = _NAME_CHARS.sub("-", base).strip("-._") or "repo"
    return validate_model_name(MODEL_PREFIX + name[:150])


def install(repo: Path, command: list[str], *, store: Path, model: str | None,
            remote: str | None, scope: str = "local") -> InstallResult:
    """Configure git-lfs in ``repo`` (``scope`` ``local``) or for the user (``global``) to use
    ``command`` + ``lfs-agent`` as its standalone transfer agent, and run
    ``git lfs install`` in the same scope (filters and hooks). ``remote``: a configured
    remote name of ``store`` is kept as a name; a path is made absolute.

    Raises:
        ArgsError: not in a git repository (local scope), a bad model name or remote.
        NotFoundError: git or git-lfs is not installed.
    """
    from cas import remotes

    if scope not in ("local", "global"):
        raise ArgsError(f"scope {scope!r}: local or global")
    if scope == "local":
        _git(["rev-parse", "--git-dir"], repo)
    if model:
        model = validate_model_name(model)
    elif scope == "local":
        model = default_model(repo)
    if remote:
        configured = remotes.load(Store.open(store).backend) if (store / "config.json"
                                                                 ).exists() else {}
        if remote not in configured:
            remote = remotes.parse_url(remote, repo).url
    # Without a model (global scope), the agent names it after the repository it runs in.
    args = [*command[1:], "lfs-agent", "--store", str(store)] + (["--model", model]
                                                                  if model else [])
    if remote:
        args += ["--remote", remote]
    config = {
        "lfs.standalonetransferagent": AGENT_NAME,
        f"lfs.customtransfer.{AGENT_NAME}.path": command[0],
        f"lfs.customtransfer.{AGENT_NAME}.args": shlex.join(args),
        # One agent process: cas serialises writers under its store lock anyway, and one
        # process keeps the uploads of a push in order.
        f"lfs.customtransfer.{AGENT_NAME}.concurrent": "false",
    }
    try:
        # git-lfs's own default scope is the user's (it has no --global flag).
        proc = subprocess.run(["git", "lfs", "install"] + (["--local"] if scope == "local"
                                                           else []),
                              cwd=repo, capture_output=True, text=True)
    except FileNotFoundError:
        raise NotFoundError("git is not installed (cas lfs needs git and git-lfs)") from None
    if proc.returncode != 0:
        raise NotFoundError(f"git lfs install failed (is git-lfs installed?): "
                            f"{proc.stderr.strip()}")
    for key, value in config.items():
        _git(["config", f"--{scope}", key, value], repo)
    return InstallResult(scope, model or "", remote or "", str(store), config)
