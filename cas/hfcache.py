"""The Hugging Face cache layout: register what a cache holds, and write versions into one.

Layout (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)::

    models--ORG--NAME/
        blobs/<etag>                 content, named by the Hub's id: SHA-256 (LFS files) or
                                     git blob SHA-1 (small files)
        snapshots/<commit>/<path>    relative symlinks to ../../blobs/<etag> (one more ../
                                     per folder level of <path>)
        refs/main                    the commit the branch names (40 hex, no newline)

Import (:func:`import_cache`) registers every snapshot of the chosen repositories as a
version of the model named like the repository, oldest first and the one ``refs/main`` names
last (so it is the latest), nothing downloaded. Each blob is checked against its name before
anything is registered; a snapshot with a missing or damaged blob is skipped with a warning
(the others are still imported). A snapshot already registered (the model's versions record
``source = hf://ORG/NAME@<commit>``) is skipped.

Export (:func:`export_version`) writes each file as a blob (to a temp name in ``blobs/``,
hashed as it is written, fsynced, renamed), then the snapshot's symlinks (each made under a
temp name and renamed over the old one), removes what the snapshot held that the version
does not, and finally writes ``refs/main``. A crash leaves at most temp files and blobs no
snapshot names yet; a re-run completes the export. Blobs already present are checked by
hashing, never trusted by name.

This module does not import ``huggingface_hub``: the layout is read and written directly.
"""

from __future__ import annotations

import os
import re
import secrets
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.errors import (
    ArgsError,
    CasWarning,
    ConflictError,
    NotFoundError,
    VerifyError,
    from_os_error,
)
from cas.exportfile import real_dirs
from cas.fsutil import atomic_write, fsync_dir
from cas.hub import (
    META_COMMIT,
    META_LFS,
    META_REPO,
    SCHEME,
    _REPO_ID,
    HubFile,
    card_license,
    parse_recorded,
    require_free,
    verify_file,
)
from cas.names import validate_rel_path

if TYPE_CHECKING:
    from cas.exportfile import ShareSources
    from cas.format.manifest import FileEntry, Manifest
    from cas.registry import Version
    from cas.store import Progress, Store

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Files the Hub's default ``.gitattributes`` stores with git-lfs, for versions that were not
#: imported from the Hub (which record the Hub's own list).
LFS_SUFFIXES = frozenset({
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib",
    ".mlmodel", ".model", ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb",
    ".pickle", ".pkl", ".pt", ".pth", ".rar", ".safetensors", ".tar", ".tflite", ".tgz",
    ".wasm", ".xz", ".zip", ".zst"})
#: The Hub stores files from this size on with git-lfs whatever their name.
LFS_MIN_SIZE = 10 << 20


def default_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``,
    else ``~/.cache/huggingface/hub`` (read at call time, as huggingface_hub does)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if hub:
        return Path(hub).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def repo_folder(repo_id: str) -> str:
    """``models--ORG--NAME`` for ``ORG/NAME``."""
    return "models--" + repo_id.replace("/", "--")


def repo_id_of(folder: str) -> str | None:
    """``ORG/NAME`` for ``models--ORG--NAME`` (None for anything else; the Hub forbids
    ``--`` inside names, so the split is unambiguous)."""
    if not folder.startswith("models--"):
        return None
    parts = folder[len("models--"):].split("--")
    if not 1 <= len(parts) <= 2:
        return None
    repo = "/".join(parts)
    return repo if _REPO_ID.match(repo) else None


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ArgsError(f"{repo_id!r} is not a Hub repository id (ORG/NAME); give --repo")
    return repo_id


# -- import -------------------------------------------------------------------------------


class CachedVersion(msgspec.Struct):
    """One snapshot of the cache, and what importing it did."""

    repo: str
    snapshot: str
    name: str
    #: "registered", "unchanged" (content equal to the latest version), "present" (its
    #: source was registered before) or "skipped" (damaged or incomplete: see warnings).
    status: str
    seq: int = 0
    commit: str = ""
    files: int = 0
    total_size: int = 0
    new_stored_bytes: int = 0
    license: str | None = None


class CacheImportResult(msgspec.Struct):
    cache: str
    versions: list[CachedVersion]
    warnings: list[CasWarning] = []


