"""Dropping a version's content from a store, never its last copy.

A drop removes the content of one version from one store (here, or a remote: the *target*),
keeping its registry entry: the version becomes absent there (:mod:`cas.presence`) and the
next gc reclaims what no other version there needs. It happens only when enough other stores
hold every object the version needs, counted as git-annex counts (:mod:`cas.copies`):

- ``numcopies`` copies must be known: the stores the location log says hold it, the stores
  verified now, and (``trust_source``) a pinned Hub revision it came from;
- at least ``mincopies`` of them must be verified now, each under a **hold**: the store is
  asked whether the version keeps data there (not absent) and whether every object of its
  closure is in its indexes (nothing is downloaded); the answer is given under a shared lease
  ``keep <ids>`` that the store keeps until the drop has ended.

Holds and drops exclude each other through lease records (:mod:`cas.leases`), each side
writing its own before reading the other's: a drop writes ``drop <id>`` in the target, then
refuses if the target holds a ``keep`` or ``use`` lease naming the version; a hold writes
``keep <ids>``, then refuses if the store holds a ``drop`` lease naming one of them. Whatever
the interleaving, of two stores dropping the same version while each counts the other, at
least one sees the other's record and refuses, so the last copy stays. (Both may refuse;
a re-run then succeeds.) ``--force`` lowers the requirement to ``mincopies`` verified copies,
never below. ``use <id>`` leases are taken by checkout and cat (:meth:`Store.using`).

The protocol and crash table are in ``docs/format.md``, "Dropping content".
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import msgspec

from cas import copies as cp
from cas.errors import CasError, CasWarning, ConflictError, NotFoundError
from cas.format.manifest import Manifest

if TYPE_CHECKING:
    from cas.leases import Lease
    from cas.store import Store

KEEP, DROP, USE = "keep", "drop", "use"


def leased(store: Store, kind: str, ids: list[str], exclude: str = "") -> list[str]:
    """Descriptions of the live leases of ``kind`` (keep, drop, use) in ``store`` that name
    one of ``ids`` (``exclude``: a lease name to leave out, the caller's own)."""
    wanted = set(ids)
    out = []
    for h in store.leases.holders():
        r = h.record
        if r is None or h.stale or h.name == exclude:
            continue
        words = r.purpose.split()
        if words and words[0] == kind and wanted.intersection(words[1:]):
            out.append(h.describe())
    return out


class Target(msgspec.Struct, frozen=True):
    """The version a drop removes, as the target store sees it."""

    id: str
    model: str
    seq: int
    blob: str
    uuid: str


def _manifest(store: Store, blob: str) -> Manifest:
    try:
        return Manifest.decode(store.registry.blob(blob.encode()))
    except CasError:
        raise NotFoundError(f"no manifest {blob[:12]} in this store") from None


def hold(store: Store, blobs: list[str]) -> Lease:
    """Verify that ``store`` keeps every object of the versions ``blobs`` and hold them: the
    returned lease (``keep <ids>``) stops this store from dropping them until released.

    Raises:
        ConflictError: the store is dropping one of them now.
        NotFoundError: one of them is absent here, or objects of it are missing (named).
    """
    from cas import transfer
    from cas.peer import LocalPeer

    ids = [_manifest(store, b).id or b for b in blobs]
    lease = store.leases.acquire_shared(" ".join([KEEP, *ids]), reader=True)
    try:
        dropping = leased(store, DROP, ids)
        if dropping:
            raise ConflictError(f"store {store.uuid} is dropping it now ({dropping[0]})")
        peer = LocalPeer(store)
        kept = set(peer.present(blobs))
        gone = [b for b in blobs if b not in kept]
        if gone:
            raise NotFoundError(f"store {store.uuid} does not keep the content of "
                                f"{len(gone)} of the versions")
        missing = transfer.missing(store, peer.closure(blobs))
        if missing:
            raise NotFoundError(f"store {store.uuid} lacks {len(missing)} objects of them "
                                f"(first {missing[0].hex()[:16]})")
    except BaseException:
        lease.release()
        raise
    return lease


def begin(store: Store, blob: str) -> tuple[Lease, Target]:
    """Start dropping the version of manifest ``blob`` from ``store``: the ``drop`` lease is
    written, then the version's holds and uses are looked for.

    Raises:
        NotFoundError: its content is not here (nothing to drop).
        ConflictError: it is pinned for this store, held by a store counting on this copy,
            or in use by a running checkout or cat.
    """
    from cas import graph
    from cas.peer import LocalPeer

    m = _manifest(store, blob)
    vid = m.id or blob
    if not LocalPeer(store).present([blob]):
        raise NotFoundError(f"{m.name}@{m.seq}: its content is not in store {store.uuid}")
    if (m.name, vid) in graph.pinned_here(store, []):
        raise ConflictError(f"{m.name}@{m.seq} is pinned for store {store.uuid}: unpin it "
                            "there first ('cas unpin')")
    lease = store.leases.acquire_shared(f"{DROP} {vid}", reader=True)
    try:
        why = leased(store, KEEP, [vid]) or leased(store, USE, [vid])
        if why:
            raise ConflictError(f"{m.name}@{m.seq}: held or in use in store {store.uuid} "
                                f"({why[0]})")
    except BaseException:
        lease.release()
        raise
    return lease, Target(vid, m.name, m.seq, blob, store.uuid or "")


def commit(store: Store, target: Target, lease: Lease, refresh: bool = True) -> None:
    """Record the version absent in ``store`` (its content goes at the next gc) and, with
    ``refresh``, bring the store's location entry up to date (a caller dropping many versions
    refreshes once at the end: each refresh commits the whole entry)."""
    from cas import locations, presence

    lease.check()
    with store.writing():
        presence.update(store.backend, {target.id: presence.Absent(target.model, target.seq)})
    if not refresh:
        return
    try:
        locations.refresh(store)
    except CasError:
        pass  # the entry catches up at the next sync


# -- the orchestration ---------------------------------------------------------------------------


class Copy(msgspec.Struct):
    """One store counted (or asked) for a drop."""

    uuid: str
    remote: str
    verified: bool
    note: str = ""


class DropResult(msgspec.Struct):
    version: str
    #: "here", or the remote the content was dropped from.
    where: str
    dropped: bool
    dry_run: bool
    numcopies: int
    mincopies: int
    known: int
    verified: int
    copies: list[Copy] = []
    warnings: list[CasWarning] = []


def drop(store: Store, spec: str, *, remote: str | None = None, force: bool = False,
         dry_run: bool = False, avoid: frozenset[str] = frozenset(),
         ask_first: tuple[str, ...] = (), refresh: bool = True) -> DropResult:
    """Drop the content of ``spec`` here (or from ``remote``) if enough other stores hold it
    (see the module docstring); ``dry_run``: verify and report, drop nothing. ``avoid``:
    remotes not to ask (a caller that knows them unreachable); ``ask_first``: remotes (names
    or URLs) to ask before the configured ones; ``refresh``: False leaves the location entry
    of a drop here to the caller (:func:`cas.locations.refresh` once after many drops).

    Raises:
        NotFoundError: no such version, or its content is not in the target.
        ConflictError: not enough copies (each store asked named, with its answer), or the
            version is pinned, held or in use in the target.
    """
    from cas import locations
    from cas import sync
    from cas.peer import LocalPeer

    version = store.resolve(spec)
    blob = sync.live_blob(store, version)
    cfg = cp.load(store.registry)
    with contextlib.ExitStack() as stack:
        if remote is None:
            target: Any = LocalPeer(store)
            where = "here"
        else:
            where, _url, target = sync.connect(store, remote)
            where = where or remote
            stack.callback(target.close)
        info = target.drop_begin(blob)
        stack.callback(target.drop_end)
        known = {u for u, e in locations.read(store).items()
                 if version.id in e.versions.get(version.name, []) and u != info.uuid}
        result = DropResult(version.ref, where, False, dry_run, cfg.numcopies, cfg.mincopies,
                            0, 0)
        extra = 1 if cp.source_copy(cfg, store.manifest(version).metadata.source) else 0
        verified: set[str] = set()

        def enough() -> bool:
            have = len(known | verified) + extra
            return len(verified) >= cfg.mincopies and (force or have >= cfg.numcopies)

        candidates: list[tuple[str, Any]] = []
        if remote is not None:
            candidates.append(("(this store)", None))
        for name in [*ask_first, *sync.holders_first(store, version.name, blob)]:
            if name not in avoid and not (remote is not None and name == where):
                candidates.append((name, name))
        for label, name in candidates:
            if enough():
                break
            try:
                if name is None:
                    peer: Any = LocalPeer(store)
                else:
                    _n, _u, peer = sync.connect(store, name)
                    stack.callback(peer.close)
                uuid = peer.hello().uuid
                if not uuid or uuid == info.uuid or uuid in verified:
                    continue  # the target itself, or a store already counted
                peer.hold([blob])
                stack.callback(peer.release_holds)
                verified.add(uuid)
                result.copies.append(Copy(uuid, label, True))
            except CasError as exc:
                result.copies.append(Copy("", label, False, f"{exc.code}: {exc.message}"))
        result.known = len(known | verified) + extra
        result.verified = len(verified)
        for u in sorted(known - verified):
            result.copies.append(Copy(u, "", False, "known from the location log"))
        if not enough():
            need = (f"{cfg.mincopies} verified" if force else
                    f"{cfg.numcopies} known ({cfg.mincopies} of them verified)")
            asked = "; ".join(f"{c.remote}: {c.note}" for c in result.copies if c.note
                              and c.remote) or "no other store could be asked"
            raise ConflictError(
                f"{version.ref}: dropping it from {where} needs {need} copies elsewhere; "
                f"found {result.known} known, {result.verified} verified ({asked})")
        if not dry_run:
            if remote is None:
                target.drop_commit(refresh)
            else:
                target.drop_commit()
            result.dropped = True
    return result
