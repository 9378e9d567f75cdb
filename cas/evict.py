"""Keeping a store under a quota: which versions' content to drop, least recently used first,
and what each drop frees.

:func:`plan` counts, for every version whose data the store keeps (the roots of
:mod:`cas.graph`), the chunk lists it needs (its files' lists and their bases), and for every
chunk list the objects in it, so that dropping a version frees exactly the objects no
remaining version needs: shared chunks are counted once, by the last version to go. Objects
no version needs at all are freed by the gc that follows whatever is dropped. Only objects in
packs gc may touch count (not in a pack younger than the grace), with their stored bytes,
entry header and index record: what a gc that rewrites every pack holding a dead byte frees.

Candidates, in the order of :func:`cas.access.lru_order`: versions that are live, tagged or
the latest (those protect registry entries, not local bytes), not pinned for this store, not
in use by a running checkout or cat (a ``use`` lease), and with enough copies elsewhere by
the location log (:mod:`cas.copies`). :func:`run` drops them one by one through
:func:`cas.drop.drop` (which verifies copies live, under holds) until the predicted size is
under the quota, then runs gc; a candidate whose drop is refused is passed over, named with
its reason.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from cas import access, graph
from cas.errors import CasError, CasWarning
from cas.format import pack as fmt
from cas.format.chunklist import HEADER_SIZE, ITEM_SIZE

if TYPE_CHECKING:
    from cas.store import Store

#: Bytes an object costs in a pack besides its stored bytes: its entry header and its index
#: record.
INDEX_RECORD = 48
#: Bytes an object costs in a multi-pack index that covers its pack, and a pack's own entry.
MIDX_RECORD = 36
MIDX_PACK = 32
def store_bytes(root: Path) -> int:
    """The sizes of every file under ``root`` (what a quota counts)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(folder, f)).st_size
            except OSError:
                pass
    return total


class Candidate(msgspec.Struct):
    version: str
    id: str
    #: Bytes dropping it frees, after the candidates before it in the plan.
    frees: int
    #: Why it is not dropped ("" when it is in the plan).
    skip: str = ""
    #: Seconds since the epoch of its last recorded use (0: none recorded).
    last_used: int = 0


class Plan(msgspec.Struct):
    quota: int
    size: int
    #: Freed by gc whatever is dropped (objects no version needs).
    garbage: int
    #: The drops, in order, and the candidates passed over, with why.
    drops: list[Candidate] = []
    skipped: list[Candidate] = []
    predicted: int = 0
    warnings: list[CasWarning] = []


