"""Objects known to be damaged, copy by copy, so that nothing is built on them again.

``cas verify --all`` records every stored copy it found damaged (object id and the pack holding
that copy), and every object a version needs that no pack holds (no pack: "missing"), in
``bad-objects.json`` (``docs/format.md``, "Known-bad objects"). From then on:

- reads skip a known-bad copy and use another copy of the same object if the store has one
  (:meth:`cas.packs.PackSet.locate`);
- ``add`` never deduplicates against an object whose only copies are known-bad: it stores a
  good copy, which heals every version that needs the object (re-adding the original files,
  or ``cas verify --repair --from PATH``, which stores only what is bad or missing);
- ``gc`` does not keep a known-bad copy when a good copy of the same object is live.

The file is rewritten by every ``verify --all`` (which checked every copy: entries it did not
find again are dropped); entries of packs that are gone are ignored. Losing it costs only
protection until the next ``verify --all``: it holds no data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.errors import CasError
from cas.format.canonical import canonical_json
from cas.ids import is_hex
from cas.storage import ANY

if TYPE_CHECKING:
    from cas.store import Store

NAME = "bad-objects.json"
SCHEMA = "cas.bad-objects"
VERSION = 1


class BadCopy(msgspec.Struct, frozen=True):
    id: str
    pack: str
    reason: str


class _File(msgspec.Struct):
    schema: str
    version: int
    objects: list[BadCopy]


def load(store_path: Path) -> dict[tuple[bytes, str], BadCopy]:
    """The recorded bad copies, ``(object id, pack id) -> copy`` (empty if none, or if the
    file cannot be read: it is advisory)."""
    try:
        raw = (store_path / NAME).read_bytes()
    except OSError:
        return {}
    try:
        doc = msgspec.json.decode(raw, type=_File)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}
    if doc.schema != SCHEMA or doc.version != VERSION:
        return {}
    return {(bytes.fromhex(c.id), c.pack): c for c in doc.objects
            if is_hex(c.id) and (is_hex(c.pack) or c.pack == "")}


def save(store: Store, copies: list[BadCopy]) -> bool:
    """Replace the record with ``copies`` (sorted; nothing written if unchanged). Returns
    True if the file changed. Best effort: a failure leaves the previous record."""
    copies = sorted(set(copies), key=lambda c: (c.id, c.pack))
    old = sorted(load(store.path).values(), key=lambda c: (c.id, c.pack))
    if copies == old:
        return False
    try:
        if copies:
            body = canonical_json({"schema": SCHEMA, "version": VERSION,
                                   "objects": msgspec.to_builtins(copies)})
            store.backend.swap(NAME, ANY, body)
        else:
            store.backend.delete(NAME)
    except (CasError, OSError):
        return False
    return True
