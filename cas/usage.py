"""``cas du``: what the store holds, and what each model and version needs.

Every count goes through the object graph (:mod:`cas.graph`), so a version's needs include
the bases of its derived chunks, wherever they came from; each object is counted once, at its
stored (compressed) size with its entry header.

Whole store (``cas du``):

- *logical*: the sum of the sizes of the files of every live or tagged version;
- *stored*: what every root needs (live, tagged, pinned, removed within the restore window);
- *unique* / *shared*: of what live and tagged versions need, bytes one model alone needs and
  bytes two or more models need; the dedupe ratio is logical over their sum;
- the space report: *live* (what live and tagged versions need), *pinned* (what pinned
  versions need, whatever else needs it too), *restore_window* (what only versions removed
  within the restore window need: ``gc --expire-removed`` returns it), *reclaimable* (objects
  in packs that no root needs: ``gc`` returns them, minus packs younger than its grace and
  packs below its repack threshold), and *pack_bytes*, the pack and index files on disk.

One model (``cas du NAME``): per version, *new_stored* (bytes no earlier version of the model
needed), *needs* (all it needs) and *borrowed* (what it needs through derived chunks whose
bases are other files: "needs X of other versions' chunks"); *unique* and *shared* against
the other models.
"""

from __future__ import annotations

import os

import msgspec

from cas import graph
from cas.errors import CasError, CasWarning, NotFoundError
from cas.format.manifest import Manifest
from cas.format.pack import ENTRY_HEADER_SIZE
from cas.names import validate_model_name
from cas.store import Store



class VersionUsage(msgspec.Struct):
    version: str
    logical: int
    new_stored: int
    #: Stored bytes of everything the version needs.
    needs: int = 0
    #: Of ``needs``, the bytes it needs through derived chunks' bases (other versions' files).
    borrowed: int = 0
    id: str = ""


class ModelError(msgspec.Struct):
    """A model a whole-store command could not read, and why (``code``: its error code)."""

    name: str
    code: str
    message: str


class DiskUsage(msgspec.Struct):
    scope: str
    logical: int
    stored: int
    unique: int
    shared: int
    dedupe_ratio: float
    versions: list[VersionUsage] = []
    pack_bytes: int = 0
    #: Models left out of the counts because their versions cannot be read (for ``du NAME``:
    #: only ``NAME`` itself; other models' are warnings, as they only blur unique and shared).
    errors: list[ModelError] = []
    warnings: list[CasWarning] = []
    live: int = 0
    pinned: int = 0
    restore_window: int = 0
    reclaimable: int = 0


def _sizes(store: Store, wanted: set[bytes]) -> tuple[dict[bytes, int], int]:
    """Stored size (with entry header) of each of ``wanted`` found in an index, and the
    bytes of every indexed object nobody wants (one pass over every index)."""
    sizes: dict[bytes, int] = {}
    unwanted = 0
    for pack in store.packs.packs.values():
        for oid, _off, stored, _raw, _kind, _codec, _r in pack.records():
            n = stored + ENTRY_HEADER_SIZE
            if oid in wanted:
                sizes.setdefault(oid, n)
            else:
                unwanted += n
    return sizes, unwanted


def disk_usage(store: Store, name: str | None = None) -> DiskUsage:
    """See the module docstring."""
    if name is not None:
        validate_model_name(name)
    store.packs.refresh()
    roots = graph.find_roots(store)
    errors = [ModelError(m, e.code, e.message) for m, e in roots.errors]
    edges = graph.EdgeMap(store)
    pinned = graph.pinned_here(store, [])
    per_model: dict[str, list[tuple[graph.Root, Manifest]]] = {}
    others: list[tuple[graph.Root, Manifest]] = []
    bad = set(roots.unreadable)
    for r in roots.roots:
        if r.name in bad:
            continue
        try:
            m = Manifest.decode(store.registry.blob(r.blob))
        except CasError as exc:
            errors.append(ModelError(r.name, exc.code, f"{r.ref}: {exc.message}"))
            bad.add(r.name)
            continue
        if r.why in (graph.LIVE, graph.TAGGED):
            per_model.setdefault(r.name, []).append((r, m))
        else:
            others.append((r, m))
    per_model = {k: v for k, v in per_model.items() if k not in bad}
    models = {k: graph.needs(store, [m for _, m in v], edges).ids for k, v in per_model.items()}
    users: dict[bytes, int] = {}
    for ids in models.values():
        for oid in ids:
            users[oid] = users.get(oid, 0) + 1
    live_ids = set(users)
    pinned_ids = graph.needs(store, [m for r, m in (*others, *(x for v in per_model.values()
                                                                for x in v))
                                     if (r.name, r.id) in pinned], edges).ids
    removed_ids = graph.needs(store, [m for r, m in others if r.why == graph.REMOVED],
                              edges).ids
    wanted = live_ids | pinned_ids | removed_ids
    if name is not None and name not in per_model:
        own = [e for e in errors if e.name == name]
        if not own and store.registry.head(name) is None:
            raise NotFoundError(f"model {name!r} is not registered")
    sizes, unwanted = _sizes(store, wanted)
    edges.save()

    def size(ids: set[bytes]) -> int:
        return sum(sizes.get(o, 0) for o in ids)

    pack_bytes = sum(os.path.getsize(store.packs_dir / n) for n in os.listdir(store.packs_dir)
                     if n.endswith((".pack", ".idx")))
    if name is None:
        logical = sum(m.total_size for v in per_model.values() for _, m in v)
        shared_live = sum(sizes.get(o, 0) for o, n in users.items() if n > 1)
        live = size(live_ids)
        return DiskUsage(
            "store", logical, size(wanted), live - shared_live, shared_live,
            round(logical / live, 3) if live else 0.0, [], pack_bytes, errors,
            live=live, pinned=size(pinned_ids),
            restore_window=size(removed_ids - live_ids - pinned_ids), reclaimable=unwanted)
    own = [e for e in errors if e.name == name]
    warnings = [CasWarning("W_MODEL_UNREADABLE",
                           f"model {e.name} is not counted as a user of shared bytes: {e.message}")
                for e in errors if e.name != name]
    rows = []
    mine: set[bytes] = set()
    for r, m in sorted(per_model.get(name, []), key=lambda x: x[0].seq):
        needed = graph.needs(store, [m], edges)
        files = graph.Closure(store, edges)
        for f in m.files:
            files.add_file(f.chunks, [])
        new = needed.ids - mine
        rows.append(VersionUsage(r.ref, m.total_size, size(new), size(needed.ids),
                                 size(needed.ids - files.ids), r.id))
        mine |= needed.ids
    stored = size(mine)
    others_ids: set[bytes] = set()
    for k, ids in models.items():
        if k != name:
            others_ids |= ids
    unique = size(mine - others_ids)
    logical = sum(m.total_size for _, m in per_model.get(name, []))
    return DiskUsage(name, logical, stored, unique, stored - unique,
                     round(logical / stored, 3) if stored else 0.0, rows, pack_bytes, own,
                     warnings)
