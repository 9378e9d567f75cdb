"""Pins: "keep this version here" (or everywhere), as refs in the registry.

A pin names one version (by its id, :mod:`cas.versions`) and the store it applies to: this
store (its UUID) or every store (``all``). It is one ref,
``refs/pins/<scope>/<NAME>@<version id>``, pointing at an annotated tag object whose target is
the version's add commit (so git keeps it reachable and ``git for-each-ref refs/pins`` shows
it) and whose message is the pin record, canonical JSON (see :class:`PinRecord` and
``docs/format.md``, Registry). A pin is never a commit on the model's ref: pinning changes no
history, and sync carries the refs like any other.

What a pin protects: a pinned version (for this store or everywhere) is removed only with
``rm --force``, which deletes the pin and records it in the removal (``Cas-Pin``) so
``restore`` brings it back; retention keeps every pinned version; garbage collection and
eviction keep the data of versions pinned for this store or everywhere.

The ref's name is the truth: :func:`pinned_versions` (what the object graph asks) reads ref
names only, so a pin whose record is damaged still protects its version; a ref whose name is
not a pin's is reported and ignored.
"""

from __future__ import annotations

import fnmatch
import time
import uuid
from typing import TYPE_CHECKING

import msgspec

from cas.clock import iso_utc
from cas.commits import is_pin_scope, resolve_identity
from cas.errors import ArgsError, CasError, CasWarning, NotFoundError, SchemaError
from cas.format.canonical import canonical_json
from cas.names import parse_version_spec, validate_model_name
from cas.registry import PIN_REF_PREFIX, Registry, pin_ref
from cas.versions import ModelState, Version, is_version_id

if TYPE_CHECKING:
    from cas.store import Store

SCHEMA = "cas.pin"
VERSION = 1
EVERYWHERE = "all"


class PinRecord(msgspec.Struct, frozen=True):
    """The message of a pin's tag object (canonical JSON, RFC 8785, then a newline)."""

    model: str
    id: str
    #: The version's sequence number in the store that pinned it (informative: sequence
    #: numbers are local; readers find the version by ``id``).
    seq: int
    scope: str
    #: When the pin was made (UTC, ISO 8601) and by whom (``Name <email>``).
    created_at: str
    by: str
    schema: str = SCHEMA
    version: int = VERSION

    def encode(self) -> bytes:
        return canonical_json(msgspec.to_builtins(self)) + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> PinRecord:
        """Parse a pin record. Raises SchemaError for anything but a version-1 pin record
        (unknown fields are carried by git and ignored here)."""
        try:
            rec = msgspec.json.decode(data, type=cls)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SchemaError(f"pin record: {exc}") from None
        if rec.schema != SCHEMA or rec.version != VERSION:
            raise SchemaError(f"pin record: schema {rec.schema!r} version {rec.version!r} is "
                              f"not {SCHEMA!r} version {VERSION}")
        return rec


class PinResult(msgspec.Struct):
    name: str
    seq: int
    id: str
    #: The scopes pinned or unpinned: ``all`` or a store UUID.
    scopes: list[str]
    #: False when nothing changed (pinning twice).
    changed: bool


class PinRow(msgspec.Struct):
    """One pin, for ``cas pins``."""

    model: str
    #: The version's sequence number here; None if this registry does not know the version.
    seq: int | None
    id: str
    scope: str
    #: True if the pin is for this store or for every store.
    applies_here: bool
    #: "live", "removed" or "unknown" (not in this registry's history).
    state: str
    created_at: str | None
    by: str | None


class PinList(msgspec.Struct):
    pins: list[PinRow]
    #: Damaged pin refs and records (``W_DAMAGED_PIN``), named.
    warnings: list[CasWarning] = []


def this_scope(store: Store) -> str | None:
    """This store's pin scope: its UUID in canonical form (None for a store without one)."""
    return str(uuid.UUID(store.uuid)) if store.uuid else None


