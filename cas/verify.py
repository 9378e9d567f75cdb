"""Verify: prove that stored bytes are what their ids and manifests say.

``verify_all`` checks everything a restore reads, in an order that never reports a sound store
as broken while a writer commits:

1. It snapshots the registry first: every model's history is walked from its tip (every commit
   parsed, its trailers checked; every tree and manifest blob read; each manifest's name and
   sequence number checked against the ref and path it was read from), and the tags are read.
   The versions that keep data alive (live, tagged, removed within the restore window) are
   taken from this snapshot. A model whose history cannot be read is reported by name and the
   other models are still checked.
2. Then it lists the packs and walks each one front to back: header, every entry (header
   checksum, record validation, decompression, BLAKE3), and trailer (entry count and pack id);
   each index record must match the entry at its offset. Files that could not be indexed and
   were moved to quarantine are reported as warnings.
3. Meanwhile (and again afterwards, if the walk found damaged objects), each snapshot
   version's chunk lists must decode, add up to the file sizes, and name chunks that are
   present, sound and as long as the list says. A writer lands packs before it moves a ref, so
   every object a snapshot version needs is in a pack listed after the snapshot; an object not
   found is looked for again after re-listing the packs before it is called missing. With
   ``files``, the whole-file SHA-256 of every live version is computed last, once per distinct
   chunk list.

``verify_version`` streams every file of one version, verifying each chunk and the whole file's
SHA-256 and BLAKE3 against the manifest.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import blake3
import msgspec

from cas.checkout import WORKERS, pause_hook_from_env
from cas.compression import CODEC_ZSTD, STREAM_ABOVE, iter_frame
from cas.errors import CasError, CasWarning, FormatError, NotFoundError, SchemaError, VerifyError
from cas.format.chunklist import max_encoded_size
from cas.format.manifest import FileEntry, Manifest
from cas.format.pack import KIND_CHUNK_LIST, Entry
from cas import graph
from cas.gcpause import gc_paused
from cas.ids import parse_hex
from cas.quarantine import FOLDER, quarantined
from cas.packs import Located, Pack, PackWalk, scan_pack
from cas.registry import ModelState, Registry, Version
from cas.store import Progress, Store


#: Chunks read ahead of the hashing of one file.
READ_AHEAD = 32
#: Chunks read at once by ``--files``.
FILES_BATCH = 64


class BadObject(msgspec.Struct):
    id: str
    pack: str
    reason: str


class BrokenVersion(msgspec.Struct):
    version: str
    files: list[str]
    reasons: list[str]


class VerifyReport(msgspec.Struct):
    ok: bool
    scope: str
    objects_checked: int = 0
    bytes_checked: int = 0
    versions_checked: int = 0
    bad_objects: list[BadObject] = []
    broken_versions: list[BrokenVersion] = []
    problems: list[str] = []
    #: Packs whose index is missing, unreadable or fails its checksum (rebuildable from the pack).
    bad_indexes: list[str] = []
    #: Indexes rebuilt by ``verify --all --repair`` before this report was made.
    repaired_indexes: list[str] = []
    #: Multi-pack indexes that are damaged (derived data: repair deletes and rewrites them).
    bad_midx: list[str] = []
    #: Packs whose header, entry structure or trailer is damaged (their indexed objects may
    #: still be readable; the pack can no longer be re-indexed).
    bad_packs: list[str] = []
    #: Models whose history cannot be read, each with its error.
    bad_models: list[str] = []
    #: Files moved to quarantine (now or by an earlier recovery), relative to ``packs/``.
    quarantined: list[str] = []
    #: Distinct chunk lists whose whole-file SHA-256 was computed (``--files``).
    files_checked: int = 0
    #: Objects stored from ``verify --repair --from PATH`` before this report was made.
    healed_objects: int = 0
    #: Versions registered here whose content is in other stores (:mod:`cas.presence`):
    #: not checked, not damage.
    not_present: list[str] = []
    warnings: list[CasWarning] = []

    def summary(self) -> str:
        if self.ok:
            text = (f"ok: {self.scope}: {_count(self.objects_checked, 'object')}, "
                    f"{_count(self.bytes_checked, 'byte')}, "
                    f"{_count(self.versions_checked, 'version')} verified")
            if self.files_checked:
                text += f", {_count(self.files_checked, 'whole file')} hashed"
            if self.not_present:
                text += (f"; {_count(len(self.not_present), 'version')} registered here with "
                         "content elsewhere (not present)")
            return text
        parts = []
        if self.bad_objects:
            parts.append(_count(len(self.bad_objects), "bad object"))
        if self.broken_versions:
            parts.append("broken versions: " + ", ".join(b.version for b in self.broken_versions))
        if self.problems:
            parts.append(_count(len(self.problems), "other problem"))
        return f"{self.scope}: " + "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- the registry snapshot -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Root:
    """A version whose data must be restorable, as the snapshot saw it."""

    ref: str
    blob: bytes
    live: bool


class _Snapshot:
    """What one read of the registry saw: the versions to check and their manifests."""

    def __init__(self) -> None:
        self.roots: list[_Root] = []
        #: Decoded manifest of a root, or the error that kept it from decoding, per blob id.
        self.manifests: dict[bytes, Manifest | CasError] = {}
        #: Objects a root needs that no pack holds (found by the version phase).
        self.missing: set[bytes] = set()


def _snapshot(store: Store, report: VerifyReport) -> _Snapshot:
    """The roots (:func:`cas.graph.find_roots`), and every commit and manifest of every
    model's history checked on the way."""
    reg = store.registry
    snap = _Snapshot()
    states: dict[str, ModelState] = {}
    roots = graph.find_roots(store, states=states)
    report.problems.extend(roots.problems)
    report.bad_models.extend(m for m in dict.fromkeys(roots.bad_models)
                             if m not in report.bad_models)
    for st in states.values():
        _walk_history(reg, st, snap, report)
    for r in roots.roots:
        label = r.ref if r.why == graph.LIVE else f"{r.ref} ({r.why})"
        snap.roots.append(_Root(label, r.blob, r.why != graph.REMOVED))
    report.not_present = [r.ref for r in roots.absent]
    return snap