@dataclass
class _Snapshot:
    repo: str
    commit: str
    folder: Path
    order: tuple[int, float]


def _snapshots(cache: Path, repo: str) -> list[_Snapshot]:
    """The snapshots of one cached repository, oldest first, the one refs/main names last."""
    top = cache / repo_folder(repo)
    main = None
    try:
        main = (top / "refs" / "main").read_text().strip()
    except OSError:
        pass
    out = []
    try:
        entries = list(os.scandir(top / "snapshots"))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise from_os_error(exc, f"listing {top / 'snapshots'}") from None
    for e in entries:
        if _COMMIT.match(e.name) and e.is_dir(follow_symlinks=False):
            out.append(_Snapshot(repo, e.name, Path(e.path),
                                 (int(e.name == main), e.stat(follow_symlinks=False).st_mtime)))
    return sorted(out, key=lambda s: s.order)


def cached_repos(cache: Path) -> list[str]:
    """Repository ids of the models in the cache, sorted."""
    try:
        names = os.listdir(cache)
    except FileNotFoundError:
        raise NotFoundError(f"{cache}: no Hugging Face cache there") from None
    except OSError as exc:
        raise from_os_error(exc, f"listing {cache}") from None
    return sorted(r for r in (repo_id_of(n) for n in names) if r is not None)


def _snapshot_files(snap: _Snapshot) -> tuple[list[tuple[HubFile, Path]], str | None]:
    """Each file of a snapshot with the Hub id its blob name claims, or the reason the
    snapshot cannot be imported."""
    out: list[tuple[HubFile, Path]] = []
    for top, dirs, files in os.walk(snap.folder):
        dirs.sort()
        for f in sorted(files):
            link = Path(top) / f
            rel = link.relative_to(snap.folder).as_posix()
            try:
                validate_rel_path(rel, user_input=True)
            except ArgsError as exc:
                return [], exc.message
            try:
                target = link.resolve(strict=True)
                size = target.stat().st_size
            except (OSError, RuntimeError):
                return [], f"{rel}: its blob is missing (an interrupted download)"
            etag = target.name
            if _SHA256.match(etag):
                out.append((HubFile(rel, size, "0" * 40, etag), target))
            elif _COMMIT.match(etag):
                out.append((HubFile(rel, size, etag), target))
            else:
                return [], f"{rel}: {target} is not a blob named by its hash"
    return out, None


def import_cache(store: Store, cache: Path | None = None, repos: list[str] | None = None,
                 progress: Progress | None = None) -> CacheImportResult:
    """Register every snapshot of ``repos`` (default: every model in the cache) as versions
    (see the module docstring). Nothing is downloaded.

    Raises:
        NotFoundError: no cache at ``cache``, or a requested repository is not in it.
        ArgsError: a malformed repository id.
        DiskError: not enough free disk for what the snapshots hold (before writing).
    """
    from cas.ingest import AddOptions

    cache = (cache or default_cache_dir()).expanduser()
    present = cached_repos(cache)
    if repos:
        for r in repos:
            check_repo_id(r)
            if r not in present:
                raise NotFoundError(f"{r} is not in the Hugging Face cache at {cache}")
        chosen = list(dict.fromkeys(repos))
    else:
        chosen = present
    warnings: list[CasWarning] = []
    plan: list[tuple[_Snapshot, list[tuple[HubFile, Path]]]] = []
    done: list[CachedVersion] = []
    for repo in chosen:
        recorded = recorded_sources(store, repo)
        for snap in _snapshots(cache, repo):
            source = f"{SCHEME}{repo}@{snap.commit}"
            if source in recorded:
                seq, commit = recorded[source]
                done.append(CachedVersion(repo, snap.commit, repo, "present", seq, commit))
                continue
            files, why = _snapshot_files(snap)
            if why is None and not files:
                why = "it holds no file"
            if why is not None:
                warnings.append(CasWarning("W_HF_CACHE_SKIPPED",
                                           f"{repo} snapshot {snap.commit[:12]} not imported: "
                                           f"{why}"))
                done.append(CachedVersion(repo, snap.commit, repo, "skipped"))
                continue
            plan.append((snap, files))
    require_free([(store.path, sum(h.size for _, fs in plan for h, _ in fs))],
                 f"importing the Hugging Face cache at {cache}")
    for snap, files in plan:
        try:
            for hub_file, blob in files:
                verify_file(blob, hub_file, f"{snap.repo} snapshot {snap.commit[:12]}")
        except VerifyError as exc:
            warnings.append(CasWarning("W_HF_CACHE_SKIPPED", f"{exc.message}; not imported"))
            done.append(CachedVersion(snap.repo, snap.commit, snap.repo, "skipped"))
            continue
        licence = None
        readme = next((b for h, b in files if h.path == "README.md"), None)
        if readme is not None:
            try:
                licence = card_license(readme.read_bytes())
            except OSError as exc:
                raise from_os_error(exc, f"reading {readme}") from None
        lfs = [h.path for h, _ in files if h.sha256 is not None]
        source = f"{SCHEME}{snap.repo}@{snap.commit}"
        options = AddOptions(
            message=f"import {source} from the Hugging Face cache", license=licence,
            source=source,
            extra={META_REPO: snap.repo, META_COMMIT: snap.commit,
                   META_LFS: msgspec.json.encode(lfs).decode()})
        added = store.add(snap.repo, snap.folder, options, progress)
        warnings.extend(added.warnings)
        done.append(CachedVersion(snap.repo, snap.commit, snap.repo,
                                  "registered" if added.created else "unchanged", added.seq,
                                  added.commit, added.files, added.total_size,
                                  added.new_stored_bytes, licence))
    return CacheImportResult(str(cache), done, warnings)


