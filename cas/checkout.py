"""Checkout: write a version's files under a directory, byte-identical and verified.

Every file is written to a temp file beside its final name and renamed into place only once it
is verified (SHA-256 against the manifest, every chunk against its BLAKE3) and durable, so a
file that fails verification, or a crash, never leaves a partial file under a final name.

Two paths, by file size:

* Large files (at least :data:`SMALL` bytes) are assembled in 8 MiB windows. Two workers decode
  chunks straight into a window (a chunk is verified against its BLAKE3 in the window itself); a
  thread hashes complete windows in order for the file's SHA-256 and another writes them with
  ``O_DIRECT`` (see :class:`cas.fsutil.DurableWriter`). The file is fsynced and renamed at once.
  Three windows are in flight at most.
* Small files are read whole (one read of their chunks), verified, and written with plain
  writes on the calling thread. Their temps are made durable in batches and only then are
  they all renamed: one ``syncfs`` of the filesystem for the whole batch where that is known
  to write the files back (ext4, xfs, btrfs, f2fs, tmpfs) and the checkout has 32 small
  files or more; else an fsync per file (a few files; FUSE or network filesystems, which
  may not pass ``syncfs`` on). Per-file fsyncs and thread hand-offs were most of the time of
  a checkout of many small files (docs/performance.md).

Every folder under the destination is opened without following symlinks and every file is
created, renamed and removed relative to a folder descriptor (:class:`cas.checkouts.DestTree`),
so a folder swapped for a symlink while checkout runs never leads a write or a delete outside
the destination; such a swap is detected and reported (``E_CONFLICT``). Folders are fsynced
once, at the end.

Temp files are named ``.NAME.PID.RAND.cas-tmp``. A checkout first removes the temps of
checkouts that were killed, never those of a checkout still running, nor any other file; with
``clean`` it then removes what is not in the version. :mod:`cas.checkouts` has both, and the
records by which cas knows which destinations it wrote.

Test hook (not an interface): with ``CAS_TEST_PAUSE=POINT`` and ``CAS_TEST_PAUSE_FDS=W,R``
(two pipe ends the process inherits), the first arrival at ``POINT`` writes ``POINT\\n`` to fd
``W`` and then blocks until fd ``R`` reaches end of file, so that a test can kill the process,
or change the destination, at a known moment without sleeping. Points: ``scanned`` (stale
temps removed, the record written, nothing else changed yet), ``temp-written`` (a temp file
holds its bytes, not yet renamed), ``synced`` (a batch of small temps is durable, none
renamed). The variables are read once when a checkout starts (never at import); unset, the
hook is None and costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import sys
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas import checkouts
from cas.errors import (
    ArgsError,
    CasError,
    CasWarning,
    ConflictError,
    VerifyError,
    from_os_error,
)
from cas.format.manifest import FileEntry
from cas.fsutil import DIRECT_ALIGN, DIRECT_MIN, DurableWriter, fsync_dir
from cas.gcpause import gc_paused
from cas.ids import parse_hex
from cas.include import select_files
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
#: Files smaller than this take the small-file path (read whole, batched durability); the
#: same size below which direct writes save nothing.
SMALL = DIRECT_MIN
#: A batch of small files is made durable and renamed once it holds this many bytes.
BATCH_BYTES = 64 << 20

_NEW_FILE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | os.O_CLOEXEC)


class CheckoutResult(msgspec.Struct):
    """What a checkout wrote into ``dest`` (the version, counts) and what it removed."""

    name: str
    seq: int
    commit: str
    dest: str
    files: int
    bytes_written: int
    #: Files (and symlinks) ``clean`` removed, and folders it removed once empty.
    removed_files: int = 0
    removed_dirs: int = 0
    #: Temp files of killed checkouts removed from the destination.
    stale_temps_removed: int = 0
    #: Entries of the destination that are not in the version (left in place without clean).
    extra_files: int = 0
    include: list[str] = []
    warnings: list[CasWarning] = []


# -- test hook ---------------------------------------------------------------------------------


#: A pause point reached: ``pause(point)``, or None when no test asked for pauses.
Pause = Callable[[str], None]


def pause_hook_from_env() -> Pause | None:
    """The test hook (see the module docstring), or None when ``CAS_TEST_PAUSE`` is unset, so
    that a checkout pays one environment lookup, at its start, and nothing per file."""
    point = os.environ.get("CAS_TEST_PAUSE")
    fds = os.environ.get("CAS_TEST_PAUSE_FDS")
    if not point or not fds:
        return None
    armed = [point]

    def pause(reached: str) -> None:
        if reached not in armed:
            return
        armed.clear()  # the first arrival only
        w, r = (int(x) for x in fds.split(","))
        os.write(w, reached.encode() + b"\n")
        os.close(w)
        while os.read(r, 4096):
            pass
        os.close(r)

    return pause


class VerifiedFile:
    """The checks every reader of a manifest file makes: its chunk list adds up to the
    manifest's size (checked on construction), each chunk read is as long as the list says,
    and the SHA-256 of the bytes fed in is the manifest's (:meth:`finish`).

    Raises (each method):
        VerifyError: the check failed (the message names the file).
    """

    def __init__(self, store: Store, entry: FileEntry) -> None:
        clist = store.read_chunk_list(parse_hex(entry.chunks, what="chunk list id"),
                                      entry.size)
        if clist.size != entry.size:
            raise VerifyError(
                f"{entry.path}: chunk list size {clist.size} != manifest size {entry.size}")
        self.entry = entry
        self.chunks = clist.chunks
        self.sha = hashlib.sha256()

    def chunk(self, data: bytes | memoryview, oid: bytes, n: int) -> None:
        """Check one chunk's length and hash its bytes."""
        if len(data) != n:
            raise VerifyError(f"{self.entry.path}: chunk {oid.hex()} is {len(data)} bytes, the "
                              f"chunk list says {n}", object_id=oid.hex())
        self.sha.update(data)

    def finish(self) -> None:
        """Check the SHA-256 of every byte fed in against the manifest."""
        digest = self.sha.hexdigest()
        if digest != self.entry.sha256:
            raise VerifyError(f"{self.entry.path}: SHA-256 {digest} != manifest "
                              f"{self.entry.sha256}", expected=self.entry.sha256, actual=digest)


