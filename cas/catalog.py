"""Catalog queries: ls, show and log, all read-only (``du`` is :mod:`cas.usage`)."""

from __future__ import annotations

import fnmatch

import msgspec

from cas.clock import iso_utc

from cas.errors import ArgsError, CasError, SchemaError
from cas.format.manifest import FORMATS, Manifest
from cas.names import parse_version_spec
from cas.registry import Version
from cas.store import Store


class ModelRow(msgspec.Struct):
    name: str
    latest: int
    versions: int
    size: int
    format: str
    role: str | None
    #: Tags of the model's versions, each as ``TAG`` -> sequence number.
    tags: dict[str, int]
    #: When the latest version was registered (UTC, ISO 8601).
    updated_at: str
    #: Why the model could not be read whole (then ``error_code`` is that error's code).
    error: str | None = None
    error_code: str | None = None
    #: The stable id of the latest version ("" when unreadable).
    latest_id: str = ""


class VersionRow(msgspec.Struct):
    """One live version, for ``ls --long``."""

    name: str
    seq: int
    registered_at: str
    author: str
    size: int
    format: str
    tags: list[str]
    message: str
    error: str | None = None
    error_code: str | None = None
    #: The version's stable id (see :mod:`cas.versions`).
    id: str = ""
    #: False when its content is in other stores only (:mod:`cas.presence`).
    present: bool = True


class VersionDetail(msgspec.Struct):
    name: str
    seq: int
    commit: str
    author: str
    registered_at: str
    message: str
    tags: list[str]
    manifest: Manifest
    #: ``metadata.parents`` as ``NAME@N`` where the parent is known here.
    parents: list[str] = []
    #: When the metadata was last annotated (UTC, ISO 8601), if ever.
    annotated_at: str | None = None
    #: The version's stable id (see :mod:`cas.versions`).
    id: str = ""
    #: Scopes of the pins naming this version: ``all`` or a store UUID.
    pins: list[str] = []
    #: False when the version is registered here but its content is in other stores
    #: (:mod:`cas.presence`; ``cas pull REMOTE NAME@V`` or ``checkout`` brings it).
    present: bool = True


class HistoryRow(msgspec.Struct):
    """One event, one registry commit: ``add``, ``annotate``, ``tag``, ``untag``, ``rm`` or
    ``restore``; ``tags`` are the tags it set, deleted or brought back."""

    action: str
    seq: int
    commit: str
    author: str
    at: str
    message: str
    tags: list[str]
    versions: list[int] = []
    #: Ids of the versions the event concerns, in the order of ``versions`` ("" where the
    #: version's add is not in this history).
    ids: list[str] = []
    #: Pin scopes an ``rm`` deleted or a ``restore`` brought back.
    pins: list[str] = []


SORT_KEYS = ("name", "date", "size", "versions")


def list_models(store: Store, pattern: str | None = None, *, format: str | None = None,
                role: str | None = None, tag: str | None = None,
                sort: str = "name") -> list[ModelRow]:
    """Models with at least one live version, filtered and sorted (``date``, ``size`` and
    ``versions`` sort newest/largest first)."""
    if format is not None and format not in FORMATS:
        raise ArgsError(f"unknown format {format!r} (one of {', '.join(FORMATS)})")
    if sort not in SORT_KEYS:
        raise ArgsError(f"unknown sort key {sort!r} (one of {', '.join(SORT_KEYS)})")
    reg = store.registry
    # A damaged tag must not hide the catalog: its model is listed without it, saying why.
    damaged: list[tuple[str, str, SchemaError]] = []
    all_tags = reg.tags(damaged=damaged)
    tag_errors = {model: exc for model, _tag, exc in damaged}
    rows = []
    for name in reg.model_names():
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        try:
            versions = reg.versions(name)
        except CasError as exc:
            # One model with an unreadable history must not hide the rest of the catalog.
            if not (format or role or tag):
                rows.append(ModelRow(name, 0, 0, 0, "other", None, {}, "", error=exc.message,
                                     error_code=exc.code))
            continue
        if not versions:
            continue
        latest = versions[-1]
        seq_of = {v.commit: v.seq for v in versions}
        tags = {t: seq_of[c] for (n, t), c in sorted(all_tags.items())
                if n == name and c in seq_of}
        if tag and tag not in tags:
            continue
        try:
            m = store.manifest(latest)
        except CasError as exc:
            # One unreadable manifest must not hide the rest of the catalog.
            if not (format or role):
                rows.append(ModelRow(name, latest.seq, len(versions), 0, "other", None, tags,
                                     iso_utc(latest.timestamp), error=exc.message,
                                     error_code=exc.code, latest_id=latest.id))
            continue
        if format and m.metadata.format != format:
            continue
        if role and m.metadata.role != role:
            continue
        tag_error = tag_errors.get(name)
        rows.append(ModelRow(name, latest.seq, len(versions), m.total_size, m.metadata.format,
                             m.metadata.role, tags, iso_utc(latest.timestamp),
                             error=tag_error.message if tag_error else None,
                             error_code=tag_error.code if tag_error else None,
                             latest_id=latest.id))
    key = {"name": lambda r: r.name, "date": lambda r: r.updated_at,
           "size": lambda r: r.size, "versions": lambda r: r.versions}[sort]
    rows.sort(key=key, reverse=sort != "name")
    return rows