def recorded_sources(store: Store, name: str) -> dict[str, tuple[int, str]]:
    """Source -> (seq, commit) of the live versions of model ``name``."""
    registry = store.registry
    try:
        if registry.head(name) is None:
            return {}
    except ArgsError:
        return {}
    out = {}
    for v in registry.versions(name):
        src = store.manifest(v).metadata.source
        if src:
            out[src] = (v.seq, v.commit)
    return out


# -- export -------------------------------------------------------------------------------


class ExportResult(msgspec.Struct):
    """What an export wrote."""

    name: str
    seq: int
    commit: str
    kind: str
    repo: str
    snapshot: str
    path: str
    files: int
    total_size: int
    blobs_written: int
    blobs_reused: int
    bytes_written: int
    warnings: list[CasWarning] = []


def lfs_paths(manifest: Manifest) -> set[str]:
    """The files a cache names by SHA-256: the Hub's list for a version imported from it,
    else those the Hub's default rules would store with git-lfs."""
    recorded = manifest.metadata.extra.get(META_LFS)
    if recorded is not None:
        try:
            paths = msgspec.json.decode(recorded, type=list[str])
            return set(paths)
        except msgspec.DecodeError:
            pass
    return {f.path for f in manifest.files
            if f.size >= LFS_MIN_SIZE or os.path.splitext(f.path)[1].lower() in LFS_SUFFIXES}


def export_target(manifest: Manifest, commit: str, repo: str | None) -> tuple[str, str]:
    """``(repo id, snapshot name)`` of a version: a version imported from the Hub keeps its
    repository and Hub commit; another uses its model name and its registry commit."""
    recorded = parse_recorded(manifest.metadata.source)
    repo_id = repo or (recorded[0] if recorded else manifest.name)
    check_repo_id(repo_id)
    snapshot = recorded[1] if recorded else commit
    return repo_id, snapshot


