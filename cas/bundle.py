"""Air-gapped sync: site state files and bundles (``cas state export``, ``cas bundle``).

A **state file** says what a disconnected site holds: its store UUID, its model refs' tips
and the versions it registered without their content. Every version that keeps data at those
tips (live, tagged, pinned, restorable) and is not listed absent is held there, whole: that is
exact, and small (a tip per model, not an id per version).

A **bundle** is what a push would send, written to one file in one pass: the sync protocol's
frames (:mod:`cas.rpc`) after a magic, in a fixed order: a header (capabilities, the sender,
prerequisites, the ref updates with the values the receiver is expected to hold, the manifests
whose content is carried), the registry objects, the transfer packs of exactly the objects the
site lacks (:mod:`cas.transfer`, derived chunks' bases included), and a trailer with the
BLAKE3 of every byte before it. ``docs/format.md``, "Bundles", has the layout.

Import is a pull from the file: prerequisites and capabilities are checked before anything is
written, registry objects and packs arrive verified (packs durable before refs), the trailer
is checked, and only then do refs move (by compare-and-swap, fast-forward only unless forced;
:meth:`cas.peer.LocalPeer.update_refs`). A re-run after a crash finds what arrived and moves
the refs.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import blake3
import msgspec

from cas import registry_transfer as rt
from cas import sync, transfer
from cas.errors import (
    ArgsError,
    CasError,
    CasWarning,
    FormatError,
    NotFoundError,
    VerifyError,
    from_os_error,
)
from cas.format.manifest import Manifest
from cas.peer import LocalPeer, RefResult, RefUpdate
from cas.registry import MODEL_REF_PREFIX
from cas.rpc import Framed
from cas.store import Progress, Store

MAGIC = b"CASBNDL\x00"
VERSION = 1
#: Capabilities this build reads; a bundle's ``required`` ones must all be here.
KNOWN_CAPS = {"transfer-packs-1", "registry-objects-1", "derived-chunks-1"}
STATE_SCHEMA = "cas.state"
#: Registry objects per header frame (a frame holds at most 64 MiB).
OBJECT_FRAME_BYTES = 16 << 20


# -- site state ----------------------------------------------------------------------------------


class SiteState(msgspec.Struct, forbid_unknown_fields=True):
    uuid: str
    #: ``refs/models/NAME`` -> commit id (hex)
    tips: dict[str, str]
    #: version ids registered there without their content
    absent: list[str] = []
    description: str = ""
    derives: bool = True
    chunker: dict[str, Any] = {}
    schema: str = STATE_SCHEMA
    version: int = 1


def export_state(store: Store) -> bytes:
    """This store's state file (compact JSON)."""
    from cas import presence

    reg = store.registry
    tips = {ref.decode(): sha.decode() for ref, sha in reg.refs_under(MODEL_REF_PREFIX).items()}
    state = SiteState(store.uuid or "", dict(sorted(tips.items())),
                      sorted(presence.load(store.backend)),
                      str(store.settings.get("description") or ""), store.config.derives,
                      msgspec.to_builtins(store.config.chunker))
    return msgspec.json.encode(state) + b"\n"


def read_state(data: bytes) -> SiteState:
    """Parse a state file.

    Raises:
        SchemaError: not a version-1 state file.
    """
    from cas.errors import SchemaError
    from cas.peer import check_ref_name

    try:
        state = msgspec.json.decode(data, type=SiteState)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"state file: {exc}") from None
    if state.schema != STATE_SCHEMA or state.version != 1:
        raise SchemaError("not a version-1 cas state file")
    for ref, sha in state.tips.items():
        check_ref_name(ref)
        if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
            raise SchemaError(f"state file: {ref} -> {sha!r} is not a commit id")
    return state


# -- the header ----------------------------------------------------------------------------------


class Prereq(msgspec.Struct, frozen=True):
    """A version the receiver must already hold whole (its objects are not in the bundle)."""

    model: str
    id: str
    blob: str


