"""Import from the Hugging Face Hub: ``hf://ORG/NAME[@REVISION]`` to a registered version.

The only module that imports ``huggingface_hub`` (lazily, inside functions: the library reads
``HF_ENDPOINT`` and friends when it is imported, and a cas command that does not talk to the
Hub must not pay for the import).

Steps of :func:`import_repo`:

1. Refuse at once when offline (``--offline``/``CAS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``).
2. Resolve the revision to its commit (one API call). If the model's latest version records
   ``source = hf://ORG/NAME@<commit>`` and the same files, stop: nothing is downloaded.
3. List the commit's files with their Hub ids (the SHA-256 of an LFS file, the git blob id of
   a small one) and sizes; apply ``--include``/``--exclude``; validate every path (a path
   that would leave the folder is refused before anything is written).
4. Check free disk: the store must hold what the import may add (the whole size, the worst
   case of incompressible new content); ``E_DISK`` before anything is written.
5. Register the files with :func:`cas.ingest_stream.add_streams`, each opened as a stream: a
   thread downloads it with huggingface_hub's HTTP client (its URL rules, token headers and
   retries) into a bounded pipe while the ingest chunks, hashes, dedupes (against every
   earlier revision) and packs what arrives, so downloading and chunking overlap and no
   file is ever written outside the store. Each file is checked when its last byte is
   packed (LFS files by SHA-256, small files by git blob id); one that does not match fails
   the import with ``E_VERIFY`` before anything is registered. The version records the
   source, the licence from the model card (``license:`` in ``README.md``'s front matter,
   fetched first and held in memory) and ``hf.*`` metadata.

Resume: the ingest's resume record (``cache/resume/hub-<ORG>--<NAME>--<commit>.json``)
names the files, and the prefixes of files, already durable in the store; a run after an
interruption downloads none of the former and asks for the rest of the latter with ``Range``.
The disk holds one compressed copy throughout.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from cas.errors import (
    ArgsError,
    CasError,
    CasWarning,
    DiskError,
    NetError,
    NotFoundError,
    PermError,
    VerifyError,
    from_os_error,
)
from cas.names import validate_model_name, validate_rel_path

if TYPE_CHECKING:
    from cas.format.manifest import Manifest
    from cas.store import Progress, Store

SCHEME = "hf://"
#: A Hub repository id: ``NAME`` or ``ORG/NAME`` (the Hub's own rules, a little stricter).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: Metadata keys recorded on an imported version.
META_REPO = "hf.repo"
META_REVISION = "hf.revision"
META_COMMIT = "hf.commit"
#: JSON list of the paths the Hub stores with git-lfs (named by SHA-256 in a cache).
META_LFS = "hf.lfs"
#: Bytes kept free beyond what an import needs (metadata, pack indexes, the registry).
DISK_MARGIN = 64 << 20
#: Inside a staging folder: verified files under their paths, and parts being received.
FILES = "files"
PARTIAL = "partial"
#: Front matter bigger than this is not a model card's.
MAX_CARD = 1 << 20
_GIT_BLOB = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubSource:
    """A parsed ``hf://ORG/NAME[@REVISION]``."""

    repo_id: str
    revision: str | None = None

    def at(self, commit: str) -> str:
        return f"{SCHEME}{self.repo_id}@{commit}"


class HubFile(msgspec.Struct, frozen=True):
    """One file of a Hub commit, as the Hub lists it."""

    path: str
    size: int
    #: The git blob id of what git holds (for an LFS file: of its pointer).
    blob_id: str
    #: The SHA-256 of the content, for an LFS file; None for a small file.
    sha256: str | None = None

    @property
    def etag(self) -> str:
        """The name the Hub (and its cache) gives the content."""
        return self.sha256 if self.sha256 is not None else self.blob_id


class ImportResult(msgspec.Struct):
    """What an import did: the version it registered (or found already there)."""

    name: str
    source: str
    repo: str
    revision: str
    hub_commit: str
    seq: int
    commit: str
    #: False when the version was there already (nothing downloaded) or unchanged.
    created: bool
    files: int
    total_size: int
    downloaded_bytes: int
    new_stored_bytes: int
    license: str | None = None
    #: Files of the commit left out by --include/--exclude.
    excluded: int = 0
    warnings: list[CasWarning] = []


