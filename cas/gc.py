"""Garbage collection: delete packs with nothing live, repack packs that are mostly dead.

What is live is :mod:`cas.graph`'s closure of the roots. The protocol (``docs/format.md``,
"Garbage collection") is safe against writers that run at the same time, on this host or on
others sharing the store, through the lock objects of :mod:`cas.leases`:

1. take the exclusive gc lease (one gc at a time);
2. mark: the roots' closure, marked by position in every pack index;
3. decide per pack: keep (young, or little dead), delete (nothing live), repack (dead share
   above the threshold, or a damaged copy whose object has a good copy); nothing else is
   ever touched (packs without an index, damaged indexes, quarantine);
4. publish the plan (the doomed packs) in the gc lease: a writer that starts later never
   deduplicates against an object in a doomed pack;
5. copy the live objects of packs to repack into new packs, as stored bytes (pack durable,
   then its index);
6. wait for every writer that held a lease when the plan was published;
7. mark again the roots that appeared since step 2; a doomed pack holding any object they need
   that no new pack holds is kept;
8. delete each doomed pack: its index first, then the pack (a crash in between leaves a pack
   without an index, which the next writer indexes and the next gc deletes);
9. multi-pack indexes naming a deleted pack are replaced; registry objects no ref reaches are
   pruned.

``--grace`` keeps packs younger than it whatever they hold (a writer that holds no lease: an
older cas, a copy made by hand). ``--now`` sets grace and the restore window to zero.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from cas import graph
from cas.checkout import pause_hook_from_env
from cas.errors import (
    CasError,
    CasWarning,
    DiskError,
    LockError,
    PermError,
    VerifyError,
    from_os_error,
)
from cas.format import pack as fmt
from cas.packwriter import PackWriter
from cas.rootcache import RootCache
from cas.settings import parse_duration

#: Default ``--grace``: packs younger than this are never deleted or repacked.
DEFAULT_GRACE = "1h"
#: Default repack threshold: a pack whose dead share of bytes is above it is rewritten.
DEFAULT_REPACK_THRESHOLD = 0.2
#: Packs smaller than the pack target divided by this are repacked with any dead byte.
SMALL_PACK_DIVISOR = 16
#: Bytes read per ``pread`` while copying live objects.
COPY_RUN = 8 << 20
KEEP, DELETE, REPACK, YOUNG = "keep", "delete", "repack", "young"

Progress = Callable[[int, int, str], None]


class GcOptions(msgspec.Struct, frozen=True):
    dry_run: bool = False
    #: Seconds; None: :data:`DEFAULT_GRACE`.
    grace: float | None = None
    #: Seconds a removed version stays a root; None: the store's ``restore_window``.
    expire_removed: float | None = None
    repack_threshold: float = DEFAULT_REPACK_THRESHOLD
    #: Seconds to wait for the gc lease and for writers that started before the plan.
    wait: float = 60.0


class PackReport(msgspec.Struct):
    pack: str
    size: int
    objects: int
    live_objects: int
    live_bytes: int
    dead_bytes: int
    action: str


class GcResult(msgspec.Struct):
    dry_run: bool
    roots: dict[str, int]
    packs_before: int
    packs_after: int
    packs_deleted: int
    packs_repacked: int
    packs_written: int
    bytes_before: int
    bytes_after: int
    #: Bytes of pack files gone (or that would go, with ``dry_run``).
    reclaimed: int
    live_bytes: int
    dead_bytes: int
    #: Dead bytes left in packs kept (young, or below the repack threshold).
    dead_kept: int
    registry_objects_pruned: int
    #: Versions the stored retention rules removed (or would remove, with ``dry_run``).
    retention_removed: int
    packs: list[PackReport]
    warnings: list[CasWarning] = []


@dataclass
class _Plan:
    reports: dict[str, PackReport]
    delete: list[str]
    repack: list[str]


def _plan(store, marks: graph.Marks, grace: float, threshold: float, now: float) -> _Plan:
    reports: dict[str, PackReport] = {}
    delete, repack = [], []
    small = store.config.pack_target_bytes // SMALL_PACK_DIVISOR
    for pack_id, pm in sorted(marks.packs.items()):
        pack = store.packs.packs[pack_id]
        try:
            mtime = os.stat(pack.pack_path).st_mtime
        except OSError:
            mtime = now
        total = pm.live_bytes + pm.dead_bytes
        if now - mtime < grace:
            action = YOUNG
        elif pm.live_count == 0:
            action = DELETE
            delete.append(pack_id)
        elif pm.damaged_dead or (total and pm.dead_bytes / total > threshold) or (
                pm.dead_bytes and pm.size < small):
            # A small pack (one add's) is merged into a new pack as soon as anything in it
            # is dead: cheap to copy, and removing every other version of a series leaves
            # each pack only a little dead, which the threshold alone would keep for ever.
            action = REPACK
            repack.append(pack_id)
        else:
            action = KEEP
        reports[pack_id] = PackReport(pack_id, pm.size, len(pm.live), pm.live_count,
                                      pm.live_bytes, pm.dead_bytes, action)
    return _Plan(reports, delete, repack)


def _roots_closure(store, now: float, window: float | None, cache: RootCache,
                   only: set[tuple[str, int, bytes]] | None = None
                   ) -> tuple[graph.Roots, graph.Closure, list[str]]:
    """The roots and their closure (``only``: skip the roots in this set of
    ``(name, seq, manifest blob)``), and what could not be read."""
    roots = graph.find_roots(store, now=now, window=window, cache=cache)
    errors = list(roots.problems)
    closure = graph.Closure(store)
    for r in roots.roots:
        if only is not None and (r.name, r.seq, r.blob) in only:
            continue
        try:
            files = cache.manifest_files(store.registry, r.blob)
        except CasError as exc:
            errors.append(f"{r.ref}: {exc.message}")
            continue
        for chunks, bases in files:
            closure.add_file(chunks, bases)
    errors += [f"chunk list {k.hex()}: {v}" for k, v in sorted(closure.unreadable.items())]
    return roots, closure, errors


def collect(store, options: GcOptions | None = None, progress: Progress | None = None
            ) -> GcResult:
    """Run gc (see the module docstring).

    Raises:
        VerifyError: what is live cannot be told (a damaged tag, manifest, history or chunk
            list): nothing is deleted; ``cas verify`` names the damage.
        LockError: another gc holds the gc lease, or writers did not finish in time, or the
            lease was lost (nothing more is deleted).
    """
    options = options or GcOptions()
    pause = pause_hook_from_env()
    grace = parse_duration(DEFAULT_GRACE) if options.grace is None else options.grace
    now = time.time()
    warnings: list[CasWarning] = []
    if not options.dry_run:
        # Recovery first: packs a killed writer (or gc) left without an index are indexed,
        # so this gc sees them, and dead writers' temps go.
        store.check_writable()
    with store.leases.acquire_gc("gc", wait=options.wait) as lease:
        retained = _apply_retention(store, now, options.dry_run, warnings)
        if not options.dry_run:
            # What this gc may delete is gone for good, whatever the window says later (a
            # window shortened and lengthened again, another host's clock).
            expire = options.expire_removed
            if expire is None:
                expire = store.settings.restore_window_seconds()
            try:
                graph.record_expired_before(store, now - expire)
            except OSError as exc:
                raise from_os_error(exc, f"writing {graph.GC_STATE}") from None
        store.packs.refresh()
        cache = RootCache(store)
        roots, closure, errors = _roots_closure(store, now, options.expire_removed, cache)
        failed = [e for _, e in roots.errors if isinstance(e, (DiskError, PermError))]
        if failed:  # the disk, not damage: say so (nothing was deleted)
            raise type(failed[0])(f"gc deleted nothing: {failed[0].message}")
        if errors:
            raise VerifyError("gc cannot tell what is live, nothing was deleted: "
                              + "; ".join(errors[:3])
                              + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
                              + "; run 'cas verify --all'")
        marks = closure.mark()
        if not options.dry_run:
            cache.save()  # derived data, but a dry run writes nothing at all
        if marks.missing:
            warnings.append(CasWarning(
                "W_OBJECTS_MISSING", f"{len(marks.missing)} objects that live versions need "
                                     "are in no pack; run 'cas verify --all'"))
        plan = _plan(store, marks, grace, options.repack_threshold, now)
        plan, marks = _keep_bases(store, closure, marks, plan, grace,
                                  options.repack_threshold, now)
        counts: dict[str, int] = {}
        for r in roots.roots:
            counts[r.why] = counts.get(r.why, 0) + 1
        bytes_before = sum(r.size for r in plan.reports.values())
        result = GcResult(
            dry_run=options.dry_run, roots=counts, packs_before=len(plan.reports),
            packs_after=len(plan.reports), packs_deleted=0, packs_repacked=0,
            packs_written=0, bytes_before=bytes_before, bytes_after=bytes_before, reclaimed=0,
            live_bytes=sum(r.live_bytes for r in plan.reports.values()),
            dead_bytes=sum(r.dead_bytes for r in plan.reports.values()),
            dead_kept=0, registry_objects_pruned=0, retention_removed=retained,
            packs=list(plan.reports.values()), warnings=warnings)
        doomed = plan.delete + plan.repack
        if options.dry_run:
            result.reclaimed = sum(plan.reports[p].size for p in plan.delete) + sum(
                plan.reports[p].dead_bytes for p in plan.repack)
            result.dead_kept = result.dead_bytes - sum(
                plan.reports[p].dead_bytes for p in doomed)
            return result
        if pause:
            pause("marked")
        idents = {p: _ident(store, p) for p in doomed}
        lease.publish_plan(doomed)
        if pause:
            pause("planned")
        copied, written = _repack(store, plan, marks, progress)
        lease.wait_for_writers(options.wait)
        # Writers that ran before the plan was visible may have committed versions that
        # need objects in doomed packs: mark the roots that appeared since, keep such packs.
        kept = _needed_again(store, roots, plan, copied, time.time(), options.expire_removed,
                             cache)
        if pause:
            pause("rechecked")
        # A writer that avoided a doomed pack and stored the same objects in the same order
        # wrote a pack of the same name: such a pack is not the one judged, and stays.
        kept |= {p for p in doomed if _ident(store, p) != idents[p]}
        deleted = [p for p in doomed if p not in kept]
        for pack_id in kept:
            plan.reports[pack_id].action = KEEP
        _delete_packs(store, lease, deleted, pause)
        _replace_midxs(store, set(deleted))
        store.packs.forget(deleted)
        closure.edges.prune()  # the map the mark built: deleted packs' pairs dropped
        closure.edges.save()
        try:
            result.registry_objects_pruned = _prune_registry(store, grace, now)
        except LockError as exc:
            # Packs are deleted already: a busy registry only postpones the pruning.
            warnings.append(CasWarning(
                "W_REGISTRY_NOT_PRUNED", f"registry objects were not pruned ({exc.message}); "
                                         "the next gc prunes them"))
        from cas import access

        try:
            with store.writing():  # the last use of each version, in order (cas.access)
                access.compact(store.path)
        except (DiskError, PermError, LockError):
            pass  # the log stays longer until the next gc
    after = sum(_size(store.packs_dir / n) for n in os.listdir(store.packs_dir)
                if n.endswith(".pack"))
    result.packs_deleted = len(deleted)
    result.packs_repacked = len([p for p in plan.repack if p in deleted])
    result.packs_written = len(written)
    result.packs_after = result.packs_before - len(deleted) + len(written)
    result.bytes_after = after
    result.reclaimed = max(0, bytes_before - after)
    result.dead_kept = sum(r.dead_bytes for p, r in plan.reports.items() if p not in deleted)
    return result


#: Rounds of :func:`_keep_bases` (each follows one more level of bases of staying objects).
MAX_BASE_ROUNDS = 32


def _keep_bases(store, closure: graph.Closure, marks: graph.Marks, plan: _Plan, grace: float,
                threshold: float, now: float) -> tuple[_Plan, graph.Marks]:
    """Every derived object that stays stored (in a pack kept whole, or copied because it is
    live) keeps the chunk lists it is predicted from, and their chunks: a writer may
    deduplicate against any object it finds, so nothing stored may lose its base. Marks and
    plan are redone until no staying object needs a base that is not marked."""
    edges = closure.edges
    for _ in range(MAX_BASE_ROUNDS):
        deleting, repacking = set(plan.delete), set(plan.repack)
        wanted = set()
        for pack_id in marks.packs:
            if pack_id in deleting:
                continue
            for oid, base in edges.pairs(pack_id):
                if pack_id in repacking and oid not in closure.ids:
                    continue  # a dead copy the repack leaves behind
                if not closure.known(base):
                    wanted.add(base)
        if not wanted:
            return plan, marks
        for base in wanted:
            closure.add_file(base, None)
        marks = closure.mark()
        plan = _plan(store, marks, grace, threshold, now)
    raise VerifyError("gc cannot settle which derived chunks' bases to keep (a cycle?); "
                      "nothing was deleted; run 'cas verify --all'")


def _apply_retention(store, now: float, dry_run: bool, warnings: list[CasWarning]) -> int:
    """Apply the stored retention rules (``cas retain --set``): ordinary ``rm`` commits,
    whose versions stay restorable for the restore window."""
    from cas.retention import apply, apply_stored

    # Decided without the store lock, applied under it (apply decides again there): a gc
    # must not wait for a running add's lock when the rules remove nothing.
    plan = apply_stored(store, now=now, dry_run=True)
    if not dry_run and any(m.removed() for m in plan.models):
        plan = apply(store, plan)
    warnings.extend(plan.warnings)
    return plan.removed if plan.applied else sum(len(m.removed()) for m in plan.models)


def _repack(store, plan: _Plan, marks: graph.Marks, progress: Progress | None
            ) -> tuple[set[bytes], list[str]]:
    """Copy the live objects of the packs to repack into new packs, as stored bytes; return
    the ids copied and the new pack ids (durable, indexed)."""
    if not plan.repack:
        return set(), []
    writer = PackWriter(store.backend, store.config.pack_target_bytes)
    copied: set[bytes] = set()
    total = sum(marks.packs[p].live_bytes for p in plan.repack)
    done = 0
    try:
        for pack_id in plan.repack:
            pack = store.packs.packs[pack_id]
            live = marks.packs[pack_id].live
            # Objects live here and not copied yet (from another pack being repacked), in
            # pack order: runs of them lie back to back and are copied with their headers.
            entries = sorted((e for i, e in enumerate(pack.entries())
                              if live[i] and e.oid not in copied), key=lambda e: e.offset)
            for run in _runs(entries):
                writer.add_span(run, pack.read_run_raw(run))
                copied.update(e.oid for e in run)
                done += sum(fmt.ENTRY_HEADER_SIZE + e.stored_len for e in run)
                if progress is not None:
                    progress(done, total, pack_id[:12])
        written = writer.finish()
    except BaseException:
        writer.abort()
        raise
    store.packs.refresh()
    return copied, written


def _ident(store, pack_id: str) -> tuple[int, int, int, int]:  # type: ignore[no-untyped-def]
    """Inode and modification time of a pack's two files (0s when missing)."""
    out = []
    for ext in ("pack", "idx"):
        try:
            st = os.stat(store.packs_dir / f"pack-{pack_id}.{ext}")
            out += [st.st_ino, st.st_mtime_ns]
        except OSError:
            out += [0, 0]
    return tuple(out)  # type: ignore[return-value]


