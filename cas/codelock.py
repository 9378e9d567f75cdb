"""cas.lock: the model versions a code repository uses, in a small JSON file at its root.

``cas lock NAME[@V]`` records a version there; ``cas checkout --lock`` materialises every
recorded model at its path; the pre-commit hooks check the file (``cas-verify-lock``) and the
working tree against it (``cas-verify-files``); the pre-push hook sends the content it names to
the cas remote (:mod:`cas.prepush`). Layout in ``docs/format.md``, "cas.lock".

This is a file of the code repository, not of the store, and has nothing to do with the
store's writer lock (:mod:`cas.locking`, ``E_LOCK``): a bad cas.lock is ``E_SCHEMA`` (a field
is wrong) or ``E_FORMAT`` (written by a newer cas), never ``E_LOCK``.

Invariants of a file this module writes (and checks on read):

- ``format`` is ``"cas.lock"`` and ``version`` one this build knows;
- each model has a valid name, a version id (:func:`cas.versions.is_version_id`), a
  sequence number >= 1, a checkout path that is a safe relative path (no ``..``, no
  ``.git``); no model's path is another's or lies inside another's;
- each file has a safe relative path (unique within its model, also up to case), a size
  >= 0 and a 64-hex SHA-256;
- models are written sorted by path, files by path, one file per line, so that a diff shows
  one line per changed file.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.errors import (
    ArgsError,
    CasError,
    CasWarning,
    FormatError,
    NotFoundError,
    SchemaError,
    VerifyError,
    from_os_error,
)
from cas.names import check_unique_paths, validate_model_name, validate_rel_path

if TYPE_CHECKING:
    from cas.format.manifest import Manifest
    from cas.registry import Version
    from cas.store import Progress, Store

FILE_NAME = "cas.lock"
FORMAT = "cas.lock"
VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
#: Where ``cas lock NAME`` puts a model that has no ``--path`` and is not locked yet.
DEFAULT_DIR = "models"


class LockedFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    size: int
    sha256: str


class LockedModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: Checkout path, relative to the repository root.
    path: str
    name: str
    #: The version's stable id (the same in every store that holds it).
    id: str
    #: Its sequence number where it was locked, for people (another store may number it
    #: differently; the id decides).
    seq: int
    files: list[LockedFile]


class LockFile(msgspec.Struct, forbid_unknown_fields=True):
    format: str
    version: int
    models: list[LockedModel] = []
    #: The cas remote the pre-push hook sends the content to and ``checkout --lock`` fetches
    #: from: a remote name configured in each user's store, or a URL ("" = none recorded).
    remote: str = ""


class _Probe(msgspec.Struct):
    """Only the fields that say which layout a document has."""

    format: object = None
    version: object = None


# -- the file ----------------------------------------------------------------------------------


def decode(data: bytes, what: str = FILE_NAME) -> LockFile:
    """Parse and check a cas.lock document (see the module docstring for what is checked).

    Raises:
        SchemaError: not JSON, a field of the wrong type, a missing or unknown field, a bad
            name, id, path or hash, two models at the same or nested paths.
        FormatError: a ``version`` this build does not know (a newer cas wrote it).
    """
    try:
        probe = msgspec.json.decode(data, type=_Probe)
    except msgspec.DecodeError as exc:
        raise SchemaError(f"{what}: not a JSON object ({exc})") from None
    except msgspec.ValidationError:
        raise SchemaError(f"{what}: not a JSON object") from None
    if probe.format != FORMAT:
        raise SchemaError(f"{what}: not a cas.lock file (format is {probe.format!r}, "
                          f"expected {FORMAT!r})")
    if type(probe.version) is int and probe.version not in SUPPORTED_VERSIONS:
        raise FormatError(f"{what}: version {probe.version} is newer than this cas knows "
                          f"(it reads {sorted(SUPPORTED_VERSIONS)}): upgrade cas")
    try:
        lock = msgspec.json.decode(data, type=LockFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"{what}: {exc}") from None
    check(lock, what)
    return lock


def check(lock: LockFile, what: str = FILE_NAME) -> None:
    """Check every field of ``lock`` beyond its types (raises SchemaError)."""
    from cas.ids import is_hex
    from cas.versions import is_version_id

    if not isinstance(lock.remote, str) or "\n" in lock.remote:
        raise SchemaError(f"{what}: remote must be one line of text")
    paths: list[str] = []
    for m in lock.models:
        where = f"{what}: model at {m.path!r}"
        _safe_path(m.path, where)
        try:
            validate_model_name(m.name)
        except ArgsError as exc:
            raise SchemaError(f"{where}: {exc.message}") from None
        if not is_version_id(m.id):
            raise SchemaError(f"{where}: id {m.id!r} is not a version id (32 or 40 lowercase "
                              "hex characters)")
        if m.seq < 1:
            raise SchemaError(f"{where}: seq {m.seq} is not a version number")
        for f in m.files:
            _safe_path(f.path, f"{where}: file")
            if f.size < 0:
                raise SchemaError(f"{where}: file {f.path!r} has a negative size")
            if not is_hex(f.sha256):
                raise SchemaError(f"{where}: file {f.path!r}: sha256 must be 64 lowercase hex "
                                  "characters")
        try:
            check_unique_paths(f.path for f in m.files)
        except SchemaError as exc:
            raise SchemaError(f"{where}: {exc.message}") from None
        paths.append(m.path)
    ordered = sorted(paths)
    for a, b in zip(ordered, ordered[1:]):
        if a == b or b.startswith(a + "/"):
            raise SchemaError(f"{what}: model paths {a!r} and {b!r} overlap (one model per "
                              "folder)")


def _safe_path(path: str, where: str) -> None:
    try:
        validate_rel_path(path)
    except SchemaError as exc:
        raise SchemaError(f"{where}: {exc.message}") from None


def encode(lock: LockFile) -> bytes:
    """The canonical text of ``lock``: fixed key order, models and files sorted by path, one
    file per line, two-space indent, a final newline. Equal locks encode to equal bytes."""
    def s(v: object) -> str:
        return json.dumps(v, ensure_ascii=False)

    out = ["{", f'  "format": {s(FORMAT)},', f'  "version": {VERSION},']
    if lock.remote:
        out.append(f'  "remote": {s(lock.remote)},')
    models = sorted(lock.models, key=lambda m: m.path)
    if not models:
        out.append('  "models": []')
    else:
        out.append('  "models": [')
        for i, m in enumerate(models):
            out += ["    {", f'      "path": {s(m.path)},', f'      "name": {s(m.name)},',
                    f'      "id": {s(m.id)},', f'      "seq": {m.seq},']
            files = sorted(m.files, key=lambda f: f.path)
            if not files:
                out.append('      "files": []')
            else:
                out.append('      "files": [')
                out += [f'        {{"path": {s(f.path)}, "size": {f.size}, '
                        f'"sha256": {s(f.sha256)}}}' + ("," if j < len(files) - 1 else "")
                        for j, f in enumerate(files)]
                out.append("      ]")
            out.append("    }" + ("," if i < len(models) - 1 else ""))
        out.append("  ]")
    out.append("}")
    return ("\n".join(out) + "\n").encode()


def read(root: Path) -> LockFile:
    """The cas.lock of the repository at ``root``.

    Raises:
        NotFoundError: there is none. SchemaError | FormatError: see :func:`decode`.
    """
    path = root / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no {FILE_NAME} in {root} (create it with `cas lock NAME`)"
                            ) from None
    except OSError as exc:
        raise from_os_error(exc, f"reading {FILE_NAME}") from None
    return decode(data, str(path))


def write(root: Path, lock: LockFile) -> None:
    """Replace ``root``/cas.lock with ``lock``, atomically (temp file, fsync, rename)."""
    from cas.fsutil import atomic_write

    check(lock)
    atomic_write(root / FILE_NAME, encode(lock))


# -- where the repository is -------------------------------------------------------------------


def find_root(cwd: Path | None = None) -> Path:
    """The repository root for ``cwd``: the top of its git work tree, or ``cwd`` itself when
    it is not inside one (or git is not installed)."""
    here = Path(cwd or Path.cwd()).absolute()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here,
                             capture_output=True, text=True, check=False)
    except OSError:
        return here
    if top.returncode == 0 and top.stdout.strip():
        return Path(top.stdout.strip())
    return here


def git_config(root: Path, key: str) -> str:
    """``git config KEY`` in the repository at ``root`` ("" when unset or not a repo)."""
    try:
        r = subprocess.run(["git", "config", "--get", key], cwd=root, capture_output=True,
                           text=True, check=False)
    except OSError:
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def remote_of(root: Path, lock: LockFile) -> str:
    """The cas remote for this repository: ``git config cas.remote`` (each clone's own
    choice), else the lock file's ``remote`` field, else "" (none)."""
    return git_config(root, "cas.remote") or lock.remote


