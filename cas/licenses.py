"""Licence acceptance: versions whose licence must be accepted before their files leave the
store, and the record of who accepted it and when.

A version requires an acceptance when

* it was imported from a gated Hugging Face repository (metadata ``hf.gated`` is ``auto``,
  ``manual`` or ``true``), or
* its licence (``metadata.license``) is one the user marked with ``cas license --require ID``.

``checkout`` and every ``export`` of such a version refuse with ``E_LICENSE`` until an
acceptance is recorded for the model and that licence (``cas license NAME@V --accept``), or
the command is given ``--accept-license`` (which records the acceptance, then proceeds).

Records live in the registry, so every host that shares it sees them: the ref
``refs/cas/licenses`` points at a commit whose tree holds one file, ``licenses.json``
(canonical JSON, see ``docs/format.md``, Registry), and each change is one commit whose parent
is the previous tip, so ``git log refs/cas/licenses`` is the audit trail. Writers hold the
store write lock and move the ref with compare-and-swap (as retention rules do).

An acceptance is keyed by the model name and the licence identifier: a new version of the
model under the same licence needs no new acceptance; one that changes licence does. Fields
this build does not know are carried through rewrites.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from cas.clock import iso_utc
from cas.commits import resolve_identity
from cas.errors import ArgsError, FormatError, LicenseError, NotFoundError, SchemaError
from cas.format.canonical import canonical_json

if TYPE_CHECKING:
    from cas.format.manifest import Manifest
    from cas.registry import Registry, Version
    from cas.store import Store

REF = b"refs/cas/licenses"
FILE = b"licenses.json"
SCHEMA = "cas.licenses"
VERSION = 1
#: Metadata key of a Hub import: the repository's gating (``auto``/``manual``; absent or
#: ``false`` when not gated).
META_GATED = "hf.gated"
_GATED = frozenset({"auto", "manual", "true"})
#: The licence key of a gated version that names no licence.
UNNAMED = ""
MAX_ID = 200


class Requirement(msgspec.Struct, frozen=True):
    """A licence identifier the user marked as needing acceptance."""

    license: str
    by: str
    at: str


class Acceptance(msgspec.Struct, frozen=True):
    """Who accepted the licence of a model, and when (UTC, ISO 8601)."""

    model: str
    license: str
    by: str
    at: str
    #: The version shown when accepting (informative).
    version: str = ""


class Records(msgspec.Struct):
    required: list[Requirement] = []
    accepted: list[Acceptance] = []
    #: The commit ``refs/cas/licenses`` points at ("" when nothing was ever recorded).
    commit: str = ""
    extra: dict[str, Any] = {}


class LicenseStatus(msgspec.Struct):
    """The licence of one version and its acceptance."""

    name: str
    seq: int
    license: str | None
    #: Why an acceptance is needed: "gated" (a gated Hub repository), "marked" (``--require``);
    #: empty when none is.
    requires: list[str]
    accepted: Acceptance | None = None
    #: True when this command recorded the acceptance.
    recorded: bool = False
    source: str | None = None


class RequireResult(msgspec.Struct):
    license: str
    required: bool
    changed: bool
    required_licenses: list[str] = []


def _where() -> str:
    return f"{REF.decode()}:{FILE.decode()}"


def load(reg: Registry) -> Records:
    """The stored records (empty when none are stored).

    Raises:
        SchemaError: the ref's commit, tree or file is missing, damaged or malformed.
        FormatError: a newer document version.
    """
    found = reg.read_ref_file(REF, FILE)
    if found is None:
        return Records()
    tip, data = found
    if data is None:
        raise SchemaError(f"{REF.decode()}: commit {tip.decode()[:12]} has no {FILE.decode()}")
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SchemaError(f"{_where()} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise SchemaError(f"{_where()} is not a {SCHEMA} document")
    version = raw.get("version")
    if type(version) is not int or version < 1:
        raise SchemaError(f"{_where()}: malformed version {version!r}")
    if version > VERSION:
        raise FormatError(f"{_where()} is version {version}, newer than this cas reads "
                          f"({VERSION}); upgrade cas")
    try:
        required = msgspec.convert(raw.get("required", []), list[Requirement])
        accepted = msgspec.convert(raw.get("accepted", []), list[Acceptance])
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{_where()}: {exc}") from None
    extra = {k: v for k, v in raw.items()
             if k not in ("schema", "version", "required", "accepted")}
    return Records(required, accepted, tip.decode(), extra)


def encode(records: Records) -> bytes:
    """``licenses.json``: RFC 8785 canonical JSON and a newline; requirements sorted by
    licence, acceptances by model then licence."""
    doc = {**records.extra, "schema": SCHEMA, "version": VERSION,
           "required": msgspec.to_builtins(sorted(records.required, key=lambda r: r.license)),
           "accepted": msgspec.to_builtins(sorted(records.accepted,
                                                  key=lambda a: (a.model, a.license)))}
    return canonical_json(doc) + b"\n"


def _licence_key(manifest: Manifest) -> str:
    return manifest.metadata.license or UNNAMED


def reasons(manifest: Manifest, records: Records) -> list[str]:
    """Why the version needs an acceptance ([] when it does not)."""
    out = []
    gated = manifest.metadata.extra.get(META_GATED, "").strip().lower()
    if gated in _GATED:
        out.append("gated")
    licence = manifest.metadata.license
    if licence and any(r.license.lower() == licence.lower() for r in records.required):
        out.append("marked")
    return out


def _accepted(records: Records, name: str, licence: str) -> Acceptance | None:
    return next((a for a in records.accepted if a.model == name and a.license == licence),
                None)


def status(store: Store, version: Version, manifest: Manifest | None = None) -> LicenseStatus:
    """The licence of ``version``, whether it needs an acceptance and the one recorded."""
    manifest = manifest or store.manifest(version)
    records = load(store.registry)
    return LicenseStatus(version.name, version.seq, manifest.metadata.license,
                         reasons(manifest, records),
                         _accepted(records, version.name, _licence_key(manifest)),
                         source=manifest.metadata.source)


def require_accepted(store: Store, version: Version, manifest: Manifest, accept: bool,
                     author: str | None = None) -> LicenseStatus | None:
    """Refuse to write ``version`` out unless its licence needs no acceptance or one is
    recorded; with ``accept``, record it (as :func:`accept_version`) and go on. Returns the
    status when an acceptance was needed, else None. Reads nothing from the registry for a
    version that names no licence and is not gated.

    Raises:
        LicenseError: an acceptance is needed and none is recorded (nothing was written).
    """
    gated = manifest.metadata.extra.get(META_GATED, "").strip().lower() in _GATED
    if not gated and not manifest.metadata.license:
        return None
    st = status(store, version, manifest)
    if not st.requires or st.accepted is not None:
        return st if st.requires else None
    if accept:
        return accept_version(store, version, author)
    what = "a gated repository's terms" if st.requires == ["gated"] else \
        f"licence {st.license!r}"
    raise LicenseError(f"{version.ref} is under {what}, which must be accepted first: "
                       f"'cas license {version.ref} --accept' (or --accept-license)")


def accept_version(store: Store, version: Version, author: str | None = None
                   ) -> LicenseStatus:
    """Record that ``author`` (default: the registering identity) accepts the licence of
    ``version`` for its model. Idempotent: an existing acceptance is kept as it is.

    Raises:
        ArgsError: the version's licence needs no acceptance.
    """
    user, email = resolve_identity(author)
    manifest = store.manifest(version)
    with store.writing():
        reg = store.registry
        records = load(reg)
        why = reasons(manifest, records)
        if not why:
            raise ArgsError(f"{version.ref}: its licence ({manifest.metadata.license or 'none'})"
                            " needs no acceptance ('cas license --require ID' marks one)")
        key = _licence_key(manifest)
        found = _accepted(records, version.name, key)
        if found is not None:
            return LicenseStatus(version.name, version.seq, manifest.metadata.license, why,
                                 found, source=manifest.metadata.source)
        new = Acceptance(version.name, key, f"{user} <{email}>", iso_utc(),
                         f"{version.name}@{version.seq}")
        records.accepted = [*records.accepted, new]
        reg.commit_ref_file(REF, records.commit.encode() or None, FILE, encode(records),
                            f"license --accept {version.name}: {key or 'gated'}",
                            (user, email))
    return LicenseStatus(version.name, version.seq, manifest.metadata.license, why, new,
                         recorded=True, source=manifest.metadata.source)


def set_required(store: Store, licence: str, required: bool, author: str | None = None
                 ) -> RequireResult:
    """Mark (or unmark) the licence identifier ``licence`` (compared without case) as needing
    acceptance. Marking is idempotent.

    Raises:
        ArgsError: an empty or multi-line identifier.
        NotFoundError: unmarking a licence that is not marked.
    """
    licence = licence.strip()
    if not licence or len(licence) > MAX_ID or any(ord(c) < 32 for c in licence):
        raise ArgsError("a licence identifier is one line of 1 to 200 characters")
    user, email = resolve_identity(author)
    with store.writing():
        reg = store.registry
        records = load(reg)
        have = [r for r in records.required if r.license.lower() == licence.lower()]
        if not required and not have:
            raise NotFoundError(f"licence {licence!r} is not marked as required")
        if bool(have) == required:
            return RequireResult(licence, required, False,
                                 sorted(r.license for r in records.required))
        if required:
            records.required = [*records.required, Requirement(licence, f"{user} <{email}>",
                                                               iso_utc())]
        else:
            records.required = [r for r in records.required if r not in have]
        reg.commit_ref_file(REF, records.commit.encode() or None, FILE, encode(records),
                            f"license --{'require' if required else 'unrequire'} {licence}",
                            (user, email))
    return RequireResult(licence, required, True, sorted(r.license for r in records.required))
