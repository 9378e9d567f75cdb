"""A store on local disk: config, packs, registry, lock, and the typed API the CLI drives.

Layout (``docs/format.md`` has the details)::

    <store>/config.json        format version, store UUID, format parameters (immutable)
    <store>/settings.json      mutable settings (description, restore window...)
    <store>/lock               the single-writer lock (flock)
    <store>/packs/pack-<id>.pack, pack-<id>.idx, midx-<hash>.midx
    <store>/registry/          bare git repository of manifests
    <store>/tmp/               temp files of writers; removed by the next writer
    <store>/cache/stat.msgpack stat cache of added paths

``Store`` methods are the public API. Operations are implemented in their own modules
(``ingest``, ``checkout``, ``verify``, ``catalog``) and take a ``Store``.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.clock import iso_utc
from cas.errors import (
    CasError,
    CasWarning,
    ConflictError,
    DiskError,
    FormatError,
    NotFoundError,
    PermError,
    SchemaError,
    VerifyError,
    from_os_error,
)
from cas.format.chunklist import ChunkList
from cas.format.config import FORMAT_NAME, StoreConfig
from cas.format.manifest import Manifest
from cas.locking import DEFAULT_TIMEOUT, WriteLock
from cas.names import VersionSpec, parse_version_spec
from cas.packs import PackSet, pack_path, scan_pack
from cas.storage import Backend
from cas.indexcache import FOLDER as INDEX_CACHE_FOLDER
from cas.indexcache import IndexCache
from cas.storage.local import LocalBackend, default_store_path
from cas.registry import Registry, Version
from cas.settings import FILE as SETTINGS_FILE
from cas.settings import Settings

if TYPE_CHECKING:
    from cas.chunking import ChunkerParams
    from cas.leases import Leases
    from cas.annotate import Annotation, AnnotateResult
    from cas.catalog import HistoryRow, ModelRow, VersionDetail, VersionRow
    from cas.usage import DiskUsage
    from typing import BinaryIO

    from cas.cat import CatResult
    from cas.checkout import CheckoutResult
    from cas.checkouts import CheckoutList
    from cas.diff import DiffResult
    from cas.ingest import AddOptions, AddResult
    from cas.removal import RemovedList, RemoveResult, RestoreResult
    from cas.verify import VerifyReport

class TagResult(msgspec.Struct):
    name: str
    #: The version the tag names (or named, for a deletion); 0 if unreadable.
    seq: int
    commit: str
    tag: str
    deleted: bool
    #: False when the tag already named the version (nothing was done).
    changed: bool
    warnings: list[CasWarning] = []


#: Progress callback: ``(bytes_done, bytes_total, label)``.
Progress = Callable[[int, int, str], None]

CONFIG = "config.json"
#: What a bare git repository holds while it is being made (before HEAD is written).
_GIT_SKELETON = frozenset({"branches", "config", "description", "hooks", "info", "objects",
                           "refs"})
_INIT_PARTS = frozenset({"packs", "tmp", "cache", "registry", "lock", "settings.json"})


class Store:
    """An opened store. Cheap to open: reads the config and mmaps the pack indexes.

    Use :meth:`init` to create one and :meth:`open` to open one.
    """

    def __init__(self, path: Path, config: StoreConfig, backend: Backend | None = None,
                 index_cache: IndexCache | None = None) -> None:
        self.path = path
        self.config = config
        #: Where the store's bytes live; everything a writer changes goes through it.
        self.backend: Backend = backend if backend is not None else LocalBackend(path)
        self.packs_dir = path / "packs"
        self.tmp_dir = path / "tmp"
        self.cache_dir = path / "cache"
        self._index_cache = index_cache
        self._packs: PackSet | None = None
        self._packs_lock = threading.Lock()
        self.registry = Registry(path / "registry", self.backend)
        self.lock_timeout = DEFAULT_TIMEOUT
        #: True if :meth:`init` created this store just now.
        self.created = False
        self._settings: Settings | None = None
        self._leases: Leases | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path | str, *, derive: bool | None = None,
             description: str | None = None, chunker: ChunkerParams | None = None) -> Store:
        """Create a store at ``path``; for an existing store, open it if the options agree.

        ``derive=False`` keeps the store free of derived chunks (see :mod:`cas.derive`): every
        version then restores without reading another, at the cost of storing fine-tunes and
        dtype conversions in full. ``None`` means the default for a new store (derive) and
        "whatever it has" for an existing one. The returned store's ``created`` says whether
        this call made it. ``chunker``: the chunker parameters of a new store (those of the
        store it is cloned from or pushed from; default: the current defaults).

        Raises:
            ConflictError: ``path`` is a store whose settings disagree with the options, or a
                non-empty directory that is not a store.
            FormatError: ``path`` holds a store of an unknown format.
            DiskError | PermError: ``path`` cannot be written.
        """
        from cas.errors import ConflictError

        path = Path(path).expanduser().absolute()
        if (path / CONFIG).exists():
            try:
                store = cls.open(path)
            except NotFoundError:  # a config.json of something else: a model folder
                raise ConflictError(f"{path} is not empty and is not a cas store") from None
            if derive is not None and derive != store.config.derives:
                store.close()
                have = "stores" if not derive else "does not store"
                raise ConflictError(
                    f"store at {path} exists and {have} derived chunks; the option cannot "
                    "change an existing store")
            if description is not None and description != store.settings.get("description"):
                store.close()
                raise ConflictError(
                    f"store at {path} exists with another description; change it with "
                    "'cas config set description ...'")
            return store
        try:
            # A folder holding only the parts init creates is an init that was interrupted
            # before config.json (written last) existed: finish it.
            if path.exists() and not {p.name for p in path.iterdir()} <= _INIT_PARTS:
                raise ConflictError(f"{path} is not empty and is not a cas store")
            for sub in ("packs", "tmp", "cache"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            reg = path / "registry"
            if not (reg / "HEAD").exists():
                # Only a registry folder an interrupted init began is replaced: one holding
                # anything else is someone's data.
                if reg.exists() and not (reg.is_dir() and
                                         {p.name for p in reg.iterdir()} <= _GIT_SKELETON):
                    raise ConflictError(f"{path} is not empty and is not a cas store "
                                        f"({reg} is not a registry)")
                shutil.rmtree(reg, ignore_errors=True)
                Registry.init(path / "registry").close()
            backend = LocalBackend(path)
            if description:
                Settings(path / SETTINGS_FILE, {}).set("description", description, backend)
            cfg = StoreConfig.create(
                derive=True if derive is None else derive,
                created_at=iso_utc(), chunker=chunker)
            # config.json is written last: a directory without it is not yet a store.
            backend.write(CONFIG, cfg.encode())
        except NotADirectoryError:
            raise ConflictError(f"{path} exists and is not a directory") from None
        except OSError as exc:
            raise from_os_error(exc, f"creating store at {path}") from None
        store = cls.open(path)
        store.created = True
        return store

    @classmethod
    def open(cls, path: Path | str, *, cache_for: Store | None = None) -> Store:
        """Open the store at ``path``. ``cache_for``: the store opening this one as a folder
        remote, which keeps verified copies of this store's index files in its own cache
        (:mod:`cas.indexcache`) and reads those rather than this store's.

        Raises:
            NotFoundError: ``path`` is not a cas store (missing, a file, a folder without a
                store config, or a folder whose ``config.json`` belongs to something else,
                such as a Hugging Face model folder).
            FormatError | SchemaError: the store's format is unknown or its config is corrupt.
            VerifyError: ``config.json`` does not match its checksum (edited or damaged).
        """
        path = Path(path).expanduser().absolute()
        try:
            data = (path / CONFIG).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            hint = " (run 'cas init')" if not path.exists() else ""
            raise NotFoundError(f"not a cas store: {path}{hint}") from None
        except OSError as exc:
            raise from_os_error(exc, f"reading the store config of {path}") from None
        try:
            config = StoreConfig.decode(data)
        except FormatError as exc:
            if not _claims_cas(data):
                raise NotFoundError(
                    f"not a cas store: {path} (its config.json is not a cas store config)"
                ) from None
            raise FormatError(f"{path}: {exc.message}") from None
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc.message}") from None
        except VerifyError as exc:
            raise VerifyError(f"{path}: {exc.message}", expected=exc.expected,
                              actual=exc.actual) from None
        cache = None
        if cache_for is not None and config.uuid:
            cache = IndexCache(path / "packs",
                               cache_for.cache_dir / INDEX_CACHE_FOLDER / config.uuid)
        return cls(path, config, index_cache=cache)

    def upgrade(self) -> tuple[int, int, bool]:
        """Bring the store's format to the current version (write lock taken here).

        Only ``config.json`` changes (a compare-and-swap through the backend: temp, fsync,
        rename, directory fsync); see the crash table in ``docs/format.md``. Idempotent.
        Returns ``(old, new, changed)``: the versions, and whether config.json was rewritten
        (a current config written before checksums existed is sealed, nothing else).
        """
        from cas.format.config import upgraded

        with self.writing():
            try:
                data = self.backend.read(CONFIG)
            except OSError as exc:
                raise from_os_error(exc, "reading the store config") from None
            new_data, cfg = upgraded(data)
            old = self.config.version
            if new_data != data:
                try:
                    if not self.backend.swap(CONFIG, data, new_data):
                        raise ConflictError(f"{CONFIG} changed while 'cas upgrade' ran; "
                                            "run it again")
                except OSError as exc:
                    raise from_os_error(exc, f"writing {CONFIG}") from None
            self.config = cfg
            return old, cfg.version, new_data != data

    @property
    def uuid(self) -> str | None:
        """The store's identity; None for a store of format 1 or 2 (``cas upgrade``)."""
        return self.config.uuid or None

    @property
    def settings(self) -> Settings:
        """The store's mutable settings, read once per opened store."""
        if self._settings is None:
            self._settings = Settings.load(self.path, self.backend)
        return self._settings

    def set_setting(self, key: str, value: str | None) -> str | None:
        """Set (``None``: reset) one setting, validated, written atomically under the lock."""
        with self.writing():
            self._settings = Settings.load(self.path, self.backend)
            return self._settings.set(key, value, self.backend)

    @property
    def packs(self) -> PackSet:
        """The store's packs, their indexes opened on first use: a command that moves no
        object (a no-op sync, ls, show) never opens them."""
        if self._packs is None:
            with self._packs_lock:
                if self._packs is None:
                    self._packs = PackSet(self.packs_dir, self._index_cache)
        return self._packs

    def close(self) -> None:
        if self._packs is not None:
            self._packs.close()
        self.registry.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def leases(self) -> Leases:
        """The store's lock objects (:mod:`cas.leases`)."""
        if self._leases is None:
            from cas.leases import Leases

            self._leases = Leases(self.backend)
        return self._leases

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

    def check_writable(self) -> None:
        """Take the write lock and release it: ``E_LOCK`` now when another writer holds it
        past the timeout (rather than after an add's work), and recovery from killed
        writers. See :meth:`writing`."""
        with WriteLock(self.path / "lock", self.lock_timeout):
            self.recover()
        self.packs.refresh()

    def maintain_midx(self) -> list[str]:
        """Cover new packs with multi-pack indexes (write lock held). A midx is an
        accelerator: failing to write one never fails the command that triggered it."""
        from cas.multipack import maintain

        try:
            return maintain(self.packs, self.backend, self.tmp_dir)
        except (CasError, OSError):
            return []

    def recover(self) -> dict[str, int]:
        """Clean up after a killed writer. Call only while holding the write lock."""
        # Temps and swap locks (git's ref locks) of a killed writer would block every later
        # update; only writers create them and we hold the store lock, so any left are stale.
        try:
            removed = self.backend.sweep()
        except OSError as exc:
            raise from_os_error(exc, "removing what a killed writer left") from None
        from cas.errors import DiskError, PermError
        from cas.quarantine import index_or_quarantine

        rebuilt = quarantined = 0
        # Packs without an index (a writer killed between its two renames, or a stray file)
        # and indexes whose header is unusable are rebuilt from the pack; a pack that cannot
        # be indexed is moved to packs/quarantine/ so that it never blocks a writer.
        for pack_id in dict.fromkeys([*self.packs.unindexed(), *self.packs.broken]):
            try:
                done = index_or_quarantine(self, pack_id)
            except (DiskError, PermError):
                continue  # unreadable, not damaged: left for verify to report
            quarantined += done == "quarantined"
            rebuilt += done == "rebuilt"
        return {"temp_files_removed": removed, "indexes_rebuilt": rebuilt,
                "packs_quarantined": quarantined}

    def repair_indexes(self, pack_ids: list[str],
                       midx_names: Sequence[str] = ()) -> list[str]:
        """Rebuild the given packs' indexes from the packs, and replace the given damaged
        multi-pack indexes (write lock taken here).

        Returns the pack ids whose index was rebuilt; packs too damaged to be indexed are
        moved to ``packs/quarantine/`` (reported by ``verify``), never deleted.
        """
        from cas.quarantine import index_or_quarantine

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
                    if pack_id in self.packs.packs:
                        # Its index opens: rebuild it if the pack can be scanned, else keep
                        # it (its objects stay readable; verify reports the pack).
                        self.rebuild_index(pack_id)
                        done.append(pack_id)
                    elif index_or_quarantine(self, pack_id) == "rebuilt":
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
        try:
            self.backend.write(f"packs/pack-{pack_id}.idx", encode_index(entries, trailer_id))
        except OSError as exc:
            raise from_os_error(exc, f"writing the index of pack {pack_id}") from None
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

    def read_chunk_list(self, oid: bytes, file_size: int | None = None) -> ChunkList:
        return self.packs.read_chunk_list(oid, file_size)

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
        from cas import access
        from cas.ingest import AddOptions, add

        result = add(self, name, Path(path), options or AddOptions(), progress)
        try:  # a new version is as recently used as anything (eviction order)
            access.record(self.path, [self.resolve(f"{result.name}@{result.seq}").id])
        except CasError:
            pass
        return result

    def checkout(self, spec: str, dest: Path | str, *, force: bool = False,
                 clean: bool = False, include: Sequence[str] = (),
                 progress: Progress | None = None, cached: bool = False) -> CheckoutResult:
        """Write the files of ``spec`` under ``dest``, byte-identical and SHA-256 verified.

        ``include`` globs select files by path; ``clean`` removes what ``dest`` holds that is
        not in the version (where cas checked out before, or with ``force``). Every checkout
        is recorded in the store (see :meth:`checkouts`). Large files are written with
        ``O_DIRECT`` (fastest, and other programs' cached data stays cached); ``cached=True``
        writes through the page cache instead, so that the files are in memory for a program
        that loads them right away.
        """
        from cas.checkout import checkout

        version = self.resolve(spec)
        with self.using(version.id):
            return checkout(self, version, Path(dest), force=force, clean=clean,
                            include=include, progress=progress, cached=cached)

    def cat(self, spec: str, path: str, out: BinaryIO | Path) -> CatResult:
        """Write the file ``path`` of ``spec`` to ``out``, streaming: every chunk is verified
        before its bytes are written, the whole file's SHA-256 at the end (``VerifyError``
        then, after the bytes). Errors a stream raises propagate unchanged. A ``Path`` is
        written atomically (temp, verify, fsync, rename; see :func:`cas.cat.cat_to_file`)."""
        from cas.cat import cat, cat_to_file

        version = self.resolve(spec)
        with self.using(version.id):
            if isinstance(out, Path):
                return cat_to_file(self, version, path, out)
            return cat(self, version, path, out)

    @contextmanager
    def using(self, version_id: str) -> Iterator[None]:
        """Mark ``version_id`` in use while the block runs (a shared lease ``use <id>``:
        eviction never drops a version a running checkout or cat reads), then record the use
        in the access log (:mod:`cas.access`). A store this process cannot write is read
        without the mark."""
        from cas import access

        try:
            lease = self.leases.acquire_shared(f"use {version_id}", reader=True)
        except (DiskError, PermError):
            lease = None
        try:
            yield
        finally:
            if lease is not None:
                lease.release()
        access.record(self.path, [version_id])

    def checkouts(self) -> CheckoutList:
        """The destinations cas checked versions out into, from the records in the store."""
        from cas.checkouts import list_checkouts

        return list_checkouts(self.path)

    def verify(self, spec: str | None = None, progress: Progress | None = None, *,
               repair: bool = False, files: bool = False,
               heal_from: Path | None = None, heal_remote: str | None = None) -> VerifyReport:
        """Verify one version (``spec``) or, with ``spec=None``, everything a restore reads
        (see :mod:`cas.verify`); ``files`` adds the whole-file SHA-256 of every live version.

        With ``repair`` (whole-store only), indexes found missing or damaged are rebuilt from
        their packs, packs that cannot be indexed are moved to quarantine, and the store is
        verified again; the report lists what was rebuilt and what is in quarantine. With
        ``heal_from`` (and ``repair``), good copies of damaged or missing objects are first
        stored from the files under that path (:mod:`cas.heal`).
        """
        from cas.errors import ArgsError
        from cas.verify import verify_all, verify_version

        if (heal_from is not None or heal_remote is not None) and (spec is not None
                                                                    or not repair):
            raise ArgsError("--from works with verify --all --repair")
        if spec is None:
            stored = 0
            if heal_from is not None:
                from cas.heal import heal_from as heal

                verify_all(self, None)  # records the damaged copies heal must not trust
                stored = heal(self, heal_from, progress).objects_stored
            elif heal_remote is not None:
                from cas.heal import heal_from_remote

                verify_all(self, None)
                stored = heal_from_remote(self, heal_remote, progress).objects_stored
            report = verify_all(self, progress, files=files)
            report.healed_objects = stored
            if repair and (report.bad_indexes or report.bad_midx):
                repaired = self.repair_indexes(report.bad_indexes, report.bad_midx)
                report = verify_all(self, progress, files=files)
                report.repaired_indexes = repaired
                report.healed_objects = stored
            return report
        if repair:
            raise ArgsError("--repair works on the whole store: use verify --all --repair")
        if files:
            raise ArgsError("--files works on the whole store (verify NAME@V always hashes "
                            "whole files): use verify --all --files")
        return verify_version(self, self.resolve(spec), progress)

    def ls(self, pattern: str | None = None, *, format: str | None = None,
           role: str | None = None, tag: str | None = None,
           sort: str = "name") -> list[ModelRow]:
        """Models with live versions (``sort``: name, date, size or versions)."""
        from cas.catalog import list_models

        return list_models(self, pattern, format=format, role=role, tag=tag, sort=sort)

    def ls_versions(self, models: list[ModelRow]) -> list[VersionRow]:
        """Every live version of the given models, for a per-version listing."""
        from cas.catalog import list_versions

        return list_versions(self, models)

    def show(self, spec: str) -> VersionDetail:
        """Metadata (annotations merged), tags and files of version ``spec``."""
        from cas.catalog import show

        return show(self, self.resolve(spec))

    def log(self, spec: str) -> list[HistoryRow]:
        """Events of a model (``NAME``) or of one version (``NAME@V``), newest first."""
        from cas.catalog import history

        return history(self, spec)

    def tag(self, spec: str, tag: str, *, force: bool = False, delete: bool = False,
            author: str | None = None) -> TagResult:
        """Name version ``spec`` with ``tag`` (a tag that already names it: nothing to do), or
        with ``delete`` delete the tag ``tag`` of ``spec``'s model, whatever version it names
        (a removed one included); ``NAME@V`` with ``delete`` must be the version it names.
        Both are events in the model's history."""
        from cas.commits import resolve_identity

        identity = resolve_identity(author)
        parsed = parse_version_spec(spec)
        with self.writing():
            if not delete:
                version = self.resolve(parsed)
                warnings: list[CasWarning] = []
                changed = self.registry.set_tag(version, tag, force=force, identity=identity,
                                                warnings=warnings)
                return TagResult(version.name, version.seq, version.commit, tag, False, changed,
                                 warnings)
            if parsed.selector is not None:
                # Only NAME@V reads where the tag points: a damaged tag stays deletable by NAME.
                target = self.registry.tags(parsed.name).get((parsed.name, tag))
                wanted = self.registry.resolve(parsed, removed_ok=True)
                if target is not None and wanted.commit != target:
                    raise ConflictError(f"tag {parsed.name}@{tag} does not name {wanted.ref}; "
                                        f"'cas tag {parsed.name} {tag} --delete' deletes it")
            named = self.registry.delete_tag(parsed.name, tag, identity)
            return TagResult(parsed.name, named.seq if named else 0,
                             named.commit if named else "", tag, True, True)

    def rm(self, spec: str, *, force: bool = False, message: str = "",
           author: str | None = None) -> RemoveResult:
        """Remove a version (``NAME@V``) or every version of a model (``NAME``).

        Nothing is deleted: the removal is a registry commit, ``restore`` undoes it within the
        restore window, and garbage collection returns the space after that. A tagged version
        is kept unless ``force``, which deletes its tags and records them for ``restore``.
        """
        from cas.removal import remove

        return remove(self, spec, force=force, message=message, author=author)

    def restore(self, spec: str, *, author: str | None = None) -> RestoreResult:
        """Bring back removed versions (``NAME@V``, or with ``NAME`` the latest removal)."""
        from cas.removal import restore

        return restore(self, spec, author=author)

    def removed(self, pattern: str | None = None) -> RemovedList:
        """Removed versions, newest removal first, with their restore deadline."""
        from cas.removal import removed_versions

        return removed_versions(self, pattern)

    def annotate(self, spec: str, annotation: Annotation) -> AnnotateResult:
        """Record metadata on an existing live version as a new registry commit."""
        from cas.annotate import annotate

        return annotate(self, spec, annotation)

    def diff(self, a: str, b: str) -> DiffResult:
        """Files and tensors that differ from version ``a`` to version ``b`` (see
        :mod:`cas.diff`): only chunks whose ids differ are read."""
        from cas.diff import diff_versions

        return diff_versions(self, self.resolve(a), self.resolve(b))

    def du(self, name: str | None = None) -> DiskUsage:
        """Disk usage of the store, or of model ``name`` with a row per version."""
        from cas.usage import disk_usage

        return disk_usage(self, name)


def _claims_cas(config: bytes) -> bool:
    """True if a config file says it is a cas store config (whatever else is wrong with it)."""
    import msgspec

    try:
        raw = msgspec.json.decode(config)
    except msgspec.DecodeError:
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT_NAME


def open_store(path: Path | str | None = None, *, create: bool = False) -> Store:
    """Open the store at ``path`` (default: :func:`default_store_path`); create it if asked."""
    p = Path(path) if path is not None else default_store_path()
    if create:
        return Store.init(p)
    return Store.open(p)
