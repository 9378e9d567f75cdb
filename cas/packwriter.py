"""Writing packs durably: objects appended to a temp pack, closed with a trailer and an index.

Write order (see ``docs/format.md``): entries are appended to a temp pack; ``finish`` appends the
trailer and fsyncs it, writes the index to a temp file and fsyncs it, renames the pack, renames
the index, and fsyncs the directory. Readers only look at packs that have an index, so a pack is
visible only once both files are complete and durable.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cas.errors import CasError, SchemaError, from_os_error
from cas.format import pack as fmt
from cas.fsutil import fsync_dir, tmp_name
from cas.packs import pack_path


class _OpenPack:
    """The pack being appended to: its temp file, entries so far, and running pack id."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.entries: list[fmt.Entry] = []
        self.hasher = fmt.PackIdHasher()
        self.offset = 0

    def write(self, *parts: bytes | memoryview) -> None:
        """Append ``parts`` with one writev (no copy into a user-space buffer)."""
        views = [memoryview(p).cast("B") for p in parts]
        while views:
            n = os.writev(self.fd, views)
            self.offset += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def discard(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        self.tmp.unlink(missing_ok=True)


class PackWriter:
    """Appends objects to packs, closing a pack once it reaches ``target_bytes``.

    Not thread-safe: one thread feeds it. A full pack is closed (trailer, fsync, index, renames)
    on a background thread while the next one fills, so fsyncs overlap with ingest. Objects
    become visible to readers only after :meth:`finish` returns. :meth:`abort` throws away the
    pack being filled; packs already closed stay (complete and harmless).
    """

    def __init__(self, packs_dir: Path, tmp_dir: Path, target_bytes: int) -> None:
        self.packs_dir = packs_dir
        self.tmp_dir = tmp_dir
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
            if self._open is None:
                self._open = _OpenPack(tmp_name(self.tmp_dir, "pack"))
                self._open.write(fmt.pack_header())
            pack = self._open
            offset = pack.offset
            parts: list[bytes | memoryview] = []
            for oid, kind, codec, raw_len, stored in fresh:
                parts.append(fmt.encode_entry_header(oid, kind, codec, raw_len, len(stored)))
                parts.append(stored)
                pack.entries.append(fmt.Entry(oid, offset, len(stored), raw_len, kind, codec))
                pack.hasher.add(oid)
                offset += fmt.ENTRY_HEADER_SIZE + len(stored)
            for i in range(0, len(parts), 512):  # stay well under IOV_MAX (1024)
                pack.write(*parts[i : i + 512])
        except OSError as exc:
            for oid, *_ in fresh:
                self.written.pop(oid, None)
            self.abort()
            raise from_os_error(exc, "writing a pack") from None
        self.bytes_written += sum(fmt.ENTRY_HEADER_SIZE + len(it[4]) for it in fresh)
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
            self._open.discard()
            self._open = None
        try:
            self._wait_closing()
        except (CasError, OSError):
            pass  # abort runs while another error propagates

    def _close_pack(self, pack: _OpenPack) -> str:
        """Trailer, fsync, index (temp, fsync), rename pack, rename index, fsync the folder."""
        pack_id = pack.hasher.digest()
        hex_id = pack_id.hex()
        idx_tmp = tmp_name(self.tmp_dir, "idx")
        try:
            pack.write(fmt.pack_trailer(len(pack.entries), pack_id))
            os.fsync(pack.fd)
            os.close(pack.fd)
            with open(idx_tmp, "xb") as f:
                f.write(fmt.encode_index(pack.entries, pack_id))
                f.flush()
                os.fsync(f.fileno())
            os.replace(pack.tmp, pack_path(self.packs_dir, hex_id, "pack"))
            os.replace(idx_tmp, pack_path(self.packs_dir, hex_id, "idx"))
            fsync_dir(self.packs_dir)
        except OSError as exc:
            idx_tmp.unlink(missing_ok=True)
            pack.discard()
            raise from_os_error(exc, "finishing a pack") from None
        return hex_id