class _Counts:
    """Reference counts of chunk lists (by versions) and objects (by chunk lists), in arrays.

    An object is keyed by the first 8 bytes of its id (BLAKE3: two ids sharing them among a
    store's objects would only merge two predictions, never decide a drop). The chunk lists'
    ids are read into one array (:meth:`need`), counted once (:meth:`finish`), and a drop
    subtracts its lists' slices: memory and time stay close to gc's mark, which reads the
    same lists, whatever the lists' lengths."""

    def __init__(self, store: Store, grace: float, now: float) -> None:
        self.store = store
        self.lists: dict[str, list[bytes]] = {}  # version id -> chunk lists it needs
        self.listref: Counter[bytes] = Counter()
        self._parts: list[np.ndarray] = []
        self._span: dict[bytes, tuple[int, int]] = {}
        self._at = 0
        keys: list[np.ndarray] = []
        costs: list[np.ndarray] = []
        rec_pack: list[np.ndarray] = []
        #: What deleting each pack frees besides its records: the pack's header and trailer,
        #: the index's header, fanout and trailer, its entry in a midx (0: a young pack).
        self.pack_cost: list[int] = []
        packs = store.packs
        packs.refresh()
        covered = set(packs.packs) - set(packs.uncovered())
        for pack in packs.packs.values():
            try:
                young = now - os.stat(pack.pack_path).st_mtime < grace
                sizes = os.stat(pack.pack_path).st_size + os.stat(pack.idx_path).st_size
            except OSError:
                young, sizes = True, 0
            # A record costs its entry header and stored bytes, its index record and, in a
            # pack a midx covers, its midx record.
            extra = fmt.ENTRY_HEADER_SIZE + INDEX_RECORD + (MIDX_RECORD if pack.id in covered
                                                           else 0)
            k, stored = pack.record_sizes()
            body = int(stored.sum()) + len(stored) * (fmt.ENTRY_HEADER_SIZE + INDEX_RECORD)
            keys.append(k)
            costs.append(np.zeros(len(k), dtype=np.int64) if young else stored + extra)
            rec_pack.append(np.full(len(k), len(self.pack_cost), dtype=np.int64))
            fixed = max(0, sizes - body) + (MIDX_PACK if pack.id in covered else 0)
            self.pack_cost.append(0 if young else fixed)
        empty_u = np.zeros(0, dtype=np.uint64)
        empty_i = np.zeros(0, dtype=np.int64)
        self._rec_keys = np.concatenate(keys) if keys else empty_u
        self._rec_costs = np.concatenate(costs) if costs else empty_i
        self._rec_pack = np.concatenate(rec_pack) if rec_pack else empty_i

    def need(self, vid: str, lists: list[bytes]) -> None:
        self.lists[vid] = lists
        for cl in lists:
            if not self.listref[cl]:
                try:
                    clist = self.store.packs.read_chunk_list(cl)
                    ids = _keys(clist.encode(), len(clist), HEADER_SIZE, ITEM_SIZE)
                except CasError:
                    ids = np.zeros(0, dtype=np.uint64)
                part = np.concatenate((_keys(cl, 1, 0, 32), ids))
                self._parts.append(part)
                self._span[cl] = (self._at, len(part))
                self._at += len(part)
            self.listref[cl] += 1

    def finish(self) -> None:
        """Count what :meth:`need` read; price every needed object (all its copies) and
        every pack (freed with its last needed record)."""
        self.every = (np.concatenate(self._parts) if self._parts
                      else np.zeros(0, dtype=np.uint64))
        self._parts = []
        self.keys, counts = np.unique(self.every, return_counts=True)
        self.objref = counts.astype(np.int32)
        self.cost = np.zeros(len(self.keys), dtype=np.int64)
        pos = np.searchsorted(self.keys, self._rec_keys)
        found = pos < len(self.keys)
        found[found] = self.keys[pos[found]] == self._rec_keys[found]
        np.add.at(self.cost, pos[found], self._rec_costs[found])
        # Records of each needed key, for the packs a drop empties.
        order = np.argsort(pos[found], kind="stable")
        self._rec_of_key = pos[found][order]
        self._rec_pack_sorted = self._rec_pack[found][order]
        self.pack_live = np.bincount(self._rec_pack[found], minlength=len(self.pack_cost))
        pack_cost = np.array(self.pack_cost, dtype=np.int64)
        self._pack_cost = pack_cost
        self._garbage = int(self._rec_costs[~found].sum()) + int(
            pack_cost[self.pack_live == 0].sum())
        del self._rec_keys, self._rec_costs, self._rec_pack

    def garbage(self) -> int:
        return self._garbage

    def drop(self, vid: str) -> int:
        freed = 0
        for cl in self.lists.pop(vid, []):
            self.listref[cl] -= 1
            if self.listref[cl]:
                continue
            start, n = self._span[cl]
            idx = np.searchsorted(self.keys, self.every[start : start + n])
            np.subtract.at(self.objref, idx, 1)
            gone = np.unique(idx[self.objref[idx] == 0])
            if not len(gone):
                continue
            freed += int(self.cost[gone].sum())
            lo = np.searchsorted(self._rec_of_key, gone, side="left")
            hi = np.searchsorted(self._rec_of_key, gone, side="right")
            packs = np.concatenate([self._rec_pack_sorted[a:b] for a, b in zip(lo, hi)]
                                   ) if len(gone) else np.zeros(0, dtype=np.int64)
            if len(packs):
                np.subtract.at(self.pack_live, packs, 1)
                emptied = np.unique(packs[self.pack_live[packs] == 0])
                freed += int(self._pack_cost[emptied].sum())
        return freed


