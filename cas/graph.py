"""The object graph: which versions keep data alive, and which objects a set of versions needs.

Every question about reachability goes through this module: ``du``, ``verify``, the stat-cache
trust check, ``add``'s record of derived-chunk bases, ``gc`` (and later push, bundles and
eviction). Nothing else walks manifests to find objects.

**Roots** (:func:`find_roots`) are the versions whose data must stay restorable: every live
version (in its model's tip tree), every tagged version, every version pinned for this store or
for every store, and every version removed less than the restore window ago (a removal time in
the future, from a skewed clock, counts as recent). A model whose history cannot be read is
named in ``Roots.problems``: a caller that deletes must then delete nothing.

**Closure** (:class:`Closure`): a version needs, for each file, the file's chunk list and its
chunks, and, for each derived chunk (codec 3), the chunk list of the earlier file it is
predicted from and that list's chunks, recursively. A manifest written by this build records
those base lists per file (``FileEntry.bases``, transitive, so no payload is read to follow
them); for a file entry without the record (written before it existed), the edges come from the
:class:`EdgeMap`, derived data rebuilt by one scan of the packs' derived objects.

Marking is by position in the pack indexes: the ids of every needed object are collected from
the chunk lists (each distinct list read once), then each index is read front to back and its
records are marked where their id is needed; memory is one byte per indexed object plus the set
of distinct needed ids.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from cas.errors import CasError, SchemaError
from cas.format.chunklist import ChunkList
from cas.format.manifest import Manifest
from cas.compression import CODEC_DERIVED
from cas.format.pack import ENTRY_HEADER_SIZE
from cas.format.canonical import sealed, unsealed
from cas.ids import parse_hex
from cas.storage import ANY

if TYPE_CHECKING:
    from cas.packs import Pack, PackSet
    from cas.registry import ModelState, Registry
    from cas.rootcache import RootCache, Summary
    from cas.store import Store

LIVE, TAGGED, PINNED, REMOVED = "live", "tagged", "pinned", "removed"


@dataclass(frozen=True, slots=True)
class Root:
    """A version whose data must stay restorable, and the strongest reason why."""

    name: str
    seq: int
    id: str
    why: str
    #: Blob id (hex, as bytes) of the manifest that names its data.
    blob: bytes
    #: When it was removed (seconds since the epoch), for ``why == "removed"``.
    removed_at: int | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.seq}"


@dataclass
class Roots:
    roots: list[Root] = field(default_factory=list)
    #: One line per thing that could not be read (a damaged tag, pin or model history).
    problems: list[str] = field(default_factory=list)
    #: Models whose roots may be incomplete.
    bad_models: list[str] = field(default_factory=list)
    #: The error behind each problem that concerns one model: ``(model, error)``.
    errors: list[tuple[str, CasError]] = field(default_factory=list)
    #: Models whose history cannot be read at all (none of their roots are known).
    unreadable: list[str] = field(default_factory=list)
    #: Versions that would be roots but whose content is not in this store (absent:
    #: :mod:`cas.presence`): nothing is kept or checked for them.
    absent: list[Root] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every root could be found: only then may anything be deleted."""
        return not self.problems


def pinned_here(store: Store, problems: list[str]) -> set[tuple[str, str]]:
    """``(model, version id)`` of the versions pinned for this store or for every store."""
    try:
        from cas import pins
    except ImportError:  # pragma: no cover - pins are part of the same build
        return set()
    damaged: list[str] = []
    out = {(m, vid) for m, vid, here in pins.pinned_versions(store, damaged=damaged) if here}
    problems.extend(damaged)
    return out