def _walk_history(reg: Registry, st: ModelState, snap: _Snapshot,
                  report: VerifyReport) -> None:
    """Read every tree and manifest blob of every commit of one model (what ``log``, ``show``,
    ``restore`` and checkouts of removed or tagged versions read); check each manifest against
    the ref and path it was read from."""
    name = st.name
    seen: set[tuple[int, bytes]] = set()
    for h in st.history:
        try:
            versions = reg.commit_versions(h.commit)
        except CasError as exc:
            report.problems.append(f"model {name}: commit {h.commit[:12]}: {exc.message}")
            continue
        if h.action in ("add", "annotate", "restore"):
            for seq in h.versions:
                if seq not in versions:
                    report.problems.append(
                        f"model {name}: commit {h.commit[:12]} ({h.action} v{seq}) has no "
                        f"versions/{seq:06d}.json")
        for seq, blob in versions.items():
            if (seq, blob) in seen:
                continue
            seen.add((seq, blob))
            # Decoded, checked and dropped: only the roots' manifests are kept (later), so
            # memory follows what is live, not the length of history.
            m = snap.manifests.get(blob) or _decode(reg, blob)
            if isinstance(m, CasError):
                report.problems.append(f"model {name}: commit {h.commit[:12]} "
                                       f"versions/{seq:06d}.json: {m.message}")
            elif m.name != name or m.seq != seq:
                report.problems.append(
                    f"model {name}: commit {h.commit[:12]} versions/{seq:06d}.json holds the "
                    f"manifest of {m.name}@{m.seq}")
            elif m.id is not None and seq in st.added and m.id != st.added[seq].version_id:
                report.problems.append(
                    f"model {name}: commit {h.commit[:12]} versions/{seq:06d}.json: manifest "
                    f"id {m.id} differs from the version's id {st.added[seq].version_id}")