# -- editing -----------------------------------------------------------------------------------


class LockResult(msgspec.Struct):
    """What ``cas lock`` did to the lock file."""

    lock_file: str
    #: "added", "updated", "unchanged", "removed" or "listed".
    action: str
    models: list[LockedModel] = []
    remote: str = ""
    warnings: list[CasWarning] = []


def entry_for(store: Store, version: Version, path: str) -> LockedModel:
    """The lock entry of ``version`` checked out at ``path``."""
    m = store.manifest(version)
    return LockedModel(path=path, name=version.name, id=version.id, seq=version.seq,
                       files=[LockedFile(f.path, f.size, f.sha256) for f in m.files])


def rel_to_root(root: Path, path: str | Path, cwd: Path | None = None) -> str:
    """``path`` (relative to ``cwd``, or absolute) as a path relative to ``root``.

    Raises:
        ArgsError: it is outside the repository, the root itself, or not a safe path.
    """
    p = Path(os.path.normpath(Path(cwd or Path.cwd()).absolute() / path))
    try:
        rel = p.relative_to(root)
    except ValueError:
        raise ArgsError(f"{path}: outside the repository at {root}") from None
    text = rel.as_posix()
    if text in ("", "."):
        raise ArgsError(f"{path}: a model needs its own folder, not the repository root")
    return validate_rel_path(text, user_input=True)