# -- large files -------------------------------------------------------------------------------


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
    for oid, start, n, data, out in zip(ids, starts, lengths, store.packs.read_many(ids, outs),
                                        outs):
        if out is None:
            if len(data) != n:
                raise VerifyError(f"chunk {oid.hex()} is {len(data)} bytes, the chunk list "
                                  f"says {n}", object_id=oid.hex())
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


class _LargeFiles:
    """The windowed path, its thread pools and buffers made on first use."""

    def __init__(self, store: Store, cached: bool) -> None:
        self.store = store
        self.cached = cached
        self.pools: tuple[ThreadPoolExecutor, ...] = ()
        self.windows: _Windows | None = None

    def write(self, entry: FileEntry, fd: int, done: int, total: int,
              progress: Progress | None) -> int:
        if self.windows is None:
            self.pools = (ThreadPoolExecutor(WORKERS, thread_name_prefix="cas-read"),
                          ThreadPoolExecutor(1, thread_name_prefix="cas-sha"),
                          ThreadPoolExecutor(1, thread_name_prefix="cas-write"))
            self.windows = _Windows()
        writer = DurableWriter(fd, size_hint=entry.size, direct=not self.cached)
        try:
            return _write_file(self.store, entry, fd, writer, self.pools,  # type: ignore[arg-type]
                               self.windows, done, total, progress)
        finally:
            writer.close()

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)


def _write_file(store: Store, entry: FileEntry, fd: int, writer: DurableWriter,
                pools: tuple[ThreadPoolExecutor, ThreadPoolExecutor, ThreadPoolExecutor],
                windows: _Windows, done: int, total: int, progress: Progress | None) -> int:
    """Write one file's verified bytes through ``writer`` and fsync it; return ``done``
    advanced by its size."""
    workers, hasher, io = pools
    check = VerifiedFile(store, entry)
    ids = [oid for oid, _n in check.chunks]
    lengths = [n for _oid, n in check.chunks]
    starts = [0, *accumulate(lengths)]
    sha = check.sha  # fed window by window (each chunk was verified in its window)
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
    check.finish()
    os.fchmod(fd, 0o755 if entry.executable else 0o644)
    writer.finish()
    return done


