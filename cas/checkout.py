"""Checkout: write a version's files under a directory, byte-identical and verified.

Each file is assembled in 8 MiB windows and written to a temp file next to its final name.
Two workers decode chunks straight into a window (a chunk is verified against its BLAKE3 in the
window itself); a thread hashes complete windows in order for the file's SHA-256 and another
writes them with ``O_DIRECT`` (see :class:`cas.fsutil.DurableWriter`). The file is checked
against the manifest's SHA-256 before it is fsynced and renamed into place, so a file that fails
verification never appears under its final name. Three windows are in flight at most.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from bisect import bisect_left, bisect_right
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.errors import ArgsError, ConflictError, VerifyError, from_os_error
from cas.format.manifest import FileEntry
from cas.fsutil import DIRECT_ALIGN, DurableWriter, fsync_dir
from cas.gcpause import gc_paused
from cas.ids import parse_hex
from cas.names import validate_rel_path
from cas.registry import Version

if TYPE_CHECKING:
    from cas.store import Progress, Store

#: A file is assembled in windows of this many bytes (a multiple of the direct-write
#: alignment): workers decode chunks straight into the window, a thread hashes it, another
#: writes it. ``BUFFERS`` windows are alive at once, which bounds memory.
WINDOW = 8 << 20
BUFFERS = 3
#: Bytes of chunks per decode task (a window is split into about this many).
PART = 2 << 20
WORKERS = 2


class CheckoutResult(msgspec.Struct):
    name: str
    seq: int
    commit: str
    dest: str
    files: int
    bytes_written: int


def _safe_parent(dest: Path, rel: str) -> Path:
    """Create the parent folders of ``rel`` under ``dest``; refuse to pass through a symlink."""
    validate_rel_path(rel)
    parent = dest
    for part in rel.split("/")[:-1]:
        parent = parent / part
        try:
            st = os.lstat(parent)
        except FileNotFoundError:
            os.mkdir(parent)
            continue
        if stat_mod.S_ISLNK(st.st_mode) or not stat_mod.S_ISDIR(st.st_mode):
            raise ConflictError(f"{parent}: exists and is not a plain directory")
    return parent


def _decode_part(store: Store, ids: list[bytes], starts: list[int], lengths: list[int],
                 window: memoryview, lo: int) -> None:
    """Decode chunks into the window that holds file bytes ``[lo, lo + len(window))``.

    A chunk wholly inside the window is decoded and verified in place; one that crosses an
    edge is decoded and verified whole, and the part inside is copied.
    """
    hi = lo + len(window)
    outs: list[memoryview | None] = []
    for start, n in zip(starts, lengths):
        outs.append(window[start - lo : start - lo + n] if lo <= start and start + n <= hi
                    else None)
    for start, n, data, out in zip(starts, lengths, store.packs.read_many(ids, outs), outs):
        if out is None:
            a, b = max(start, lo), min(start + n, hi)
            window[a - lo : b - lo] = memoryview(data)[a - start : b - start]


def _filled(tasks: list[Future[None]]) -> None:
    """Wait until the decode tasks of one window are done (raising what one raised)."""
    for f in tasks:
        f.result()


def _hash_window(tasks: list[Future[None]], sha: hashlib._Hash, window: memoryview) -> None:
    _filled(tasks)
    sha.update(window)


def _write_window(tasks: list[Future[None]], writer: DurableWriter, window: memoryview) -> None:
    _filled(tasks)
    if len(window) % DIRECT_ALIGN == 0:
        writer.write_block(window)
    else:  # the file's last window: the writer takes the unaligned tail
        writer.write(window)


class _Windows:
    """The window buffers of one checkout (page-aligned anonymous maps, reused per file)."""

    def __init__(self) -> None:
        import mmap

        # Freed with the object: threads may still hold views of a map after an error.
        self.maps = [mmap.mmap(-1, WINDOW) for _ in range(BUFFERS)]
        self.free: deque[int] = deque(range(BUFFERS))


def _write_file(store: Store, entry: FileEntry, fd: int, writer: DurableWriter,
                pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor, ThreadPoolExecutor],
                windows: _Windows, done: int, total: int, progress: Progress | None) -> int:
    """Write one file's verified bytes through ``writer`` and fsync it; return ``done``
    advanced by its size."""
    workers, hasher, io = pools
    clist = store.read_chunk_list(parse_hex(entry.chunks, what="chunk list id"))
    if clist.size != entry.size:
        raise VerifyError(
            f"{entry.path}: chunk list size {clist.size} != manifest size {entry.size}")
    ids = [oid for oid, _n in clist.chunks]
    lengths = [n for _oid, n in clist.chunks]
    starts = [0, *accumulate(lengths)]
    sha = hashlib.sha256()
    # per window in flight: (buffer index, decode tasks, hashed, written, bytes)
    flight: deque[tuple[int, list[Future[None]], Future[None], Future[None], int]] = deque()

    def retire() -> None:
        nonlocal done
        index, tasks, hashed, written, n = flight.popleft()
        try:
            hashed.result()
            written.result()
        finally:
            for f in (*tasks, hashed, written):
                f.exception()  # never reuse a buffer a thread may still touch
            windows.free.append(index)
        done += n
        if progress is not None:
            progress(done, total, entry.path)

    try:
        for lo in range(0, entry.size, WINDOW):
            hi = min(lo + WINDOW, entry.size)
            if not windows.free:
                retire()
            index = windows.free.popleft()
            view = memoryview(windows.maps[index])[: hi - lo]
            first = bisect_right(starts, lo) - 1
            last = bisect_left(starts, hi)  # chunks first .. last-1 overlap [lo, hi)
            tasks = []
            k = first
            while k < last:
                m = k + 1
                while m < last and starts[m] - starts[k] < PART:
                    m += 1
                tasks.append(workers.submit(_decode_part, store, ids[k:m], starts[k:m],
                                            lengths[k:m], view, lo))
                k = m
            flight.append((index, tasks, hasher.submit(_hash_window, tasks, sha, view),
                           io.submit(_write_window, tasks, writer, view), hi - lo))
        while flight:
            retire()
    finally:
        while flight:  # after an error: let every thread finish with its buffer
            index, tasks, hashed, written, _n = flight.popleft()
            for f in (*tasks, hashed, written):
                f.exception()
            windows.free.append(index)
    if sha.hexdigest() != entry.sha256:
        raise VerifyError(
            f"{entry.path}: SHA-256 {sha.hexdigest()} != manifest {entry.sha256}",
            expected=entry.sha256, actual=sha.hexdigest())
    os.fchmod(fd, 0o755 if entry.executable else 0o644)
    writer.finish()
    return done


def checkout(store: Store, version: Version, dest: Path, *, force: bool = False,
             progress: Progress | None = None, cached: bool = False) -> CheckoutResult:
    """Write every file of ``version`` under ``dest`` (created if missing).

    Raises:
        ConflictError: a target file exists (without ``force``) or a parent is a symlink.
        VerifyError: stored bytes are damaged; the damaged file is not written.
    """
    manifest = store.manifest(version)
    dest = dest.expanduser().absolute()
    if os.path.lexists(dest) and not dest.is_dir():
        raise ArgsError(f"{dest}: exists and is not a directory")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, f"creating {dest}") from None
    if not force:
        clash = [f.path for f in manifest.files if os.path.lexists(dest / f.path)]
        if clash:
            raise ConflictError(f"{dest / clash[0]} exists (use --force to overwrite)"
                                + (f" and {len(clash) - 1} more" if len(clash) > 1 else ""))
    total = manifest.total_size
    done = 0
    windows = _Windows()
    with gc_paused(), ThreadPoolExecutor(WORKERS, thread_name_prefix="cas-read") as workers, \
            ThreadPoolExecutor(1, thread_name_prefix="cas-sha") as hasher, \
            ThreadPoolExecutor(1, thread_name_prefix="cas-write") as io:
        pools = (workers, hasher, io)
        for entry in manifest.files:
            parent = _safe_parent(dest, entry.path)
            final = parent / entry.path.rsplit("/", 1)[-1]
            tmp = parent / f".{final.name}.{os.urandom(4).hex()}.cas-tmp"
            try:
                with open(tmp, "xb", buffering=0) as out:
                    writer = DurableWriter(out.fileno(), size_hint=entry.size,
                                           direct=not cached)
                    try:
                        done = _write_file(store, entry, out.fileno(), writer, pools,
                                           windows, done, total, progress)
                    finally:
                        writer.close()
                os.replace(tmp, final)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise from_os_error(exc, f"writing {final}") from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    try:
        for d in sorted({(dest / f.path).parent for f in manifest.files}):
            fsync_dir(d)
    except OSError as exc:
        raise from_os_error(exc, f"syncing {dest}") from None
    return CheckoutResult(version.name, version.seq, version.commit, str(dest),
                          len(manifest.files), done)
