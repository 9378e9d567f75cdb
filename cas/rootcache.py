"""What the registry says about roots, cached so that a gc of an unchanged store reads no history.

Finding the roots walks every model's history and reads every root's manifest: for a store of
2,000 versions that is most of a gc that finds nothing to delete. Both answers are fixed by
immutable git objects, so they are kept in ``cache/roots.msgpack`` (derived data, may be
deleted):

- per model, a :class:`Summary` of its walked history (live, added and removed versions), valid
  while the model's ref still points at the commit it was made from;
- per manifest blob, its files as ``(chunk list id, bases)``, valid for good (a blob's id names
  its content).

Layout: magic ``CASROOT\\0``, a msgpack document ``{"version": 1, "store": UUID, "models": ...,
"files": ...}``, then the BLAKE3-256 of the document. A file with another magic, checksum,
version or store UUID is ignored and rebuilt. Only ``gc`` uses it; ``verify`` always reads the
registry itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from cas.errors import CasError
from cas.format.manifest import Manifest
from cas.format.canonical import sealed, unsealed
from cas.storage import ANY

if TYPE_CHECKING:
    from cas.registry import ModelState, Registry
    from cas.store import Store

NAME = "cache/roots.msgpack"
MAGIC = b"CASROOT\x00"
VERSION = 1
#: One file of a manifest: chunk list id (hex) and recorded bases (None: not recorded).
FileRef = tuple[str, "list[str] | None"]


class Summary(msgspec.Struct, array_like=True):
    """What the graph needs of one model's history (see :class:`cas.registry.ModelState`)."""

    name: str
    head: str
    #: seq -> manifest blob id (hex) of the live versions
    live: dict[int, str]
    #: seq -> (add commit, version id)
    added: dict[int, tuple[str, str]]
    #: seq -> (manifest blob id as removed, removal time, version id)
    removed: dict[int, tuple[str, int, str]]

    @classmethod
    def of(cls, st: ModelState) -> Summary:
        return cls(
            st.name, st.head.decode(),
            {seq: blob.decode() for seq, blob in st.live.items()},
            {seq: (h.commit, st.version(seq).id) for seq, h in st.added.items()},
            {seq: (r.blob, r.removed_at, r.version.id) for seq, r in st.removed.items()})


class _File(msgspec.Struct):
    version: int
    store: str
    models: dict[str, Summary]
    files: dict[str, list[tuple[str, list[str] | None]]]


class RootCache:
    """Read-through cache of model summaries and manifest files (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._uuid = store.config.uuid or ""
        self.models: dict[str, Summary] = {}
        self.files: dict[str, list[tuple[str, list[str] | None]]] = {}
        self._used_models: set[str] = set()
        self._used_files: set[str] = set()
        self.dirty = False
        try:
            raw = store.backend.read(NAME)
        except (CasError, OSError):
            return
        body = unsealed(MAGIC, raw)
        if body is None:
            return
        try:
            doc = msgspec.msgpack.decode(body, type=_File)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if doc.version == VERSION and doc.store == self._uuid:
            self.models, self.files = doc.models, doc.files

    def summary(self, reg: Registry, name: str) -> Summary:
        """The model's summary, from the cache while its ref is unchanged.

        Raises:
            CasError: as :meth:`cas.registry.Registry.state`.
        """
        self._used_models.add(name)
        head = reg.head(name)
        cached = self.models.get(name)
        if cached is not None and head is not None and cached.head == head.decode():
            return cached
        got = Summary.of(reg.state(name))
        self.models[name] = got
        self.dirty = True
        return got

    def manifest_files(self, reg: Registry, blob: bytes) -> list[tuple[str, list[str] | None]]:
        """The files of the manifest ``blob`` as ``(chunk list id, bases)``.

        Raises:
            CasError: the manifest cannot be read or decoded.
        """
        key = blob.decode()
        self._used_files.add(key)
        got = self.files.get(key)
        if got is None:
            m = Manifest.decode(reg.blob(blob))
            got = self.files[key] = [(f.chunks, f.bases) for f in m.files]
            self.dirty = True
        return got

    def save(self) -> None:
        """Write what this run used (best effort: it is derived data)."""
        if not self.dirty and set(self.models) == self._used_models and \
                set(self.files) == self._used_files:
            return
        doc = _File(VERSION, self._uuid,
                    {k: v for k, v in self.models.items() if k in self._used_models},
                    {k: v for k, v in self.files.items() if k in self._used_files})
        body = msgspec.msgpack.encode(doc)
        try:
            self.store.backend.swap(NAME, ANY, sealed(MAGIC, body))
            self.dirty = False
        except (CasError, OSError):
            pass