def _size(path) -> int:  # type: ignore[no-untyped-def]
    try:
        return os.path.getsize(path)
    except OSError:
        return 0  # moved or deleted meanwhile (another writer's recovery)


def _runs(entries: list[fmt.Entry]) -> list[list[fmt.Entry]]:
    """Entries grouped into runs that lie back to back, each at most :data:`COPY_RUN`."""
    runs: list[list[fmt.Entry]] = []
    for e in entries:
        if runs:
            last = runs[-1][-1]
            end = last.offset + fmt.ENTRY_HEADER_SIZE + last.stored_len
            if e.offset == end and end - runs[-1][0].offset < COPY_RUN:
                runs[-1].append(e)
                continue
        runs.append([e])
    return runs


def _needed_again(store, before: graph.Roots, plan: _Plan, copied: set[bytes], now: float,
                  window: float | None, cache: RootCache) -> set[str]:
    """Doomed packs that hold an object needed by a root that appeared since the mark and
    that no repacked pack holds."""
    doomed = plan.delete + plan.repack
    if not doomed:
        return set()
    seen = {(r.name, r.seq, r.blob) for r in before.roots}
    roots, closure, errors = _roots_closure(store, now, window, cache, only=seen)
    if errors:
        return set(doomed)  # cannot tell: keep every doomed pack
    if not closure.ids:
        return set()
    # An object also held by a pack that stays (a writer that saw the plan stored it again)
    # does not keep a doomed pack.
    store.packs.refresh()
    gone = set(doomed)
    staying = [p for pid, p in store.packs.packs.items() if pid not in gone]
    bad = store.packs.bad
    needed = [oid for oid in closure.ids if oid not in copied
              and not any(p.lookup(oid) is not None and (oid, p.id) not in bad
                          for p in staying)]
    keep = set()
    for pack_id in doomed:
        pack = store.packs.packs.get(pack_id)
        if pack is None:
            continue
        for oid in needed:
            if pack.lookup(oid) is not None:
                keep.add(pack_id)
                break
    return keep