class Header(msgspec.Struct):
    required: list[str]
    caps: list[str]
    sender: str
    chunker: dict[str, Any]
    #: Commits the receiver must have (the site's tips the bundle builds on).
    commits: list[str]
    versions: list[Prereq]
    refs: list[RefUpdate]
    #: Manifest blobs whose content the bundle carries.
    content: list[str]
    site: str = ""
    created_at: str = ""
    kind: str = "cas.bundle"


class BundleResult(msgspec.Struct):
    path: str
    refs: list[RefResult] = []
    registry_objects: int = 0
    objects: int = 0
    bytes: int = 0
    packs: int = 0
    seconds: float = 0.0
    prerequisites: int = 0
    site: str = ""
    warnings: list[CasWarning] = []


class _SiteView:
    """The receiving site as a state file describes it, for :func:`cas.sync._content`."""

    def __init__(self, held: set[str]) -> None:
        self.held = held

    def present(self, blobs: list[str]) -> list[str]:
        return [b for b in blobs if b in self.held]


class _HashingWriter:
    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.h = blake3.blake3()
        self.size = 0

    def write(self, b: bytes | memoryview) -> int:
        self.f.write(b)
        self.h.update(b)
        self.size += len(b)
        return len(b)

    def flush(self) -> None:
        self.f.flush()


# -- create --------------------------------------------------------------------------------------