def _parse_ref(ref: bytes) -> tuple[str, str, str]:
    """``(scope, model, version id)`` from a pin ref's full name.

    Raises:
        SchemaError: the name is not a pin's.
    """
    text = ref[len(PIN_REF_PREFIX):].decode(errors="replace")
    scope, _, rest = text.partition("/")
    name, sep, vid = rest.rpartition("@")
    try:
        ok = bool(sep) and is_pin_scope(scope) and is_version_id(vid) and \
            validate_model_name(name) == name
    except ArgsError:
        ok = False
    if not ok:
        raise SchemaError(f"registry ref {ref.decode(errors='replace')} is not a pin "
                          "(refs/pins/<all|store uuid>/<name>@<version id>); delete it with "
                          "git update-ref -d")
    return scope, name, vid


def pinned_versions(store: Store, damaged: list[str] | None = None
                    ) -> list[tuple[str, str, bool]]:
    """Every pin as ``(model, version id, applies to this store)``, sorted; one version
    pinned for several stores appears once per pin. Reads ref names only (no object, no
    history): cheap enough for every gc and eviction.

    ``damaged``: a list that receives one line per ref under ``refs/pins/`` that is not a pin
    (left out); without it, such refs are left out silently.
    """
    here = this_scope(store)
    out = []
    for ref in sorted(store.registry.refs_under(PIN_REF_PREFIX)):
        try:
            scope, name, vid = _parse_ref(ref)
        except SchemaError as exc:
            if damaged is not None:
                damaged.append(exc.message)
            continue
        out.append((name, vid, scope in (EVERYWHERE, here)))
    return out


def pins_of(store: Store, version: Version) -> list[str]:
    """Scopes of the pins naming ``version`` (``all`` first, then store UUIDs)."""
    scopes = []
    for ref in store.registry.refs_under(PIN_REF_PREFIX):
        try:
            scope, name, vid = _parse_ref(ref)
        except SchemaError:
            continue
        if name == version.name and vid == version.id and scope not in scopes:
            scopes.append(scope)
    return sorted(scopes, key=lambda s: (s != EVERYWHERE, s))


def _scope(store: Store, everywhere: bool) -> str:
    if everywhere:
        return EVERYWHERE
    here = this_scope(store)
    if here is None:
        raise ArgsError("this store has no UUID, so a pin cannot name it: pin with "
                        "--everywhere, or run 'cas upgrade' first")
    return here


def write_pin(reg: Registry, version: Version, scope: str,
              identity: tuple[str, str] | None) -> bool:
    """Pin ``version`` for ``scope`` (caller holds the write lock). Returns False, changing
    nothing, if a readable pin exists already; a pin whose record is damaged is rewritten."""
    ref = pin_ref(scope, version.name, version.id)
    old = reg.refs_under(PIN_REF_PREFIX).get(ref)
    if old is not None:
        try:
            _read(reg, ref, old)
            return False
        except SchemaError:
            pass  # rewritten below
    user, email = identity or resolve_identity()
    record = PinRecord(version.name, version.id, version.seq, scope, iso_utc(time.time()),
                       f"{user} <{email}>")
    reg.write_annotated_ref(ref, f"pin {scope} {version.name}@{version.id}", version.commit,
                            record.encode(), old, identity)
    return True


def _read(reg: Registry, ref: bytes, sha: bytes) -> PinRecord:
    """The record of pin ``ref`` (value ``sha``), checked against the ref's name.

    Raises:
        SchemaError: a name that is not a pin's, or a missing, damaged or disagreeing record.
    """
    scope, name, vid = _parse_ref(ref)
    where = f"pin {ref.decode()}"
    try:
        _target, message = reg.read_annotated(sha, "pin")
        rec = PinRecord.decode(message)
    except SchemaError as exc:
        raise SchemaError(f"{where}: {exc.message}; 'cas unpin' or git update-ref -d "
                          "removes it") from None
    if (rec.scope, rec.model, rec.id) != (scope, name, vid):
        raise SchemaError(f"{where}: its record names {rec.scope} {rec.model}@{rec.id}")
    return rec