def _keys(data: bytes, count: int, offset: int, stride: int) -> np.ndarray:
    """The first 8 bytes (as u64) of ``count`` ids laid ``stride`` bytes apart in ``data``
    from ``offset``."""
    if not count:
        return np.zeros(0, dtype=np.uint64)
    return np.ndarray((count,), dtype="<u8", buffer=data, offset=offset,
                      strides=(stride,)).astype(np.uint64)


def plan(store: Store, quota: int, *, grace: float, now: float | None = None,
         refused: dict[str, str] | None = None,
         progress: Callable[[int, int, str], None] | None = None) -> Plan:
    """What to drop to bring ``store`` under ``quota`` bytes (nothing is changed).
    ``refused``: version id -> why its drop was refused (passed over)."""
    from cas import copies as cp
    from cas import drop, locations, presence
    from cas.rootcache import RootCache

    now = time.time() if now is None else now
    size = store_bytes(store.path)
    counts = _Counts(store, grace, now)
    cache = RootCache(store)
    roots = graph.find_roots(store, now=now, cache=cache)
    if roots.problems:
        raise CasError(f"what is live cannot be told ({roots.problems[0]}); run "
                       "'cas verify --all'")
    edges = graph.EdgeMap(store)
    errors: list[str] = []
    done = 0
    for root in roots.roots:
        try:
            files = cache.manifest_files(store.registry, root.blob)
        except CasError as exc:
            errors.append(f"{root.ref}: {exc.message}")
            continue
        lists: set[bytes] = set()
        for chunks, bases in files:
            cl = bytes.fromhex(chunks)
            lists.add(cl)
            if bases is None:
                bases = graph.list_bases(store, cl, edges)
            lists.update(bytes.fromhex(b) for b in bases)
        counts.need(root.id, sorted(lists))
        done += 1
        if progress is not None:
            progress(done, len(roots.roots), "planning")
    if errors:
        raise CasError(f"what is live cannot be told ({errors[0]}); run 'cas verify --all'")
    counts.finish()
    result = Plan(quota, size, counts.garbage())
    cfg = cp.load(store.registry)
    entries = locations.read(store)
    absent = presence.load(store.backend)
    uses = access.read(store.path)
    # A live or tagged version pinned here is a root for another reason (its ``why`` names
    # the strongest one), so pins are asked for themselves.
    pin_problems: list[str] = []
    pinned = graph.pinned_here(store, pin_problems)
    if pin_problems:
        raise CasError(f"pins cannot be read ({pin_problems[0]}); run 'cas verify --all'")
    in_use = {w for h in store.leases.holders() if h.record is not None and not h.stale
              for w in h.record.purpose.split()[1:] if h.record.purpose.startswith(drop.USE)}
    by_id = {r.id: r for r in roots.roots}
    order = access.lru_order(((r.id, r.name, r.seq) for r in roots.roots if r.id not in absent),
                             uses)
    freed = result.garbage
    for vid, name, seq in order:
        if size - freed <= quota:
            break
        r = by_id[vid]
        c = Candidate(f"{name}@{seq}", vid, 0, last_used=uses.get(vid, (0, 0))[1])
        known = sum(1 for u, e in entries.items()
                    if u != store.uuid and vid in e.versions.get(name, []))
        if cfg.trust_source and known < cfg.numcopies:
            known += _source_counts(store, cfg, r.blob)
        if r.why == graph.PINNED or (name, vid) in pinned:
            c.skip = "pinned for this store"
        elif r.why == graph.REMOVED:
            c.skip = "removed (its data is kept for the restore window; gc --expire-removed)"
        elif vid in in_use:
            c.skip = "in use by a running checkout or cat"
        elif refused and vid in refused:
            c.skip = refused[vid]
        elif known < cfg.numcopies:
            c.skip = (f"{known} known copies elsewhere, numcopies {cfg.numcopies} "
                      "('cas push' it somewhere first)")
        if c.skip:
            result.skipped.append(c)
            continue
        c.frees = counts.drop(vid)
        freed += c.frees
        result.drops.append(c)
    result.predicted = freed
    cache.save()
    return result