def _decode(reg: Registry, blob: bytes) -> Manifest | CasError:
    try:
        return Manifest.decode(reg.blob(blob))
    except CasError as exc:
        return exc


def _manifest(reg: Registry, blob: bytes, snap: _Snapshot) -> Manifest | CasError:
    """The manifest of a root (decoded once, kept for the checks that follow)."""
    got = snap.manifests.get(blob)
    if got is None:
        got = snap.manifests[blob] = _decode(reg, blob)
    return got


# -- packs ---------------------------------------------------------------------------------------


#: Progress is reported about every this many bytes of objects checked.
PROGRESS_BYTES = 4 << 20


def _decode_object(pack: Pack, entry: Entry, stored: bytes | memoryview) -> str | None:
    """Decode and hash one object; return why it is bad, or None."""
    try:
        if entry.codec == CODEC_ZSTD and entry.raw_len > STREAM_ABOVE:
            # A large claim (a chunk list: chunks are capped far lower) is hashed as it
            # decompresses, never held: memory does not follow what a record claims.
            pack.check_record(entry)
            h = blake3.blake3()
            for piece in iter_frame(stored, entry.raw_len, object_id=entry.oid.hex()):
                h.update(piece)
            if h.digest() != entry.oid:
                raise VerifyError(f"chunk {entry.oid.hex()}: content hashes to "
                                  f"{h.hexdigest()} (pack {pack.id})")
        else:
            pack.decode(entry, stored)
    except CasError as exc:
        return exc.message
    return None


class _Packs:
    """The pack phase: objects are read in pack order and each is decoded and hashed as it is
    read, on the calling thread (worker threads measured slower, see :func:`verify_all`);
    memory holds one object at a time, and a large zstd claim is hashed as it decompresses."""

    def __init__(self, store: Store, report: VerifyReport, progress: Progress | None) -> None:
        self.store = store
        self.report = report
        self.progress = progress
        #: Damaged copies, by (object id, pack id).
        self.bad: dict[tuple[bytes, str], BadObject] = {}
        self.done = 0
        self.total = 0
        self._reported = 0

    def check_object(self, pack: Pack, entry: Entry, stored: bytes | memoryview) -> None:
        why = _decode_object(pack, entry, stored)
        self.report.objects_checked += 1
        if why is None:
            self.report.bytes_checked += entry.raw_len
        else:
            self.bad.setdefault((entry.oid, pack.id), BadObject(entry.oid.hex(), pack.id, why))
        self.done += entry.raw_len
        if self.progress is not None and self.done - self._reported >= PROGRESS_BYTES:
            self._reported = self.done
            self.progress(self.done, self.total, f"pack {pack.id[:12]}")

    def drain(self) -> None:
        if self.progress is not None and self.done != self._reported:
            self.progress(self.done, self.total, "packs")

    def read_indexed(self, pack: Pack, entries: Iterable[Entry]) -> None:
        """Check objects through the index (where the pack itself cannot be walked)."""
        for entry in entries:
            try:
                stored = pack.read_stored(entry)
            except CasError as exc:
                self.report.objects_checked += 1
                self.bad.setdefault((entry.oid, pack.id),
                                    BadObject(entry.oid.hex(), pack.id, exc.message))
                continue
            self.check_object(pack, entry, stored)

    def verify_pack(self, pack: Pack) -> None:
        """Walk one pack front to back and hold its index against it."""
        report = self.report
        index_ok = True
        try:
            pack.verify_index()
        except CasError as exc:
            report.problems.append(f"{exc.message} (repair with 'cas verify --all --repair')")
            report.bad_indexes.append(pack.id)
            index_ok = False
        records = {e.offset: e for e in pack.entries()}
        walk = PackWalk(pack.pack_path, data=True)
        mismatched = 0
        try:
            for entry, stored in walk.entries():
                if records.pop(entry.offset, None) != entry:
                    mismatched += 1
                assert stored is not None
                self.check_object(pack, entry, stored)
        except CasError as exc:
            if _collected(pack):
                return  # deleted by a gc while it was being opened
            report.problems.append(f"{exc.message}; its indexed objects are checked through "
                                   "the index")
            report.bad_packs.append(pack.id)
            self.read_indexed(pack, sorted((e for e in records.values()
                                            if e.offset >= walk.offset),
                                           key=lambda e: e.offset))
            records.clear()
        else:
            if walk.pack_id is not None and walk.pack_id.hex() != pack.id:
                report.problems.append(f"pack {pack.id}: its trailer names pack "
                                       f"{walk.pack_id.hex()}")
                report.bad_packs.append(pack.id)
        if (mismatched or records) and index_ok:
            report.problems.append(
                f"index {pack.id}: {mismatched + len(records)} records disagree with the pack "
                "(repair with 'cas verify --all --repair')")
            report.bad_indexes.append(pack.id)