def create(store: Store, out: str, names: list[str] = (),  # type: ignore[assignment]
           since: SiteState | None = None, since_site: str | None = None,
           progress: Progress | None = None) -> BundleResult:
    """Write a bundle of models ``names`` (every model without names) to ``out`` (a path, or
    ``-`` for stdout): everything, or with ``since`` / ``since_site`` only what that site
    lacks. Afterwards the site's refs as the bundle leaves them are recorded here
    (``refs/remotes/site-<uuid>/...``), so the next bundle can use ``since_site``.

    Raises:
        ArgsError | NotFoundError: unknown models or site.
    """
    t0 = time.monotonic()
    selection = sync._selection(list(names))  # noqa: SLF001 - sync's own selection rules
    local = LocalPeer(store)
    ours = sync._select(local.refs(), selection)  # noqa: SLF001
    for n in selection:
        if f"{MODEL_REF_PREFIX.decode()}{n}" not in ours:
            raise NotFoundError(f"model {n!r} is not registered here")
    site_uuid, site_refs, absent = "", {}, set()
    derives = store.config.derives
    if since is not None:
        site_uuid, site_refs, absent = since.uuid, dict(since.tips), set(since.absent)
        derives = since.derives
    elif since_site:
        site_uuid = _find_site(store, since_site)
        site_refs = sync.tracking_refs(store, _site_name(site_uuid))
    reg = store.registry
    result = BundleResult(out, site=site_uuid)
    if since is not None and since.chunker and since.chunker != msgspec.to_builtins(
            store.config.chunker):
        result.warnings.append(CasWarning(
            "W_CHUNKER_DIFFERS", "the site cuts files with other chunker parameters: what "
                                 "moves is correct, but later files dedupe less"))
    cutoff = sync._cutoff(store)  # noqa: SLF001
    labels = sync._labels(ours)  # noqa: SLF001
    updates, jobs, held_blobs, commits = [], [], set(), []
    for ref, sha in sorted(ours.items()):
        old = site_refs.get(ref)
        model_ref = ref.startswith(MODEL_REF_PREFIX.decode())
        if old is not None and model_ref and rt.has(reg, old.encode()):
            commits.append(old)
            model = ref[len(MODEL_REF_PREFIX):]
            for r in sync._roots_at(reg, model, old, labels.get(model, ({}, set())),  # noqa: SLF001
                                    cutoff):
                if r.id not in absent:
                    held_blobs.add(r.blob.decode())
        if old == sha:
            if model_ref and absent:  # in step: only content the site registered without
                model = ref[len(MODEL_REF_PREFIX):]
                jobs.append(sync._Job(model, selection.get(model), old, sha))  # noqa: SLF001
            continue
        if old is not None and model_ref and not (
                rt.has(reg, old.encode()) and rt.is_ancestor(reg, old.encode(), sha.encode())):
            result.refs.append(RefResult(ref, "rejected", "the site has changes this store "
                                         "lacks: bring them here first (a bundle from there)"))
            continue
        updates.append(RefUpdate(ref, old, sha))
        if model_ref:
            jobs.append(sync._Job(ref[len(MODEL_REF_PREFIX):], selection.get(  # noqa: SLF001
                ref[len(MODEL_REF_PREFIX):]), old, sha))
    site = _SiteView(held_blobs)
    content = sync._content(reg, local, site, jobs, ours, cutoff, absent)  # noqa: SLF001
    held = sorted(local.present(sorted(held_blobs)))
    have_ids = set(local.closure(held)) if held else set()
    ids = [oid for oid in (local.closure(content) if content else []) if oid not in have_ids]
    objs = rt.missing_objects(reg, [u.new.encode() for u in updates],
                              [c.encode() for c in commits]) if updates else []
    prereqs = []
    for b in held:
        m = Manifest.decode(reg.blob(b.encode()))
        if m.id is not None:
            prereqs.append(Prereq(m.name, m.id, b))
    header = Header(["transfer-packs-1", "registry-objects-1"], sorted(KNOWN_CAPS),
                    store.uuid or "", msgspec.to_builtins(store.config.chunker),
                    sorted(set(commits)), prereqs, updates, content, site_uuid,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    total, pieces = local.send(ids, not derives) if ids else (0, iter(()))
    try:
        target: IO[bytes] = sys.stdout.buffer if out == "-" else open(out, "wb")  # noqa: SIM115
    except IsADirectoryError:
        raise ArgsError(f"{out} is a folder: name the bundle file to write") from None
    except OSError as exc:
        raise from_os_error(exc, f"writing {out}") from None
    try:
        w = _HashingWriter(target)
        w.write(MAGIC + VERSION.to_bytes(4, "big"))
        framed = Framed(io.BytesIO(), w, out)  # type: ignore[arg-type]
        framed.write_message({"header": msgspec.to_builtins(header)})
        for chunk in _object_frames(objs):
            framed.write_message({"objects": chunk})
        stats = transfer.TransferStats()

        def tally(it: Iterator[bytes | memoryview]) -> Iterator[bytes | memoryview]:
            for p in it:
                stats.bytes += len(p)
                yield p

        framed.write_stream(tally(transfer.counted(pieces, total, progress)))
        framed.write_message({"end": True, "checksum": w.h.hexdigest()})
        w.flush()
        if out != "-":
            os.fsync(target.fileno())
    except BaseException:
        if out != "-":
            target.close()
            Path(out).unlink(missing_ok=True)
        raise
    if out != "-":
        target.close()
    result.registry_objects = len(objs)
    result.objects = len(ids)
    result.bytes = stats.bytes
    result.prerequisites = len(prereqs) + len(set(commits))
    result.refs += [RefResult(u.ref, "ok") for u in updates]
    result.refs.sort(key=lambda r: r.ref)
    if site_uuid:
        after = dict(site_refs)
        after.update({u.ref: u.new for u in updates})
        sync._track(store, _site_name(site_uuid), after, prune=False)  # noqa: SLF001
    result.seconds = time.monotonic() - t0
    return result


def _object_frames(objs: list[tuple[int, bytes]]) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    size = 0
    for o in objs:
        if chunk and size + len(o[1]) > OBJECT_FRAME_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(o)
        size += len(o[1]) + 16
    if chunk:
        yield chunk


def _site_name(uuid: str) -> str:
    return f"site-{uuid}"


def _find_site(store: Store, spec: str) -> str:
    """The UUID of a site this store made bundles for, from a UUID or a prefix of one."""
    sites = sorted({r.decode().split("/")[2][len("site-"):]
                    for r in store.registry.refs_under(b"refs/remotes/")
                    if r.decode().split("/")[2].startswith("site-")})
    found = [s for s in sites if s.startswith(spec)]
    if len(found) != 1:
        raise NotFoundError(f"site {spec!r}: " + ("no bundle was made for it here (known: "
                                                  + (", ".join(sites) or "none") + ")"
                                                  if not found else "ambiguous"))
    return found[0]


# -- reading -------------------------------------------------------------------------------------


class _Consumed:
    """Reads through a buffer, hashing exactly the bytes handed out (what the trailer's
    checksum covers is what was consumed before it, not what the buffer read ahead)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.buf = io.BufferedReader(f, 1 << 20)  # type: ignore[arg-type]
        self.h = blake3.blake3()

    def read(self, n: int) -> bytes:
        data = self.buf.read(n)
        self.h.update(data)
        return data


class Reader:
    """A bundle read front to back: :attr:`header`, then :meth:`objects`, :meth:`stream`
    and :meth:`trailer`, in that order. Everything is checked as it is read.

    Raises:
        VerifyError: not a bundle, truncated or damaged (named).
        FormatError: a newer bundle version, or a required capability this build lacks.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.file: IO[bytes] = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        except IsADirectoryError:
            raise ArgsError(f"{path} is a folder, not a bundle file") from None
        except OSError as exc:
            raise from_os_error(exc, f"reading {path}") from None
        self.src = _Consumed(self.file)
        head = self.src.read(len(MAGIC) + 4)
        if head[: len(MAGIC)] != MAGIC[: len(head)] or len(head) < len(MAGIC):
            raise VerifyError(f"{path} is not a cas bundle")
        if len(head) < len(MAGIC) + 4:
            raise VerifyError(f"{path} is truncated (in its version field)")
        version = int.from_bytes(head[len(MAGIC):], "big")
        if version != VERSION:
            raise FormatError(f"{path}: bundle version {version}; this build reads {VERSION}")
        self.framed = Framed(self.src, io.BytesIO(), path)  # type: ignore[arg-type]
        doc = self._message()
        try:
            self.header = msgspec.convert(doc.get("header"), Header)
        except msgspec.ValidationError as exc:
            raise VerifyError(f"{path}: malformed bundle header: {exc}") from None
        unknown = sorted(set(self.header.required) - KNOWN_CAPS)
        if unknown:
            raise FormatError(f"{path} needs capabilities this build lacks: "
                              f"{', '.join(unknown)}")
        _check_header(self.header, path)
        self._pending: tuple[bytes, bytes] | None = None

    def _frame(self) -> tuple[bytes, bytes]:
        try:
            return self.framed.read_frame()
        except CasError as exc:
            raise VerifyError(f"{self.path} is truncated or damaged: {exc.message}") from None

    def _message(self) -> dict[str, Any]:
        kind, payload = self._frame()
        if kind != b"M":
            raise VerifyError(f"{self.path}: a message was expected")
        try:
            doc = msgspec.msgpack.decode(payload)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise VerifyError(f"{self.path}: undecodable message: {exc}") from None
        if not isinstance(doc, dict):
            raise VerifyError(f"{self.path}: a message is not a map")
        return doc

    def objects(self) -> Iterator[list[tuple[int, bytes]]]:
        """The registry objects, a frame at a time."""
        while True:
            kind, payload = self._frame()
            if kind != b"M":
                self._pending = (kind, payload)
                return
            try:
                doc = msgspec.msgpack.decode(payload)
                chunk = msgspec.convert(doc["objects"], list[tuple[int, bytes]])
            except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError,
                    RecursionError) as exc:
                raise VerifyError(f"{self.path}: malformed registry objects: {exc}") from None
            yield chunk

    def stream(self) -> Iterator[bytes]:
        """The transfer packs' bytes (after :meth:`objects`)."""
        if self._pending is None:
            raise VerifyError(f"{self.path}: the pack stream is missing")
        kind, payload = self._pending
        while kind == b"D":
            yield payload
            kind, payload = self._frame()
        if kind != b"E":
            raise VerifyError(f"{self.path}: the pack stream does not end where it should")

    def trailer(self) -> None:
        """Check the trailer (after :meth:`stream`): the BLAKE3 of every byte before it.

        Raises:
            VerifyError: missing, wrong, or bytes after it.
        """
        expected = self.src.h.hexdigest()
        doc = self._message()
        if doc.get("end") is not True or doc.get("checksum") != expected:
            raise VerifyError(f"{self.path}: the checksum trailer does not match its bytes "
                              "(damaged or truncated)")
        if self.src.read(1):
            raise VerifyError(f"{self.path}: bytes after the trailer")

    def close(self) -> None:
        if self.path != "-":
            self.file.close()


