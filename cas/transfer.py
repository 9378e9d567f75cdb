"""Moving content between stores: which objects to send, in what order, and receiving them.

The sender works out what the receiver lacks (the closure of the versions it sends, less the
ids the receiver answers it holds) and streams **transfer packs**: the pack format of
``docs/format.md`` (header, self-describing entries holding the objects' stored bytes as the
sender stores them, trailer with count and pack id), one after another, each closed once it
holds :data:`TRANSFER_PACK_BYTES` (a receiver refuses one past
:data:`MAX_TRANSFER_PACK_BYTES`). Objects go as stored: compressed, grouped or derived bytes
are never decoded and re-encoded on the way.

The receiver trusts nothing in the stream. For every entry it checks the header (checksum,
known kind and codec, lengths a real object can have), decodes the stored bytes and checks
that they hash to the entry's id; a derived chunk is decoded against bases the receiver
already holds, never against bytes still arriving, so the sender orders objects in
**generations** (:func:`plan`): an object is in generation 0 unless it is derived, and a
derived one comes after every object its base needs, in a later transfer pack. Each transfer
pack is written through :class:`cas.packwriter.PackWriter` and becomes visible only once all
of it verified and its trailer matched; a failure throws the pack being received away.
Completed packs are checkpoints: objects in them are no longer missing, so a re-run sends
only the rest.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import msgspec

from cas.compression import CODEC_DERIVED
from cas.errors import ArgsError, NotFoundError, SchemaError, VerifyError
from cas.format import pack as fmt
from cas.format.chunklist import ChunkList
from cas.packs import MAX_CHUNK_BYTES, Located, decode_verified
from cas.packwriter import PackWriter

if TYPE_CHECKING:
    from cas.derive import RangeReader
    from cas.leases import Lease
    from cas.store import Progress, Store

#: A transfer pack is closed once it holds this many bytes (bounded memory on both sides,
#: and the unit a re-run does not send again).
TRANSFER_PACK_BYTES = 64 << 20
#: The largest transfer pack a receiver accepts (a sender closes one past
#: :data:`TRANSFER_PACK_BYTES`, overshooting by one run at most). Below the local pack limit,
#: so a transfer pack always lands as one local pack, visible only once it all verified.
MAX_TRANSFER_PACK_BYTES = 1 << 30
#: Stored bytes read from a local pack with one ``pread`` at most.
RUN_BYTES = 4 << 20
#: The largest chunk list a transfer may carry (the list of a ~400 GB file).
MAX_LIST_BYTES = 256 << 20
#: Generations of derived chunks (chains are at most :data:`cas.derive.MAX_DEPTH` deep).
MAX_GENERATIONS = 64


class TransferStats(msgspec.Struct):
    objects: int = 0
    #: Stored bytes of the objects, with their entry headers.
    bytes: int = 0
    packs: int = 0
    #: Objects received that the receiver turned out to hold already (a concurrent writer).
    already: int = 0


def lacks(store: Store) -> Callable[[bytes], bool]:
    """A test for "``store`` has no usable copy of this object": none in a visible pack, or
    only in packs a running gc is about to delete, or only copies known to be damaged. What it
    lacks is what a sender must send (and what a writer may not deduplicate against)."""
    avoid = store.leases.doomed_packs()
    packs = store.packs

    def test(oid: bytes) -> bool:
        loc = packs.locate(oid)
        return loc is None or loc.pack.id in avoid or (oid, loc.pack.id) in packs.bad

    return test


def missing(store: Store, ids: Iterable[bytes]) -> list[bytes]:
    """The ids among ``ids`` that ``store`` lacks (see :func:`lacks`), in the order given."""
    store.packs.refresh()
    test = lacks(store)
    return [oid for oid in ids if test(oid)]


# -- sending -------------------------------------------------------------------------------------


def plan(store: Store, ids: Iterable[bytes], plain: bool = False) -> list[list[Located]]:
    """Order ``ids`` (all held here) for sending: generations, each with chunk lists first,
    then chunks, in pack order so neighbours are read together. ``plain``: derived chunks
    will be sent re-encoded plainly (for a receiver that stores none), so every object is
    in one generation.

    Raises:
        NotFoundError | VerifyError: an object is not here, or its chunk list cannot be read.
    """
    packs = store.packs
    sending = set(ids)
    where: dict[bytes, Located] = {}
    for oid in sending:
        loc = packs.find(oid)
        if loc is None:
            raise packs.missing(oid)
        where[oid] = loc
    gen: dict[bytes, int] = {}
    list_chunks: dict[bytes, list[bytes]] = {}

    def generation(oid: bytes, depth: int = 0) -> int:
        g = gen.get(oid)
        if g is not None:
            return g
        if depth > MAX_GENERATIONS:
            raise VerifyError(f"derived chunk {oid.hex()}: bases nest deeper than "
                              f"{MAX_GENERATIONS} levels")
        loc = where[oid]
        g = 0
        if loc.entry.codec == CODEC_DERIVED and not plain:
            base = loc.pack.derived_base(loc.entry)
            if base is not None:
                needed = [base] if base in sending else []
                if base not in list_chunks:
                    list_chunks[base] = packs.read_chunk_list(base).ids()
                needed += [c for c in list_chunks[base] if c in sending]
                g = 1 + max((generation(n, depth + 1) for n in needed), default=-1)
        gen[oid] = g
        return g

    for oid in sending:
        generation(oid)
    out: list[list[Located]] = [[] for _ in range(max(gen.values(), default=-1) + 1)]
    for oid, g in gen.items():
        out[g].append(where[oid])
    for group in out:
        group.sort(key=lambda loc: (loc.entry.kind != fmt.KIND_CHUNK_LIST, loc.pack.id,
                                    loc.entry.offset))
    return out


#: The most parallel parts a send may be split into.
MAX_PARTS = 64


def select(generations: list[list[Located]], part: tuple[int, int] | None
           ) -> list[list[Located]]:
    """The share of ``generations`` that part ``(i, n)`` of a parallel send carries: for
    ``i < n``, the ``i``-th of ``n`` contiguous slices of the first generation (objects that
    need no other object sent with them), cut by stored bytes; for ``i == n``, every later
    generation, sent once the slices are in. ``None``: everything.

    Raises:
        ArgsError: a part outside ``0 <= i <= n``, ``1 <= n <= MAX_PARTS``.
    """
    if part is None:
        return generations
    i, n = part
    if not (1 <= n <= MAX_PARTS and 0 <= i <= n):
        raise ArgsError(f"send part {i} of {n}: out of range")
    if i == n:
        return generations[1:]
    first = generations[0] if generations else []
    total = sum(fmt.ENTRY_HEADER_SIZE + loc.entry.stored_len for loc in first)
    out: list[Located] = []
    start = 0
    for loc in first:
        # A slice holds the objects whose first byte falls in its share of the total.
        if start * n // max(total, 1) == i:
            out.append(loc)
        start += fmt.ENTRY_HEADER_SIZE + loc.entry.stored_len
    return [out]


def size(generations: list[list[Located]], target: int | None = None) -> int:
    """The bytes :func:`stream` yields for ``generations`` (entries, headers and trailers of
    its packs, counted as it cuts them)."""
    target = TRANSFER_PACK_BYTES if target is None else target
    total = 0
    for group in generations:
        packs = size_ = 0
        for loc in group:
            if size_ == 0 or size_ >= target:
                packs += 1
                size_ = 0
            size_ += fmt.ENTRY_HEADER_SIZE + loc.entry.stored_len
            total += fmt.ENTRY_HEADER_SIZE + loc.entry.stored_len
        total += packs * (fmt.PACK_HEADER_SIZE + fmt.PACK_TRAILER_SIZE)
    return total


def stream(store: Store, generations: list[list[Located]],
           target: int | None = None, plain: bool = False) -> Iterator[bytes | memoryview]:
    """The transfer packs of ``generations`` (see the module docstring), as byte pieces, each
    closed once it holds ``target`` bytes (default: :data:`TRANSFER_PACK_BYTES`, read at the
    call). ``plain``: derived chunks go decoded and compressed on their own, as a store that
    keeps no derived chunks writes them."""
    target = TRANSFER_PACK_BYTES if target is None else target
    compressor = None
    for group in generations:
        i = 0
        while i < len(group):
            yield fmt.pack_header()
            hasher = fmt.PackIdHasher()
            count = size = 0
            while i < len(group) and (count == 0 or size < target):
                if plain and group[i].entry.codec == CODEC_DERIVED:
                    if compressor is None:
                        from cas.compression import Compressor

                        compressor = Compressor(store.config.compression.level)
                    e = group[i].entry
                    raw = store.packs.read(e.oid)
                    codec, stored = compressor.compress(raw)
                    yield fmt.encode_entry_header(e.oid, e.kind, codec, len(raw), len(stored))
                    yield stored
                    hasher.add(e.oid)
                    count += 1
                    size += fmt.ENTRY_HEADER_SIZE + len(stored)
                    i += 1
                    continue
                run = [group[i]]
                span = fmt.ENTRY_HEADER_SIZE + run[0].entry.stored_len
                j = i + 1
                while (j < len(group) and group[j].pack is run[-1].pack and span < RUN_BYTES
                       and not (plain and group[j].entry.codec == CODEC_DERIVED)
                       and group[j].entry.offset == run[-1].entry.offset
                       + fmt.ENTRY_HEADER_SIZE + run[-1].entry.stored_len):
                    run.append(group[j])
                    span += fmt.ENTRY_HEADER_SIZE + group[j].entry.stored_len
                    j += 1
                yield run[0].pack.read_run_raw([loc.entry for loc in run])
                for loc in run:
                    hasher.add(loc.entry.oid)
                count += len(run)
                size += span
                i = j
            yield fmt.pack_trailer(count, hasher.digest())


def counted(pieces: Iterable[bytes | memoryview], total: int, progress: Progress | None,
            label: str = "") -> Iterator[bytes | memoryview]:
    """``pieces`` as they are, reporting the bytes so far to ``progress``."""
    done = 0
    for p in pieces:
        yield p
        done += len(p)
        if progress is not None:
            progress(done, total, label)


class Prefetch:
    """Iterate ``pieces`` on a thread of its own, up to ``depth`` pieces ahead, so reading the
    stream (a pipe, a socket, another store's packs) overlaps with verifying and writing what
    came before. Use as a context manager: leaving it stops and joins the thread, after which
    nothing more is read from ``pieces``' source."""

    def __init__(self, pieces: Iterable[bytes | memoryview], depth: int = 8) -> None:
        import queue
        import threading

        self._queue: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(pieces),),
                                        name="cas-prefetch", daemon=True)

    def _run(self, it: Iterator[bytes | memoryview]) -> None:
        import queue

        try:
            for piece in it:
                while True:
                    if self._stop.is_set():
                        return
                    try:
                        self._queue.put(("piece", bytes(piece)), timeout=0.1)
                        break
                    except queue.Full:
                        continue
            item: tuple[str, object] = ("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            item = ("error", exc)
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __enter__(self) -> Iterator[bytes]:
        self._thread.start()
        return self._pieces()

    def _pieces(self) -> Iterator[bytes]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]

    def __exit__(self, *exc: object) -> None:
        import queue

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