def _collected(pack: Pack) -> bool:
    """True if both files of ``pack`` are gone: a gc deleted it (index first, then pack)."""
    return not pack.pack_path.exists() and not pack.idx_path.exists()


def _check_pack_folder(store: Store, report: VerifyReport) -> None:
    """Indexes that cannot be opened, packs without an index, midxs, quarantine."""
    for pack_id, why in store.packs.broken.items():
        report.problems.append(f"pack {pack_id}: index unusable: {why}")
        report.bad_indexes.append(pack_id)
        _scan_unindexed(store, pack_id, report)
    unindexed = 0
    for pack_id in store.packs.unindexed():
        # A complete pack without an index is no damage: a writer is between its two renames
        # right now, or was killed or failed there. It is invisible to readers, and the next
        # writer indexes it. Only one that cannot be indexed is a problem.
        scannable = _scan_unindexed(store, pack_id, report)
        if not (store.packs_dir / f"pack-{pack_id}.idx").exists():
            report.bad_indexes.append(pack_id)  # for --repair: indexed or quarantined
            unindexed += scannable
    if unindexed:
        report.warnings.append(CasWarning(
            "W_PACK_UNINDEXED",
            f"{_count(unindexed, 'complete pack')} without an index (invisible until the next "
            "write command or 'cas verify --all --repair' indexes it)"))
    for name, why in store.packs.broken_midx.items():
        report.problems.append(f"{name}: unusable multi-pack index: {why}")
        report.bad_midx.append(name)
    for opened in store.packs.midxs:
        try:
            opened.midx.verify()
        except CasError as exc:
            report.problems.append(f"{exc.message} (repair with 'cas verify --all --repair')")
            report.bad_midx.append(opened.path.name)
    report.quarantined = quarantined(store.packs_dir)
    if report.quarantined:
        report.warnings.append(CasWarning(
            "W_QUARANTINED",
            f"{_count(len(report.quarantined), 'file')} in {store.packs_dir / FOLDER} could "
            "not be indexed and were set aside (inspect, then delete them)"))


def _scan_unindexed(store: Store, pack_id: str, report: VerifyReport) -> bool:
    """Whether a pack whose index is missing or unusable can be re-indexed; if not, say so."""
    try:
        scan_pack(store.packs_dir / f"pack-{pack_id}.pack")
        return True
    except CasError as exc:
        report.problems.append(f"pack {pack_id}: cannot be indexed: {exc.message} "
                               "('cas verify --all --repair' moves it to quarantine)")
        return False


# -- versions ------------------------------------------------------------------------------------


