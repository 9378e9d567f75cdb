"""Recognising an add that changes nothing, and what follows for its tags and metadata.

An add whose files hold the same content as the model's latest version (same paths, sizes,
SHA-256s and executable bits: :meth:`cas.format.manifest.Manifest.same_content`) makes no
version. This module settles that as cheaply as it can (a fingerprint the stat cache keeps of
each version it saw, else the latest manifest), decides before anything is stored whether
requested tags may stay where they are (:func:`check_tags`, :func:`prove_unchanged`), and names
the metadata options an unchanged add could not record (:func:`metadata_not_recorded`).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import stat as stat_mod
import time
from typing import TYPE_CHECKING

import msgspec

from cas.errors import CasWarning, ConflictError, from_os_error
from cas.format.manifest import (
    KNOWN_FEATURES,
    SCHEMA,
    SUPPORTED_VERSIONS,
    FileEntry,
    Manifest,
    Provenance,
)
from cas.ids import blake3_id
from cas.statcache import FileDigest, StatCache

if TYPE_CHECKING:
    from cas.ingest import AddOptions
    from cas.registry import Version
    from cas.store import Store


def changed(before: os.stat_result, after: os.stat_result) -> bool:
    """True if a file's size, mtime or inode differ between two stats of it."""
    return (after.st_size, after.st_mtime_ns, after.st_ino) != \
        (before.st_size, before.st_mtime_ns, before.st_ino)


def check_tags(name: str, tagged: dict[str, str], latest: Version | None,
               force: bool) -> list[str]:
    """Refuse, before anything is read, a requested tag that names another version (unless
    ``force``). Return the tags that name the latest version: they may stay only if the
    content is unchanged (without ``force``).

    Raises:
        ConflictError: a tag names a version other than the latest.
    """
    on_latest = []
    for t, commit in tagged.items():
        if force:
            continue
        if latest is not None and commit == latest.commit:
            on_latest.append(t)
            continue
        raise ConflictError(f"tag {name}@{t} names another version ({commit[:12]}); "
                            "move it with --force-tag, or choose another tag")
    return on_latest


def read_manifest(store: Store, version: Version) -> Manifest:
    """The manifest of ``version``, read to compare with what this add found and as a base for
    derived chunks.

    Its schema, version and required features are checked as :meth:`Manifest.decode` does
    (which then raises the precise error), but its paths and hashes are not validated one by
    one again: that pass costs more than the rest of a no-change add of thousands of files, and
    these entries are only compared with entries this add validated itself.
    """
    raw = store.registry.manifest_bytes(version)
    try:
        m = msgspec.json.decode(raw, type=Manifest)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return Manifest.decode(raw)
    if m.schema != SCHEMA or m.version not in SUPPORTED_VERSIONS or \
            not set(m.requires) <= KNOWN_FEATURES:
        return Manifest.decode(raw)
    return m


def same_content(found: dict[str, FileDigest],
                 files: list[tuple[str, str, os.stat_result]], old: Manifest) -> bool:
    """True if the files found hold the same content as ``old`` (see
    :meth:`Manifest.same_content`)."""
    if len(found) != len(old.files):
        return False
    new = Manifest(name=old.name, seq=old.seq, total_size=0,
                   files=[file_entry(rel, found[rel], st) for rel, _, st in files])
    return old.same_content(new)


def fingerprint(found: dict[str, FileDigest],
                 files: list[tuple[str, str, os.stat_result]]) -> str:
    """What :meth:`Manifest.same_content` compares, hashed: equal fingerprints, equal
    content. The stat cache keeps it per version, so that a no-change add need not read the
    latest manifest."""
    return blake3_id(msgspec.msgpack.encode(
        [(rel, found[rel], bool(st.st_mode & stat_mod.S_IXUSR)) for rel, _, st in files])).hex()


def gives_metadata(options: AddOptions) -> bool:
    return bool(options.message or options.metrics or options.extra or options.parents
                or options.role is not None or options.base_model is not None
                or options.license is not None or options.source is not None
                or options.provenance != Provenance())


