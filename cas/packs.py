"""Pack storage on a local directory: finding and reading objects (writing: cas.packwriter).

Readers only look at packs that have an index, so a pack is visible only once both files are
complete and durable (the write order is in ``docs/format.md``).

Every read is verified: the entry header found at the indexed offset must name the wanted id and
lengths, and the decompressed bytes must hash to the id. Bad bytes are never returned.
"""

from __future__ import annotations

import mmap
import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cas.compression import CODEC_DERIVED, CODECS, decompress
from cas.errors import (
    CasError,
    DiskError,
    FormatError,
    NotFoundError,
    PermError,
    SchemaError,
    VerifyError,
    from_os_error,
)
from cas.format import pack as fmt
from cas.format.chunklist import ChunkList, max_encoded_size
from cas.ids import blake3_id
from cas.indexcache import IndexCache, check_index, check_midx
from cas.multipack import PREFIX as MIDX_PREFIX
from cas.multipack import SUFFIX as MIDX_SUFFIX
from cas.multipack import OpenMidx

if TYPE_CHECKING:
    from cas.derive import RangeReader

PACK_PREFIX = "pack-"
#: An index record as numpy reads it (docs/format.md, "Index file"): the id's first 8 bytes
#: as a key, the rest of the id, offset, stored and raw lengths, kind, codec, reserved.
_RECORD_DTYPE = [("key", "<u8"), ("id_rest", "V24"), ("offset", "<u4"), ("stored", "<u4"),
                 ("raw", "<u4"), ("kind", "u1"), ("codec", "u1"), ("reserved", "<u2")]
#: The largest chunk any valid chunker configuration cuts (``ChunkerParams.validate`` caps
#: ``max_size`` here). A chunk record claiming more is damage, refused before any byte of it is
#: decompressed: the claimed length is what decompression would allocate.
MAX_CHUNK_BYTES = 16 * 1024 * 1024


T = TypeVar("T")


def pack_path(packs_dir: Path, pack_id: str, ext: str) -> Path:
    return packs_dir / f"{PACK_PREFIX}{pack_id}.{ext}"


class _IdView:
    """Sequence of the ids of an index's records, for bisect without loading the table."""

    __slots__ = ("buf",)

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf

    def __getitem__(self, i: int) -> bytes:
        start = fmt.IDX_RECORDS_START + i * fmt.IDX_RECORD_SIZE
        return self.buf[start : start + 32]

    def __len__(self) -> int:  # pragma: no cover - bisect is always given lo/hi
        raise TypeError


