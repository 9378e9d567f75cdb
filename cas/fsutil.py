"""Durable file operations: temp name, fsync, rename, fsync the directory.

Every mutable file the store writes goes through :func:`atomic_write` or follows the same order
by hand (packs). A crash leaves either the old file or the new one under the final name, plus at
most a temp file that the next writer removes (:meth:`cas.storage.local.LocalBackend.sweep`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cas.errors import from_os_error


def fsync_dir(path: Path) -> None:
    """fsync a directory so that renames and creations inside it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(tmp_dir: Path, stem: str) -> Path:
    """A fresh, unique temp path in ``tmp_dir``; the pid makes stale files easy to attribute."""
    return tmp_dir / f"{stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None, mode: int = 0o666
                 ) -> None:
    """Replace ``path`` with ``data`` durably and atomically; the new file is created with
    ``mode`` (less the umask: 0o600 for secrets).

    ``tmp_dir`` must be on the same filesystem as ``path`` (defaults to its directory).

    Raises:
        DiskError | PermError: the write failed; ``path`` is unchanged and the temp is gone.
    """
    tmp = tmp_name(tmp_dir or path.parent, path.name)
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise from_os_error(exc, f"writing {path.name}") from None


#: Alignment of direct writes: the largest logical block size of common disks.
DIRECT_ALIGN = 4096
#: Files smaller than this are written through the page cache.
DIRECT_MIN = 1 << 20


class DurableWriter:
    """Write a new file front to back and fsync it, bypassing the page cache where possible.

    Data that is fsynced at once gains nothing from the page cache: a buffered write copies
    every byte into freshly allocated cache pages (the most expensive part of writing a large
    file on some virtual machines, and it evicts what other programs cached), and then the
    fsync writes them out anyway. This writer gathers the bytes in two page-aligned buffers and
    writes each full buffer with ``O_DIRECT`` on a background thread while the caller fills
    the other one; the unaligned tail is written buffered. When the filesystem refuses
    ``O_DIRECT`` (tmpfs, some network filesystems) or a direct write fails with ``EINVAL``,
    it falls back to plain buffered writes; the bytes on disk are the same either way.

    ``fd`` must be a newly created, empty file opened for writing. The caller owns it.
    ``size_hint`` (the expected file size) keeps the buffers small for small files, which are
    written buffered: below :data:`DIRECT_MIN` bytes, direct writes save nothing.
    """

    def __init__(self, fd: int, size_hint: int | None = None, buffer_size: int = 8 << 20,
                 direct: bool = True) -> None:
        import mmap
        from concurrent.futures import ThreadPoolExecutor

        if size_hint is not None:
            buffer_size = min(buffer_size, size_hint + DIRECT_ALIGN)
            direct = direct and size_hint >= DIRECT_MIN
        self.fd = fd
        self.direct = direct and _set_direct(fd, True)
        size = max(DIRECT_ALIGN, -(-buffer_size // DIRECT_ALIGN) * DIRECT_ALIGN)
        # Anonymous maps are page-aligned, as O_DIRECT requires of the memory too.
        self._bufs = [mmap.mmap(-1, size), mmap.mmap(-1, size)]
        self._views = [memoryview(b) for b in self._bufs]
        self._cur = 0
        self._fill = 0
        self._pending = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cas-direct")
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        size = len(self._views[0])
        while view:
            n = min(len(view), size - self._fill)
            self._views[self._cur][self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == size:
                self._flush_buffer()

    def write_block(self, view: memoryview) -> None:
        """Write ``view`` straight from the caller's memory, without copying it: it must be
        page-aligned (an anonymous mmap) and a multiple of :data:`DIRECT_ALIGN` long, and
        nothing may be buffered yet (the file so far is whole blocks). Runs in the calling
        thread; ``write`` and ``finish`` can follow for the unaligned tail."""
        if self._fill or self._pending is not None or len(view) % DIRECT_ALIGN:
            raise ValueError("write_block needs whole blocks and an empty buffer")
        self._write_out(view)

    def _flush_buffer(self) -> None:
        if self._pending is not None:
            self._pending.result()
        chunk = self._views[self._cur][: self._fill]
        self._pending = self._pool.submit(self._write_out, chunk)
        self._cur ^= 1
        self._fill = 0

    def _write_out(self, view: memoryview) -> None:
        aligned = len(view) // DIRECT_ALIGN * DIRECT_ALIGN if self.direct else 0
        if aligned:
            try:
                _write_fully(self.fd, view[:aligned])
            except OSError as exc:
                import errno

                if exc.errno != errno.EINVAL:
                    raise
                # The device wants a coarser alignment than ours: go buffered. A failed
                # direct write may have written part of the block, so rewrite it by offset.
                _set_direct(self.fd, False)
                self.direct = False
                os.lseek(self.fd, self.written, os.SEEK_SET)
                aligned = 0
            else:
                self.written += aligned
        if aligned < len(view):
            if self.direct:  # only the file's tail is ever unaligned
                _set_direct(self.fd, False)
                self.direct = False
            _write_fully(self.fd, view[aligned:])
            self.written += len(view) - aligned

    def finish(self) -> None:
        """Write what is buffered and fsync the file."""
        try:
            if self._pending is not None:
                self._pending.result()
                self._pending = None
            if self._fill:
                self._write_out(self._views[self._cur][: self._fill])
                self._fill = 0
            os.fsync(self.fd)
        finally:
            self.close()

    def close(self) -> None:
        """Release the buffers (after waiting for a write in flight); the fd stays open."""
        if self._pending is not None:
            self._pending.exception()
            self._pending = None
        self._pool.shutdown(wait=True)
        for v in self._views:
            v.release()
        for b in self._bufs:
            b.close()
        self._views, self._bufs = [], []


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where the platform or filesystem has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    import fcntl

    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return on


def _write_fully(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]
