"""Writing packs durably: objects appended to a temp pack, closed with a trailer and an index.

Write order (see ``docs/format.md``): entries are appended to a new backend object; closing a
pack appends the trailer and commits the pack (durable, renamed into place), then writes its
index the same way. Readers only look at packs that have an index, so a pack is visible only
once both are complete and durable.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from cas.errors import CasError, SchemaError, from_os_error
from cas.format import pack as fmt
from cas.packs import PACK_PREFIX
from cas.storage import Backend, ObjectWriter


class _OpenPack:
    """The pack being appended to: its writer, entries so far, and running pack id."""

    def __init__(self, writer: ObjectWriter) -> None:
        self.writer = writer
        self.entries: list[fmt.Entry] = []
        self.hasher = fmt.PackIdHasher()
        self.offset = 0

    def write(self, *parts: bytes | memoryview) -> None:
        self.writer.write(*parts)
        self.offset += sum(len(p) for p in parts)


class PackWriter:
    """Appends objects to packs, closing a pack once it reaches ``target_bytes``.

    Not thread-safe: one thread feeds it. A full pack is closed (trailer, fsync, index, renames)
    on a background thread while the next one fills, so fsyncs overlap with ingest. Objects
    become visible to readers only after :meth:`finish` returns. :meth:`abort` throws away the
    pack being filled; packs already closed stay (complete and harmless).
    """

    def __init__(self, backend: Backend, target_bytes: int) -> None:
        self.backend = backend
        self.target_bytes = min(target_bytes, fmt.MAX_PACK_BYTES - (64 << 20))
        self.written: dict[bytes, int] = {}  # oid -> stored length, for this writer's lifetime
        self.finished: list[str] = []
        self.bytes_written = 0
        self._open: _OpenPack | None = None
        self._closing: list[Future[str]] = []
        self._closer: ThreadPoolExecutor | None = None

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.written

    def add(self, oid: bytes, kind: int, codec: int, raw_len: int,
            stored: bytes | memoryview) -> None:
        """Append one object. Adding an id already written by this writer is a no-op."""
        self.add_many([(oid, kind, codec, raw_len, stored)])

    def add_many(self, items: list[tuple[bytes, int, int, int, bytes | memoryview]]) -> None:
        """Append ``(oid, kind, codec, raw_len, stored)`` objects with one write.

        Ids already written by this writer (or repeated in ``items``) are skipped. The pack is
        closed once it passes ``target_bytes`` (it may exceed it by one batch).
        """
        fresh = []
        for item in items:
            oid, _, _, raw_len, stored = item
            if oid in self.written:
                continue
            if len(stored) > fmt.MAX_OBJECT_BYTES or raw_len > fmt.MAX_OBJECT_BYTES:
                raise SchemaError("object larger than 4 GiB cannot be packed")
            self.written[oid] = len(stored)
            fresh.append(item)
        if not fresh:
            return
        try:
            pack = self._pack()
            offset = pack.offset
            parts: list[bytes | memoryview] = []
            for oid, kind, codec, raw_len, stored in fresh:
                parts.append(fmt.encode_entry_header(oid, kind, codec, raw_len, len(stored)))
                parts.append(stored)
                pack.entries.append(fmt.Entry(oid, offset, len(stored), raw_len, kind, codec))
                pack.hasher.add(oid)
                offset += fmt.ENTRY_HEADER_SIZE + len(stored)
            pack.write(*parts)
        except OSError as exc:
            for oid, *_ in fresh:
                self.written.pop(oid, None)
            self.abort()
            raise from_os_error(exc, "writing a pack") from None
        self.bytes_written += sum(fmt.ENTRY_HEADER_SIZE + len(it[4]) for it in fresh)
        self._roll(pack)

    def add_span(self, entries: list[fmt.Entry], span: bytes | memoryview) -> None:
        """Append objects copied whole from another pack: ``span`` holds ``entries`` (their
        headers and stored data) back to back, exactly as that pack stores them, the first at
        ``span[0]``; their headers are written as they are. The caller checked them (see
        :meth:`cas.packs.Pack.read_run_raw`). An id this writer wrote already makes the
        objects go one by one."""
        if any(e.oid in self.written for e in entries):
            first = entries[0].offset
            self.add_many([(e.oid, e.kind, e.codec, e.raw_len,
                            span[e.offset - first + fmt.ENTRY_HEADER_SIZE:
                                 e.offset - first + fmt.ENTRY_HEADER_SIZE + e.stored_len])
                           for e in entries])
            return
        try:
            pack = self._pack()
            base, first = pack.offset, entries[0].offset
            pack.write(span)
        except OSError as exc:
            self.abort()
            raise from_os_error(exc, "writing a pack") from None
        for e in entries:
            self.written[e.oid] = e.stored_len
            pack.entries.append(fmt.Entry(e.oid, base + e.offset - first, e.stored_len,
                                          e.raw_len, e.kind, e.codec))
            pack.hasher.add(e.oid)
        self.bytes_written += len(span)
        self._roll(pack)

    def _pack(self) -> _OpenPack:
        """The pack being filled, started (header written) if there is none."""
        if self._open is None:
            opened = _OpenPack(self.backend.open_write("pack"))
            self._open = opened
            opened.write(fmt.pack_header())
        return self._open

    def _roll(self, pack: _OpenPack) -> None:
        """Close ``pack`` in the background once it reached the target size."""
        if pack.offset >= self.target_bytes:
            self._open = None
            if self._closer is None:
                self._closer = ThreadPoolExecutor(1, thread_name_prefix="cas-pack-close")
            self._closing.append(self._closer.submit(self._close_pack, pack))

    def finish(self) -> list[str]:
        """Make every object added so far durable and visible; return all pack ids written."""
        self._wait_closing()
        if self._open is not None:
            pack, self._open = self._open, None
            self.finished.append(self._close_pack(pack))
        return list(self.finished)

    def _wait_closing(self) -> None:
        try:
            for fut in self._closing:
                self.finished.append(fut.result())
        finally:
            self._closing = []
            if self._closer is not None:
                self._closer.shutdown(wait=True)
                self._closer = None

    def abort(self) -> None:
        """Throw away the open pack; wait for packs being closed (they complete normally)."""
        if self._open is not None:
            for e in self._open.entries:
                self.written.pop(e.oid, None)
            self._open.writer.abort()
            self._open = None
        try:
            self._wait_closing()
        except (CasError, OSError):
            pass  # abort runs while another error propagates

    def _close_pack(self, pack: _OpenPack) -> str:
        """Trailer, commit the pack (durable, renamed into place), then its index.

        A crash between the two leaves a pack without an index, which the next writer indexes
        (see the crash table in ``docs/format.md``); readers never see a pack without one.
        """
        pack_id = pack.hasher.digest()
        hex_id = pack_id.hex()
        name = f"packs/{PACK_PREFIX}{hex_id}"
        try:
            pack.write(fmt.pack_trailer(len(pack.entries), pack_id))
            pack.writer.commit(f"{name}.pack")
        except OSError as exc:
            pack.writer.abort()
            raise from_os_error(exc, "finishing a pack") from None
        try:
            self.backend.write(f"{name}.idx", fmt.encode_index(pack.entries, pack_id))
        except OSError as exc:
            # The pack stays: the index may have landed before the failure (a folder fsync
            # that failed after the rename), and an index must never outlive its pack. A pack
            # without an index is invisible, and the next writer indexes it.
            raise from_os_error(exc, "writing a pack index") from None
        return hex_id