def parse_source(text: str) -> HubSource:
    """``hf://ORG/NAME[@REVISION]`` (a bare ``ORG/NAME`` is not taken: the scheme says where).

    Raises:
        ArgsError: not an ``hf://`` source, or a malformed repository id or revision.
    """
    if not text.startswith(SCHEME):
        raise ArgsError(f"{text!r}: not a Hub source; write hf://ORG/NAME[@REVISION]")
    body = text[len(SCHEME):]
    repo, sep, revision = body.partition("@")
    if not _REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise ArgsError(f"{text!r}: {repo!r} is not a Hub repository id (ORG/NAME)")
    if sep and (not revision or any(c in revision for c in "\x00\\ ") or ".." in revision
                or revision.startswith("/")):
        raise ArgsError(f"{text!r}: {revision!r} is not a revision")
    return HubSource(repo, revision if sep else None)


def parse_recorded(source: str | None) -> tuple[str, str] | None:
    """``(repo_id, commit)`` of a recorded ``hf://ORG/NAME@<commit>`` source, else None."""
    if not source or not source.startswith(SCHEME):
        return None
    try:
        parsed = parse_source(source)
    except ArgsError:
        return None
    if parsed.revision is None or not _COMMIT.match(parsed.revision):
        return None
    return parsed.repo_id, parsed.revision


def check_online(what: str) -> None:
    """Refuse Hub access while offline: ``--offline``/``CAS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.

    Raises:
        NetError: naming the setting.
    """
    from cas.rpc import check_online as cas_check_online

    cas_check_online(what)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        raise NetError(f"{what}: HF_HUB_OFFLINE is set: the Hub is not contacted")


@contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Translate huggingface_hub and network exceptions into cas errors naming ``what``."""
    from huggingface_hub import errors as hf

    try:
        yield
    except CasError:
        raise
    except hf.GatedRepoError as exc:
        raise PermError(f"{what}: the repository is gated: accept its conditions on the Hub "
                        f"and set HF_TOKEN ({_first_line(exc)})") from None
    except hf.RepositoryNotFoundError:
        raise NotFoundError(f"{what}: no such repository (or it is private: set HF_TOKEN)"
                            ) from None
    except hf.RevisionNotFoundError:
        raise NotFoundError(f"{what}: no such revision") from None
    except hf.EntryNotFoundError as exc:
        raise NotFoundError(f"{what}: {_first_line(exc)}") from None
    except hf.OfflineModeIsEnabled:
        raise NetError(f"{what}: HF_HUB_OFFLINE is set: the Hub is not contacted") from None
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise PermError(f"{what}: access refused ({status}); set HF_TOKEN") from None
        raise NetError(f"{what}: {_first_line(exc)}") from None
    except (ConnectionError, TimeoutError) as exc:
        raise NetError(f"{what}: {_first_line(exc)}") from None
    except OSError as exc:
        if exc.errno is None:  # huggingface_hub's own "consistency check failed" and the like
            raise NetError(f"{what}: {_first_line(exc)}") from None
        raise from_os_error(exc, what) from None
    except Exception as exc:  # noqa: BLE001 - httpx errors are not OSErrors
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests"):
            raise NetError(f"{what}: {_first_line(exc)}") from None
        raise


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _api() -> Any:
    from huggingface_hub import HfApi

    # Read at call time, never at import time: HF_ENDPOINT may be set after cas was imported.
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


def resolve_commit(source: HubSource) -> tuple[str, str]:
    """The commit id that ``source``'s revision (default: the main branch) names, and whether
    the repository is gated (``"false"``, or the Hub's ``auto``/``manual``), recorded as
    ``hf.gated`` so that checkout asks for the licence to be accepted (:mod:`cas.licenses`)."""
    with hub_errors(f"{SCHEME}{source.repo_id}"):
        info = _api().model_info(source.repo_id, revision=source.revision or "main")
    commit = getattr(info, "sha", None)
    if not isinstance(commit, str) or not _COMMIT.match(commit):
        raise NetError(f"{SCHEME}{source.repo_id}: the Hub named no commit for revision "
                       f"{source.revision or 'main'}")
    gated = getattr(info, "gated", None)
    return commit, (str(gated).lower() if gated not in (None, False) else "false")


def list_files(repo_id: str, commit: str) -> list[HubFile]:
    """Every file of ``commit`` with its Hub ids, sorted by path; paths validated.

    Raises:
        ArgsError: the repository holds a path that is not safe to write (``..``, absolute,
            ``.git``...): nothing is downloaded.
    """
    out = []
    with hub_errors(f"{SCHEME}{repo_id}@{commit}"):
        for entry in _api().list_repo_tree(repo_id, revision=commit, recursive=True):
            if not hasattr(entry, "blob_id"):
                continue  # a folder
            try:
                validate_rel_path(entry.path, user_input=True)
            except ArgsError as exc:
                raise ArgsError(f"{SCHEME}{repo_id}@{commit} holds an unsafe path: "
                                f"{exc.message}") from None
            lfs = entry.lfs
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
                raise VerifyError(f"{SCHEME}{repo_id}@{commit}: {entry.path}: the Hub lists "
                                  f"a malformed SHA-256 {sha!r}")
            if not _GIT_BLOB.match(entry.blob_id or ""):
                raise VerifyError(f"{SCHEME}{repo_id}@{commit}: {entry.path}: the Hub lists "
                                  f"a malformed blob id {entry.blob_id!r}")
            out.append(HubFile(entry.path, int(entry.size), entry.blob_id, sha))
    return sorted(out, key=lambda f: f.path)


def select(files: Sequence[HubFile], include: Sequence[str], exclude: Sequence[str]
           ) -> list[HubFile]:
    """The files that an ``include`` pattern matches (all without one) and no ``exclude``
    pattern does; gitignore syntax, as ``add --exclude`` and ``checkout --include``.

    Raises:
        ArgsError: a malformed pattern, or nothing left.
    """
    from cas.ignore import IgnoreRules
    from cas.include import include_pattern

    wanted = [include_pattern(p) for p in include]
    rules = IgnoreRules([], exclude) if exclude else None
    out = [f for f in files
           if (not wanted or any(m(f.path) for m in wanted))
           and (rules is None or rules.reason(f.path, False) is None)]
    if not out:
        raise ArgsError("--include/--exclude leave no file of the repository to import")
    return out


def git_blob_id_of(path: Path) -> str:
    """The git blob SHA-1 of a file's content, streaming."""
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    _feed(path, h.update)
    return h.hexdigest()


def _feed(path: Path, update: Callable[[bytes], object]) -> None:
    with open(path, "rb", buffering=0) as f:
        while block := f.read(8 << 20):
            update(block)


def verify_file(path: Path, expected: HubFile, what: str) -> None:
    """Check a downloaded (or cached) file against the Hub's id for it.

    Raises:
        VerifyError: size or hash differ.
    """
    try:
        size = path.stat().st_size
        if size != expected.size:
            raise VerifyError(f"{what}: {expected.path}: {size} bytes, the Hub lists "
                              f"{expected.size}", expected=str(expected.size), actual=str(size))
        if expected.sha256 is not None:
            h = hashlib.sha256()
            _feed(path, h.update)
            actual = h.hexdigest()
        else:
            actual = git_blob_id_of(path)
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    if actual != expected.etag:
        kind = "SHA-256" if expected.sha256 is not None else "git blob id"
        raise VerifyError(f"{what}: {expected.path}: its {kind} is {actual}, the Hub lists "
                          f"{expected.etag}", expected=expected.etag, actual=actual)


def card_license(readme: bytes) -> str | None:
    """The ``license:`` of a model card's YAML front matter, or None."""
    text = readme[:MAX_CARD].decode("utf-8", "replace").lstrip("\ufeff")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        import yaml

        front = yaml.safe_load(text[3:end])
    except Exception:  # noqa: BLE001 - a malformed card has no licence, not an error
        return None
    value = front.get("license") if isinstance(front, dict) else None
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value)
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:200]