# -- small files -------------------------------------------------------------------------------


def _syncfs_function():  # type: ignore[no-untyped-def]
    """libc ``syncfs`` where the platform has it (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]

    def syncfs(fd: int) -> None:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


#: ``statfs`` ``f_type`` of the filesystems whose ``syncfs`` writes back every dirty file of
#: the filesystem before it returns: ext2/3/4, xfs, btrfs, f2fs, tmpfs (nothing to write
#: back). Elsewhere (FUSE, NFS, SMB, overlay, ...) ``syncfs`` may not reach the backend, and
#: each file is fsynced instead.
SYNCFS_FILESYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x01021994})
#: A checkout of fewer small files than this fsyncs each one instead of one ``syncfs``:
#: ``syncfs`` also waits for every other program's dirty pages on the filesystem, while a few
#: fsyncs cost a few milliseconds (on ext4 here: 8 files 3.0 ms by fsync, 0.9 ms by syncfs;
#: 32 files 9.7 ms and 3.4 ms; 512 files 210 ms and 28 ms).
FSYNC_MAX_FILES = 32


def _fs_type(fd: int) -> int | None:
    """``f_type`` of ``fstatfs`` for the filesystem of ``fd`` (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first field
        if libc.fstatfs(ctypes.c_int(fd), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _syncfs_flushes(fd: int) -> bool:
    """True if ``syncfs`` on the filesystem of ``fd`` is known to write its files back."""
    return _fs_type(fd) in SYNCFS_FILESYSTEMS


def read_verified(store: Store, entry: FileEntry) -> list[bytes | memoryview]:
    """The chunks of a small file, each verified against its BLAKE3, and the whole against
    the manifest's size and SHA-256.

    Raises:
        VerifyError | NotFoundError: damaged or missing chunks, or a file that differs.
    """
    check = VerifiedFile(store, entry)
    ids = [oid for oid, _n in check.chunks]
    parts = store.packs.read_many(ids) if ids else []
    for part, (oid, n) in zip(parts, check.chunks):
        check.chunk(part, oid, n)
    check.finish()
    return parts


class _SmallBatch:
    """Small files written to temps; :meth:`flush` makes them durable, then renames them.

    A temp is fsynced as it is written, unless the checkout has ``FSYNC_MAX_FILES`` small
    files or more and its filesystem is one whose ``syncfs`` is known to write files back
    (:data:`SYNCFS_FILESYSTEMS`): then :meth:`flush` makes the whole batch durable with one
    ``syncfs`` per filesystem."""

    def __init__(self, store: Store, tree: checkouts.DestTree, pause: Pause | None,
                 files: int) -> None:
        self.store = store
        self.tree = tree
        self.pause = pause
        self.syncfs = _syncfs_function() if files >= FSYNC_MAX_FILES else None
        self.flushes: dict[int, bool] = {}  # device -> its syncfs writes files back
        self.pending: deque[tuple[str, str, str]] = deque()  # (folder, temp, final name)
        self.devices: dict[int, str] = {}  # device -> a folder on it, for syncfs
        self.bytes = 0

    def _by_syncfs(self, dev: int, dfd: int) -> bool:
        if self.syncfs is None:
            return False
        known = self.flushes.get(dev)
        if known is None:
            known = self.flushes[dev] = _syncfs_flushes(dfd)
        return known

    def write(self, entry: FileEntry, rel_dir: str, final: str) -> None:
        parts = read_verified(self.store, entry)
        dfd = self.tree.fd(rel_dir, create=True)
        tmp = checkouts.temp_name(final)
        fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=dfd)
        self.pending.append((rel_dir, tmp, final))
        try:
            view = None
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, 0o755 if entry.executable else 0o644)
            if self.pause is not None:
                self.pause("temp-written")
            dev = self.tree.ids[rel_dir][0]
            if self._by_syncfs(dev, dfd):
                self.devices.setdefault(dev, rel_dir)
            else:
                os.fsync(fd)
        finally:
            os.close(fd)
        self.bytes += entry.size

    def flush(self) -> None:
        """Make every pending temp durable (those not fsynced yet: one ``syncfs`` per
        filesystem), then rename each over its final name."""
        if not self.pending:
            return
        if self.syncfs is not None:
            for rel in self.devices.values():
                self.syncfs(self.tree.fd(rel))
        if self.pause is not None:
            self.pause("synced")
        while self.pending:
            rel, tmp, final = self.pending[0]
            dfd = self.tree.fd(rel)
            try:
                os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
            except IsADirectoryError:
                raise ConflictError(f"{self.tree.dest / checkouts.join(rel, final)} is a directory "
                                    "(use --clean to replace it)") from None
            self.pending.popleft()
            self.tree.changed.add(rel)
            self.tree.written.append(checkouts.join(rel, final))
        self.devices.clear()
        self.bytes = 0

    def discard(self) -> None:
        """Remove the temps not renamed yet (after an error)."""
        for rel, tmp, _final in self.pending:
            try:
                os.unlink(tmp, dir_fd=self.tree.fd(rel))
            except (OSError, CasError):
                pass
        self.pending.clear()


