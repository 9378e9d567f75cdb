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
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from cas.fsutil import atomic_write

RACY_MARGIN_NS = 1_000_000_000
VERSION = 3
MAX_VERSIONS = 64


class StatKey(msgspec.Struct, frozen=True, array_like=True):
    size: int
    mtime_ns: int
    ino: int
    mode: int
    #: ctime changes on every write and cannot be set back by tools such as ``touch -d``.
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode, st.st_ctime_ns)


class FileDigest(msgspec.Struct, frozen=True, array_like=True):
    """What ingesting a file produced; enough to write its manifest entry."""

    size: int
    sha256: str
    chunks: str
    executable: bool


class _Entry(msgspec.Struct, array_like=True):
    key: StatKey
    digest: FileDigest


class _File(msgspec.Struct):
    version: int
    entries: dict[str, _Entry]
    #: Registry commit of a version -> fingerprint of its content, oldest first.
    contents: dict[str, str] = {}


class StatCache:
    """Loaded once per add; saved atomically by the writer that holds the store lock."""

    def __init__(self, path: Path, tmp_dir: Path) -> None:
        self.path = path
        self.tmp_dir = tmp_dir
        self.entries: dict[str, _Entry] = {}
        self.contents: dict[str, str] = {}
        self.dirty = False
        try:
            data = msgspec.msgpack.decode(path.read_bytes(), type=_File)
            if data.version == VERSION:
                self.entries, self.contents = data.entries, data.contents
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            # A missing or damaged cache only costs a rehash.
            self.entries, self.contents = {}, {}

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
            atomic_write(self.path, msgspec.msgpack.encode(
                _File(VERSION, self.entries, self.contents)), self.tmp_dir)
            self.dirty = False