def require_free(needs: Sequence[tuple[Path, int]], what: str) -> None:
    """``E_DISK`` unless each filesystem holds the bytes asked of it (plus a margin).

    ``needs``: ``(a path on the filesystem, bytes)``; the bytes of paths on one filesystem
    add up. Called before anything is written.
    """
    per_fs: dict[int, tuple[Path, int]] = {}
    for path, n in needs:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            dev = probe.stat().st_dev
        except OSError as exc:
            raise from_os_error(exc, f"checking free disk at {probe}") from None
        prev = per_fs.get(dev, (probe, 0))
        per_fs[dev] = (prev[0], prev[1] + n)
    for probe, n in per_fs.values():
        try:
            free = shutil.disk_usage(probe).free
        except OSError as exc:
            raise from_os_error(exc, f"checking free disk at {probe}") from None
        if free < n + DISK_MARGIN:
            raise DiskError(f"{what}: needs about {_mib(n + DISK_MARGIN)} free at {probe}, "
                            f"has {_mib(free)}; nothing was written")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def latest_matches(store: Store, name: str, source: str, paths: Sequence[str]
                   ) -> tuple[Any, Manifest] | None:
    """The model's latest version if it records ``source`` and holds exactly ``paths``."""
    registry = store.registry
    if registry.head(name) is None:
        return None
    live = registry.versions(name)
    if not live:
        return None
    manifest = store.manifest(live[-1])
    if manifest.metadata.source != source or \
            sorted(f.path for f in manifest.files) != sorted(paths):
        return None
    return live[-1], manifest