def _check_header(h: Header, path: str) -> None:
    """Refuse a header whose refs or ids could not be a bundle's (before anything is written).

    Raises:
        VerifyError: naming the first bad ref or id.
    """
    from cas.peer import check_ref_name

    def hex40(v: str | None) -> bool:
        return v is None or (len(v) == 40 and all(c in "0123456789abcdef" for c in v))

    for u in h.refs:
        try:
            check_ref_name(u.ref)
        except CasError as exc:
            raise VerifyError(f"{path}: {exc.message}") from None
        if not (hex40(u.old) and hex40(u.new) and u.new):
            raise VerifyError(f"{path}: ref {u.ref!r} has a value that is not a commit id")
    for c in [*h.commits, *h.content, *(v.blob for v in h.versions)]:
        if not hex40(c):
            raise VerifyError(f"{path}: {c!r} is not an object id")


def _reachable_only(store: Store, objects: list[tuple[int, bytes]], header: Header,
                    path: str) -> None:
    """Refuse registry objects that neither the bundle's refs nor its manifests reach (an
    extra object is not carried: nothing is written).

    Raises:
        VerifyError: naming one such object.
    """
    parsed = {o.id: o for o in rt.parse_objects(objects)}
    seen: set[bytes] = set()
    todo = [u.new.encode() for u in header.refs] + [c.encode() for c in header.content]
    while todo:
        sha = todo.pop()
        if sha in seen or sha not in parsed:
            continue
        seen.add(sha)
        todo += rt.names(parsed[sha])
    extra = sorted(set(parsed) - seen)
    if extra:
        raise VerifyError(f"{path} carries {len(extra)} registry objects no ref of it reaches "
                          f"(first {extra[0].decode()})")


