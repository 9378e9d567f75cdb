"""A store on local disk: config, packs, registry, lock, and the typed API the CLI drives.

Layout (``docs/format.md`` has the details)::

    <store>/config.json        format version and format parameters (chunker, compression)
    <store>/lock               the single-writer lock (flock)
    <store>/packs/pack-<id>.pack, pack-<id>.idx, midx-<hash>.midx
    <store>/registry/          bare git repository of manifests
    <store>/tmp/               temp files of writers; removed by the next writer
    <store>/cache/stat.msgpack stat cache of added paths

``Store`` methods are the public API. Operations are implemented in their own modules
(``ingest``, ``checkout``, ``verify``, ``catalog``) and take a ``Store``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cas.errors import CasError, NotFoundError, VerifyError, from_os_error
from cas.format.chunklist import ChunkList
from cas.format.config import CompressionParams, StoreConfig
from cas.format.manifest import Manifest
from cas.fsutil import atomic_write, clean_tmp, fsync_dir
from cas.locking import DEFAULT_TIMEOUT, WriteLock
from cas.names import VersionSpec, parse_version_spec
from cas.packs import PackSet, pack_path, scan_pack
from cas.registry import Registry, Version

if TYPE_CHECKING:
    from cas.catalog import DiskUsage, HistoryRow, ModelRow, VersionDetail
    from cas.checkout import CheckoutResult
    from cas.diff import DiffResult
    from cas.ingest import AddOptions, AddResult
    from cas.verify import VerifyReport

#: Progress callback: ``(bytes_done, bytes_total, label)``.
Progress = Callable[[int, int, str], None]

CONFIG = "config.json"
_INIT_PARTS = frozenset({"packs", "tmp", "cache", "registry", "lock"})


def default_store_path() -> Path:
    """``$CAS_HOME``, else ``$XDG_DATA_HOME/cas``, else ``~/.local/share/cas``.

    Read at call time, never at import time.
    """
    home = os.environ.get("CAS_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "cas"


class Store:
    """An opened store. Cheap to open: reads the config and mmaps the pack indexes.

    Use :meth:`init` to create one and :meth:`open` to open one.
    """

    def __init__(self, path: Path, config: StoreConfig) -> None:
        self.path = path
        self.config = config
        self.packs_dir = path / "packs"
        self.tmp_dir = path / "tmp"
        self.cache_dir = path / "cache"
        self.packs = PackSet(self.packs_dir)
        self.registry = Registry(path / "registry")
        self.lock_timeout = DEFAULT_TIMEOUT

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path | str, *, derive: bool = True) -> Store:
        """Create a store at ``path`` (idempotent for an existing store: it is opened).

        ``derive=False`` keeps the store free of derived chunks (see :mod:`cas.derive`): every
        version then restores without reading another, at the cost of storing fine-tunes and
        dtype conversions in full.

        Raises:
            FormatError: ``path`` holds a store of an unknown format.
            ConflictError | DiskError: ``path`` is a non-empty directory that is not a store,
                or cannot be written.
        """
        from cas.errors import ConflictError

        path = Path(path).expanduser().absolute()
        if (path / CONFIG).exists():
            return cls.open(path)
        try:
            # A folder holding only the parts init creates is an init that was interrupted
            # before config.json (written last) existed: finish it.
            if path.exists() and not {p.name for p in path.iterdir()} <= _INIT_PARTS:
                raise ConflictError(f"{path} is not empty and is not a cas store")
            for sub in ("packs", "tmp", "cache"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            if not (path / "registry" / "HEAD").exists():
                shutil.rmtree(path / "registry", ignore_errors=True)
                Registry.init(path / "registry").close()
            cfg = StoreConfig(compression=CompressionParams(derive=derive),
                              created_at=datetime.now(UTC).isoformat(timespec="seconds"))
            # config.json is written last: a directory without it is not yet a store.
            atomic_write(path / CONFIG, cfg.encode(), path / "tmp")
            fsync_dir(path)
        except OSError as exc:
            raise from_os_error(exc, f"creating store at {path}") from None
        return cls.open(path)

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open the store at ``path``.

        Raises:
            NotFoundError: no store there.
            FormatError | SchemaError: the store's format is unknown or its config is corrupt.
        """
        path = Path(path).expanduser().absolute()
        try:
            data = (path / CONFIG).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"no cas store at {path} (run 'cas init')") from None
        except OSError as exc:
            raise from_os_error(exc, "reading the store config") from None
        return cls(path, StoreConfig.decode(data))

    def close(self) -> None:
        self.packs.close()
        self.registry.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the write lock; on entry, recover from any writer that was killed.

        Recovery removes temp files and rebuilds indexes of packs that were renamed into place
        but whose index rename did not happen.
        """
        with WriteLock(self.path / "lock", self.lock_timeout):
            self.recover()
            self.packs.refresh()
            try:
                yield
            finally:
                self.packs.refresh()  # packs this writer finished are visible to its own reads
            self.maintain_midx()

    def maintain_midx(self) -> list[str]:
        """Cover new packs with multi-pack indexes (write lock held). A midx is an
        accelerator: failing to write one never fails the command that triggered it."""
        from cas.multipack import maintain

        try:
            return maintain(self.packs, self.tmp_dir)
        except (CasError, OSError):
            return []

    def recover(self) -> dict[str, int]:
        """Clean up after a killed writer. Call only while holding the write lock."""
        removed = clean_tmp(self.tmp_dir)
        # git lock files of a killed writer would block every later ref update; only writers
        # create them and we hold the store lock, so any that exist are stale.
        reg = self.path / "registry"
        for lock in [*reg.glob("*.lock"), *(reg / "refs").rglob("*.lock"),
                     *(reg / "objects").rglob("*.lock")]:
            lock.unlink(missing_ok=True)
            removed += 1
        rebuilt = 0
        for name in os.listdir(self.packs_dir):
            if name.endswith(".pack") and not (self.packs_dir / (name[:-5] + ".idx")).exists():
                self.rebuild_index(name[len("pack-") : -5])
                rebuilt += 1
        # Indexes whose header is unusable are rebuilt too; a pack too damaged to scan keeps
        # its index as it is, for verify to report.
        for pack_id in list(self.packs.broken):
            try:
                self.rebuild_index(pack_id)
                rebuilt += 1
            except (CasError, OSError):
                pass
        return {"temp_files_removed": removed, "indexes_rebuilt": rebuilt}

    def repair_indexes(self, pack_ids: list[str],
                       midx_names: Sequence[str] = ()) -> list[str]:
        """Rebuild the given packs' indexes from the packs, and replace the given damaged
        multi-pack indexes (write lock taken here).

        Returns the pack ids whose index was rebuilt; packs too damaged to scan are left for
        ``verify`` to report.
        """
        done = []
        with self.writing():
            for name in midx_names:
                for opened in list(self.packs.midxs):
                    if opened.path.name == name:
                        self.packs.drop_midx(opened)
                (self.packs_dir / name).unlink(missing_ok=True)
                self.packs.broken_midx.pop(name, None)
            for pack_id in dict.fromkeys(pack_ids):
                try:
                    self.rebuild_index(pack_id)
                    done.append(pack_id)
                except (CasError, OSError):
                    continue
        return done

    def rebuild_index(self, pack_id: str) -> None:
        """Write the index of a pack from the pack itself (write lock held).

        Raises:
            VerifyError: the pack is damaged beyond a scan (its index is left as it was).
        """
        from cas.format.pack import encode_index

        entries, trailer_id = scan_pack(pack_path(self.packs_dir, pack_id, "pack"))
        if trailer_id.hex() != pack_id:
            raise VerifyError(f"pack {pack_id}: trailer names pack {trailer_id.hex()}")
        atomic_write(pack_path(self.packs_dir, pack_id, "idx"), encode_index(entries, trailer_id),
                     self.tmp_dir)
        old = self.packs.packs.pop(pack_id, None)
        if old is not None:
            old.close()
        self.packs.broken.pop(pack_id, None)
        self.packs.refresh()

    # -- objects -----------------------------------------------------------------------------

    def read_object(self, oid: bytes) -> bytes:
        return self.packs.read(oid)

    def has_object(self, oid: bytes) -> bool:
        return self.packs.has(oid)

    def read_chunk_list(self, oid: bytes) -> ChunkList:
        return self.packs.read_chunk_list(oid)

    # -- registry helpers --------------------------------------------------------------------

    def resolve(self, spec: str | VersionSpec) -> Version:
        if isinstance(spec, str):
            spec = parse_version_spec(spec)
        return self.registry.resolve(spec)

    def manifest(self, version: Version) -> Manifest:
        return Manifest.decode(self.registry.manifest_bytes(version))

    # -- operations (public API) -------------------------------------------------------------

    def add(self, name: str, path: Path | str, options: AddOptions | None = None,
            progress: Progress | None = None) -> AddResult:
        """Register ``path`` (a file or a directory) as a new version of ``name``."""
        from cas.ingest import AddOptions, add

        return add(self, name, Path(path), options or AddOptions(), progress)

    def checkout(self, spec: str, dest: Path | str, *, force: bool = False,
                 progress: Progress | None = None, cached: bool = False) -> CheckoutResult:
        """Write the files of ``spec`` under ``dest``, byte-identical and SHA-256 verified.

        Large files are written with ``O_DIRECT`` (fastest, and other programs' cached data
        stays cached); ``cached=True`` writes through the page cache instead, so that the
        files are in memory for a program that loads them right away.
        """
        from cas.checkout import checkout

        return checkout(self, self.resolve(spec), Path(dest), force=force, progress=progress,
                        cached=cached)

    def verify(self, spec: str | None = None, progress: Progress | None = None, *,
               repair: bool = False) -> VerifyReport:
        """Verify one version (``spec``) or, with ``spec=None``, every object and manifest.

        With ``repair`` (whole-store only), indexes found missing or damaged are rebuilt from
        their packs and the store is verified again; the report lists what was rebuilt.
        """
        from cas.verify import verify_all, verify_version

        if spec is None:
            report = verify_all(self, progress)
            if repair and (report.bad_indexes or report.bad_midx):
                repaired = self.repair_indexes(report.bad_indexes, report.bad_midx)
                report = verify_all(self, progress)
                report.repaired_indexes = repaired
            return report
        if repair:
            from cas.errors import ArgsError

            raise ArgsError("--repair works on the whole store: use verify --all --repair")
        return verify_version(self, self.resolve(spec), progress)

    def ls(self, pattern: str | None = None, *, format: str | None = None,
           role: str | None = None, tag: str | None = None) -> list[ModelRow]:
        from cas.catalog import list_models

        return list_models(self, pattern, format=format, role=role, tag=tag)

    def show(self, spec: str) -> VersionDetail:
        from cas.catalog import show

        return show(self, self.resolve(spec))

    def log(self, name: str) -> list[HistoryRow]:
        from cas.catalog import history

        return history(self, name)

    def tag(self, spec: str, tag: str, *, force: bool = False, delete: bool = False) -> Version:
        """Name version ``spec`` with ``tag`` (or delete the tag ``spec``'s model has)."""
        with self.writing():
            version = self.resolve(spec)
            if delete:
                self.registry.delete_tag(version.name, tag)
            else:
                self.registry.set_tag(version, tag, force=force)
            return version

    def rm(self, spec: str, *, force: bool = False) -> dict[str, object]:
        """Unregister a version (``NAME@V``) or a whole model (``NAME``).

        Space is returned by garbage collection, not here. A tagged version is kept unless
        ``force``; removing a whole model removes its tags.
        """
        from cas.errors import ConflictError

        parsed = parse_version_spec(spec)
        with self.writing():
            if parsed.selector is None:
                versions = self.registry.versions(parsed.name)
                tags = self.registry.remove_model(parsed.name)
                return {"removed": [v.ref for v in versions], "tags_removed": tags,
                        "model_removed": True}
            version = self.registry.resolve(parsed)
            tags = self.registry.tags_of(version)
            if tags and not force:
                raise ConflictError(
                    f"{version.ref} is tagged {', '.join(tags)}; untag it or use --force"
                )
            for t in tags:
                self.registry.delete_tag(version.name, t)
            model_removed = self.registry.remove_version(version)
            return {"removed": [version.ref], "tags_removed": tags,
                    "model_removed": model_removed}

    def diff(self, a: str, b: str) -> DiffResult:
        """Files and tensors that differ from version ``a`` to version ``b`` (see
        :mod:`cas.diff`): only chunks whose ids differ are read."""
        from cas.diff import diff_versions

        return diff_versions(self, self.resolve(a), self.resolve(b))

    def du(self, name: str | None = None) -> DiskUsage:
        from cas.catalog import disk_usage

        return disk_usage(self, name)


def open_store(path: Path | str | None = None, *, create: bool = False) -> Store:
    """Open the store at ``path`` (default: :func:`default_store_path`); create it if asked."""
    p = Path(path) if path is not None else default_store_path()
    if create:
        return Store.init(p)
    return Store.open(p)