def prove_unchanged(name: str, tags: list[str], latest: Version, old: Manifest,
                    files: list[tuple[str, str, os.stat_result]], found: dict[str, FileDigest],
                    todo: list[tuple[str, str, os.stat_result, FileDigest | None]],
                    cache: StatCache) -> None:
    """Settle, before anything is stored, that the content equals ``latest``'s, as ``tags``
    (which name it and may not move) require; else refuse.

    Paths, sizes and executable bits are compared first, without reading. Files the stat cache
    knows are compared by their cached SHA-256; the others are read and hashed, and nothing is
    stored. On success ``found`` holds every file (the chunk lists taken from ``old``) and the
    stat cache has learnt the files that were read.

    Raises:
        ConflictError: the content differs, so the add would make a new version.
    """
    olds = {f.path: f for f in old.files}

    def refuse(why: str) -> None:
        names = ", ".join(f"{name}@{t}" for t in tags)
        raise ConflictError(
            f"tag {names} names {latest.ref}, and this add would register a new version "
            f"({why}); move the tag with --force-tag, or choose another tag")

    for rel, _, st in files:
        f = olds.get(rel)
        if f is None:
            refuse(f"{rel} is new")
        elif f.size != st.st_size:
            refuse(f"{rel} changed size")
        elif f.executable != bool(st.st_mode & stat_mod.S_IXUSR):
            refuse(f"{rel} changed mode")
    if len(files) != len(olds):
        seen = {rel for rel, _, _ in files}
        refuse(f"{next(p for p in olds if p not in seen)} is gone")
    for rel, d in found.items():
        if d.sha256 != olds[rel].sha256:
            refuse(f"{rel} changed")
    for rel, apath, st, _ in todo:
        started = time.time_ns()
        if _sha256_of(apath, st) != olds[rel].sha256:
            refuse(f"{rel} changed")
        f = olds[rel]
        found[rel] = FileDigest(f.size, f.sha256, f.chunks, False)
        cache.put(apath, st, found[rel], started)


def _sha256_of(path: str, st: os.stat_result) -> str:
    try:
        with open(path, "rb", buffering=0) as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
            after = os.fstat(f.fileno())
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    if changed(st, after):
        raise ConflictError(f"{path}: file changed while it was being read")
    return sha



def metadata_not_recorded(options: AddOptions, parents: list[str], latest: Version,
                          old: Manifest) -> list[CasWarning]:
    """A warning naming the metadata options an unchanged add could not record (those that
    differ from what ``latest`` already records) and the command that records them."""
    meta, prov, have = old.metadata, options.provenance, old.metadata.provenance
    flags: list[str] = []

    def flag(opt: str, value: object) -> None:
        flags.append(f"{opt} {shlex.quote(str(value))}")

    if options.message and not latest.message.endswith(f": {options.message}"):
        flag("-m", options.message)
    for k, v in options.metrics.items():
        if meta.metrics.get(k) != v:
            flag("--metric", f"{k}={v!r}")
    for k, s in options.extra.items():
        if meta.extra.get(k) != s:
            flag("--meta", f"{k}={s}")
    for opt, given, had in (("--role", options.role, meta.role),
                            ("--base-model", options.base_model, meta.base_model),
                            ("--license", options.license, meta.license),
                            ("--source", options.source, meta.source),
                            ("--run-id", prov.run_id, have.run_id),
                            ("--code-rev", prov.code_revision, have.code_revision),
                            ("--seed", prov.seed, have.seed)):
        if given is not None and given != had:
            flag(opt, given)
    for spec, resolved in zip(options.parents, parents):
        if resolved not in meta.parents:
            flag("--parent", spec)
    for d in prov.datasets:
        if d not in have.datasets:
            flag("--dataset", d)
    for k, s in prov.environment.items():
        if have.environment.get(k) != s:
            flag("--env", f"{k}={s}")
    if not flags:
        return []
    return [CasWarning(
        "W_METADATA_NOT_RECORDED",
        f"{latest.ref} already holds this content, so no version was made and "
        f"{', '.join(flags)} {'was' if len(flags) == 1 else 'were'} not recorded; "
        f"record {'it' if len(flags) == 1 else 'them'} with: "
        f"cas annotate {latest.ref} {' '.join(flags)}")]


def file_entry(rel: str, d: FileDigest, st: os.stat_result) -> FileEntry:
    """The manifest entry of a file: its digest and its executable bit."""
    return FileEntry(path=rel, size=d.size, sha256=d.sha256, chunks=d.chunks,
                     executable=bool(st.st_mode & stat_mod.S_IXUSR))
