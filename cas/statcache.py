"""The stat cache: recognise an unchanged file without reading it.

Keyed by absolute path; an entry is trusted only while the file's size, mtime (ns), inode,
mode and ctime are unchanged (ctime, as git does, catches a file rewritten and then given its
old mtime back). An entry is recorded only for a file whose mtime was at least
``RACY_MARGIN_NS`` older than the moment hashing began: a file modified in the same timestamp
tick as it was read could otherwise keep its mtime and be trusted wrongly (git's "racily clean"
problem). ``--rehash`` bypasses the cache and refreshes it.

The cache also keeps, for the last ``MAX_VERSIONS`` versions an add registered or found
unchanged, a fingerprint of their content (see ``cas.ingest``): an add whose files are all
recognised compares fingerprints instead of reading the latest manifest.

The cache can never make an add register a wrong version (layout in ``docs/format.md``, "Stat
cache"):

- The file ends with the BLAKE3 of everything before it, so a damaged file (a flipped digit,
  two chunk-list ids swapped, a truncation) is discarded whole, with a ``W_STAT_CACHE_DAMAGED``
  warning, and rebuilt: it costs a rehash, never a wrong digest.
- It names the store it was written for (its UUID): a cache copied along with another store's
  folder is discarded.
- Every entry is validated on load (hex digits and lengths of the ids, sizes that agree);
  an invalid one is dropped and reported the same way.
- Before an add names a cached chunk list in a new version, :func:`unconfirmed` checks what is
  cheap to check without reading the file: the chunk list is in the store, describes a file of
  the cached size, and, where the latest version holds the same chunk list, pairs it with the
  same SHA-256. An entry that fails is re-read like a miss.
"""

from __future__ import annotations

import os
import re
import struct
from typing import TYPE_CHECKING, Annotated

import msgspec

from cas.errors import CasError, CasWarning
from cas.ids import blake3_id, is_hex, parse_hex
from cas.storage import ANY, Backend

if TYPE_CHECKING:
    from cas.format.manifest import Manifest
    from cas.store import Store

RACY_MARGIN_NS = 1_000_000_000
#: The cache's object name in the store's backend.
NAME = "cache/stat.msgpack"
MAGIC = b"CASSTAT\x00"
VERSION = 4
_HEADER = struct.Struct("<8sII")  # magic, version, reserved
HEADER_SIZE = _HEADER.size  # 16
CHECKSUM_SIZE = 32
MAX_VERSIONS = 64
DAMAGED = "W_STAT_CACHE_DAMAGED"

# Lengths are checked while decoding; hex digits afterwards, all at once (a pattern per
# string would make loading the cache several times slower).
_Hex64 = Annotated[str, msgspec.Meta(min_length=64, max_length=64)]
_Hex40 = Annotated[str, msgspec.Meta(min_length=40, max_length=40)]
_HEX_RUN = re.compile("[0-9a-f]*")
_Size = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class StatKey(msgspec.Struct, frozen=True, array_like=True):
    size: _Size
    mtime_ns: _Int64
    ino: _Size
    mode: _Size
    #: ctime changes on every write and cannot be set back by tools such as ``touch -d``.
    ctime_ns: _Int64

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode, st.st_ctime_ns)


class FileDigest(msgspec.Struct, frozen=True, array_like=True):
    """What ingesting a file produced; enough to write its manifest entry."""

    size: _Size
    sha256: _Hex64
    chunks: _Hex64
    executable: bool


class _Entry(msgspec.Struct, array_like=True):
    key: StatKey
    digest: FileDigest


class _Body(msgspec.Struct):
    #: UUID of the store the cache belongs to ("" for a store of format 1 or 2).
    store: str
    entries: dict[str, _Entry]
    #: Registry commit of a version -> fingerprint of its content, oldest first.
    contents: dict[_Hex40, _Hex64] = {}


class _LooseBody(msgspec.Struct):
    """The body with its entries not yet validated, to drop the invalid ones one by one."""

    store: str
    entries: dict[str, msgspec.Raw]
    contents: dict[str, msgspec.Raw] = {}