class _Finder:
    """Finds objects for the version phase, re-listing the packs (once per version at most)
    before calling an object missing: packs that landed after the listing are complete."""

    def __init__(self, store: Store, edges: graph.EdgeMap | None = None) -> None:
        self.store = store
        self.relisted = False
        self.edges = edges if edges is not None else graph.EdgeMap(store)
        #: Objects some version needs that are in no pack (recorded like damaged ones).
        self.missing: set[bytes] = set()

    def __call__(self, oid: bytes) -> Located | None:
        loc = self.store.packs.find(oid, relist=not self.relisted)
        self.relisted = self.relisted or loc is None
        return loc


def _check_file(store: Store, find: _Finder, f: FileEntry, bad: set[bytes]) -> str | None:
    """Why the file cannot be restored (its list or a chunk missing, damaged with no good
    copy, or of the wrong length), or None. ``bad``: ids with a damaged copy."""
    why = _check_list(store, find, f.chunks, f.size, bad)
    if why is not None:
        return why
    # What the derived chunks need, as the packs tell it (the edge map), must be among what
    # the manifest records: gc keeps only what manifests name.
    needed = graph.list_bases(store, parse_hex(f.chunks), find.edges)
    if f.bases is not None and not set(needed) <= set(f.bases):
        return ("derived chunks need chunk lists the manifest does not record as bases: "
                + ", ".join(sorted(set(needed) - set(f.bases))))
    for base in dict.fromkeys([*(f.bases or ()), *needed]):
        why = _check_list(store, find, base, None, bad)
        if why is not None:
            return f"base of derived chunks: {why}"
    return None


def _check_list(store: Store, find: _Finder, clist_hex: str, size: int | None,
                bad: set[bytes]) -> str | None:
    oid = parse_hex(clist_hex, what="chunk list id")
    if oid in bad and not store.packs.has_good(oid):
        return f"chunk list {clist_hex} is damaged"
    loc = find(oid)
    if loc is None:
        find.missing.add(oid)
        return f"chunk list {clist_hex} is missing"
    if loc.entry.kind != KIND_CHUNK_LIST:
        return f"object {clist_hex} is not a chunk list"
    # The file size bounds the list: a record claiming more is refused before it is
    # decompressed.
    if size is not None and loc.entry.raw_len > max_encoded_size(size):
        return (f"chunk list {clist_hex} claims {loc.entry.raw_len} bytes, more than a file "
                f"of {size} bytes needs")
    try:
        clist = store.read_chunk_list(oid)
    except CasError as exc:
        return exc.message
    if size is not None and clist.size != size:
        return f"chunk list holds {clist.size} bytes, manifest says {size}"
    # A file's chunks mostly lie in one pack: ask the pack that held the previous chunk first.
    last: Pack | None = None
    for cid, n in zip(clist.ids(), clist.lengths):
        if cid in bad and not store.packs.has_good(cid):
            return f"chunk {cid.hex()} is damaged"
        entry = last.lookup(cid) if last is not None else None
        if entry is None:
            loc = find(cid)
            if loc is None:
                find.missing.add(cid)
                return f"chunk {cid.hex()} is missing"
            last, entry = loc.pack, loc.entry
        if entry.raw_len != n:
            return f"chunk {cid.hex()} is {entry.raw_len} bytes, list says {n}"
    return None


def _whole_file(store: Store, f: FileEntry, done: dict[str, tuple[str, str] | str]
                ) -> str | None:
    """Compare the whole-file SHA-256 (and BLAKE3, if recorded) with the manifest, hashing
    each distinct chunk list once."""
    got = done.get(f.chunks)
    if got is None:
        sha = hashlib.sha256()
        whole = blake3.blake3()
        try:
            clist = store.read_chunk_list(parse_hex(f.chunks, what="chunk list id"))
            ids = [cid for cid, _ in clist.chunks]
            for i in range(0, len(ids), FILES_BATCH):
                for part in store.packs.read_many(ids[i : i + FILES_BATCH]):
                    sha.update(part)
                    whole.update(part)
            got = (sha.hexdigest(), whole.hexdigest())
        except CasError as exc:
            got = exc.message
        done[f.chunks] = got
    if isinstance(got, str):
        return got
    if got[0] != f.sha256:
        return f"SHA-256 of the content is {got[0]}, manifest says {f.sha256}"
    if f.blake3 is not None and got[1] != f.blake3:
        return f"BLAKE3 of the content is {got[1]}, manifest says {f.blake3}"
    return None