@dataclass
class _Bytes:
    done: int = 0
    total: int = 0
    label: str = ""


def _tqdm_class(progress: Progress | None, state: _Bytes) -> type:
    """A silent tqdm for huggingface_hub that reports bytes to ``progress``."""
    from tqdm.auto import tqdm

    class Reporter(tqdm):  # type: ignore[misc,type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            state.done += int(n or 0)
            if progress is not None:
                progress(state.done, state.total, state.label)
            return super().update(n)  # type: ignore[no-any-return]

    return Reporter


class _Abandoned(Exception):
    """The ingest stopped reading a download (another error): the download thread ends."""


class _Pipe:
    """Bytes handed from a download thread to the ingest: huggingface_hub's ``http_get``
    writes into it as into a file, the ingest reads it with ``readinto``. At most
    ``PIPE_BYTES`` wait in it, so a download runs ahead of chunking by that much.

    ``start``: the file offset of the first byte asked for. When a server ignores ``Range``,
    ``http_get`` seeks back to where the download started; the bytes it then writes again are
    dropped until the pipe is back at the position it had reached."""

    def __init__(self, start: int, limit: int) -> None:
        self._cond = threading.Condition()
        self._parts: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._limit = limit
        self._pos = start
        self._skip = 0
        self._done = False
        self._closed = False
        self._error: BaseException | None = None
        self._head = memoryview(b"")
        #: Bytes received and passed on (not those dropped after a restart).
        self.received = 0

    # -- the download thread's side (a file to http_get) ----------------------------------
    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos > self._pos:
            raise OSError("a download pipe only seeks back")
        self._skip += self._pos - pos
        self._pos = pos
        return pos

    def truncate(self, size: int | None = None) -> int:
        return self._pos

    def flush(self) -> None:
        pass

    def write(self, data: bytes) -> int:
        n = len(data)
        self._pos += n
        if self._skip:
            dropped = min(self._skip, n)
            self._skip -= dropped
            data = data[dropped:]
        if data:
            with self._cond:
                while self._buffered >= self._limit and not self._closed:
                    self._cond.wait()
                if self._closed:
                    raise _Abandoned()
                self._parts.append(data)
                self._buffered += len(data)
                self.received += len(data)
                self._cond.notify_all()
        return n

    def finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._done, self._error = True, error
            self._cond.notify_all()

    # -- the ingest's side ----------------------------------------------------------------
    def readinto(self, buf: Any) -> int:
        if not self._head:
            with self._cond:
                while not self._parts and not self._done:
                    self._cond.wait()
                if not self._parts:
                    if self._error is not None:
                        raise self._error
                    return 0
                part = self._parts.popleft()
                self._buffered -= len(part)
                self._cond.notify_all()
            self._head = memoryview(part)
        n = min(len(buf), len(self._head))
        buf[:n] = self._head[:n]
        self._head = self._head[n:]
        return n

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._parts.clear()
            self._cond.notify_all()


#: Bytes a download may run ahead of the ingest (huggingface_hub writes 10 MiB pieces).
PIPE_BYTES = 32 << 20


class _Downloads:
    """Opens Hub files as streams (:data:`cas.ingest_stream.Opener`): each open starts a
    thread that downloads the file from an offset (``Range``) with huggingface_hub's HTTP
    client (its URL rules, token headers, retries) into a :class:`_Pipe`."""

    def __init__(self, repo_id: str, commit: str, progress: Progress | None,
                 total: int) -> None:
        from huggingface_hub.utils import build_hf_headers

        self.repo_id, self.commit = repo_id, commit
        self.what = f"{SCHEME}{repo_id}@{commit}"
        self.state = _Bytes(total=total)
        self.reporter = _tqdm_class(progress, self.state)
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.headers = build_hf_headers()  # HF_TOKEN, else the token file
        self.pipes: list[_Pipe] = []

    @property
    def received(self) -> int:
        return sum(p.received for p in self.pipes)

    def fetch(self, f: HubFile) -> bytes:
        """A small file whole, in memory."""
        out = bytearray()
        stream = self.opener(f)(0)
        buf = bytearray(1 << 20)
        while n := stream.readinto(buf):
            out += buf[:n]
        return bytes(out)

    def opener(self, f: HubFile) -> Callable[[int], Any]:
        def open_at(offset: int) -> _Pipe:
            pipe = _Pipe(offset, PIPE_BYTES)
            self.pipes.append(pipe)
            self.state.label = f.path
            threading.Thread(target=self._download, args=(f, offset, pipe), daemon=True,
                             name="cas-hub-download").start()
            return pipe

        return open_at

    def _download(self, f: HubFile, offset: int, pipe: _Pipe) -> None:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get

        error: BaseException | None = None
        try:
            with hub_errors(f"{self.what}: {f.path}"):
                url = hf_hub_url(self.repo_id, f.path, revision=self.commit,
                                 endpoint=self.endpoint)
                meta = get_hf_file_metadata(url, headers=self.headers, endpoint=self.endpoint)
                if meta.size is not None and meta.size != f.size:
                    raise VerifyError(f"{self.what}: {f.path}: the Hub serves {meta.size} "
                                      f"bytes but lists {f.size}")
                http_get(meta.location or url, pipe, resume_size=offset,  # type: ignore[arg-type]
                         headers=self.headers, expected_size=f.size,
                         displayed_filename=f.path, tqdm_class=self.reporter)
        except _Abandoned:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised again by the ingest's read
            error = exc
        pipe.finish(error)