def encode(store_id: str, entries: dict[str, _Entry], contents: dict[str, str]) -> bytes:
    """The bytes of a stat cache file: header, msgpack body, BLAKE3 of both."""
    out = _HEADER.pack(MAGIC, VERSION, 0) + msgspec.msgpack.encode(
        _Body(store_id, entries, contents))
    return out + blake3_id(out)


def decode(data: bytes, store_id: str) -> tuple[dict[str, _Entry], dict[str, str], str | None]:
    """Parse a stat cache file: ``(entries, contents, damage)``.

    ``damage`` says why the file or some entries were discarded, or is None. A file of another
    layout (an older cas's), of a newer version or of another store is discarded without a
    word: it is not damaged, only not this cache. Never raises.
    """
    if len(data) < HEADER_SIZE + CHECKSUM_SIZE or data[:8] != MAGIC:
        return {}, {}, None if _older_layout(data) else "not a stat cache file"
    # The checksum first: a flipped bit in the version field is damage, not a newer layout.
    if blake3_id(memoryview(data)[:-CHECKSUM_SIZE]) != data[-CHECKSUM_SIZE:]:
        return {}, {}, "checksum mismatch"
    _, version, reserved = _HEADER.unpack_from(data)
    if (version, reserved) != (VERSION, 0):
        return {}, {}, None
    body = memoryview(data)[HEADER_SIZE:-CHECKSUM_SIZE]
    try:
        full = msgspec.msgpack.decode(body, type=_Body)
    except msgspec.ValidationError:
        full = None
    except msgspec.DecodeError:
        return {}, {}, "body is not msgpack"
    if full is not None:
        if full.store != store_id:
            return {}, {}, None
        dropped = _drop_invalid(full.entries, full.contents)
        return full.entries, full.contents, _dropped(dropped)
    return _decode_loosely(body, store_id)


def _decode_loosely(body: memoryview, store_id: str
                    ) -> tuple[dict[str, _Entry], dict[str, str], str | None]:
    """Keep the entries that validate, drop the others (a writer's bug, or a crafted file)."""
    try:
        loose = msgspec.msgpack.decode(body, type=_LooseBody)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return {}, {}, "body is not a stat cache"
    if loose.store != store_id:
        return {}, {}, None
    entries: dict[str, _Entry] = {}
    contents: dict[str, str] = {}
    dropped = 0
    for path, raw in loose.entries.items():
        try:
            entries[path] = msgspec.msgpack.decode(raw, type=_Entry)
        except (msgspec.ValidationError, msgspec.DecodeError):
            dropped += 1
    for commit, raw in loose.contents.items():
        try:
            fp = msgspec.msgpack.decode(raw, type=_Hex64)
        except (msgspec.ValidationError, msgspec.DecodeError):
            fp = ""
        if fp and len(commit) == 40:
            contents[commit] = fp
        else:
            dropped += 1
    dropped += _drop_invalid(entries, contents)
    return entries, contents, _dropped(dropped)


def _drop_invalid(entries: dict[str, _Entry], contents: dict[str, str]) -> int:
    """Drop (in place) what decoding could not check: ids with a character that is not a
    lowercase hex digit, an entry whose two sizes differ or whose path is not absolute.
    Returns how many were dropped."""
    bad = [p for p, e in entries.items() if e.digest.size != e.key.size or p[:1] != "/"]
    if not _HEX_RUN.fullmatch("".join([e.digest.sha256 + e.digest.chunks
                                        for e in entries.values()])):
        bad += [p for p, e in entries.items()
                if not (is_hex(e.digest.sha256) and is_hex(e.digest.chunks))]
    for p in set(bad):
        del entries[p]
    bad_contents = []
    if not _HEX_RUN.fullmatch("".join(contents) + "".join(contents.values())):
        bad_contents = [c for c, fp in contents.items() if not (is_hex(c, 40) and is_hex(fp))]
    for c in bad_contents:
        del contents[c]
    return len(set(bad)) + len(bad_contents)


def _dropped(n: int) -> str | None:
    return f"{n} invalid {'entry' if n == 1 else 'entries'} dropped" if n else None