def _source_counts(store: Store, cfg: object, blob: bytes) -> int:
    """1 if the version's source counts as a copy (``trust_source``, :mod:`cas.copies`)."""
    from cas import copies as cp
    from cas.format.manifest import Manifest

    try:
        m = Manifest.decode(store.registry.blob(blob))
    except CasError:
        return 0
    return 1 if cp.source_copy(cfg, m.metadata.source) else 0  # type: ignore[arg-type]


class QuotaResult(msgspec.Struct):
    #: The plan as it stood before anything was dropped (what ``--dry-run`` shows).
    plan: Plan
    dropped: list[str] = []
    #: Candidates whose drop was refused, with why.
    refused: list[Candidate] = []
    size_after: int = 0
    #: Bytes the store shrank by (measured), against ``plan.predicted``.
    freed: int = 0
    over_by: int = 0
    warnings: list[CasWarning] = []


def run(store: Store, quota: int, *, grace: float, wait: float = 60.0,
        progress: Callable[[int, int, str], None] | None = None) -> QuotaResult:
    """Drop versions as :func:`plan` says, each through :func:`cas.drop.drop` (copies verified
    live, under holds), then gc every pack holding a dead byte. A refused drop is passed over
    and the rest planned again without it. ``over_by`` > 0 in the result: still over the
    quota (the plan's ``skipped`` and ``refused`` say why)."""
    from cas import drop
    from cas.gc import GcOptions, collect

    refused: dict[str, Candidate] = {}
    dropped: list[str] = []
    first: Plan | None = None
    while True:
        p = plan(store, quota, grace=grace, progress=progress,
                 refused={k: c.skip for k, c in refused.items()})
        first = first or p
        again = False
        for c in p.drops:
            try:
                drop.drop(store, c.version, refresh=False)
                dropped.append(c.version)
            except CasError as exc:
                c.skip = f"{exc.code}: {exc.message}"
                refused[c.id] = c
                again = True
                break
        if not again:
            break
    if dropped:
        from cas import locations

        try:  # once for every drop: each refresh commits this store's whole entry
            locations.refresh(store)
        except CasError:
            pass  # the entry catches up at the next sync
    with store.writing():  # the log keeps the last use of each version, in order
        access.compact(store.path)
    collect(store, GcOptions(grace=grace, repack_threshold=0.0, wait=wait), progress)
    after = store_bytes(store.path)
    return QuotaResult(first, dropped, list(refused.values()), after, first.size - after,
                       max(0, after - quota))


class Archived(msgspec.Struct):
    version: str
    age_days: float
    status: str  # "archived", "would archive", or the error that stopped it
    bytes_sent: int = 0


class ArchiveResult(msgspec.Struct):
    remote: str
    older_than: float
    dry_run: bool
    versions: list[Archived] = []
    warnings: list[CasWarning] = []


def archive(store: Store, remote: str, older_than: float, *, dry_run: bool = False,
            now: float | None = None) -> ArchiveResult:
    """Tiering: push the content of every version here registered more than ``older_than``
    seconds ago (by its add commit's time) to ``remote``, then drop it here (the copy there
    verified under a hold, as every drop). Pinned versions stay; a version whose time is in
    the future (a skewed clock where it was added) counts as new. A version that fails moves
    on to the next, named with its error."""
    from cas import drop, presence, sync

    now = time.time() if now is None else now
    reg = store.registry
    absent = presence.load(store.backend)
    pinned = graph.pinned_here(store, [])
    result = ArchiveResult(remote, older_than, dry_run)
    for name in reg.model_names():
        for v in reg.state(name).live_versions():
            age = now - v.timestamp
            if age <= older_than or v.id in absent or (name, v.id) in pinned:
                continue
            a = Archived(v.ref, round(age / 86400, 2), "would archive")
            result.versions.append(a)
            if dry_run:
                continue
            try:
                pushed = sync.push(store, remote, [v.ref])
                a.bytes_sent = pushed.bytes_sent
                drop.drop(store, v.ref, ask_first=(remote,))
                a.status = "archived"
            except CasError as exc:
                a.status = f"{exc.code}: {exc.message}"
    return result