class IterReader(io.RawIOBase):
    """A readable file over an iterator of byte pieces (a stream produced in this process)."""

    def __init__(self, pieces: Iterable[bytes | memoryview]) -> None:
        self._it = iter(pieces)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it)).cast("B")
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def read_exact(f: io.RawIOBase | io.BufferedIOBase, n: int) -> bytes:
    """``n`` bytes from ``f``, fewer only at its end."""
    parts = []
    while n > 0:
        got = f.read(n)
        if not got:
            break
        parts.append(got)
        n -= len(got)
    return b"".join(parts)


# -- receiving -----------------------------------------------------------------------------------


def receive(store: Store, f: io.RawIOBase | io.BufferedIOBase, lease: Lease | None = None,
            expect: Expected | None = None) -> TransferStats:
    """Receive transfer packs from ``f`` until its end (see the module docstring). Each pack
    is verified whole before it becomes visible; ``lease`` (the store's shared lease for this
    transfer) is checked before each pack is made visible. The caller holds that lease.

    Raises:
        VerifyError: a malformed, truncated or lying stream (what came before it in complete
            packs stays; nothing of the pack being received becomes visible).
        DiskError: writing failed.
    """
    stats = TransferStats()
    while True:
        head = read_exact(f, fmt.PACK_HEADER_SIZE)
        if not head:
            return stats
        fmt.check_pack_header(head, "sent by the other side")
        _receive_pack(store, f, stats, lease, expect)