# -- checkout ----------------------------------------------------------------------------------


def _version_dirs(paths: Sequence[str]) -> set[str]:
    dirs = set()
    for p in paths:
        parts = p.split("/")
        for k in range(1, len(parts)):
            dirs.add("/".join(parts[:k]))
    return dirs


def _names(items: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _check_name_lengths(dest: Path, paths: Sequence[str], what: str) -> None:
    """Refuse, before anything is written, a version whose paths the destination's filesystem
    cannot hold: a path component longer than its name limit (a manifest made elsewhere).

    Raises:
        ArgsError: naming the path and both lengths.
    """
    probe = dest
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        limit = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        return  # no limit known: the writes themselves report what fails
    for path in paths:
        for part in path.split("/"):
            size = len(os.fsencode(part))
            if size > limit:
                shown = part if len(part) <= 40 else f"{part[:20]}...{part[-12:]}"
                whole = path if len(path) <= 80 else f"{path[:40]}...{path[-30:]}"
                raise ArgsError(
                    f"{what}: cannot check out {whole!r}: its name {shown!r} is {size} "
                    f"bytes, longer than the {limit} the filesystem of {checkouts.shown(dest)} "
                    "allows; check out the other files with --include")


def checkout(store: Store, version: Version, dest: Path, *, force: bool = False,
             clean: bool = False, include: Sequence[str] = (),
             progress: Progress | None = None, cached: bool = False) -> CheckoutResult:
    """Write the files of ``version`` (those ``include`` selects, if given) under ``dest``
    (created if missing).

    ``clean`` removes, before writing, the files of ``dest`` that are not in the version and
    that cas wrote there (listed in the record that owns ``dest``, see
    :func:`cas.checkouts.owns`), and folders that this leaves empty. Other extra files are
    the user's: ``clean`` is refused while any exist, unless ``force``, which deletes every
    extra entry (symlinks as links). ``clean`` is refused with ``include`` (which files of a
    partial checkout are extra is a guess cas does not make). The record's ``files`` keep
    the files cas wrote before that stay in ``dest``.

    A file of the version that exists in ``dest`` is replaced if cas wrote it (as above),
    else only with ``force``.

    Raises:
        ArgsError: ``clean`` with ``include``; a bad pattern; ``dest`` is not a directory;
            ``dest`` is the store, is inside it or holds it.
        NotFoundError: an ``include`` pattern matches no file.
        ConflictError: a target file cas did not write exists (without ``force``); ``clean``
            where extra files cas did not write exist (without ``force``); a folder stands
            where a file goes, or a file or symlink where a folder goes; a folder was swapped
            while checkout ran.
        VerifyError: stored bytes are damaged; the damaged file is not written.
        LicenseError: the version's licence needs an acceptance that is not recorded
            (:mod:`cas.licenses`); nothing is written.
        DiskError: ``dest``'s filesystem has not the room for the files (checked before
            anything is written, :func:`cas.compat.require_disk_for_files`).
    """
    from cas.compat import require_disk_for_files
    from cas.licenses import require_accepted

    if clean and include:
        raise ArgsError("--clean cannot be combined with --include: check out the whole "
                        "version with --clean, or select files without --clean")
    manifest = store.manifest(version)
    chosen = select_files(manifest.files, include, version.ref)
    all_paths = [f.path for f in manifest.files]
    dest = dest.expanduser().absolute()
    where = Path(checkouts.shown(dest))  # for messages: JSON cannot hold non-UTF-8 bytes
    checkouts.refuse_store(store.path, dest)
    _check_name_lengths(dest, all_paths if clean else [f.path for f in chosen], version.ref)
    require_accepted(store, version, manifest, False)
    require_disk_for_files(dest, chosen, f"checking out {version.ref}")
    made = checkouts.make_dest(dest)
    pause = pause_hook_from_env()
    warnings: list[CasWarning] = []
    try:
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_os_error(exc, f"opening {where}") from None
    tree = checkouts.DestTree(root_fd, where)
    large = _LargeFiles(store, cached)
    batch = _SmallBatch(store, tree, pause, sum(1 for f in chosen if f.size < SMALL))
    record: checkouts.CheckoutRecord | None = None
    try:
        real = os.path.realpath(dest)
        scan = checkouts.scan_dest(tree, set(all_paths), _version_dirs(all_paths),
                                   checkouts.mount_points(real))
        for why, text in ((checkouts.SKIP_MOUNT, "another filesystem mounted in"),
                          (checkouts.SKIP_UNREADABLE, "cannot be read, in")):
            skipped = [p for p, w in scan.skipped if w == why]
            if skipped:
                warnings.append(CasWarning(
                    code="W_OTHER_FILESYSTEM" if why == checkouts.SKIP_MOUNT else "W_UNREADABLE",
                    message=f"{_names(skipped)}: {text} {where}; not looked into, never "
                            "deleted"))
        if scan.stale:
            warnings.append(CasWarning(
                code="W_STALE_TEMPS",
                message=f"removed {scan.stale} temp file{'s' if scan.stale != 1 else ''} "
                        f"left in {where} by an interrupted checkout"))
        try:
            previous = checkouts.load(store.path, real)
            damaged = None
        except CasError as exc:
            previous, damaged = None, exc.message
        owned = checkouts.owns(previous, tree)
        owned_files = set(previous.files) if owned and previous is not None else set()
        extras = checkouts.sort_extras(scan, owned_files, clean=clean, force=force)
        extra = [p for p, is_dir in scan.extras if not is_dir]
        if clean and extras.foreign and not force:
            foreign = extras.foreign
            if not owned:
                why_not = ("no record of it in the store" if previous is None
                           else "the store's record names another folder at that path")
                raise ConflictError(
                    f"{where} was not written by cas checkout ({damaged or why_not}) and "
                    f"holds {len(foreign)} files not in {version.ref} ({_names(foreign)}): "
                    "--clean would delete them; add --force to do so")
            raise ConflictError(
                f"{where} holds {len(foreign)} file{'s' if len(foreign) != 1 else ''} not in "
                f"{version.ref} that cas did not write ({_names(foreign)}): --clean deletes "
                "only the files cas wrote; add --force to delete these too")
        chosen_paths = [f.path for f in chosen]
        if scan.skipped:
            checkouts.probe(tree, scan, chosen_paths)
        why = checkouts.blocked(scan, chosen_paths, extras.remove)
        if why is not None:
            raise ConflictError(f"{where}/{why} (" + (
                "cas did not write it: use --force --clean to replace it)" if clean
                else "use --clean to replace it)"))
        if not force:  # cas's own files are replaced, anything else only with --force
            clash = [f.path for f in chosen if f.path in scan.present
                     and not (f.path in owned_files and f.path in scan.files)]
            if clash:
                raise ConflictError(f"{where / clash[0]} exists (use --force to overwrite)"
                                    + (f" and {len(clash) - 1} more" if len(clash) > 1
                                       else ""))
        files = sorted(extras.kept.union(chosen_paths))
        record = checkouts.CheckoutRecord(
            dest=real, dest_dev=tree.ids[""][0], dest_ino=tree.ids[""][1], name=version.name,
            seq=version.seq, commit=version.commit, state=checkouts.STATE_WRITING,
            started_at=checkouts.now(), include=list(include), files=files,
            stamps=checkouts.writing_stamps(previous if owned else None, tree, extras.kept,
                                            set(chosen_paths)))
        try:
            checkouts.save(store.path, record)
        except CasError as exc:
            warnings.append(CasWarning(code="W_NO_RECORD",
                                       message=f"the checkout is not recorded: {exc.message}"))
            record = None
        if pause is not None:
            pause("scanned")
        removed = (0, 0)
        if clean:
            removed = checkouts.remove_extras(tree, extras.remove)
        elif extra:
            warnings.append(CasWarning(
                code="W_EXTRA_FILES",
                message=f"{where} holds {len(extra)} file{'s' if len(extra) != 1 else ''} "
                        f"not in {version.ref} ({_names(extra)}); "
                        + ("--clean removes them" if not extras.foreign
                           else "--clean removes those cas wrote, --force --clean all")))
        total = sum(f.size for f in chosen)
        done = 0
        with gc_paused():
            for entry in chosen:
                validate_rel_path(entry.path)
                rel_dir, _, final = entry.path.rpartition("/")
                if entry.size < SMALL:
                    batch.write(entry, rel_dir, final)
                    done += entry.size
                    if batch.bytes >= BATCH_BYTES:
                        batch.flush()
                    if progress is not None:
                        progress(done, total, entry.path)
                else:
                    done = _write_large(large, tree, entry, rel_dir, final, done, total,
                                        progress, pause)
            batch.flush()
        tree.check_unchanged()
        tree.sync()
        for d in made:
            fsync_dir(d)
        if record is not None:
            try:
                checkouts.save(store.path, msgspec.structs.replace(
                    record, state=checkouts.STATE_COMPLETE, finished_at=checkouts.now(),
                    stamps=checkouts.stamps(tree, record.files)))
            except CasError as exc:
                warnings.append(CasWarning(code="W_NO_RECORD", message=(
                    f"the checkout is recorded as unfinished: {exc.message}")))
    except BaseException as exc:
        batch.discard()
        if record is not None:
            _record_failure(store, record, tree, extras.kept)
        if isinstance(exc, OSError):
            raise from_os_error(exc, f"checking out into {where}") from None
        raise
    finally:
        large.close()
        tree.close()
        os.close(root_fd)
    return CheckoutResult(version.name, version.seq, version.commit, str(where), len(chosen),
                          done, removed_files=removed[0], removed_dirs=removed[1],
                          stale_temps_removed=scan.stale,
                          extra_files=0 if clean else len(extra), include=list(include),
                          warnings=warnings)


def _record_failure(store: Store, record: checkouts.CheckoutRecord, tree: checkouts.DestTree,
                    kept: set[str]) -> None:
    """After a checkout failed: rewrite its ``writing`` record to list what is cas's in DEST
    now (the files it wrote before and keeps, those this checkout renamed into place) with
    fresh stamps, so that the failure does not make a later ``--clean`` need ``--force``.
    Best effort: the record stays as it was if this cannot be written."""
    files = sorted(kept.union(tree.written))
    try:
        checkouts.save(store.path, msgspec.structs.replace(
            record, files=files, stamps=checkouts.stamps(tree, files)))
    except (CasError, OSError):
        pass


def _write_large(large: _LargeFiles, tree: checkouts.DestTree, entry: FileEntry, rel_dir: str,
                 final: str, done: int, total: int, progress: Progress | None,
                 pause: Pause | None) -> int:
    """Write one large file to a temp, fsync it and rename it into place."""
    dfd = tree.fd(rel_dir, create=True)
    tmp = checkouts.temp_name(final)
    fd = os.open(tmp, _NEW_FILE, 0o600, dir_fd=dfd)
    try:
        try:
            done = large.write(entry, fd, done, total, progress)
        finally:
            os.close(fd)
        if pause is not None:
            pause("temp-written")
        try:
            os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            raise ConflictError(f"{tree.dest / entry.path} is a directory (use --clean to "
                                "replace it)") from None
        tree.changed.add(rel_dir)
        tree.written.append(entry.path)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise
    return done
