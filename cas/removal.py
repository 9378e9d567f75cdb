"""Removing versions and bringing them back: ``rm``, ``restore``, ``ls --removed``.

``rm`` takes versions out of a model's tip in one registry commit; nothing else is deleted
here. The commit records the tags it deleted, and the model's history stays reachable (a
model whose every version is removed keeps its ref, with an empty tree), so ``log`` still shows
it and a re-added name continues its sequence numbers. For the store's restore window (setting
``restore_window``, default 14 days) ``restore`` puts removed manifests back, with their tags;
garbage collection keeps the data of versions removed within the window.

A tagged or pinned version (a pin for this store or for every store; :mod:`cas.pins`), and a
model with such versions, is removed only with ``force``, which deletes the tags and pins and
records them in the removal; ``restore`` recreates both. Pins for other stores are left alone.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from cas.clock import iso_utc
from cas.graph import restore_cutoff
from cas.errors import ArgsError, CasError, CasWarning, ConflictError, NotFoundError
from cas.names import parse_version_spec, validate_model_name
from cas.commits import check_message, resolve_identity
from cas.pins import protecting, scope_text, this_scope, write_pin
from cas.registry import RemovedVersion

if TYPE_CHECKING:
    from cas.store import Store


class RemoveResult(msgspec.Struct):
    name: str
    removed: list[str]
    tags_removed: list[str]
    #: True if no live version of the model remains.
    model_removed: bool
    commit: str
    restorable_until: str
    #: Pins deleted, each as ``NAME@N SCOPE`` (scope ``all`` or a store UUID).
    pins_removed: list[str] = []


class RestoreResult(msgspec.Struct):
    name: str
    restored: list[str]
    tags_restored: list[str]
    commit: str
    #: Tags the removal deleted that another version has taken since (not restored).
    tags_taken: list[str] = []
    #: Pins recreated, each as ``NAME@N SCOPE``.
    pins_restored: list[str] = []


class RemovedRow(msgspec.Struct):
    name: str
    seq: int
    version: str
    removed_at: str
    removed_by: str
    restorable_until: str
    #: True once the restore window has passed (garbage collection may take the data).
    expired: bool
    tags: list[str]


class RemovedList(msgspec.Struct):
    removed: list[RemovedRow]
    #: Models whose history could not be read (``W_UNREADABLE_HISTORY``), named.
    warnings: list[CasWarning] = []


def remove(store: Store, spec: str, *, force: bool = False, message: str = "",
           author: str | None = None) -> RemoveResult:
    """Remove version ``NAME@V``, or every live version of model ``NAME``.

    Raises:
        NotFoundError: no such model or version, or nothing live to remove.
        ConflictError: a version to remove is tagged and ``force`` is not given.
    """
    parsed = parse_version_spec(spec)
    check_message(message)
    identity = resolve_identity(author)
    window = store.settings.restore_window_seconds()  # read before anything is committed
    with store.writing():
        reg = store.registry
        if parsed.selector is None:
            versions = reg.versions(parsed.name)
            if not versions:
                raise NotFoundError(f"model {parsed.name!r} has no live versions to remove")
        else:
            versions = [reg.resolve(parsed)]
        commits = {v.commit: v.seq for v in versions}
        tags = sorted((t, commits[c]) for (_m, t), c in reg.tags(parsed.name).items()
                      if c in commits)
        pins = protecting(store, versions)
        if (tags or pins) and not force:
            here = this_scope(store)
            named = [f"{parsed.name}@{t} (v{s}) is tagged" for t, s in tags] + [
                f"{parsed.name}@{s} is pinned {'for ' if p != 'all' else ''}"
                f"{scope_text(p, here)}" for p, s in pins]
            raise ConflictError(f"{'; '.join(named)}: untag or unpin first, or use --force "
                                "(tags and pins are recorded and come back with 'cas restore')")
        commit = reg.remove_versions(parsed.name, versions, tags, message, identity, pins=pins)
        left = reg.versions(parsed.name)
    return RemoveResult(parsed.name, [v.ref for v in versions], [t for t, _ in tags],
                        not left, commit, iso_utc(time.time() + window),
                        [f"{parsed.name}@{s} {p}" for p, s in pins])


def removed_versions(store: Store, pattern: str | None = None) -> RemovedList:
    """Every removed version (newest removal first), restorable or expired; a model whose
    history cannot be read is named in a warning, and the others are listed."""
    import fnmatch

    window = store.settings.restore_window_seconds()
    now = time.time()
    cutoff = restore_cutoff(store, now)
    rows = []
    warnings = []
    for name in store.registry.model_names():
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        try:
            state = store.registry.state(name)
        except CasError as exc:
            warnings.append(CasWarning(code="W_UNREADABLE_HISTORY", message=f"{name}: "
                                       f"{exc.message}"))
            continue
        for seq, r in sorted(state.removed.items()):
            rows.append(RemovedRow(name, seq, r.version.ref, iso_utc(r.removed_at), r.removed_by,
                                   iso_utc(r.removed_at + window), _expired(r, cutoff),
                                   list(r.tags)))
    rows.sort(key=lambda r: (r.removed_at, r.name, r.seq), reverse=True)
    return RemovedList(rows, warnings)


def _expired(r: RemovedVersion, cutoff: float) -> bool:
    """Removed before ``cutoff`` (:func:`cas.graph.restore_cutoff`: the restore window, or
    a ``gc --expire-removed`` that ran since): its data may be gone. A removal time in the
    future (clock skew) counts as recent: never expired early."""
    return r.removed_at < cutoff


def restore(store: Store, spec: str, *, author: str | None = None) -> RestoreResult:
    """Bring back ``NAME@V`` (a sequence number, or a prefix of its id or commit), or with
    ``NAME`` every version that the model's latest removal took out, with the tags (and pins)
    those removals deleted.

    Raises:
        NotFoundError: nothing removed matches, or its restore window has passed.
        ArgsError: a selector that names no single removed version (a number, a tag the
            removal deleted, or a commit prefix do).
    """
    parsed = parse_version_spec(spec)
    validate_model_name(parsed.name)
    identity = resolve_identity(author)
    window = store.settings.restore_window_seconds()
    with store.writing():
        reg = store.registry
        st = reg.state(parsed.name)
        if parsed.selector is None:
            if not st.removed:
                raise NotFoundError(f"model {parsed.name!r} has no removed versions")
            # the newest removal in the history's own order (times can tie or go backwards)
            latest = min(st.removed.values(), key=lambda r: r.removal_index)
            chosen = [r for r in st.removed.values() if r.removal_commit == latest.removal_commit]
        else:
            sel = parsed.selector
            if sel.isdigit() and (int(sel) in st.added or len(sel) < 4
                                  or not st.matching(sel)):
                seq = int(sel)
            else:
                # a tag the removal recorded, else a prefix of the version's id or commit
                hits = sorted(s for s, r in st.removed.items() if sel in r.tags) or [
                    s for s in st.matching(sel.lower()) if len(sel) >= 4 and s in st.removed]
                if len(hits) != 1:
                    raise ArgsError(f"{spec}: name a removed version by its number, a tag its "
                                    "removal deleted, or its id (see 'cas ls --removed')")
                seq = hits[0]
            if seq in st.live:
                raise ConflictError(f"{parsed.name}@{seq} is not removed")
            if seq not in st.removed:
                raise NotFoundError(f"{parsed.name}@{seq}: no such removed version")
            chosen = [st.removed[seq]]
        now = time.time()
        expired = [r for r in chosen if _expired(r, restore_cutoff(store, now))]
        if expired:
            r = expired[0]
            why = (f"beyond the restore window ({store.settings.get('restore_window')})"
                   if now - r.removed_at > window else
                   "and 'cas gc --expire-removed' (or --now) has run since")
            raise NotFoundError(
                f"{r.version.ref} was removed on {iso_utc(r.removed_at)[:10]}, {why}; its data "
                "may be collected")
        chosen.sort(key=lambda r: r.version.seq)
        commit, tags = reg.restore_versions(parsed.name, chosen, identity)
        # After the commit, as tags: a crash in between loses pins the history records.
        pins = []
        for r in chosen:
            for scope in r.pins:
                write_pin(reg, r.version, scope, identity)
                pins.append(f"{r.version.ref} {scope}")
    wanted = [t for r in chosen for t in r.tags]
    return RestoreResult(parsed.name, [r.version.ref for r in chosen], tags, commit,
                         [t for t in wanted if t not in tags], pins)
