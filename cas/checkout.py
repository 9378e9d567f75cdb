"""Checkout: write a version's files under a directory, byte-identical and verified.

Each file is streamed chunk by chunk into a temp file next to its final name; every chunk is
checked against its BLAKE3 as it is read (by the pack reader) and the whole file against the
manifest's SHA-256 before it is fsynced and renamed into place. A file that fails verification
never appears under its final name. Chunk reads and decompression run ahead of the writer in a
small bounded pool; writes are sequential.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat as stat_mod
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.errors import ArgsError, ConflictError, VerifyError, from_os_error
from cas.format.manifest import FileEntry
from cas.fsutil import DurableWriter, fsync_dir
from cas.gcpause import gc_paused
from cas.ids import parse_hex
from cas.names import validate_rel_path
from cas.registry import Version

if TYPE_CHECKING:
    from cas.store import Progress, Store

#: Chunks per read task, and tasks queued ahead of the writer (bounds memory to about
#: GROUP x READ_AHEAD x 256 KiB).
GROUP = 16
READ_AHEAD = 4
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


def _read_group(store: Store, ids: list[bytes]) -> list[bytes]:
    return store.packs.read_many(ids)


def iter_file_chunks(store: Store, entry: FileEntry,
                     pool: ThreadPoolExecutor) -> Iterator[list[bytes]]:
    """Yield the verified chunks of one file in order, in runs of up to ``GROUP`` chunks,
    reading ahead in ``pool`` (pread, decompress and BLAKE3 all release the GIL)."""
    clist = store.read_chunk_list(parse_hex(entry.chunks, what="chunk list id"))
    if clist.size != entry.size:
        raise VerifyError(
            f"{entry.path}: chunk list size {clist.size} != manifest size {entry.size}")
    ids = [oid for oid, _n in clist.chunks]
    ahead: deque[Future[list[bytes]]] = deque()
    for i in range(0, len(ids), GROUP):
        ahead.append(pool.submit(_read_group, store, ids[i : i + GROUP]))
        if len(ahead) >= READ_AHEAD:
            yield ahead.popleft().result()
    while ahead:
        yield ahead.popleft().result()


def _hash_group(sha: "hashlib._Hash", group: list[bytes]) -> None:
    for data in group:
        sha.update(data)


def _write_file(store: Store, entry: FileEntry, fd: int, writer: DurableWriter,
                pool: ThreadPoolExecutor, hasher: ThreadPoolExecutor, done: int, total: int, progress: Progress | None) -> int:
    """Write one file's verified chunks through ``writer`` and fsync it; return ``done``
    advanced by its size. SHA-256 runs on its own thread, in order, while this one writes."""
    sha = hashlib.sha256()
    hashing: deque[Future[None]] = deque()
    for group in iter_file_chunks(store, entry, pool):
        hashing.append(hasher.submit(_hash_group, sha, group))
        for data in group:
            writer.write(data)
        done += sum(map(len, group))
        if len(hashing) > READ_AHEAD:
            hashing.popleft().result()
        if progress is not None:
            progress(done, total, entry.path)
    while hashing:
        hashing.popleft().result()
    if sha.hexdigest() != entry.sha256:
        raise VerifyError(
            f"{entry.path}: SHA-256 {sha.hexdigest()} != manifest {entry.sha256}",
            expected=entry.sha256, actual=sha.hexdigest())
    os.fchmod(fd, 0o755 if entry.executable else 0o644)
    writer.finish()
    return done


def checkout(store: Store, version: Version, dest: Path, *, force: bool = False,
             progress: Progress | None = None) -> CheckoutResult:
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
    with gc_paused(), ThreadPoolExecutor(WORKERS, thread_name_prefix="cas-read") as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="cas-sha") as hasher:
        for entry in manifest.files:
            parent = _safe_parent(dest, entry.path)
            final = parent / entry.path.rsplit("/", 1)[-1]
            tmp = parent / f".{final.name}.{secrets.token_hex(4)}.cas-tmp"
            try:
                with open(tmp, "xb", buffering=0) as out:
                    writer = DurableWriter(out.fileno(), size_hint=entry.size)
                    try:
                        done = _write_file(store, entry, out.fileno(), writer, pool, hasher,
                                           done, total, progress)
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