def model_roots(reg: Registry, st: ModelState | Summary, tags: dict[tuple[str, str], str],
                since: float, pinned: set[tuple[str, str]], problems: list[str]) -> list[Root]:
    """The roots of one model whose history ``st`` was walked (or summarised): live, tagged,
    pinned, and removed at or after ``since``. Problems (a tag on a commit that added no
    version of the model) are appended to ``problems``."""
    from cas.rootcache import Summary

    s = st if isinstance(st, Summary) else Summary.of(st)
    name = s.name
    out: dict[int, Root] = {}
    for seq, blob in sorted(s.live.items()):
        if seq in s.added:
            out[seq] = Root(name, seq, s.added[seq][1], LIVE, blob.encode())
    added = {commit: seq for seq, (commit, _vid) in s.added.items()}
    held: dict[int, str] = {}
    for (model, tag), commit in sorted(tags.items()):
        if model != name:
            continue
        seq = added.get(commit)
        if seq is None:
            problems.append(f"tag {name}@{tag}: points at commit {commit[:12]}, which did "
                            f"not add a version of {name}")
            continue
        held.setdefault(seq, TAGGED)
    ids = {vid: seq for seq, (_commit, vid) in s.added.items()}
    for model, vid in sorted(pinned):
        if model == name and vid in ids:
            held.setdefault(ids[vid], PINNED)
    for seq, why in sorted(held.items()):
        if seq in out:
            continue
        if seq in s.removed:
            blob: bytes | None = s.removed[seq][0].encode()
        else:
            blob = reg.commit_versions(s.added[seq][0]).get(seq)
        if blob is not None:
            out[seq] = Root(name, seq, s.added[seq][1], why, blob)
    for seq, (blob_hex, removed_at, vid) in sorted(s.removed.items()):
        if seq not in out and removed_at >= since:
            out[seq] = Root(name, seq, vid, REMOVED, blob_hex.encode(), removed_at)
    return [out[k] for k in sorted(out)]


GC_STATE = "gc.json"


def gc_state(store: Store) -> dict[str, object]:
    """The fields of ``gc.json`` (empty if it is missing or unreadable)."""
    try:
        doc = msgspec.json.decode(store.backend.read(GC_STATE))
    except (CasError, OSError, msgspec.DecodeError):
        return {}
    return doc if isinstance(doc, dict) and doc.get("schema") == "cas.gc" else {}


def update_gc_state(store: Store, **fields: object) -> None:
    """Rewrite ``gc.json`` with ``fields`` changed (others kept)."""
    from cas.format.canonical import canonical_json

    doc = {**gc_state(store), **fields, "schema": "cas.gc", "version": 1}
    store.backend.swap(GC_STATE, ANY, canonical_json(doc))


def expired_before(store: Store) -> float:
    """Removal time before which removed versions' data may have been collected (``gc
    --expire-removed`` or ``--now`` records it in ``gc.json``); 0 if never."""
    value = gc_state(store).get("removed_expired_before")
    return float(value) if isinstance(value, (int, float)) else 0.0


def record_expired_before(store: Store, when: float) -> None:
    """Record that versions removed before ``when`` are no longer restorable (before gc
    deletes their data: a crash after a deletion must not leave them looking restorable)."""
    if when <= expired_before(store):
        return
    # Removal times are whole seconds and a removal at the cutoff is still a root: round
    # up, so a version removed in the same second as a gc --now is expired too.
    update_gc_state(store, removed_expired_before=math.ceil(when))


def restore_cutoff(store: Store, now: float, window: float | None = None) -> float:
    """Versions removed at or after this time are roots (restorable): the restore window
    (``window`` seconds, default the store's setting), shortened by any ``gc
    --expire-removed`` that ran."""
    w = store.settings.restore_window_seconds() if window is None else window
    return max(now - w, expired_before(store))


def find_roots(store: Store, *, now: float | None = None, window: float | None = None,
               states: dict[str, ModelState] | None = None,
               cache: RootCache | None = None) -> Roots:
    """Every root of the store. ``window``: the restore window in seconds (default: the
    store's ``restore_window`` setting; 0 keeps no removed version). ``states``, if given,
    receives each model's walked history (for callers that check it further); with
    ``cache`` (:mod:`cas.rootcache`), a model whose ref did not move is not walked again."""
    reg = store.registry
    result = Roots()
    now = time.time() if now is None else now
    since = restore_cutoff(store, now, window)
    # Tags before model names: a writer creates a model's ref before any tag can name it.
    damaged: list[tuple[str, str, SchemaError]] = []
    try:
        tags = reg.tags(damaged=damaged)
    except CasError as exc:
        result.problems.append(f"registry tags: {exc.message}")
        tags = {}
    for name, _tag, exc in damaged:
        result.problems.append(exc.message)
        result.errors.append((name, exc))
        if name not in result.bad_models:
            result.bad_models.append(name)
    pinned = pinned_here(store, result.problems)
    try:
        names = reg.model_names()
    except CasError as exc:
        result.problems.append(f"registry: {exc.message}")
        return result
    for name in names:
        try:
            if cache is not None:
                summary: ModelState | Summary = cache.summary(reg, name)
            else:
                summary = reg.state(name)
                if states is not None:
                    states[name] = summary
            result.roots += model_roots(reg, summary, tags, since, pinned, result.problems)
        except CasError as exc:
            result.problems.append(f"model {name}: {exc.message}")
            result.errors.append((name, exc))
            result.unreadable.append(name)
            if name not in result.bad_models:
                result.bad_models.append(name)
    for (name, tag) in sorted(tags):
        if name not in names:
            result.problems.append(f"tag {name}@{tag}: names a model that does not exist")
    from cas import presence

    try:
        absent = presence.load(store.backend)
    except CasError as exc:
        result.problems.append(f"{presence.NAME}: {exc.message}")
        absent = {}
    if absent:
        result.absent = [r for r in result.roots if r.id in absent]
        result.roots = [r for r in result.roots if r.id not in absent]
    return result