def lock_model(store: Store, root: Path, spec: str, path: str | None = None,
               remote: str | None = None) -> LockResult:
    """Record ``spec`` (``NAME[@V]``) in ``root``/cas.lock at ``path`` (root-relative): by
    default where ``NAME`` is locked already, else ``models/NAME``. A model already locked
    at that path is replaced. ``remote`` (when not None) sets the file's ``remote`` field.
    Creates the file if there is none."""
    version = store.resolve(spec)
    try:
        lock = read(root)
    except NotFoundError:
        lock = LockFile(FORMAT, VERSION)
    if path is None:
        same = [m.path for m in lock.models if m.name == version.name]
        if len(same) > 1:
            raise ArgsError(f"{version.name} is locked at several paths "
                            f"({', '.join(same)}): say which with --path")
        path = same[0] if same else f"{DEFAULT_DIR}/{version.name}"
    validate_rel_path(path, user_input=True)
    if path == FILE_NAME:
        raise ArgsError(f"--path {path}: that is the lock file")
    entry = entry_for(store, version, path)
    old = next((m for m in lock.models if m.path == path), None)
    lock.models = [m for m in lock.models if m.path != path] + [entry]
    if remote is not None:
        lock.remote = remote
    try:
        check(lock)
    except SchemaError as exc:
        raise ArgsError(exc.message.removeprefix(f"{FILE_NAME}: ")) from None
    before = (root / FILE_NAME).read_bytes() if (root / FILE_NAME).exists() else b""
    data = encode(lock)
    action = "unchanged" if data == before else "added" if old is None else "updated"
    if data != before:
        write(root, lock)
    return LockResult(str(root / FILE_NAME), action, [entry], lock.remote)


def unlock(root: Path, name: str | None = None, path: str | None = None) -> LockResult:
    """Remove from ``root``/cas.lock the model ``name`` (at every path) and/or the model at
    ``path``.

    Raises:
        NotFoundError: nothing matched (the file is unchanged).
    """
    lock = read(root)
    gone = [m for m in lock.models
            if (name is None or m.name == name) and (path is None or m.path == path)]
    if not gone:
        what = " at ".join(x for x in (name, path) if x)
        raise NotFoundError(f"{what} is not in {root / FILE_NAME}")
    lock.models = [m for m in lock.models if m not in gone]
    write(root, lock)
    return LockResult(str(root / FILE_NAME), "removed", gone, lock.remote)


# -- checking versions against the lock --------------------------------------------------------


def find_version(store: Store, name: str, version_id: str) -> Version | None:
    """The live version of ``name`` whose id is ``version_id`` in ``store``, or None."""
    try:
        versions = store.registry.versions(name)
    except NotFoundError:
        return None
    return next((v for v in versions if v.id == version_id), None)


def differences(model: LockedModel, manifest: Manifest) -> list[str]:
    """How the files of ``manifest`` differ from what ``model`` records (one line each)."""
    want = {f.path: (f.size, f.sha256) for f in model.files}
    have = {f.path: (f.size, f.sha256) for f in manifest.files}
    out = []
    for p in sorted(want.keys() | have.keys()):
        if p not in have:
            out.append(f"{p}: locked but not in the version")
        elif p not in want:
            out.append(f"{p}: in the version but not locked")
        elif want[p] != have[p]:
            out.append(f"{p}: the version has size {have[p][0]} sha256 {have[p][1][:12]}, "
                       f"locked size {want[p][0]} sha256 {want[p][1][:12]}")
    return out


class Problem(msgspec.Struct, frozen=True):
    """One thing wrong, for one line of a hook's report."""

    path: str
    message: str