# -- import --------------------------------------------------------------------------------------


def _check_prerequisites(store: Store, header: Header) -> list[str]:
    """What the bundle needs that this store lacks (one line each)."""
    reg = store.registry
    missing = [f"commit {c}" for c in header.commits if not rt.has(reg, c.encode())]
    if header.versions:
        present = set(LocalPeer(store).present([v.blob for v in header.versions]))
        missing += [f"{v.model} version {v.id}" for v in header.versions
                    if v.blob not in present]
    return missing


def import_bundle(store: Store, path: str, *, force: bool = False,
                  progress: Progress | None = None) -> BundleResult:
    """Import the bundle at ``path`` (``-``: stdin) into ``store`` (see the module docstring).

    Raises:
        NotFoundError: prerequisites missing (listed; nothing was written).
        FormatError: an unknown required capability or version (nothing was written).
        VerifyError: damaged or hostile content (nothing of it visible; refs unmoved).
    """
    t0 = time.monotonic()
    reader = Reader(path)
    result = BundleResult(path, site=reader.header.sender)
    try:
        h = reader.header
        missing = _check_prerequisites(store, h)
        if missing:
            raise NotFoundError(f"{path} builds on what this store lacks: "
                                + "; ".join(missing[:5])
                                + (f" (and {len(missing) - 5} more)" if len(missing) > 5
                                   else "")
                                + ": import the bundles before it first")
        if h.chunker and h.chunker != msgspec.to_builtins(store.config.chunker):
            result.warnings.append(CasWarning(
                "W_CHUNKER_DIFFERS", "the bundle's store cuts files with other chunker "
                                     "parameters: what moves is correct, but later files "
                                     "dedupe less"))
        local = LocalPeer(store)
        objects = [o for chunk in reader.objects() for o in chunk]
        _reachable_only(store, objects, h, path)
        with local.session("bundle import"):
            if objects:
                result.registry_objects = local.put_registry_objects(objects)
            expected = _expected(store, h)
            stats = local.receive(transfer.counted(reader.stream(), 0, progress),
                                  expect=expected)
            reader.trailer()
            result.refs = local.update_refs(h.refs, force, h.content)
    finally:
        reader.close()
    result.objects, result.bytes, result.packs = stats.objects, stats.bytes, stats.packs
    result.seconds = time.monotonic() - t0
    return result