def _older_layout(data: bytes) -> bool:
    """True for the msgpack map an older cas wrote (``{"version": 3, ...}``)."""
    try:
        raw = msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return False
    return isinstance(raw, dict) and type(raw.get("version")) is int


class StatCache:
    """Loaded once per add; saved atomically by the writer that holds the store lock.

    ``warnings`` holds a ``W_STAT_CACHE_DAMAGED`` warning when the file or some of its
    entries were discarded on load.
    """

    def __init__(self, backend: Backend, name: str = NAME, store_id: str = "") -> None:
        self.backend = backend
        self.name = name
        self.store_id = store_id
        self.entries: dict[str, _Entry] = {}
        self.contents: dict[str, str] = {}
        self.warnings: list[CasWarning] = []
        self.dirty = False
        try:
            data = backend.read(name)
        except OSError:
            return  # a missing or unreadable cache only costs a rehash
        self.entries, self.contents, damage = decode(data, store_id)
        if damage is not None:
            self.dirty = True  # rewritten without what was discarded
            self.warnings.append(CasWarning(DAMAGED, (
                f"the stat cache {name} was damaged ({damage}) and is rebuilt: files it "
                "vouched for are read again")))

    def get(self, path: str, st: os.stat_result) -> FileDigest | None:
        entry = self.entries.get(path)
        if entry is None or entry.key != StatKey(st.st_size, st.st_mtime_ns, st.st_ino,
                                                 st.st_mode, st.st_ctime_ns):
            return None
        return entry.digest

    def content(self, commit: str) -> str | None:
        """The content fingerprint recorded for the version ``commit``, if any."""
        return self.contents.get(commit)

    def remember_content(self, commit: str, fingerprint: str) -> None:
        if self.contents.get(commit) == fingerprint:
            return
        self.contents.pop(commit, None)
        self.contents[commit] = fingerprint
        while len(self.contents) > MAX_VERSIONS:
            del self.contents[next(iter(self.contents))]
        self.dirty = True

    def put(self, path: str, st: os.stat_result, digest: FileDigest, hashed_at_ns: int) -> None:
        if st.st_mtime_ns + RACY_MARGIN_NS >= hashed_at_ns:
            self.entries.pop(path, None)
        else:
            self.entries[path] = _Entry(StatKey.of(st), digest)
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            self.backend.swap(self.name, ANY, encode(self.store_id, self.entries,
                                                    self.contents))
            self.dirty = False


def unconfirmed(store: Store, found: dict[str, FileDigest],
                files: list[tuple[str, str, os.stat_result]], old: Manifest | None,
                avoid: frozenset[str] = frozenset()
                ) -> list[tuple[str, str, os.stat_result, FileDigest]]:
    """The cache hits in ``found`` that a new version may not name as they are, because what
    they vouch for does not hold: their chunk list is not in the store (or cannot be read), it
    describes a file of another size, the latest version ``old`` pairs the same chunk list
    with another size or SHA-256, or the file is not complete in the store (a chunk, or a
    derived chunk's base, is missing or only in a pack of ``avoid``, which a running gc is
    deleting: :func:`cas.graph.complete`). Costs index lookups and a read of each hit's chunk
    list (no file is read). The caller re-reads the files returned.
    """
    from cas.graph import EdgeMap, complete

    edges = EdgeMap(store)
    pairs: dict[str, tuple[int, str]] = {}
    if old is not None:
        pairs = {f.chunks: (f.size, f.sha256) for f in old.files}
    out = []
    for rel, apath, st in files:
        d = found.get(rel)
        if d is None:
            continue
        recorded = pairs.get(d.chunks)
        if recorded is not None and recorded != (d.size, d.sha256):
            out.append((rel, apath, st, d))
            continue
        try:
            clist = store.read_chunk_list(parse_hex(d.chunks, what="chunk list id"))
        except CasError:
            out.append((rel, apath, st, d))
            continue
        if clist.size != d.size or not complete(store, clist, avoid, edges):
            out.append((rel, apath, st, d))
    return out