def import_repo(store: Store, source: HubSource, name: str | None = None, *,
                include: Sequence[str] = (), exclude: Sequence[str] = (), message: str = "",
                tags: Sequence[str] = (), progress: Progress | None = None) -> ImportResult:
    """Register ``source`` (one commit of a Hub repository) as a version of ``name``
    (default: the repository id). See the module docstring for the steps.

    Idempotent: a second import of the same commit with the same selection downloads nothing
    and registers nothing. An interrupted import resumes its downloads on the next run.

    Raises:
        ArgsError: bad name, pattern or a path of the repository that is not safe.
        NetError: offline, or the Hub could not be reached.
        NotFoundError | PermError: no such repository or revision; access refused.
        DiskError: not enough free disk (before anything is written).
        VerifyError: a downloaded file does not match the Hub's id (nothing registered).
    """
    from cas.ingest import AddOptions
    from cas.ingest_stream import StreamFile, add_streams
    from cas.licenses import META_GATED

    name = validate_model_name(name or source.repo_id)
    shown = f"{SCHEME}{source.repo_id}" + (f"@{source.revision}" if source.revision else "")
    check_online(shown)
    commit, gated = resolve_commit(source)
    files = list_files(source.repo_id, commit)
    chosen = select(files, include, exclude)
    recorded = source.at(commit)
    revision = source.revision or "main"
    found = latest_matches(store, name, recorded, [f.path for f in chosen])
    if found is not None:
        version, manifest = found
        return ImportResult(name, recorded, source.repo_id, revision, commit, version.seq,
                            version.commit, False, len(manifest.files), manifest.total_size,
                            0, 0, manifest.metadata.license, len(files) - len(chosen))
    # The worst case: every byte new and incompressible. Nothing is staged outside the store.
    require_free([(store.path, sum(f.size for f in chosen))], f"importing {shown}")
    downloads = _Downloads(source.repo_id, commit, progress, sum(f.size for f in chosen))
    streams = []
    licence = None
    for f in chosen:
        opener = downloads.opener(f)
        if f.path == "README.md" and f.size <= MAX_CARD:
            # The card is read for its licence before the version is made: fetched once,
            # whole, and handed to the ingest from memory.
            card = downloads.fetch(f)
            licence = card_license(card)
            opener = _from_memory(card)
        streams.append(StreamFile(f.path, f.size, opener, sha256=f.sha256,
                                  git_blob_id=None if f.sha256 is not None else f.blob_id))
    lfs = [f.path for f in chosen if f.sha256 is not None]
    options = AddOptions(
        message=message or f"import {recorded}", tags=list(tags), license=licence,
        source=recorded,
        extra={META_REPO: source.repo_id, META_REVISION: revision, META_COMMIT: commit,
               META_LFS: msgspec.json.encode(lfs).decode(), META_GATED: gated})
    added = add_streams(store, name, streams, options, progress,
                        resume=resume_key(source.repo_id, commit))
    return ImportResult(name, recorded, source.repo_id, revision, commit, added.seq,
                        added.commit, added.created, added.files, added.total_size,
                        downloads.received, added.new_stored_bytes, licence,
                        len(files) - len(chosen), list(added.warnings))


def resume_key(repo_id: str, commit: str) -> str:
    """The resume record of an import of one repository commit (``cache/resume/<key>.json``,
    see :mod:`cas.ingest_stream`): the same for every run, so a run after an interruption
    finds what the last one stored."""
    return f"hub-{repo_id.replace('/', '--')}--{commit}"


def _from_memory(data: bytes) -> Callable[[int], Any]:
    def open_at(offset: int) -> io.BytesIO:
        return io.BytesIO(data[offset:])

    return open_at