def export_version(store: Store, spec: str, cache: Path | None = None,
                   repo: str | None = None, progress: Progress | None = None, *,
                   share: bool = False, accept_license: bool = False) -> ExportResult:
    """Write version ``spec`` into the Hugging Face cache at ``cache`` (see the module
    docstring): afterwards huggingface_hub with ``HF_HUB_OFFLINE=1`` finds it. Idempotent.

    Raises:
        ArgsError: the model name is not a Hub repository id and no ``repo`` is given.
        ConflictError: a folder of the snapshot is a symlink or a file.
        VerifyError: a stored chunk or the whole file does not match (nothing named).
        DiskError: not enough free disk for the blobs missing (before writing).
        LicenseError: the version's licence needs an acceptance that is not recorded (and
            ``accept_license`` is False).

    ``share``: clone or hard-link files that ``cas checkout`` wrote (see
    :mod:`cas.exportfile`).
    """
    from cas.exportfile import share_sources
    from cas.licenses import require_accepted

    cache = (cache or default_cache_dir()).expanduser()
    version = store.resolve(spec)
    manifest = store.manifest(version)
    require_accepted(store, version, manifest, accept_license)
    sources = share_sources(store, manifest.files) if share else None
    repo_id, snapshot = export_target(manifest, version.commit, repo)
    lfs = lfs_paths(manifest)
    top = cache / repo_folder(repo_id)
    blobs, snap_dir = top / "blobs", top / "snapshots" / snapshot
    missing = [f for f in manifest.files
               if f.path not in lfs or not (blobs / f.sha256).exists()]
    require_free([(cache, sum(f.size for f in missing))], f"exporting {version.ref}")
    written = reused = nbytes = 0
    total = sum(f.size for f in manifest.files)
    done = 0
    try:
        for d in (blobs, snap_dir, top / "refs"):
            real_dirs(cache, d)
        for f in manifest.files:
            name = f.sha256 if f.path in lfs else None
            if name is not None and _good_blob(blobs / name, f, True):
                reused += 1
            else:
                name, fresh = _write_blob(store, version, blobs, f, f.path in lfs, sources)
                written += fresh
                reused += not fresh
                nbytes += f.size if fresh else 0
            _link(snap_dir, f.path, blobs / name, cache)
            done += f.size
            if progress is not None:
                progress(done, total, f.path)
        _prune(snap_dir, {f.path for f in manifest.files})
        atomic_write(top / "refs" / "main", snapshot.encode())
        fsync_dir(blobs)
    except OSError as exc:
        raise from_os_error(exc, f"exporting {version.ref} to {top}") from None
    return ExportResult(version.name, version.seq, version.commit, "hf-cache", repo_id,
                        snapshot, str(snap_dir), len(manifest.files), total, written, reused,
                        nbytes)


def _good_blob(path: Path, entry: FileEntry, lfs: bool) -> bool:
    """True if ``path`` holds exactly the file's bytes (checked by hashing)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat_mod.S_ISREG(st.st_mode) or st.st_size != entry.size:
        return False
    try:
        verify_file(path, HubFile(entry.path, entry.size, path.name,
                                  entry.sha256 if lfs else None), "blob")
    except VerifyError:
        return False
    return True


def _write_blob(store: Store, version: Version, blobs: Path, entry: FileEntry, lfs: bool,
                sources: ShareSources | None) -> tuple[str, bool]:
    """Put a file into ``blobs/`` under its Hub name; ``(name, True if written)``.

    The bytes are staged and verified by :func:`cas.exportfile.stage` (a temp in ``blobs/``,
    hashed as written, fsynced) and only then renamed to their name: the SHA-256 for an LFS
    file, the git blob id (known once written) for a small one.
    """
    from cas.exportfile import stage

    staged = stage(store, version, entry, blobs, prefix=".cas-", sources=sources)
    name = entry.sha256 if lfs else staged.git_sha1
    if _good_blob(blobs / name, entry, lfs):
        staged.discard()
        return name, False
    staged.publish(blobs / name)
    return name, True


def _link(snap_dir: Path, rel: str, blob: Path, cache: Path) -> None:
    """Make ``snap_dir/rel`` a relative symlink to ``blob`` (temp link, then rename)."""
    validate_rel_path(rel)
    link = snap_dir / rel
    real_dirs(cache, link.parent)
    target = os.path.relpath(blob, link.parent)
    try:
        if os.readlink(link) == target:
            return
    except OSError:
        pass
    if link.is_dir() and not link.is_symlink():
        raise ConflictError(f"{link} is a folder; the version has a file there")
    tmp = link.parent / f".cas-{secrets.token_hex(4)}.link"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _prune(snap_dir: Path, keep: set[str]) -> None:
    """Remove entries of the snapshot that are not files of the version, and folders left
    empty: the snapshot holds exactly the version."""
    for top, dirs, files in os.walk(snap_dir, topdown=False):
        for f in files:
            p = Path(top) / f
            if p.relative_to(snap_dir).as_posix() not in keep:
                p.unlink()
        for d in dirs:
            p = Path(top) / d
            if p.is_symlink():
                p.unlink()
                continue
            try:
                p.rmdir()
            except OSError:
                pass