# -- derived-chunk edges -------------------------------------------------------------------------


EDGES_NAME = "cache/edges.msgpack"
_EDGES_MAGIC = b"CASEDGE\x00"


class _EdgeFile(msgspec.Struct):
    version: int
    #: pack id (hex) -> concatenated (derived chunk id, base chunk-list id) pairs, 64 B each
    packs: dict[str, bytes]


class EdgeMap:
    """Derived chunk id -> the chunk lists it is predicted from, for every pack of the store.

    Derived data (``cache/edges.msgpack``, may be deleted): per pack, the pairs found by
    reading the first 34 bytes of each derived object that its index lists. Packs are
    immutable, so a pack's pairs never go stale; packs that appear are scanned when first
    needed, packs that are gone are dropped. A damaged file is rebuilt.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._packs: dict[str, bytes] = {}
        self._map: dict[bytes, list[bytes]] | None = None
        self.dirty = False
        #: Derived objects whose base had to be read from a pack (not from the file).
        self.scanned = 0
        try:
            raw = store.backend.read(EDGES_NAME)
            body = unsealed(_EDGES_MAGIC, raw)
            if body is not None:
                got = msgspec.msgpack.decode(body, type=_EdgeFile)
                if got.version == 1 and all(len(v) % 64 == 0 for v in got.packs.values()):
                    self._packs = got.packs
        except (CasError, OSError, msgspec.DecodeError, msgspec.ValidationError):
            self._packs = {}

    def bases(self, oid: bytes) -> list[bytes]:
        """The base chunk lists of ``oid`` in any pack (empty for a chunk that is not derived
        anywhere)."""
        if self._map is None:
            self._build()
        return self._map.get(oid, [])  # type: ignore[union-attr]

    def _build(self) -> None:
        packs = self.store.packs
        packs.refresh()
        current = dict(packs.packs)
        if set(self._packs) - set(current):
            self._packs = {k: v for k, v in self._packs.items() if k in current}
            self.dirty = True
        for pack_id, pack in sorted(current.items()):
            if pack_id not in self._packs:
                self._packs[pack_id] = b"".join(oid + base for oid, base in _scan(pack))
                self.scanned += 1
                self.dirty = True
        m: dict[bytes, list[bytes]] = {}
        for pairs in self._packs.values():
            for at in range(0, len(pairs), 64):
                bases = m.setdefault(pairs[at : at + 32], [])
                base = pairs[at + 32 : at + 64]
                if base not in bases:
                    bases.append(base)
        self._map = m

    def pairs(self, pack_id: str) -> Iterator[tuple[bytes, bytes]]:
        """``(derived object id, base chunk-list id)`` of each derived object of a pack."""
        if self._map is None:
            self._build()
        data = self._packs.get(pack_id, b"")
        for at in range(0, len(data), 64):
            yield data[at : at + 32], data[at + 32 : at + 64]

    def prune(self) -> None:
        """Drop the pairs of packs that are gone (after gc), scanning nothing."""
        current = self.store.packs.packs
        if set(self._packs) - set(current):
            self._packs = {k: v for k, v in self._packs.items() if k in current}
            self._map = None
            self.dirty = True

    def save(self) -> None:
        """Write the map if it changed (best effort: it is derived data)."""
        if not self.dirty:
            return
        body = msgspec.msgpack.encode(_EdgeFile(1, self._packs))
        try:
            self.store.backend.swap(EDGES_NAME, ANY, sealed(_EDGES_MAGIC, body))
            self.dirty = False
        except (CasError, OSError):
            pass


def _scan(pack: Pack) -> Iterator[tuple[bytes, bytes]]:
    """``(derived object id, base chunk-list id)`` for each derived object of ``pack``."""
    from cas.format.pack import Entry

    for oid, off, stored, raw, kind, codec, _r in pack.records():
        if codec == CODEC_DERIVED:
            try:
                base = pack.derived_base(Entry(oid, off, stored, raw, kind, codec))
            except CasError:
                continue  # unreadable: verify names it
            if base is not None:
                yield oid, base


# -- closure and marking -------------------------------------------------------------------------


class Closure:
    """The objects a set of versions needs: chunk lists, chunks and derived-chunk bases.

    Add versions with :meth:`add_manifest` (or files with :meth:`add_file`); :attr:`ids` is
    then the set of needed object ids; :meth:`mark` marks them in the pack indexes.
    Unreadable chunk lists are recorded in :attr:`unreadable` (id -> reason) and their chunks
    are unknown.
    """

    def __init__(self, store: Store, edges: EdgeMap | None = None) -> None:
        self.store = store
        self.packs: PackSet = store.packs
        self.ids: set[bytes] = set()
        self._expanded: set[bytes] = set()
        self._followed: set[bytes] = set()
        self._edges = edges
        self.unreadable: dict[bytes, str] = {}
        #: Chunk lists read (each distinct list once).
        self.lists_read = 0

    @property
    def edges(self) -> EdgeMap:
        if self._edges is None:
            self._edges = EdgeMap(self.store)
        return self._edges

    def add_manifest(self, m: Manifest) -> None:
        for f in m.files:
            self.add_file(f.chunks, f.bases)

    def add_file(self, chunks: str | bytes, bases: list[str] | None) -> None:
        """A file with chunk list ``chunks`` and its recorded ``bases`` (None: not recorded,
        follow the edges)."""
        clist = parse_hex(chunks, what="chunk list id") if isinstance(chunks, str) else chunks
        if bases is None:
            self._follow(clist)
            return
        self._expand(clist)
        for b in bases:
            self._expand(parse_hex(b, what="base chunk list id"))

    def _expand(self, clist: bytes) -> list[bytes]:
        """Add ``clist`` and its chunks; return the chunk ids (empty if read before)."""
        if clist in self._expanded:
            return []
        self._expanded.add(clist)
        self.ids.add(clist)
        try:
            ids = self.packs.read_chunk_list(clist).ids()
        except CasError as exc:
            self.unreadable[clist] = exc.message
            return []
        self.lists_read += 1
        self.ids.update(ids)
        return ids

    def _follow(self, clist: bytes) -> None:
        todo = [clist]
        while todo:
            cl = todo.pop()
            if cl in self._followed:
                continue
            self._followed.add(cl)
            ids = self._expand(cl)
            if not ids and cl in self._expanded and cl not in self.unreadable:
                try:  # expanded earlier without following: read it again
                    ids = self.packs.read_chunk_list(cl).ids()
                except CasError:
                    ids = []
            for oid in ids:
                todo.extend(self.edges.bases(oid))

    def known(self, clist: bytes) -> bool:
        """True if ``clist`` was added with its edges followed."""
        return clist in self._followed

    def mark(self) -> Marks:
        """Mark every needed object in every pack index (by position)."""
        return Marks.of(self.packs, self.ids)

    def save(self) -> None:
        if self._edges is not None:
            self._edges.save()


@dataclass
class PackMarks:
    pack_id: str
    #: One byte per index record, 1 where the object is needed.
    live: bytearray
    live_bytes: int = 0
    dead_bytes: int = 0
    live_count: int = 0
    #: Size of the pack file in bytes.
    size: int = 0
    #: Damaged copies left unmarked because a good copy of the object is live.
    damaged_dead: int = 0

    def mark(self, i: int, n: int) -> None:
        """Mark record ``i``, an object of ``n`` bytes with its entry header (counted dead)."""
        self.live[i] = 1
        self.live_bytes += n
        self.dead_bytes -= n
        self.live_count += 1


class Marks:
    """Needed objects marked by position in each pack's index; per-pack live and dead bytes
    (stored lengths with their entry headers)."""

    def __init__(self) -> None:
        self.packs: dict[str, PackMarks] = {}
        #: Needed ids found in no index.
        self.missing: set[bytes] = set()

    @classmethod
    def of(cls, packs: PackSet, ids: set[bytes]) -> Marks:
        """Mark ``ids`` in every visible pack. A copy known to be damaged
        (:mod:`cas.badobjects`) is marked only if the object has no other copy."""
        marks = cls()
        found: set[bytes] = set()
        damaged: list[tuple[PackMarks, int, int, bytes]] = []
        for pack_id, pack in sorted(packs.packs.items()):
            live = bytearray(pack.count)
            pm = PackMarks(pack_id, live)
            for i, (oid, _off, stored, _raw, _kind, _codec, _r) in enumerate(pack.records()):
                n = stored + ENTRY_HEADER_SIZE
                pm.dead_bytes += n
                if oid in ids:
                    if packs.bad_ids and (oid, pack_id) in packs.bad:
                        damaged.append((pm, i, n, oid))
                        continue
                    pm.mark(i, n)
                    found.add(oid)
            pm.size = pack.file_size()
            marks.packs[pack_id] = pm
        for pm, i, n, oid in damaged:
            if oid not in found:  # no good copy: the damaged one is all there is
                pm.mark(i, n)
            else:
                pm.damaged_dead += 1
        found.update(oid for *_, oid in damaged)
        if len(found) != len(ids):
            marks.missing = ids - found
        return marks


def needs(store: Store, manifests: Iterable[Manifest], edges: EdgeMap | None = None
          ) -> Closure:
    """The closure of ``manifests``."""
    c = Closure(store, edges)
    for m in manifests:
        c.add_manifest(m)
    return c


def list_bases(store: Store, clist: bytes, edges: EdgeMap,
               known: dict[bytes, list[str] | None] | None = None) -> list[str]:
    """The base chunk lists (hex, sorted) that the derived chunks of ``clist`` need, directly
    or through their own bases: the ``bases`` a manifest records for a file. ``known``: bases
    already recorded for some chunk lists (by an earlier manifest), used instead of reading."""
    out: set[bytes] = set()
    todo = [clist]
    seen: set[bytes] = set()
    while todo:
        cl = todo.pop()
        if cl in seen:
            continue
        seen.add(cl)
        rec = known.get(cl) if known is not None else None
        if rec is not None:
            out.update(parse_hex(b) for b in rec)
            continue
        try:
            ids = store.packs.read_chunk_list(cl).ids()
        except CasError:
            continue  # what cannot be read cannot be followed; verify names it
        for oid in ids:
            for base in edges.bases(oid):
                if base not in out:
                    out.add(base)
                    todo.append(base)
    out.discard(clist)
    return sorted(b.hex() for b in out)


def complete(store: Store, clist: ChunkList, avoid: frozenset[str] = frozenset(),
             edges: EdgeMap | None = None) -> bool:
    """True if every chunk of ``clist`` is in a pack outside ``avoid``, and so is every
    derived chunk's base list with its chunks (what a new version naming the list needs)."""
    packs = store.packs
    todo, seen = [clist], set()
    while todo:
        cl = todo.pop()
        for oid in cl.ids():
            loc = packs.find(oid)
            if loc is None or loc.pack.id in avoid or (oid, loc.pack.id) in packs.bad:
                return False
            if loc.entry.codec == CODEC_DERIVED:
                for base in (edges or EdgeMap(store)).bases(oid):
                    if base in seen:
                        continue
                    seen.add(base)
                    loc = packs.find(base)
                    if loc is None or loc.pack.id in avoid:
                        return False
                    try:
                        todo.append(packs.read_chunk_list(base))
                    except CasError:
                        return False
    return True


def root_manifests(store: Store, roots: list[Root], errors: list[str]
                   ) -> Iterator[tuple[Root, Manifest]]:
    """Decode each root's manifest; a damaged one is named in ``errors`` and skipped."""
    reg = store.registry
    for r in roots:
        try:
            yield r, Manifest.decode(reg.blob(r.blob))
        except CasError as exc:
            errors.append(f"{r.ref}: {exc.message}")