class Expected:
    """What a stream may carry (a bundle's, whose content is declared up front): chunk lists
    among ``lists`` (any, with ``any_list``), and chunks of a list that arrived or is here."""

    def __init__(self, lists: set[bytes], any_list: bool = False) -> None:
        self.lists = set(lists)
        self.any_list = any_list
        self.chunks: set[bytes] = set()

    def allow_chunks_of(self, clist: ChunkList) -> None:
        self.chunks.update(clist.ids())

    def check(self, entry: fmt.Entry, raw: bytes | memoryview, where: str) -> None:
        """Refuse ``entry`` unless it was expected; a chunk list lets its chunks in."""
        oid = entry.oid
        if entry.kind == fmt.KIND_CHUNK_LIST:
            if not self.any_list and oid not in self.lists:
                raise VerifyError(f"object {oid.hex()}: {where} carries a chunk list none of "
                                  "its versions needs", object_id=oid.hex())
            self.lists.add(oid)
            self.allow_chunks_of(ChunkList.decode(bytes(raw)))
        elif oid not in self.chunks:
            raise VerifyError(f"object {oid.hex()}: {where} carries a chunk none of its "
                              "versions needs", object_id=oid.hex())


def _entries(f: io.RawIOBase | io.BufferedIOBase, where: str
             ) -> Iterator[tuple[fmt.Entry, bytes]]:
    """The entries of one transfer pack whose header was read, each with its stored bytes,
    header and lengths checked (not its content); ends after a trailer that matches them.

    Raises:
        VerifyError: truncated, damaged header, impossible lengths, a wrong trailer.
    """
    hasher = fmt.PackIdHasher()
    count = 0
    offset = fmt.PACK_HEADER_SIZE
    while True:
        head = read_exact(f, fmt.ENTRY_HEADER_SIZE)
        if len(head) < fmt.ENTRY_HEADER_SIZE:
            raise VerifyError(f"{where} is truncated at byte {offset}")
        trailer = fmt.decode_pack_trailer(head)
        if trailer is not None:
            n, pack_id = trailer
            if n != count:
                raise VerifyError(f"{where}'s trailer counts {n} entries, {count} came")
            if pack_id != hasher.digest():
                raise VerifyError(f"{where}'s trailer names pack {pack_id.hex()}, its "
                                  f"entries make {hasher.digest().hex()}")
            return
        entry = fmt.decode_entry_header(head, offset, where)
        _check_lengths(entry, where)
        end = offset + fmt.ENTRY_HEADER_SIZE + entry.stored_len + fmt.PACK_TRAILER_SIZE
        if end > MAX_TRANSFER_PACK_BYTES:
            raise VerifyError(f"{where} grows past {MAX_TRANSFER_PACK_BYTES} bytes at "
                              f"object {entry.oid.hex()}")
        stored = read_exact(f, entry.stored_len)
        if len(stored) < entry.stored_len:
            raise VerifyError(f"{where} is truncated inside object {entry.oid.hex()}")
        hasher.add(entry.oid)
        count += 1
        offset += fmt.ENTRY_HEADER_SIZE + entry.stored_len
        yield entry, stored