def _check_versions(store: Store, snap: _Snapshot, bad: set[bytes]
                    ) -> list[tuple[list[str], list[str]]]:
    """Per snapshot root, the files whose chunk lists or chunks are missing, damaged (in
    ``bad``) or of the wrong length, and why. Each distinct chunk list is checked once."""
    out = []
    known: dict[tuple[str, int, tuple[str, ...] | None], str | None] = {}
    edges = graph.EdgeMap(store)
    missing = snap.missing
    for root in snap.roots:
        m = _manifest(store.registry, root.blob, snap)
        if isinstance(m, CasError):
            out.append(([], [m.message]))
            continue
        find = _Finder(store, edges)
        find.missing = missing
        broken: list[str] = []
        reasons: list[str] = []
        for f in m.files:
            key = (f.chunks, f.size, tuple(f.bases) if f.bases is not None else None)
            if key not in known:
                known[key] = _check_file(store, find, f, bad)
            why = known[key]
            if why:
                broken.append(f.path)
                reasons.append(f"{f.path}: {why}")
        out.append((broken, reasons))
    return out


def _record_bad(store: Store, report: VerifyReport,
                bad: dict[tuple[bytes, str], BadObject]) -> None:
    """Damaged copies are avoided from now on (reads, ``add``, gc; :mod:`cas.badobjects`).
    A damaged copy of an object that also has a good copy is healed: a warning (gc drops the
    copy), not a failure."""
    store.packs.set_bad(bad)
    for (oid, _pack), b in sorted(bad.items()):
        if store.packs.has_good(oid):
            report.warnings.append(CasWarning(
                "W_DAMAGED_COPY", f"object {b.id} in pack {b.pack} is damaged ({b.reason}); "
                                  "a good copy is stored, and gc drops this one"))
        else:
            report.bad_objects.append(b)


def _save_bad(store: Store, bad: dict[tuple[bytes, str], BadObject],
              missing: set[bytes]) -> None:
    """Write the record of damaged copies and missing objects (a missing one has no pack):
    ``add`` then confirms its stat-cache hits against the store, so that re-adding the
    original files stores them again."""
    from cas import badobjects

    badobjects.save(store, [badobjects.BadCopy(b.id, b.pack, b.reason) for b in bad.values()]
                    + [badobjects.BadCopy(oid.hex(), "", "missing") for oid in missing])


def verify_all(store: Store, progress: Progress | None = None, *,
               files: bool = False) -> VerifyReport:
    """Verify the whole store (see the module docstring); with ``files``, also the whole-file
    SHA-256 of every live version. Never raises for damage: the report names it."""
    report = VerifyReport(ok=True, scope="all")
    pause = pause_hook_from_env()
    snap = _snapshot(store, report)
    if pause is not None:
        pause("verify-snapshot")
    store.packs.refresh()
    _check_pack_folder(store, report)
    packs = list(store.packs.packs.values())
    # One thread: zstd and BLAKE3 release the GIL, yet handing batches to worker threads
    # measured slower than decoding inline, also with a core idle (1.6 s inline against
    # 2.2 s with two workers on 1.1 GB, benchmarks/bench_verify.py's store). The versions
    # are checked after the packs: an object a writer landed since the listing is found by
    # re-listing the packs.
    phase = _Packs(store, report, progress)
    if progress is not None:
        phase.total = sum(e.raw_len for p in packs for e in p.entries())
    for pack in packs:
        if _collected(pack):
            store.packs.forget([pack.id])  # a gc deleted it since it was listed: not damage
            continue
        phase.verify_pack(pack)
    phase.drain()
    _record_bad(store, report, phase.bad)
    if pause is not None:
        pause("verify-packs-read")
    checked = _check_versions(store, snap, {oid for oid, _ in phase.bad})
    _save_bad(store, phase.bad, snap.missing)
    hashed: dict[str, tuple[str, str] | str] = {}
    for root, (broken, reasons) in zip(snap.roots, checked):
        report.versions_checked += 1
        if files and root.live and not (reasons and not broken):
            m = snap.manifests[root.blob]
            assert isinstance(m, Manifest)
            for f in m.files:
                if f.path not in broken and (why := _whole_file(store, f, hashed)):
                    broken.append(f.path)
                    reasons.append(f"{f.path}: {why}")
        if reasons:
            report.broken_versions.append(BrokenVersion(root.ref, broken, reasons))
    report.files_checked = len(hashed)
    report.ok = not (report.bad_objects or report.broken_versions or report.problems)
    return report


