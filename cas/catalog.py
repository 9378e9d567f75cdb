"""Catalog queries: ls, show, log and du, all read-only.

``du`` counts each chunk once. A model's stored size is the stored (compressed) bytes of the
distinct chunks and chunk lists its versions use; bytes are *unique* to it when no other model
uses them and *shared* otherwise. For the whole store, *shared* bytes are those that two or more
models use. The dedupe ratio is logical bytes over stored bytes.
"""

from __future__ import annotations

import fnmatch
import os
from datetime import UTC, datetime

import msgspec

from cas.errors import ArgsError, CasError, FormatError, NotFoundError, SchemaError
from cas.format.manifest import FORMATS, Manifest
from cas.ids import parse_hex
from cas.names import validate_model_name
from cas.registry import Version
from cas.store import Store


class ModelRow(msgspec.Struct):
    name: str
    latest: int
    versions: int
    size: int
    format: str
    role: str | None
    tags: list[str]
    updated_at: str
    error: str | None = None


class VersionDetail(msgspec.Struct):
    name: str
    seq: int
    commit: str
    author: str
    registered_at: str
    message: str
    tags: list[str]
    manifest: Manifest


class HistoryRow(msgspec.Struct):
    action: str
    seq: int
    commit: str
    author: str
    at: str
    message: str
    tags: list[str]


class VersionUsage(msgspec.Struct):
    version: str
    logical: int
    new_stored: int


class DiskUsage(msgspec.Struct):
    scope: str
    logical: int
    stored: int
    unique: int
    shared: int
    dedupe_ratio: float
    versions: list[VersionUsage] = []
    pack_bytes: int = 0


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def list_models(store: Store, pattern: str | None = None, *, format: str | None = None,
                role: str | None = None, tag: str | None = None) -> list[ModelRow]:
    if format is not None and format not in FORMATS:
        raise ArgsError(f"unknown format {format!r} (one of {', '.join(FORMATS)})")
    reg = store.registry
    all_tags = reg.tags()
    rows = []
    for name in reg.model_names():
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        versions = reg.versions(name)
        if not versions:
            continue
        latest = versions[-1]
        tags = sorted(t for (n, t) in all_tags if n == name)
        try:
            m = store.manifest(latest)
        except (SchemaError, FormatError) as exc:
            # One unreadable manifest must not hide the rest of the catalog.
            if not (format or role):
                rows.append(ModelRow(name, latest.seq, len(versions), 0, "other", None, tags,
                                     _iso(latest.timestamp), error=exc.message))
            continue
        if format and m.metadata.format != format:
            continue
        if role and m.metadata.role != role:
            continue
        if tag and tag not in tags:
            continue
        rows.append(ModelRow(name, latest.seq, len(versions), m.total_size, m.metadata.format,
                             m.metadata.role, tags, _iso(latest.timestamp)))
    return rows


def show(store: Store, version: Version) -> VersionDetail:
    return VersionDetail(version.name, version.seq, version.commit, version.author,
                         _iso(version.timestamp), version.message,
                         store.registry.tags_of(version), store.manifest(version))


def history(store: Store, name: str) -> list[HistoryRow]:
    validate_model_name(name)
    reg = store.registry
    if reg.head(name) is None:
        raise NotFoundError(f"model {name!r} is not registered")
    by_commit: dict[str, list[str]] = {}
    for (_, t), c in reg.tags(name).items():
        by_commit.setdefault(c, []).append(t)
    return [HistoryRow(h.action, h.seq, h.commit, h.author, _iso(h.timestamp), h.message,
                       sorted(by_commit.get(h.commit, []))) for h in reg.history(name)]


def _objects_of(store: Store, manifest: Manifest, sizes: dict[bytes, int]) -> list[bytes]:
    """Ids of every object (chunk lists and chunks) a manifest needs; fills ``sizes`` with
    stored lengths. Missing objects count 0 (verify reports them)."""
    out: list[bytes] = []
    for f in manifest.files:
        cl = parse_hex(f.chunks, what="chunk list id")
        out.append(cl)
        ids = [cl]
        try:
            ids += [cid for cid, _ in store.read_chunk_list(cl).chunks]
        except CasError:
            pass  # du reports what it can; verify names the damage
        for oid in ids:
            if oid not in sizes:
                loc = store.packs.locate(oid)
                sizes[oid] = loc.entry.stored_len if loc else 0
        out.extend(ids[1:])
    return out


def disk_usage(store: Store, name: str | None = None) -> DiskUsage:
    if name is not None:
        validate_model_name(name)
    sizes: dict[bytes, int] = {}
    users: dict[bytes, set[str]] = {}
    per_version: dict[str, list[tuple[str, int, list[bytes]]]] = {}
    for model, seq, blob in store.registry.all_manifest_blobs():
        try:
            m = Manifest.decode(blob)
        except (SchemaError, FormatError):
            continue  # counted by nobody; `cas verify --all` names the unreadable manifest
        ids = _objects_of(store, m, sizes)
        for oid in ids:
            users.setdefault(oid, set()).add(model)
        per_version.setdefault(model, []).append((f"{model}@{seq}", m.total_size, ids))
    pack_bytes = sum(os.path.getsize(store.packs_dir / n) for n in os.listdir(store.packs_dir)
                     if n.endswith((".pack", ".idx")))
    if name is None:
        logical = sum(v[1] for vs in per_version.values() for v in vs)
        stored = sum(sizes[o] for o in users)
        unique = sum(sizes[o] for o, who in users.items() if len(who) == 1)
        return DiskUsage("store", logical, stored, unique, stored - unique,
                         round(logical / stored, 3) if stored else 0.0, [], pack_bytes)
    if name not in per_version:
        if store.registry.head(name) is None:
            raise NotFoundError(f"model {name!r} is not registered")
    versions = sorted(per_version.get(name, []), key=lambda v: int(v[0].rsplit("@", 1)[1]))
    mine: set[bytes] = set()
    rows = []
    for ref, logical, ids in versions:
        new = {o for o in ids if o not in mine}
        rows.append(VersionUsage(ref, logical, sum(sizes[o] for o in new)))
        mine |= new
    stored = sum(sizes[o] for o in mine)
    unique = sum(sizes[o] for o in mine if users[o] == {name})
    logical = sum(v[1] for v in versions)
    return DiskUsage(name, logical, stored, unique, stored - unique,
                     round(logical / stored, 3) if stored else 0.0, rows, pack_bytes)