def _receive_pack(store: Store, f: io.RawIOBase | io.BufferedIOBase, stats: TransferStats,
                  lease: Lease | None, expect: Expected | None = None) -> None:
    where = "a transfer pack"
    store.packs.refresh()
    test = lacks(store)
    ranges = store.packs.ranges
    writer = PackWriter(store.backend, fmt.MAX_PACK_BYTES)
    try:
        for entry, stored in _entries(f, where):
            raw = _check_entry(entry, stored, ranges, where)
            if expect is not None:
                expect.check(entry, raw, where)
            if test(entry.oid):
                writer.add(entry.oid, entry.kind, entry.codec, entry.raw_len, stored)
            else:
                stats.already += 1
            stats.objects += 1
            stats.bytes += fmt.ENTRY_HEADER_SIZE + entry.stored_len
        if lease is not None:
            lease.check()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    stats.packs += 1
    store.packs.refresh()


def check(f: io.RawIOBase | io.BufferedIOBase, store: Store | None = None
          ) -> tuple[int, int, int]:
    """Check a stream of transfer packs without storing anything: every entry's header and
    lengths, every pack's trailer, every object's content against its id, except derived
    chunks whose bases are not in ``store`` (all of them without a store): those are only
    counted (a receiver checks them when it decodes them). Returns ``(objects, bytes,
    derived chunks left unchecked)``.

    Raises:
        VerifyError: as :func:`receive`.
    """
    where = "a transfer pack"
    objects = size = unchecked = 0
    ranges = store.packs.ranges if store is not None else None
    while True:
        head = read_exact(f, fmt.PACK_HEADER_SIZE)
        if not head:
            return objects, size, unchecked
        fmt.check_pack_header(head, where)
        for entry, stored in _entries(f, where):
            if entry.codec == CODEC_DERIVED:
                if ranges is None:
                    unchecked += 1
                else:
                    try:
                        _check_entry(entry, stored, ranges, where)
                    except VerifyError as exc:
                        if "base is not here" not in exc.message:
                            raise
                        unchecked += 1
            else:
                _check_entry(entry, stored, ranges, where)  # type: ignore[arg-type]
            objects += 1
            size += fmt.ENTRY_HEADER_SIZE + entry.stored_len


