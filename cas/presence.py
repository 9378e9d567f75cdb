"""Presence: versions whose registry entry is here but whose content is elsewhere.

After ``cas clone --no-content``, or a ``pull``/``push`` of some versions of a model, a store
holds every version's manifest (the registry moves whole) but only some versions' chunks. The
others are **absent**: listed in ``presence.json`` (store-local, never synced) by version id,
with the model and sequence number they had here. An absent version is not a root of the
object graph (:func:`cas.graph.find_roots` lists it apart), so ``gc`` keeps nothing for it and
``verify`` reports it as not present, naming where it is, never as damaged; ``ls`` and
``show`` say so; ``checkout`` fetches its content from a remote that has it, or names one.

A version becomes present again only when a transfer brought its whole closure and the
receiver checked it (``pull NAME@V``, ``checkout``); then it leaves the file.
The file is a sealed JSON document (``docs/format.md``, "presence.json").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from cas.errors import SchemaError
from cas.format.canonical import read_sealed_doc, write_sealed_doc

if TYPE_CHECKING:
    from cas.storage import Backend

NAME = "presence.json"
SCHEMA = "cas.presence"
VERSION = 1


class Absent(msgspec.Struct, frozen=True):
    model: str
    seq: int


def load(backend: Backend) -> dict[str, Absent]:
    """Version id -> the absent version (empty without the file).

    Raises:
        SchemaError | VerifyError: the file is not a sound presence document.
    """
    doc = read_sealed_doc(backend, NAME, SCHEMA, VERSION,
                          "delete it and run 'cas verify --all' to see what is missing")
    if doc is None:
        return {}
    try:
        return msgspec.convert(doc.get("absent", {}), dict[str, Absent])
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{NAME}: {exc}") from None


def update(backend: Backend, absent: dict[str, Absent] | None = None,
           present: set[str] | frozenset[str] = frozenset()) -> dict[str, Absent]:
    """Record ``absent`` versions and forget ``present`` ones (the caller holds the store's
    write lock); return the new table."""
    table = load(backend)
    before = dict(table)
    table.update(absent or {})
    for vid in present:
        table.pop(vid, None)
    if table != before:
        write_sealed_doc(backend, NAME, SCHEMA, VERSION,
                         {"absent": msgspec.to_builtins(dict(sorted(table.items())))})
    return table