def _delete_packs(store, lease, pack_ids: list[str], pause) -> None:  # type: ignore[no-untyped-def]
    """Every index first, then every pack, each batch made durable at once: a crash between
    leaves packs without an index, which the next writer indexes (and the next gc deletes),
    never an index without its pack."""
    if not pack_ids:
        return
    for ext in ("idx", "pack"):
        lease.check()
        try:
            store.backend.delete_many([f"packs/pack-{p}.{ext}" for p in pack_ids])
        except OSError as exc:
            raise from_os_error(exc, f"deleting {len(pack_ids)} packs") from None
        if pause:
            pause("deleted-one")


def _replace_midxs(store, deleted: set[str]) -> None:
    """Write a midx over the packs still there that midxs naming a deleted pack covered,
    then delete those midxs (a crash between leaves overlapping midxs, which are correct)."""
    from cas.multipack import _pack_pairs, write_midx

    stale = [m for m in store.packs.midxs if deleted & set(m.pack_hexes)]
    if not stale:
        return
    keep = sorted({h for m in stale for h in m.pack_hexes} - deleted)
    packs = [store.packs.packs[h] for h in keep if h in store.packs.packs]
    try:
        if packs:
            write_midx(store.backend, store.tmp_dir, [_pack_pairs(p) for p in packs],
                       [bytes.fromhex(p.id) for p in packs])
        for m in stale:
            store.packs.drop_midx(m)
            store.backend.delete(f"packs/{m.path.name}")
    except (CasError, OSError):
        pass  # a midx is an accelerator: readers skip one that names a missing pack
    store.packs.refresh()