class Pack:
    """One pack with its index, opened read-only. The index is mmapped, never read whole."""

    def __init__(self, packs_dir: Path, pack_id: str, idx_path: Path | None = None) -> None:
        self.id = pack_id
        #: The index read: the pack's own, or a local copy of it (:mod:`cas.indexcache`).
        self.idx_path = idx_path or pack_path(packs_dir, pack_id, "idx")
        self.pack_path = pack_path(packs_dir, pack_id, "pack")
        try:
            with open(self.idx_path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise VerifyError(f"index {pack_id}: empty file")
                self._idx = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise from_os_error(exc, f"opening index of pack {pack_id}") from None
        self.count = fmt.check_index_header(self._idx, pack_id, size)
        self._ids = _IdView(self._idx)
        self._fd: int | None = None
        #: The PackSet that opened this pack: derived chunks (codec 3) read their base files
        #: through its range reader.
        self.owner: PackSet | None = None

    def close(self) -> None:
        self._idx.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def lookup(self, oid: bytes) -> fmt.Entry | None:
        lo, hi = fmt.index_fanout(self._idx, oid[0])
        i = bisect_left(self._ids, oid, lo, hi)
        if i < hi and self._ids[i] == oid:
            return fmt.index_record(self._idx, i)
        return None

    def entries(self) -> Iterator[fmt.Entry]:
        return fmt.iter_index(self._idx)

    def records(self) -> Iterator[tuple[bytes, int, int, int, int, int, int]]:
        """The index's records in id order, as tuples ``(id, offset, stored_len, raw_len,
        kind, codec, reserved)``: cheaper than :meth:`entries` for a pass over all of them."""
        return fmt.index_records(self._idx, self.count)

    def record_sizes(self) -> tuple[Any, Any]:
        """Two numpy arrays (copies, in id order): the first 8 bytes of each record's id as a
        little-endian u64, and its stored length. For passes over millions of records
        (eviction planning); numpy is imported here only."""
        import numpy as np

        table = np.frombuffer(self._idx, dtype=_RECORD_DTYPE, count=self.count,
                              offset=fmt.IDX_RECORDS_START)
        return table["key"].astype(np.uint64), table["stored"].astype(np.int64)

    def read_run_raw(self, entries: list[fmt.Entry]) -> memoryview:
        """The bytes of ``entries`` (headers and stored data), which lie back to back in this
        pack, read with one ``pread``; each header is checked against its record first."""
        first, last = entries[0], entries[-1]
        span = last.offset + fmt.ENTRY_HEADER_SIZE + last.stored_len - first.offset
        data = memoryview(self._pread(span, first.offset))
        for e in entries:
            self.check_record(e)
            self._check_stored(e, data[e.offset - first.offset :])  # type: ignore[arg-type]
        return data

    def file_size(self) -> int:
        """Size of the pack file (0 if it is gone)."""
        try:
            return os.stat(self.pack_path).st_size
        except OSError:
            return 0

    def derived_base(self, entry: fmt.Entry) -> bytes | None:
        """The base chunk-list id a derived object (codec 3) records in its first bytes, read
        without decoding it (None if the bytes there cannot be a derived header)."""
        self.check_record(entry)
        head = self._pread(34, entry.data_offset)
        return bytes(head[2:34]) if len(head) == 34 and head[0] == 1 else None

    def ids(self) -> Iterator[bytes]:
        """The object ids of this pack, in id order, read lazily from the index."""
        for i in range(self.count):
            yield self._ids[i]

    def verify_index(self) -> None:
        fmt.verify_index(self._idx, self.id)
        if fmt.index_pack_id(self._idx, self.count).hex() != self.id:
            raise VerifyError(f"index {self.id}: names another pack")

    def _pread(self, n: int, offset: int) -> bytes:
        if self._fd is None:
            try:
                self._fd = os.open(self.pack_path, os.O_RDONLY)
            except FileNotFoundError:
                # Deleted since its index was opened (gc deleted or repacked it): the
                # PackSet forgets it and looks the object up again.
                raise PackGone(self.id) from None
            except OSError as exc:
                raise from_os_error(exc, f"opening pack {self.id}") from None
        try:
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise from_os_error(exc, f"reading pack {self.id}") from None

    def read_stored(self, entry: fmt.Entry) -> bytes | memoryview:
        """Read an entry's stored bytes after checking its header against the index record."""
        self.check_record(entry)
        return self._check_stored(entry, self._pread(fmt.ENTRY_HEADER_SIZE + entry.stored_len,
                                                     entry.offset))

    def _check_stored(self, entry: fmt.Entry, data: bytes | memoryview) -> bytes | memoryview:
        """``data`` (read at ``entry.offset``) minus its header, once the header is checked."""
        n = fmt.ENTRY_HEADER_SIZE + entry.stored_len
        if len(data) < n:
            oid_hex = entry.oid.hex()
            raise VerifyError(
                f"chunk {oid_hex}: pack {self.id} is truncated at offset {entry.offset}",
                object_id=oid_hex,
            )
        try:
            head = fmt.decode_entry_header(data[: fmt.ENTRY_HEADER_SIZE], entry.offset, self.id)
        except VerifyError as exc:
            oid_hex = entry.oid.hex()
            raise VerifyError(f"chunk {oid_hex}: {exc.message}", object_id=oid_hex) from None
        if (head.oid, head.stored_len, head.raw_len, head.codec) != (
            entry.oid, entry.stored_len, entry.raw_len, entry.codec,
        ):
            oid_hex = entry.oid.hex()
            raise VerifyError(
                f"chunk {oid_hex}: pack {self.id} entry at offset {entry.offset} does not match "
                "its index record",
                object_id=oid_hex,
            )
        return data[fmt.ENTRY_HEADER_SIZE : n]

    def read(self, entry: fmt.Entry) -> bytes:
        """Read, decompress and verify one object."""
        return self._decode(entry, self.read_stored(entry))

    def read_run(self, entries: list[fmt.Entry],
                 outs: list[memoryview | None] | None = None) -> list[bytes | memoryview]:
        """Read, decompress and verify entries that lie back to back in this pack, in one
        ``pread`` (the common case when a file is read in the order it was written).

        With ``outs``, entry ``i`` is decoded into ``outs[i]`` (exactly its length) when that
        is not None, and verified there: the caller's buffer is the one checked.
        """
        first, last = entries[0], entries[-1]
        data = memoryview(self._pread(last.offset + fmt.ENTRY_HEADER_SIZE + last.stored_len
                                      - first.offset, first.offset))
        out = []
        for i, e in enumerate(entries):
            stored = self._check_stored(e, data[e.offset - first.offset :])
            out.append(self._decode(e, stored, outs[i] if outs is not None else None))
        return out

    def check_record(self, entry: fmt.Entry) -> None:
        """Refuse a record this build cannot read or that claims an impossible length, before
        anything is read or allocated for it.

        Raises:
            VerifyError: an unknown kind or codec, or a chunk longer than any chunker cuts
                (the message names the pack).
        """
        oid_hex = entry.oid.hex()
        if entry.kind not in (fmt.KIND_CHUNK, fmt.KIND_CHUNK_LIST):
            raise VerifyError(f"object {oid_hex}: pack {self.id} record has unknown kind "
                              f"{entry.kind}", object_id=oid_hex)
        if entry.codec not in CODECS:
            raise VerifyError(f"object {oid_hex}: pack {self.id} record has unknown codec "
                              f"{entry.codec}", object_id=oid_hex)
        if entry.kind == fmt.KIND_CHUNK and entry.raw_len > MAX_CHUNK_BYTES:
            raise VerifyError(f"chunk {oid_hex}: pack {self.id} record claims {entry.raw_len} "
                              f"bytes, more than any chunk can hold ({MAX_CHUNK_BYTES})",
                              object_id=oid_hex, actual=str(entry.raw_len))

    def decode(self, entry: fmt.Entry, stored: bytes | memoryview) -> bytes | memoryview:
        """Decompress and verify the stored bytes of ``entry`` (read by the caller, for
        example while walking the pack).

        Raises:
            VerifyError: as :meth:`read`.
        """
        return self._decode(entry, stored)

    def _decode(self, entry: fmt.Entry, stored: bytes | memoryview,
                into: memoryview | None = None) -> bytes | memoryview:
        self.check_record(entry)
        return decode_verified(entry, stored, self.owner.ranges if self.owner else None,
                               f"pack {self.id}", into)


def decode_verified(entry: fmt.Entry, stored: bytes | memoryview, ranges: RangeReader | None,
                    where: str, into: memoryview | None = None) -> bytes | memoryview:
    """Decode the stored bytes of ``entry`` (decompressed, or predicted from its base through
    ``ranges`` for a derived chunk) and check that they hash to its id. ``where`` names the
    source in messages (``pack ID``, ``the sender's pack``).

    Raises:
        VerifyError: undecodable bytes, a length other than the record's, a hash mismatch.
    """
    oid_hex = entry.oid.hex()
    if into is not None and len(into) != entry.raw_len:
        # The reader's chunk list and this pack disagree on the chunk's length: refused
        # before decompressing, so the list, not the record, bounds the memory spent.
        raise VerifyError(
            f"chunk {oid_hex}: {where} records {entry.raw_len} bytes, the chunk "
            f"list says {len(into)}", object_id=oid_hex, expected=str(len(into)),
            actual=str(entry.raw_len))
    if entry.codec == CODEC_DERIVED and ranges is not None:
        from cas import derive

        raw = derive.decode(stored, entry.raw_len, ranges, object_id=oid_hex)
        if into is not None:
            into[:] = raw
            raw = into
    else:
        raw = decompress(entry.codec, stored, entry.raw_len, object_id=oid_hex, into=into)
    got = blake3_id(raw)
    if got != entry.oid:
        raise VerifyError(
            f"chunk {oid_hex}: content hashes to {got.hex()} ({where})",
            object_id=oid_hex,
            expected=oid_hex,
            actual=got.hex(),
        )
    return raw


class PackGone(NotFoundError):
    """A pack whose index was open has been deleted (by gc) before its file was opened."""

    def __init__(self, pack_id: str) -> None:
        super().__init__(f"pack {pack_id} was deleted while it was being read")
        self.pack_id = pack_id


@dataclass(frozen=True, slots=True)
class Located:
    pack: Pack
    entry: fmt.Entry


class PackSet:
    """All visible packs of a store. Opening costs one mmap per index, whatever its size.

    Lookups go through the multi-pack indexes first (one bisection each) and then probe only
    the packs no midx covers. A midx that names a pack which is not here is not used.
    """

    def __init__(self, packs_dir: Path, index_cache: IndexCache | None = None) -> None:
        self.packs_dir = packs_dir
        #: Local copies of the index files to read instead of those in ``packs_dir`` (a
        #: folder remote's packs, read from another store).
        self.index_cache = index_cache
        self.packs: dict[str, Pack] = {}
        self.broken: dict[str, str] = {}  # pack id -> why its index could not be opened
        self.midxs: list[OpenMidx] = []
        self.broken_midx: dict[str, str] = {}  # file name -> why it is damaged
        self.stale_midx: set[str] = set()  # midxs naming packs that are gone (harmless)
        self._covered: set[str] = set()
        self._uncovered: list[Pack] = []
        self._ranges: RangeReader | None = None
        self._refresh_lock = threading.Lock()
        from cas.badobjects import load

        self.set_bad(load(packs_dir.parent))
        self.refresh()

    @property
    def ranges(self) -> RangeReader:
        """Base-file reads for derived chunks, shared by every pack, with their caches (made
        on first use: most commands never meet a derived chunk)."""
        if self._ranges is None:
            from cas.derive import RangeReader

            self._ranges = RangeReader(self.read_with_depth, self.read_chunk_list)
        return self._ranges

    def refresh(self) -> bool:
        """Open indexes and midxs that appeared since the last refresh; return True if any
        did. Safe to call from several threads."""
        with self._refresh_lock:
            before = (len(self.packs), len(self.broken), len(self.midxs))
            self._refresh()
            return (len(self.packs), len(self.broken), len(self.midxs)) != before

    def _refresh(self) -> None:
        try:
            names = os.listdir(self.packs_dir)
        except OSError as exc:
            raise from_os_error(exc, "listing packs") from None
        present = set(names)
        for name in sorted(names):
            if not (name.startswith(PACK_PREFIX) and name.endswith(".idx")):
                continue
            pack_id = name[len(PACK_PREFIX) : -4]
            if pack_id in self.packs or pack_id in self.broken:
                continue
            try:
                cache = self.index_cache
                pack = Pack(self.packs_dir, pack_id,
                            cache.local(name, check_index) if cache is not None else None)
            except (VerifyError, SchemaError, FormatError, NotFoundError, DiskError,
                    PermError) as exc:
                # One unreadable index must not hide every other pack.
                self.broken[pack_id] = exc.message
                continue
            if f"{PACK_PREFIX}{pack_id}.pack" not in present:
                # A pack is renamed into place before its index, so this is damage (or a
                # file put there by hand): the index must not vouch for objects no pack holds.
                pack.close()
                self.broken[pack_id] = "its pack file is missing"
                continue
            pack.owner = self
            self.packs[pack_id] = pack
        known = {m.path.name for m in self.midxs} | set(self.broken_midx) | self.stale_midx
        for name in sorted(names):
            if name.startswith(MIDX_PREFIX) and name.endswith(MIDX_SUFFIX) and name not in known:
                try:
                    cache = self.index_cache
                    opened = OpenMidx(cache.local(name, check_midx) if cache is not None
                                      else self.packs_dir / name)
                except (CasError, OSError) as exc:
                    self.broken_midx[name] = str(exc)
                    continue
                missing = [h for h in opened.pack_hexes if h not in self.packs]
                if missing:
                    opened.close()
                    self.stale_midx.add(name)
                    continue
                self.midxs.append(opened)
        self._covered = {h for m in self.midxs for h in m.pack_hexes}
        self._uncovered = [p for h, p in self.packs.items() if h not in self._covered]
        if self.index_cache is not None:
            self.index_cache.prune(present)

    def uncovered(self) -> list[str]:
        """Ids of the packs no usable midx covers."""
        return [p.id for p in self._uncovered]

    def drop_midx(self, opened: OpenMidx) -> None:
        """Stop using a midx (its file is about to be deleted)."""
        self.midxs.remove(opened)
        opened.close()
        self._covered = {h for m in self.midxs for h in m.pack_hexes}
        self._uncovered = [p for h, p in self.packs.items() if h not in self._covered]

    def forget(self, pack_ids: list[str]) -> None:
        """Stop using packs that were deleted (their open files are closed)."""
        with self._refresh_lock:
            for pack_id in pack_ids:
                pack = self.packs.pop(pack_id, None)
                if pack is not None:
                    pack.close()
            self._uncovered = [p for h, p in self.packs.items() if h not in self._covered]

    def close(self) -> None:
        for p in self.packs.values():
            p.close()
        self.packs.clear()
        for m in self.midxs:
            m.close()
        self.midxs.clear()

    def locate(self, oid: bytes) -> Located | None:
        """Find ``oid``: in the midxs, then in the packs no midx covers. A copy known to be
        damaged (:mod:`cas.badobjects`) is passed over for a good copy in another pack, and
        returned only when there is none."""
        loc = self._locate(oid)
        if loc is not None and self.bad_ids and (oid, loc.pack.id) in self.bad:
            for pack in self.packs.values():
                if (oid, pack.id) not in self.bad:
                    entry = pack.lookup(oid)
                    if entry is not None:
                        return Located(pack, entry)
        return loc

    def has_good(self, oid: bytes) -> bool:
        """True if a copy of ``oid`` not known to be damaged is in a visible pack (what a
        writer may deduplicate against)."""
        loc = self.locate(oid)
        return loc is not None and (not self.bad_ids or (oid, loc.pack.id) not in self.bad)

    def set_bad(self, copies: Iterable[tuple[bytes, str]]) -> None:
        """Copies (object id, pack id) known to be damaged."""
        self.bad = set(copies)
        self.bad_ids = {oid for oid, _ in self.bad}

    def _locate(self, oid: bytes) -> Located | None:
        for m in self.midxs:
            pack_id = m.midx.lookup(oid)
            if pack_id is not None:
                pack = self.packs.get(pack_id.hex())
                entry = pack.lookup(oid) if pack is not None else None
                if entry is not None:
                    return Located(pack, entry)  # type: ignore[arg-type]
        for pack in self._uncovered:
            entry = pack.lookup(oid)
            if entry is not None:
                return Located(pack, entry)
        return None

    def locate_everywhere(self, oid: bytes) -> Located | None:
        """Probe every pack index, ignoring the midxs (the answer a damaged midx cannot hide)."""
        for pack in self.packs.values():
            entry = pack.lookup(oid)
            if entry is not None:
                return Located(pack, entry)
        return None

    def find(self, oid: bytes, relist: bool = True) -> Located | None:
        """Find ``oid`` as :meth:`locate`, then in every pack index, then (with ``relist``)
        once more after re-listing the folder if packs appeared there since it was last
        listed (a writer may just have landed the pack that holds it)."""
        loc = self.locate(oid) or self.locate_everywhere(oid)
        if loc is None and relist and self.refresh():
            loc = self.locate(oid) or self.locate_everywhere(oid)
        return loc

    def unindexed(self) -> list[str]:
        """Ids of the packs in the folder that have no index file (invisible to readers: a
        writer between its two renames, or one killed or failed there)."""
        try:
            names = set(os.listdir(self.packs_dir))
        except OSError as exc:
            raise from_os_error(exc, "listing packs") from None
        return [n[len(PACK_PREFIX) : -5] for n in sorted(names)
                if n.startswith(PACK_PREFIX) and n.endswith(".pack")
                and n[:-5] + ".idx" not in names]

    def missing(self, oid: bytes, what: str = "object") -> CasError:
        """The error for ``oid`` found in no readable pack: ``E_VERIFY`` naming the damaged
        or missing indexes when there are any (the object may be in their packs), else
        ``E_NOT_FOUND``."""
        unusable = [f"index of pack {p} is damaged ({why})"
                     for p, why in sorted(self.broken.items())]
        try:
            unusable += [f"pack {p} has no index" for p in self.unindexed()]
        except CasError:
            pass  # the error is about the object; an unlistable folder shows elsewhere
        if unusable:
            return VerifyError(f"{what} {oid.hex()} is in no readable pack: "
                               + "; ".join(unusable)
                               + " (run 'cas verify --all --repair')", object_id=oid.hex())
        return NotFoundError(f"{what} {oid.hex()} is not in the store")

    def has(self, oid: bytes) -> bool:
        return self.locate(oid) is not None if not self.bad_ids else self.has_good(oid)

    def _retrying(self, read: Callable[[], T]) -> T:
        """``read()``; when a pack was deleted under it (gc), forget that pack, re-list and
        read again, giving up after a few rounds (each means yet another deletion)."""
        for _ in range(8):
            try:
                return read()
            except PackGone as gone:
                self.forget([gone.pack_id])
                self.refresh()
        return read()

    def read_many(self, oids: list[bytes], outs: list[memoryview | None] | None = None
                  ) -> list[bytes | memoryview]:
        """See :meth:`_read_many`; a pack deleted meanwhile (gc) is forgotten and the
        objects are looked up again."""
        return self._retrying(lambda: self._read_many(oids, outs))

    def _read_many(self, oids: list[bytes], outs: list[memoryview | None] | None = None
                   ) -> list[bytes | memoryview]:
        """The verified bytes of each of ``oids``, in order; runs of objects stored back to
        back in one pack are read with a single ``pread``. ``outs``: as for
        :meth:`Pack.read_run`.

        Raises:
            NotFoundError | VerifyError: as :meth:`read`.
        """
        out: list[bytes | memoryview] = []
        run: list[fmt.Entry] = []
        run_pack: Pack | None = None
        first = 0
        for i, oid in enumerate(oids):
            loc = self.find(oid)
            if loc is None:
                raise self.missing(oid)
            if run and (loc.pack is not run_pack or loc.entry.offset !=
                        run[-1].offset + fmt.ENTRY_HEADER_SIZE + run[-1].stored_len):
                out.extend(run_pack.read_run(  # type: ignore[union-attr]
                    run, outs[first:i] if outs is not None else None))
                run = []
                first = i
            run.append(loc.entry)
            run_pack = loc.pack
        if run:
            out.extend(run_pack.read_run(  # type: ignore[union-attr]
                run, outs[first:] if outs is not None else None))
        return out

    def read_with_depth(self, oid: bytes) -> tuple[bytes, int]:
        """:meth:`read`, plus the object's chain depth: 0, or the depth a derived chunk
        records (see :mod:`cas.derive`), taken from the bytes already read."""
        return self._retrying(lambda: self._read_with_depth(oid))

    def _read_with_depth(self, oid: bytes) -> tuple[bytes, int]:
        loc = self.find(oid)
        if loc is None:
            raise self.missing(oid)
        stored = loc.pack.read_stored(loc.entry)
        depth = 0
        if loc.entry.codec == CODEC_DERIVED:
            from cas.derive import depth_of_payload

            depth = depth_of_payload(stored)
        return loc.pack._decode(loc.entry, stored), depth  # type: ignore[return-value]

    def read_chunk_list(self, oid: bytes, file_size: int | None = None) -> ChunkList:
        """The chunk list ``oid`` (of a ``file_size``-byte file, when the caller knows it: a
        record claiming more than such a list can take is refused before it is read).

        Raises:
            NotFoundError: no visible pack holds it.
            VerifyError: it is damaged, too large or not a chunk list, or it is in no readable
                pack while some pack's index is damaged or missing (named in the message).
            SchemaError: it does not decode as a chunk list.
        """
        return self._retrying(lambda: self._read_chunk_list(oid, file_size))

    def _read_chunk_list(self, oid: bytes, file_size: int | None) -> ChunkList:
        loc = self.find(oid)
        if loc is None:
            raise self.missing(oid, "chunk list")
        if loc.entry.kind != fmt.KIND_CHUNK_LIST:
            raise VerifyError(f"object {oid.hex()} is not a chunk list", object_id=oid.hex())
        if file_size is not None and loc.entry.raw_len > max_encoded_size(file_size):
            raise VerifyError(f"chunk list {oid.hex()} claims {loc.entry.raw_len} bytes, more "
                              f"than a file of {file_size} bytes needs", object_id=oid.hex())
        return ChunkList.decode(loc.pack.read(loc.entry))

    def read(self, oid: bytes) -> bytes:
        """Return the verified bytes of ``oid``.

        Raises:
            NotFoundError: no visible pack holds it.
            VerifyError: the stored bytes are damaged, or it is in no readable pack while
                some pack's index is damaged or missing (named in the message).
        """
        return self.read_with_depth(oid)[0]


class PackWalk:
    """Reads a pack front to back: header, each entry (its header checked; its stored bytes
    too when ``data``), then the trailer, which must count the entries and name the pack id
    they hash to. ``pack_id`` is set once :meth:`entries` is exhausted without error.

    Raises (from :meth:`entries`, after yielding every sound entry before the damage):
        VerifyError: bad magic, a damaged or truncated entry header, a missing or cut
            trailer, or a trailer that disagrees with the entries.
        SchemaError: an unknown pack version.
        NotFoundError | DiskError | PermError: the file cannot be read.
    """

    def __init__(self, path: Path, *, data: bool) -> None:
        self.path = path
        self.name = path.name
        self.data = data
        self.pack_id: bytes | None = None
        #: Offset of the first byte not yet accounted for (where damage was found).
        self.offset = 0

    def entries(self) -> Iterator[tuple[fmt.Entry, bytes | None]]:
        name = self.name
        hasher = fmt.PackIdHasher()
        count = 0
        try:
            f = open(self.path, "rb", buffering=1 << 20)
        except OSError as exc:
            raise from_os_error(exc, f"opening pack {name}") from None
        with f:
            try:
                size = os.fstat(f.fileno()).st_size
                if self.data and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                fmt.check_pack_header(f.read(fmt.PACK_HEADER_SIZE), name)
                offset = self.offset = fmt.PACK_HEADER_SIZE
                while offset + fmt.PACK_TRAILER_SIZE < size:
                    if offset + fmt.ENTRY_HEADER_SIZE > size - fmt.PACK_TRAILER_SIZE:
                        raise VerifyError(f"pack {name}: truncated at offset {offset}")
                    if not self.data:
                        f.seek(offset)
                    entry = fmt.decode_entry_header(f.read(fmt.ENTRY_HEADER_SIZE), offset, name)
                    end = offset + fmt.ENTRY_HEADER_SIZE + entry.stored_len
                    if end > size - fmt.PACK_TRAILER_SIZE:
                        raise VerifyError(f"pack {name}: entry at offset {offset} runs past "
                                          "the end of the pack (cut or damaged trailer)")
                    stored = f.read(entry.stored_len) if self.data else None
                    hasher.add(entry.oid)
                    count += 1
                    yield entry, stored
                    offset = self.offset = end
                f.seek(offset)
                trailer = fmt.decode_pack_trailer(f.read(fmt.PACK_TRAILER_SIZE))
            except OSError as exc:
                raise from_os_error(exc, f"reading pack {name}") from None
        if trailer is None:
            raise VerifyError(f"pack {name}: missing or damaged trailer (cut or incomplete "
                              "pack)")
        if trailer[0] != count or trailer[1] != hasher.digest():
            raise VerifyError(f"pack {name}: trailer does not match its entries")
        self.pack_id = trailer[1]


def scan_pack(path: Path) -> tuple[list[fmt.Entry], bytes]:
    """Read a pack's entry headers front to back (data is skipped) to rebuild its index.

    Returns the entries and the pack id from the trailer.

    Raises:
        VerifyError: bad magic, a damaged entry header, a missing trailer, or a trailer whose
            id or count disagrees with the entries.
        SchemaError: an unknown pack version.
        NotFoundError | DiskError | PermError: the file cannot be read.
    """
    walk = PackWalk(path, data=False)
    entries = [e for e, _ in walk.entries()]
    assert walk.pack_id is not None
    return entries, walk.pack_id