def _expected(store: Store, h: Header) -> transfer.Expected:
    """What the bundle's pack stream may carry: the chunk lists of the files of its content
    manifests and the base chunk lists they record, and the chunks of any of those lists
    (as they arrive, or as this store holds them)."""
    reg = store.registry
    lists: set[bytes] = set()
    open_bases = False
    for blob in h.content:
        m = Manifest.decode(reg.blob(blob.encode()))
        for f in m.files:
            lists.add(bytes.fromhex(f.chunks))
            if f.bases is None:
                open_bases = True  # written before bases were recorded: any list may be one
            else:
                lists.update(bytes.fromhex(b) for b in f.bases)
    expected = transfer.Expected(lists, any_list=open_bases)
    for cl in lists:
        try:
            expected.allow_chunks_of(store.packs.read_chunk_list(cl))
        except CasError:
            continue  # not here: it comes in the bundle, and its chunks with it
    return expected


# -- verify and list-heads -----------------------------------------------------------------------


class BundleCheck(msgspec.Struct):
    path: str
    refs: list[RefUpdate]
    registry_objects: int = 0
    objects: int = 0
    bytes: int = 0
    #: Derived chunks whose bases are not in the bundle: checked only on import.
    unchecked_derived: int = 0
    #: With a store: prerequisites it lacks, and what import would do to each ref.
    missing: list[str] = []
    would: list[RefResult] = []
    warnings: list[CasWarning] = []


def verify_bundle(path: str, store: Store | None = None) -> BundleCheck:
    """Check everything the file alone can prove (format, trailer, every registry object
    parses, every object hashes to its id; derived chunks whose bases travel elsewhere are
    counted, not checked); with ``store``, also its prerequisites and what import would do.

    Raises:
        VerifyError | FormatError: as :func:`import_bundle` would.
    """
    reader = Reader(path)
    try:
        out = BundleCheck(path, reader.header.refs)
        for chunk in reader.objects():
            rt.parse_objects(chunk)
            out.registry_objects += len(chunk)
        f = io.BufferedReader(transfer.IterReader(reader.stream()), 1 << 20)
        out.objects, out.bytes, out.unchecked_derived = transfer.check(f, store)
        reader.trailer()
    finally:
        reader.close()
    if store is not None:
        out.missing = _check_prerequisites(store, reader.header)
        reg = store.registry
        for u in reader.header.refs:
            try:
                current: str | None = reg.repo.refs[u.ref.encode()].decode()
            except KeyError:
                current = None
            if current == u.new:
                out.would.append(RefResult(u.ref, "up-to-date"))
            elif current != u.old:
                out.would.append(RefResult(u.ref, "rejected", "this store's ref is not the "
                                           "one the bundle expects (--force replaces it)"))
            else:
                out.would.append(RefResult(u.ref, "ok"))
    return out


def list_heads(path: str) -> Header:
    reader = Reader(path)
    try:
        return reader.header
    finally:
        reader.close()