def _check_entry(entry: fmt.Entry, stored: bytes, ranges: RangeReader, where: str
                 ) -> bytes | memoryview:
    """Decode a received entry and check it against its id; a chunk list must also parse.
    Returns the decoded bytes. Refusals are ``VerifyError``: the sender is at fault, whatever
    the cause."""
    oid = entry.oid.hex()
    try:
        raw = decode_verified(entry, stored, ranges, where)
    except NotFoundError as exc:
        # Only a derived chunk reads other objects here: the sender must have sent its base
        # chunk list and chunks in an earlier transfer pack, or known this store holds them.
        raise VerifyError(f"object {oid}: {where} holds a derived chunk whose base is not "
                          f"here ({exc.message})", object_id=oid) from None
    if entry.kind == fmt.KIND_CHUNK_LIST:
        try:
            ChunkList.decode(raw)
        except SchemaError as exc:
            raise VerifyError(f"object {oid}: {where} holds a chunk list that does not "
                              f"parse ({exc.message})", object_id=oid) from None
    return raw


def _check_lengths(entry: fmt.Entry, where: str) -> None:
    """Refuse a record no writer produces before reading or allocating for it."""
    oid = entry.oid.hex()
    limit = MAX_CHUNK_BYTES if entry.kind == fmt.KIND_CHUNK else MAX_LIST_BYTES
    if entry.raw_len > limit:
        raise VerifyError(f"object {oid}: {where} claims {entry.raw_len} bytes, more than "
                          f"such an object can hold", object_id=oid)
    if entry.stored_len > entry.raw_len + (entry.raw_len >> 6) + 65536:
        raise VerifyError(f"object {oid}: {where} stores {entry.stored_len} bytes for "
                          f"{entry.raw_len}", object_id=oid)