def list_versions(store: Store, models: list[ModelRow]) -> list[VersionRow]:
    """Every live version of the given models (oldest first within a model)."""
    from cas import presence

    absent = presence.load(store.backend)
    out = []
    for row in models:
        try:
            versions = store.registry.versions(row.name)
        except CasError as exc:
            out.append(VersionRow(row.name, 0, "", "", 0, "other", [], "", exc.message,
                                  exc.code))
            continue
        by_seq: dict[int, list[str]] = {}
        for t, seq in row.tags.items():
            by_seq.setdefault(seq, []).append(t)
        for v in versions:
            try:
                m = store.manifest(v)
                size, fmt, err, code = m.total_size, m.metadata.format, None, None
            except CasError as exc:
                size, fmt, err, code = 0, "other", exc.message, exc.code
            out.append(VersionRow(v.name, v.seq, iso_utc(v.timestamp), v.author, size, fmt,
                                  sorted(by_seq.get(v.seq, [])), v.message, err, code, v.id,
                                  v.id not in absent))
    return out


def show(store: Store, version: Version) -> VersionDetail:
    """``version`` with its manifest (annotations merged), tags, parents as ``NAME@N`` and
    when it was last annotated."""
    manifest = store.manifest(version)
    parents = [_parent_ref(store, p) for p in manifest.metadata.parents]
    annotated = None
    for h in store.registry.history(version.name):
        if h.action == "annotate" and version.seq in h.versions:
            annotated = iso_utc(h.timestamp)
            break
    from cas import presence
    from cas.pins import pins_of

    return VersionDetail(version.name, version.seq, version.commit, version.author,
                         iso_utc(version.timestamp), version.message,
                         store.registry.tags_of(version), manifest, parents, annotated,
                         version.id, pins_of(store, version),
                         version.id not in presence.load(store.backend))


def _parent_ref(store: Store, parent: str) -> str:
    """``NAME@<commit or id>`` -> ``NAME@N`` when that names version N here."""
    try:
        return store.registry.resolve(parse_version_spec(parent), removed_ok=True).ref
    except CasError:
        return parent


def history(store: Store, spec: str) -> list[HistoryRow]:
    """Events of model ``NAME`` (newest first), or with ``NAME@V`` of that one version:
    added, annotated, tagged, untagged, removed, restored, one per registry commit. Removed
    models keep their history."""
    parsed = parse_version_spec(spec)
    reg = store.registry
    st = reg.state(parsed.name)  # one walk of the history; NotFoundError with a did-you-mean
    only: int | None = None
    if parsed.selector is not None:
        only = reg.resolve(parsed, removed_ok=True, state=st).seq
    rows = []
    for h in st.history:
        if only is not None and only not in h.versions:
            continue
        tags = sorted(t for t, s in h.tags if only is None or s == only)
        pins = sorted(p for p, s in h.pins if only is None or s == only)
        ids = [st.added[s].version_id if s in st.added else "" for s in h.versions]
        rows.append(HistoryRow(h.action, h.seq, h.commit, h.author, iso_utc(h.timestamp),
                               h.message, tags, list(h.versions), ids, pins))
    return rows
