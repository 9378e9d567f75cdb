"""How many copies of a version's content must exist elsewhere before one is dropped.

``numcopies`` copies must be known (the location log's claims and the copies verified now
count), and at least ``mincopies`` of them must be verified live at drop time, under a hold
(:mod:`cas.drop`). ``trust_source``: a version imported from a source that can always supply
it again (a Hub revision pinned to its commit, ``hf://ORG/NAME@<40 hex>``) counts that source
as one known copy (never as a verified one).

Kept in the registry, so that every host sharing it agrees: the ref ``refs/cas/copies`` names
a commit whose tree holds ``copies.json``; every change is a commit on it (the audit trail,
``git log refs/cas/copies``), made under the store write lock with compare-and-swap; the setting
carries a ``serial`` that each change increases, and every push, pull and fetch exchanges it
with the other store: the higher serial wins (equal serials: the greater canonical encoding,
so two stores always end with the same setting), adopted as a commit of its own
(:func:`adopt`). Byte layout in ``docs/format.md``, "Copies".
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec

from cas.commits import check_message, resolve_identity
from cas.errors import ArgsError, FormatError, SchemaError
from cas.format.canonical import canonical_json

if TYPE_CHECKING:
    from cas.registry import Registry
    from cas.store import Store

REF = b"refs/cas/copies"
FILE = b"copies.json"
SCHEMA = "cas.copies"
VERSION = 1
#: The largest numcopies or mincopies accepted.
MAX_COPIES = 64
_PINNED_HUB = re.compile(r"hf://[^@\s]+@[0-9a-f]{40}\Z")


class Copies(msgspec.Struct, frozen=True):
    numcopies: int = 1
    mincopies: int = 1
    trust_source: bool = False
    #: Increased by each change; the higher wins when two stores' settings meet.
    serial: int = 0
    #: The commit of ``refs/cas/copies`` these came from ("": the defaults, nothing stored).
    commit: str = ""


class _Doc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    schema: str
    version: int
    numcopies: int
    mincopies: int
    trust_source: bool = False
    serial: int = 0


def load(reg: Registry) -> Copies:
    """The stored setting (the defaults when none is stored).

    Raises:
        SchemaError: the ref's commit or file is damaged or malformed.
        FormatError: a newer document version.
    """
    found = reg.read_ref_file(REF, FILE)
    if found is None:
        return Copies()
    tip, data = found
    if data is None:
        raise SchemaError(f"{REF.decode()}: commit {tip.decode()[:12]} has no copies.json")
    doc = decode(data)
    return Copies(doc.numcopies, doc.mincopies, doc.trust_source, doc.serial, tip.decode())


def decode(data: bytes) -> _Doc:
    """Parse and check a ``copies.json``.

    Raises:
        SchemaError | FormatError: as :func:`load`.
    """
    try:
        raw: Any = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise SchemaError(f"copies.json: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise SchemaError(f"copies.json: not a {SCHEMA} document")
    if isinstance(raw.get("version"), int) and raw["version"] > VERSION:
        raise FormatError(f"copies.json: version {raw['version']} (written by a newer cas); "
                          "upgrade cas")
    try:
        doc = msgspec.convert(raw, _Doc)
    except msgspec.ValidationError as exc:
        raise SchemaError(f"copies.json: {exc}") from None
    check(doc.numcopies, doc.mincopies)
    if doc.serial < 0:
        raise SchemaError("copies.json: negative serial")
    return doc


def check(numcopies: int, mincopies: int) -> None:
    """Refuse values that could drop a last copy or make no sense.

    Raises:
        ArgsError: not ``1 <= mincopies <= numcopies <= MAX_COPIES``.
    """
    if not 1 <= mincopies <= numcopies <= MAX_COPIES:
        raise ArgsError(f"numcopies {numcopies}, mincopies {mincopies}: need 1 <= mincopies "
                        f"<= numcopies <= {MAX_COPIES} (a drop always leaves a verified copy)")


def encode(c: Copies) -> bytes:
    return canonical_json({"schema": SCHEMA, "version": VERSION, "numcopies": c.numcopies,
                           "mincopies": c.mincopies, "trust_source": c.trust_source,
                           "serial": c.serial}) + b"\n"


def set_copies(store: Store, numcopies: int | None = None, mincopies: int | None = None,
               trust_source: bool | None = None, author: str | None = None) -> Copies:
    """Change the stored setting (unchanged fields keep their value); returns the new one.

    Raises:
        ArgsError: values outside :func:`check`.
    """
    identity = resolve_identity(author)
    with store.writing():
        reg = store.registry
        cur = load(reg)
        new = Copies(cur.numcopies if numcopies is None else numcopies,
                     cur.mincopies if mincopies is None else mincopies,
                     cur.trust_source if trust_source is None else trust_source,
                     cur.serial + 1)
        check(new.numcopies, new.mincopies)
        if (new.numcopies, new.mincopies, new.trust_source) == (
                cur.numcopies, cur.mincopies, cur.trust_source) and cur.commit:
            return cur
        subject = check_message(f"copies: numcopies {new.numcopies}, mincopies "
                                f"{new.mincopies}" + (", trust source" if new.trust_source
                                                       else ""))
        commit = reg.commit_ref_file(REF, cur.commit.encode() or None, FILE, encode(new),
                                     subject, identity)
    return msgspec.structs.replace(new, commit=commit.decode())


def encoded(reg: Registry) -> bytes:
    """This store's ``copies.json`` as stored (``b""`` when none is), for another store."""
    found = reg.read_ref_file(REF, FILE)
    return b"" if found is None or found[1] is None else found[1]


def adopt(store: Store, data: bytes, author: str | None = None) -> bool:
    """Take another store's setting (``data``, its ``copies.json``) if it wins over this
    one's (higher serial; equal serials: greater bytes); returns whether it did.

    Raises:
        SchemaError | FormatError | ArgsError: ``data`` is not a valid setting.
    """
    if not data:
        return False
    theirs = decode(data)
    mine = encoded(store.registry)
    mine_serial = decode(mine).serial if mine else -1
    if (theirs.serial, data) <= (mine_serial, mine):
        return False
    identity = resolve_identity(author)
    with store.writing():
        reg = store.registry
        cur = load(reg)
        if encoded(reg) != mine:
            return False  # changed meanwhile: the next sync compares again
        reg.commit_ref_file(REF, cur.commit.encode() or None, FILE, data,
                            check_message(f"copies: numcopies {theirs.numcopies}, mincopies "
                                          f"{theirs.mincopies} (serial {theirs.serial}, from "
                                          "another store)"), identity)
    return True


def source_copy(c: Copies, source: str | None) -> bool:
    """Whether a version with ``source`` counts its source as a known copy."""
    return c.trust_source and bool(source) and bool(_PINNED_HUB.match(source or ""))
