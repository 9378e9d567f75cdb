"""Verify: prove that stored bytes are what their ids and manifests say.

``verify_all`` reads every object of every pack (decompress, BLAKE3), checks every index, and
then checks every manifest that keeps data alive (live and tagged versions, and versions
removed within the restore window, which ``restore`` can bring back): its chunk lists
decode, their lengths sum to the file sizes, and every chunk they name is present and sound.
It names each bad chunk and each model version that a bad or missing chunk breaks.

``verify_version`` streams every file of one version, verifying each chunk and the whole file's
SHA-256 and BLAKE3 against the manifest.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import blake3
import msgspec

from cas.checkout import WORKERS
from cas.errors import CasError, FormatError, SchemaError
from cas.format.manifest import FileEntry, Manifest
from cas.format.pack import KIND_CHUNK_LIST, Entry
from cas.gcpause import gc_paused
from cas.ids import parse_hex
from cas.packs import scan_pack
from cas.registry import Version
from cas.store import Progress, Store

#: Chunks read ahead of the hashing of one file.
READ_AHEAD = 32


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

    def summary(self) -> str:
        if self.ok:
            return (f"ok: {self.scope}: {_count(self.objects_checked, 'object')}, "
                    f"{_count(self.bytes_checked, 'byte')}, "
                    f"{_count(self.versions_checked, 'version')} verified")
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


def verify_all(store: Store, progress: Progress | None = None) -> VerifyReport:
    report = VerifyReport(ok=True, scope="all")
    store.packs.refresh()
    bad: dict[bytes, BadObject] = {}
    for pack_id, why in store.packs.broken.items():
        report.problems.append(f"pack {pack_id}: index unusable: {why}")
        report.bad_indexes.append(pack_id)
        _scan_broken_pack(store, pack_id, report)
    for name in sorted(os.listdir(store.packs_dir)):
        if name.endswith(".pack") and not (store.packs_dir / (name[:-5] + ".idx")).exists():
            report.problems.append(f"{name}: pack has no index (run a write command to rebuild)")
            report.bad_indexes.append(name[len("pack-") : -len(".pack")])
    for name, why in store.packs.broken_midx.items():
        report.problems.append(f"{name}: unusable multi-pack index: {why}")
        report.bad_midx.append(name)
    for opened in store.packs.midxs:
        try:
            opened.midx.verify()
        except CasError as exc:
            report.problems.append(f"{exc.message} (repair with 'cas verify --all --repair')")
            report.bad_midx.append(opened.path.name)
    packs = list(store.packs.packs.values())
    total = sum(e.raw_len for p in packs for e in p.entries())
    done = 0
    for pack in packs:
        entries: Iterable[Entry]
        try:
            pack.verify_index()
            entries = pack.entries()
        except CasError as exc:
            # Check the objects as the pack itself lays them out, not as the damaged index
            # says, so a bad index does not make sound chunks look bad.
            report.problems.append(f"{exc.message} (repair with 'cas verify --all --repair')")
            report.bad_indexes.append(pack.id)
            try:
                entries, _ = scan_pack(pack.pack_path)
            except (CasError, OSError) as scan_exc:
                report.problems.append(f"pack {pack.id}: {scan_exc}")
                continue
        for entry in entries:
            report.objects_checked += 1
            try:
                pack.read(entry)
                report.bytes_checked += entry.raw_len
            except CasError as exc:
                bad.setdefault(entry.oid, BadObject(entry.oid.hex(), pack.id, exc.message))
            done += entry.raw_len
            if progress is not None:
                progress(done, total, f"pack {pack.id[:12]}")
    report.bad_objects = list(bad.values())
    bad_ids = set(bad)
    for name, seq, data, ref in _roots(store, report):
        report.versions_checked += 1
        try:
            manifest = Manifest.decode(data)
        except (SchemaError, FormatError) as exc:
            report.broken_versions.append(BrokenVersion(ref, [], [exc.message]))
            continue
        files: list[str] = []
        reasons: list[str] = []
        for f in manifest.files:
            why = _check_file(store, f.chunks, f.size, bad_ids)
            if why:
                files.append(f.path)
                reasons.append(f"{f.path}: {why}")
        if files:
            report.broken_versions.append(BrokenVersion(ref, files, reasons))
    report.ok = not (report.bad_objects or report.broken_versions or report.problems)
    return report


def _roots(store: Store, report: VerifyReport) -> Iterator[tuple[str, int, bytes, str]]:
    """Every version a checkout or a restore could read: live and tagged versions, then those
    removed within the restore window (named ``NAME@V (removed)``). A registry that cannot be
    walked is a problem of the report, not a crash."""
    import time

    try:
        for name, seq, data in store.registry.all_manifest_blobs():
            yield name, seq, data, f"{name}@{seq}"
        since = time.time() - store.settings.restore_window_seconds()
        for name, seq, data in store.registry.restorable_manifest_blobs(since):
            yield name, seq, data, f"{name}@{seq} (removed)"
    except CasError as exc:
        report.problems.append(f"registry: {exc.message}")


def _scan_broken_pack(store: Store, pack_id: str, report: VerifyReport) -> None:
    try:
        scan_pack(store.packs_dir / f"pack-{pack_id}.pack")
    except (CasError, OSError) as exc:
        report.problems.append(f"pack {pack_id}: {exc}")


def _check_file(store: Store, clist_hex: str, size: int, bad: set[bytes]) -> str | None:
    oid = parse_hex(clist_hex, what="chunk list id")
    if oid in bad:
        return f"chunk list {clist_hex} is damaged"
    loc = store.packs.locate(oid)
    if loc is None:
        return f"chunk list {clist_hex} is missing"
    if loc.entry.kind != KIND_CHUNK_LIST:
        return f"object {clist_hex} is not a chunk list"
    try:
        clist = store.read_chunk_list(oid)
    except CasError as exc:
        return exc.message
    if clist.size != size:
        return f"chunk list holds {clist.size} bytes, manifest says {size}"
    for cid, n in clist.chunks:
        if cid in bad:
            return f"chunk {cid.hex()} is damaged"
        loc = store.packs.locate(cid)
        if loc is None:
            return f"chunk {cid.hex()} is missing"
        if loc.entry.raw_len != n:
            return f"chunk {cid.hex()} is {loc.entry.raw_len} bytes, list says {n}"
    return None


def verify_version(store: Store, version: Version,
                   progress: Progress | None = None) -> VerifyReport:
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
    ahead: deque[tuple[bytes, Future[bytes]]] = deque()

    def take() -> None:
        cid, fut = ahead.popleft()
        report.objects_checked += 1
        try:
            data = fut.result()
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

    for cid, _n in clist.chunks:
        ahead.append((cid, pool.submit(store.read_object, cid)))
        if len(ahead) >= READ_AHEAD:
            take()
    while ahead:
        take()
    if not problems and (sha.hexdigest() != f.sha256 or
                         whole is not None and whole.hexdigest() != f.blake3):
        problems.append("whole-file hash does not match the manifest")
    return problems