# -- one version ---------------------------------------------------------------------------------


def verify_version(store: Store, version: Version,
                   progress: Progress | None = None) -> VerifyReport:
    from cas import presence

    if version.id in presence.load(store.backend):
        raise NotFoundError(f"{version.ref} is registered here but its content is not in this "
                            "store; 'cas pull REMOTE " + version.ref + "' brings it")
    report = VerifyReport(ok=True, scope=version.ref, versions_checked=1)
    try:
        manifest = store.manifest(version)
    except (SchemaError, FormatError) as exc:
        report.broken_versions.append(BrokenVersion(version.ref, [], [exc.message]))
        report.ok = False
        return report
    files: list[str] = []
    reasons: list[str] = []
    done = 0
    with gc_paused(), ThreadPoolExecutor(WORKERS, thread_name_prefix="cas-verify") as pool:
        for f in manifest.files:
            problems = _verify_file(store, f, pool, report)
            done += f.size
            if progress is not None:
                progress(done, manifest.total_size, f.path)
            if problems:
                files.append(f.path)
                reasons.extend(f"{f.path}: {p}" for p in problems)
    if files:
        report.broken_versions.append(BrokenVersion(version.ref, files, reasons))
    report.ok = not (report.bad_objects or report.broken_versions)
    return report


def _verify_file(store: Store, f: FileEntry, pool: ThreadPoolExecutor,
                 report: VerifyReport) -> list[str]:
    """Check every chunk of one file (all of them, not just up to the first bad one) and, if
    all are sound, the whole file's SHA-256 (and BLAKE3, in manifests that record one). Returns
    the problems found."""
    try:
        clist = store.read_chunk_list(parse_hex(f.chunks, what="chunk list id"))
    except CasError as exc:
        return [exc.message]
    if clist.size != f.size:
        return [f"chunk list holds {clist.size} bytes, manifest says {f.size}"]
    sha = hashlib.sha256()
    whole = blake3.blake3() if f.blake3 is not None else None
    problems: list[str] = []
    ahead: deque[tuple[bytes, int, Future[bytes]]] = deque()

    def take() -> None:
        cid, n, fut = ahead.popleft()
        report.objects_checked += 1
        try:
            data = fut.result()
            if len(data) != n:
                raise VerifyError(f"chunk {cid.hex()} is {len(data)} bytes, the chunk list "
                                  f"says {n}", object_id=cid.hex())
        except CasError as exc:
            problems.append(exc.message)
            loc = store.packs.locate(cid)
            report.bad_objects.append(BadObject(cid.hex(), loc.pack.id if loc else "-",
                                                exc.message))
            return
        report.bytes_checked += len(data)
        if not problems:
            sha.update(data)
            if whole is not None:
                whole.update(data)

    for cid, n in clist.chunks:
        ahead.append((cid, n, pool.submit(store.read_object, cid)))
        if len(ahead) >= READ_AHEAD:
            take()
    while ahead:
        take()
    if not problems and (sha.hexdigest() != f.sha256 or
                         whole is not None and whole.hexdigest() != f.blake3):
        problems.append("whole-file hash does not match the manifest")
    return problems