def pin(store: Store, spec: str, everywhere: bool = False, author: str | None = None
        ) -> PinResult:
    """Pin live version ``NAME[@V]`` for this store, or with ``everywhere`` for every store.
    Pinning twice changes nothing (``changed`` False).

    Raises:
        NotFoundError: no such version, or it was removed (the message names restore).
        ArgsError: this store has no UUID and ``everywhere`` is not given.
    """
    parsed = parse_version_spec(spec)
    identity = resolve_identity(author)
    scope = _scope(store, everywhere)
    with store.writing():
        version = store.registry.resolve(parsed)
        changed = write_pin(store.registry, version, scope, identity)
    return PinResult(version.name, version.seq, version.id, [scope], changed)


def unpin(store: Store, spec: str, everywhere: bool | None = None) -> PinResult:
    """Delete the pin of ``NAME[@V]`` (live or removed) for this store (``everywhere``
    False), for every store (True), or both that apply here (None).

    Raises:
        NotFoundError: no such version, or no such pin (the message names the pins the
            version has).
    """
    parsed = parse_version_spec(spec)
    with store.writing():
        reg = store.registry
        version = reg.resolve(parsed, removed_ok=True)
        here = this_scope(store)
        wanted = {True: [EVERYWHERE], False: [here], None: [EVERYWHERE, here]}[everywhere]
        refs = reg.refs_under(PIN_REF_PREFIX)
        gone = [s for s in wanted if s is not None
                and pin_ref(s, version.name, version.id) in refs]
        if not gone:
            has = pins_of(store, version)
            raise NotFoundError(
                f"{version.ref} is not pinned "
                + ("everywhere" if everywhere else "for this store")
                + (f" (its pins: {', '.join(scope_text(s, here) for s in has)})" if has
                   else ""))
        for scope in gone:
            reg.delete_ref(pin_ref(scope, version.name, version.id))
    return PinResult(version.name, version.seq, version.id, gone, True)


def scope_text(scope: str, here: str | None) -> str:
    """A scope for people: ``everywhere``, ``this store`` or ``store <uuid>``."""
    if scope == EVERYWHERE:
        return "everywhere"
    return "this store" if scope == here else f"store {scope}"


def list_pins(store: Store, pattern: str | None = None) -> PinList:
    """Every pin (of models matching the glob ``pattern``), sorted by model, then sequence
    number. Damaged pin refs and records are named in warnings; the others are listed."""
    reg = store.registry
    here = this_scope(store)
    rows: list[PinRow] = []
    warnings: list[CasWarning] = []
    states: dict[str, ModelState | None] = {}
    for ref, sha in sorted(reg.refs_under(PIN_REF_PREFIX).items()):
        try:
            scope, name, vid = _parse_ref(ref)
        except SchemaError as exc:
            warnings.append(CasWarning("W_DAMAGED_PIN", exc.message))
            continue
        if pattern and not fnmatch.fnmatchcase(name, pattern):
            continue
        created_at = by = None
        try:
            rec = _read(reg, ref, sha)
            created_at, by = rec.created_at, rec.by
        except SchemaError as exc:
            warnings.append(CasWarning("W_DAMAGED_PIN", exc.message))
        if name not in states:
            try:
                states[name] = reg.state(name)
            except CasError:
                states[name] = None  # not here (or unreadable): the pin is listed as unknown
        st = states[name]
        seq = st.seq_of_id(vid) if st is not None else None
        state = "unknown" if st is None or seq is None else \
            "live" if seq in st.live else "removed"
        rows.append(PinRow(name, seq, vid, scope, scope in (EVERYWHERE, here), state,
                           created_at, by))
    rows.sort(key=lambda r: (r.model, r.seq or 0, r.scope != EVERYWHERE, r.scope))
    return PinList(rows, warnings)


def protecting(store: Store, versions: list[Version]) -> list[tuple[str, int]]:
    """``(scope, seq)`` of the pins that apply to this store (for it or everywhere) and name
    one of ``versions``: what ``rm`` refuses without ``--force`` and then deletes."""
    here = this_scope(store)
    by_id = {(v.name, v.id): v.seq for v in versions}
    out = []
    for ref in store.registry.refs_under(PIN_REF_PREFIX):
        try:
            scope, name, vid = _parse_ref(ref)
        except SchemaError:
            continue
        if scope in (EVERYWHERE, here) and (name, vid) in by_id:
            out.append((scope, by_id[(name, vid)]))
    return sorted(out)
