"""The deterministic ``models/`` layout that model managers install into, and its registry.

Layout of a folder ``DIR`` (default ``./models``)::

    llama-cpp/<owner>/<repo>/<files>     versions whose weights are GGUF
    transformers/<owner>/<repo>/<files>  every other version
    configs/<repo>.json                  a copy of the version's config.json, when it has one
    cas-layout.json                      the registry: what is installed here (below)
    .cas-layout.lock                     held (flock) while an export writes

``<owner>/<repo>`` is the Hugging Face repository a version was imported from (``hf.repo``),
else its model name: ``ORG/NAME`` as it is, a one-segment name under the owner ``local``, and
a longer one with the segments after the first joined by ``--``. The same version always
lands on the same paths (deterministic), and exporting it again writes nothing
(idempotent: a file already holding the bytes, checked by hashing, is kept).

Write order: each file goes through :func:`cas.exportfile.stage` (temp in its folder, hashed,
fsynced, renamed); then files of the repository folder that the previous install there wrote
and the new version does not hold are removed (files cas did not write are never touched);
then ``configs/<repo>.json``; the registry file last, atomically. A crash leaves the registry
naming the previous install (or none) and at most temp files; a re-run completes the export.

``cas-layout.json`` (canonical JSON and a newline)::

    {"schema": "cas.layout", "version": 1, "models": [ENTRY, ...]}   sorted by "path"

    ENTRY: {"path": "transformers/ORG/NAME", "kind": "transformers" | "llama-cpp",
            "repo": "ORG/NAME", "name": cas model, "seq": n, "id": version id,
            "commit": registry commit, "source": str | null, "revision": Hub commit | null,
            "license": str | null, "format": str, "config": "configs/NAME.json" | null,
            "files": [{"path", "size", "sha256"}, ...] sorted by path,
            "installed_at": ISO 8601 UTC}

Readers ignore fields they do not know and carry them when they rewrite an entry's document.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from cas.clock import iso_utc
from cas.errors import ArgsError, CasWarning, FormatError, SchemaError, from_os_error
from cas.exportfile import holds, real_dirs, share_sources, stage
from cas.format.canonical import canonical_json
from cas.fsutil import atomic_write, fsync_dir
from cas.names import validate_rel_path

if TYPE_CHECKING:
    from cas.format.manifest import Manifest
    from cas.store import Progress, Store

REGISTRY = "cas-layout.json"
LOCK = ".cas-layout.lock"
SCHEMA = "cas.layout"
VERSION = 1
GGUF_KIND = "llama-cpp"
OTHER_KIND = "transformers"
LOCAL_OWNER = "local"


class InstalledFile(msgspec.Struct, frozen=True):
    path: str
    size: int
    sha256: str


class Installed(msgspec.Struct, frozen=True):
    """One entry of ``cas-layout.json``."""

    path: str
    kind: str
    repo: str
    name: str
    seq: int
    id: str
    commit: str
    files: list[InstalledFile]
    installed_at: str
    format: str = "other"
    source: str | None = None
    revision: str | None = None
    license: str | None = None
    config: str | None = None


class LayoutResult(msgspec.Struct):
    name: str
    seq: int
    root: str
    path: str
    kind: str
    repo: str
    config: str | None
    files: int
    total_size: int
    files_written: int
    files_kept: int
    files_removed: int
    bytes_written: int
    shared: int = 0
    warnings: list[CasWarning] = []


def repo_of(manifest: Manifest) -> str:
    """``<owner>/<repo>`` of a version (see the module docstring)."""
    repo = manifest.metadata.extra.get("hf.repo") or manifest.name
    parts = repo.split("/")
    if len(parts) == 1:
        return f"{LOCAL_OWNER}/{parts[0]}"
    return f"{parts[0]}/{'--'.join(parts[1:])}"


def kind_of(manifest: Manifest) -> str:
    if manifest.metadata.format == "gguf":
        return GGUF_KIND
    if manifest.metadata.format == "other" and any(
            f.path.lower().endswith(".gguf") for f in manifest.files):
        return GGUF_KIND
    return OTHER_KIND


def load(root: Path) -> tuple[list[Installed], dict[str, Any]]:
    """The entries of ``root/cas-layout.json`` ([] without one) and the document's unknown
    top-level fields.

    Raises:
        SchemaError: the file is not a layout registry; FormatError: a newer version.
    """
    path = root / REGISTRY
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], {}
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SchemaError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise SchemaError(f"{path} is not a {SCHEMA} document")
    version = raw.get("version")
    if type(version) is not int or version < 1:
        raise SchemaError(f"{path}: malformed version {version!r}")
    if version > VERSION:
        raise FormatError(f"{path} is version {version}, newer than this cas reads; "
                          "upgrade cas")
    try:
        models = msgspec.convert(raw.get("models", []), list[Installed])
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{path}: {exc}") from None
    for m in models:
        for rel in [m.path, *(f"{m.path}/{f.path}" for f in m.files),
                    *([m.config] if m.config else [])]:
            try:
                validate_rel_path(rel)
            except ArgsError as exc:
                raise SchemaError(f"{path}: {exc.message}") from None
    return models, {k: v for k, v in raw.items() if k not in ("schema", "version", "models")}


def encode(models: list[Installed], extra: dict[str, Any]) -> bytes:
    doc = {**extra, "schema": SCHEMA, "version": VERSION,
           "models": msgspec.to_builtins(sorted(models, key=lambda m: m.path))}
    return canonical_json(doc) + b"\n"


def export_layout(store: Store, spec: str, root: Path | None = None, *, share: bool = False,
                  accept_license: bool = False, progress: Progress | None = None
                  ) -> LayoutResult:
    """Install version ``spec`` into the layout at ``root`` (see the module docstring).
    Idempotent.

    Raises:
        LicenseError: the licence needs an acceptance not recorded.
        SchemaError | FormatError: ``cas-layout.json`` cannot be read (nothing written).
        ConflictError: a folder on the way is a symlink or a file.
        VerifyError: stored bytes are damaged (nothing is named after them).
        DiskError: not enough free disk (before anything is written).
    """
    from cas.hub import require_free
    from cas.licenses import require_accepted

    root = (root or Path("models")).expanduser().absolute()
    version = store.resolve(spec)
    manifest = store.manifest(version)
    require_accepted(store, version, manifest, accept_license)
    kind, repo = kind_of(manifest), repo_of(manifest)
    rel = f"{kind}/{repo}"
    validate_rel_path(rel)
    real_dirs(root, root)
    lock = _lock(root)
    try:
        models, extra = load(root)
        previous = next((m for m in models if m.path == rel), None)
        folder = root / rel
        missing = sum(f.size for f in manifest.files if not _same(previous, f.path, f.sha256))
        require_free([(root, missing)], f"installing {version.ref} in {root}")
        sources = share_sources(store, manifest.files) if share else None
        written = kept = nbytes = shared = 0
        total, done = sum(f.size for f in manifest.files), 0
        try:
            real_dirs(root, folder)
            for f in manifest.files:
                validate_rel_path(f.path)
                target = folder / f.path
                real_dirs(root, target.parent)
                if holds(target, f):
                    kept += 1
                else:
                    staged = stage(store, version, f, target.parent,
                                   prefix=f".{target.name}.cas-", sources=sources)
                    staged.publish(target, 0o644)
                    written += 1
                    nbytes += f.size
                    shared += staged.how != "written"
                done += f.size
                if progress is not None:
                    progress(done, total, f.path)
            removed = _remove_stale(folder, previous, {f.path for f in manifest.files})
            config = _mirror_config(store, version, manifest, root, repo)
            entry = Installed(
                rel, kind, repo, version.name, version.seq, version.id or version.commit,
                version.commit, [InstalledFile(f.path, f.size, f.sha256)
                                 for f in sorted(manifest.files, key=lambda f: f.path)],
                iso_utc(), manifest.metadata.format, manifest.metadata.source,
                manifest.metadata.extra.get("hf.commit"), manifest.metadata.license, config)
            atomic_write(root / REGISTRY,
                         encode([*(m for m in models if m.path != rel), entry], extra))
        except OSError as exc:
            raise from_os_error(exc, f"installing {version.ref} in {root}") from None
    finally:
        os.close(lock)
    return LayoutResult(version.name, version.seq, str(root), rel, kind, repo, config,
                        len(manifest.files), total, written, kept, removed, nbytes, shared)


def _lock(root: Path) -> int:
    """Hold ``.cas-layout.lock``: two exports into one layout take turns (the registry file
    is read, changed and replaced under it)."""
    try:
        fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        raise from_os_error(exc, f"locking {root / LOCK}") from None
    return fd


def _same(previous: Installed | None, path: str, sha256: str) -> bool:
    return previous is not None and any(f.path == path and f.sha256 == sha256
                                        for f in previous.files)


def _remove_stale(folder: Path, previous: Installed | None, keep: set[str]) -> int:
    """Remove the files the previous install wrote that the new version does not hold, and
    folders that leaves empty; never a file cas did not write."""
    if previous is None:
        return 0
    n = 0
    for f in previous.files:
        if f.path in keep:
            continue
        target = folder / f.path
        try:
            if target.is_symlink() or not target.is_file():
                continue
            target.unlink()
            n += 1
        except FileNotFoundError:
            continue
        parent = target.parent
        while parent != folder:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
    if n:
        fsync_dir(folder)
    return n


def _mirror_config(store: Store, version: Any, manifest: Manifest, root: Path,
                   repo: str) -> str | None:
    """Copy ``config.json`` to ``configs/<repo>.json`` (verified); its relative path."""
    entry = next((f for f in manifest.files if f.path == "config.json"), None)
    if entry is None:
        return None
    name = repo.rsplit("/", 1)[-1]
    rel = f"configs/{name}.json"
    validate_rel_path(rel)
    real_dirs(root, root / "configs")
    target = root / rel
    if not holds(target, entry):
        stage(store, version, entry, target.parent, prefix=f".{target.name}.cas-").publish(
            target, 0o644)
    return rel
