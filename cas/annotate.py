"""Annotate: record metadata on an existing version (metrics computed after training, a
license found later, provenance) as a new registry commit.

The version keeps its number, its files and its identity (the commit that added it); the
model's tip holds the annotated manifest, so ``show`` shows the merged metadata and ``log``
shows the annotation. Fields this build does not know (written by a newer cas) are carried
over unchanged, so annotating never loses another host's metadata.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from cas.errors import ArgsError
from cas.format.manifest import FileEntry, Manifest, Metadata, Provenance
from cas.names import parse_version_spec
from cas.commits import check_message, resolve_identity

if TYPE_CHECKING:
    from cas.store import Store

@dataclass
class Annotation:
    """What to change; fields left at their defaults are left alone."""

    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    unset_metrics: list[str] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    unset_extra: list[str] = field(default_factory=list)
    license: str | None = None
    role: str | None = None
    base_model: str | None = None
    source: str | None = None
    #: Lineage to add, as version specs (resolved to ``NAME@<commit>`` like ``add --parent``).
    parents: list[str] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)
    author: str | None = None


class AnnotateResult(msgspec.Struct):
    name: str
    seq: int
    #: The annotation commit, or None when nothing changed (no commit is made).
    commit: str | None
    changed: list[str]


def annotate(store: Store, spec: str, ann: Annotation) -> AnnotateResult:
    """Merge ``ann`` into the metadata of live version ``spec`` in one registry commit.

    Idempotent: an annotation that changes nothing makes no commit, unless it carries a
    message (then it is a note in the history).

    Raises:
        NotFoundError: no such live version.
        ArgsError: a metric that is not finite, or unsetting a key that is not set.
    """
    check_message(ann.message)
    for k, v in ann.metrics.items():
        if not math.isfinite(v):
            raise ArgsError(f"metric {k}={v}: not a finite number")
    identity = resolve_identity(ann.author)
    with store.writing():
        version = store.registry.resolve(parse_version_spec(spec))
        raw_bytes = store.registry.manifest_bytes(version)
        old = Manifest.decode(raw_bytes)
        md = old.metadata
        changed: list[str] = []
        metrics = _merged(md.metrics, ann.unset_metrics, ann.metrics,
                          f"{version.ref} has no metric")
        extra = _merged(md.extra, ann.unset_extra, ann.extra, f"{version.ref} has no --meta key")
        prov = md.provenance
        p = ann.provenance
        prov = msgspec.structs.replace(
            prov,
            run_id=p.run_id if p.run_id is not None else prov.run_id,
            datasets=list(p.datasets) or prov.datasets,
            code_revision=p.code_revision if p.code_revision is not None else prov.code_revision,
            seed=p.seed if p.seed is not None else prov.seed,
            environment={**prov.environment, **p.environment},
        )
        parents = list(md.parents)
        for spec in ann.parents:
            p_version = store.registry.resolve(parse_version_spec(spec))
            if p_version.commit == version.commit:
                raise ArgsError(f"{version.ref} cannot be its own parent")
            ref = f"{p_version.name}@{p_version.commit}"
            if ref not in parents:
                parents.append(ref)
        new_md = msgspec.structs.replace(
            md, metrics=metrics, extra=extra, provenance=prov, parents=parents,
            source=ann.source if ann.source is not None else md.source,
            license=ann.license if ann.license is not None else md.license,
            role=ann.role if ann.role is not None else md.role,
            base_model=ann.base_model if ann.base_model is not None else md.base_model,
        )
        for f in msgspec.structs.fields(new_md):
            if getattr(new_md, f.name) != getattr(md, f.name):
                changed.append(f.name)
        if not changed and not ann.message:
            return AnnotateResult(version.name, version.seq, None, [])
        new = msgspec.structs.replace(old, metadata=new_md)
        doc = _carry_unknown(msgspec.json.decode(new.encode()), msgspec.json.decode(raw_bytes))
        data = msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
        Manifest.decode(data)  # what is committed must read back
        commit = store.registry.annotate_version(version, data, ann.message, identity)
    return AnnotateResult(version.name, version.seq, commit, changed)


def _merged(old: dict[str, Any], unset: list[str], new: dict[str, Any], missing: str
            ) -> dict[str, Any]:
    """``old`` without the keys ``unset`` (each must be there: ``missing`` + key is the error),
    then updated with ``new``."""
    out = dict(old)
    for k in unset:
        if k not in out:
            raise ArgsError(f"{missing} {k!r}")
        del out[k]
    out.update(new)
    return out


def _carry_unknown(new: Any, old: Any, struct: type = Manifest) -> Any:
    """``new`` (the canonical encoding of a ``struct``) plus every key of ``old`` that is not a
    field of ``struct``, at every level (metadata, provenance, and files matched by position;
    their paths never change here). A known field absent from ``new`` was omitted as a default
    or cleared by this annotation, so it never comes back from ``old``."""
    if not (isinstance(new, dict) and isinstance(old, dict)):
        return new
    known = {f.encode_name for f in msgspec.structs.fields(struct)}
    out = dict(new)
    for k, v in old.items():
        if k not in known:
            out[k] = v
    nested = {Manifest: {"metadata": Metadata}, Metadata: {"provenance": Provenance}}
    for k, sub in nested.get(struct, {}).items():
        if k in out:
            out[k] = _carry_unknown(out[k], old.get(k), sub)
    if struct is Manifest and isinstance(old.get("files"), list) \
            and len(old["files"]) == len(out["files"]):
        out["files"] = [_carry_unknown(a, b, FileEntry)
                        for a, b in zip(out["files"], old["files"], strict=True)]
    return out