def _prune_registry(store, grace: float, now: float) -> int:
    """Delete loose registry objects that no ref reaches and that are older than ``grace``,
    under the store's write lock (every registry writer takes it, and writes its objects
    before the ref that names them). Packed git objects are left to git. Skipped when the
    refs and the number of loose objects are what the last complete pruning left
    (``registry_checked`` in ``gc.json``)."""
    import blake3
    from dulwich.objects import Commit, Tag, Tree

    with store.writing():
        reg = store.registry
        repo = reg.repo
        odb = repo.object_store
        try:
            refs = {name: sha for name, sha in repo.refs.as_dict().items() if name != b"HEAD"}
        except (KeyError, OSError, ValueError):
            return 0
        try:
            loose = list(odb._iter_loose_objects())  # noqa: SLF001 - the one loose-object lister
        except OSError as exc:
            raise from_os_error(exc, "listing registry objects") from None

        def fingerprint(count: int) -> str:
            h = blake3.blake3(b"%d\n" % count)
            for name, sha in sorted(refs.items()):
                h.update(name + b" " + sha + b"\n")
            return h.hexdigest()

        if graph.gc_state(store).get("registry_checked") == fingerprint(len(loose)):
            return 0
        reachable: set[bytes] = set()
        todo = list(refs.values())
        while todo:
            sha = todo.pop()
            if sha in reachable:
                continue
            reachable.add(sha)
            try:
                obj = odb[sha]
            except (KeyError, OSError, ValueError, CasError):
                return 0  # an unreadable object may hide others: prune nothing
            if isinstance(obj, Tag):
                todo.append(obj.object[1])
            elif isinstance(obj, Commit):
                todo.append(obj.tree)
                todo.extend(obj.parents)
            elif isinstance(obj, Tree):
                todo.extend(item.sha for item in obj.items() if item.mode != 0o160000)
        cutoff = now - grace
        pruned = young = 0
        folder = store.path / "registry" / "objects"
        for sha in loose:
            if sha in reachable:
                continue
            hex_sha = sha.decode()
            try:
                if os.stat(folder / hex_sha[:2] / hex_sha[2:]).st_mtime > cutoff:
                    young += 1
                    continue
                store.backend.delete(f"registry/objects/{hex_sha[:2]}/{hex_sha[2:]}")
                pruned += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise from_os_error(exc, "pruning registry objects") from None
        if not young:
            try:
                graph.update_gc_state(store, registry_checked=fingerprint(len(loose) - pruned))
            except OSError:
                pass  # only an optimisation: the next gc walks the registry again
        return pruned