def verify_lock(store: Store | None, lock: LockFile, remote: str = "") -> list[Problem]:
    """Check that every version ``lock`` names exists, in ``store`` or else at ``remote``,
    with the files and checksums it records. Returns the problems (none: all good). A remote
    is contacted only for versions ``store`` does not have (its registry is fetched, not its
    content)."""
    problems: list[Problem] = []
    missing: list[LockedModel] = []
    for m in lock.models:
        v = find_version(store, m.name, m.id) if store is not None else None
        if v is None:
            missing.append(m)
            continue
        problems += [Problem(m.path, f"{m.name}@{m.seq}: {d}")
                     for d in differences(m, store.manifest(v))]  # type: ignore[union-attr]
    if not missing:
        return problems
    if not remote or store is None:
        why = "no cas remote is configured" if store is not None else "no store"
        return problems + [Problem(m.path, f"{m.name} version {m.id} ({m.name}@{m.seq} where "
                                   f"it was locked) is not in the local store and {why}")
                           for m in missing]
    from cas.sync import catalog

    try:
        view, _, done = catalog(store, remote)
    except CasError as exc:
        return problems + [Problem(m.path, f"{m.name}@{m.seq} is not in the local store and "
                                   f"the cas remote {remote!r} cannot be read: {exc.message}")
                           for m in missing]
    try:
        for m in missing:
            v = find_version(view, m.name, m.id)
            if v is None:
                problems.append(Problem(m.path, f"{m.name} version {m.id} ({m.name}@{m.seq} "
                                        "where it was locked) is neither in the local store "
                                        f"nor at the cas remote {remote!r}"))
                continue
            problems += [Problem(m.path, f"{m.name}@{m.seq}: {d}")
                         for d in differences(m, view.manifest(v))]
    finally:
        done()
    return problems


# -- checkout --lock ---------------------------------------------------------------------------


class LockedCheckout(msgspec.Struct):
    path: str
    name: str
    seq: int
    id: str
    files: int
    bytes_written: int
    #: True when the version came from the cas remote first.
    fetched: bool = False


class LockCheckoutResult(msgspec.Struct):
    root: str
    models: list[LockedCheckout] = []
    warnings: list[CasWarning] = []


def checkout_locked(store: Store, root: Path, *, force: bool = False, clean: bool = False,
                    progress: Progress | None = None) -> LockCheckoutResult:
    """Materialise every model of ``root``/cas.lock at its path, after checking that the
    version's files have the recorded sizes and SHA-256 (the checkout then verifies the bytes
    it writes against them). A version this store lacks is pulled from the repository's cas
    remote (:func:`remote_of`) first; content registered here but absent is fetched.

    Raises:
        NotFoundError: a version is neither here nor at the remote.
        VerifyError: a version's files differ from the lock (nothing of that model written).
    """
    from cas import presence

    lock = read(root)
    remote = remote_of(root, lock)
    result = LockCheckoutResult(str(root))
    plans = []
    for m in lock.models:
        v = find_version(store, m.name, m.id)
        fetched = False
        if v is None and remote:
            from cas.sync import pull

            pulled = pull(store, remote, [m.name])
            result.warnings += pulled.warnings
            v = find_version(store, m.name, m.id)
            fetched = True
        if v is None:
            where = f" nor at the cas remote {remote!r}" if remote else \
                " (no cas remote: set `git config cas.remote R` or `cas lock --remote R`)"
            raise NotFoundError(f"{FILE_NAME}: {m.name} version {m.id} ({m.name}@{m.seq} "
                                f"where it was locked) is not in this store{where}")
        diff = differences(m, store.manifest(v))
        if diff:
            raise VerifyError(f"{FILE_NAME}: {m.name}@{v.seq} does not match the lock at "
                              f"{m.path}: {diff[0]}" + (f" (and {len(diff) - 1} more)"
                                                        if len(diff) > 1 else ""))
        plans.append((m, v, fetched))
    for m, v, fetched in plans:
        if v.id in presence.load(store.backend):
            from cas.sync import get

            get(store, v, remote or None, progress=progress)
            fetched = True
        r = store.checkout(f"{v.name}@{v.seq}", root / m.path, force=force, clean=clean,
                           progress=progress)
        result.warnings += r.warnings
        result.models.append(LockedCheckout(m.path, v.name, v.seq, v.id, r.files,
                                            r.bytes_written, fetched))
    return result


def locked_paths(lock: LockFile, root: Path) -> Sequence[tuple[str, Path, int, str]]:
    """``(display path, absolute path, size, sha256)`` of every locked file, sorted."""
    return [(f"{m.path}/{f.path}", root / m.path / f.path, f.size, f.sha256)
            for m in sorted(lock.models, key=lambda m: m.path)
            for f in sorted(m.files, key=lambda f: f.path)]
