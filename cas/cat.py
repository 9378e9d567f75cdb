"""Cat: one file of a version, streamed and verified, to a stream or atomically to a file.

Every chunk is checked against its BLAKE3 before its bytes are passed on, and the whole file
against the manifest's size and SHA-256 at the end; memory stays at a group of chunks.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from cas import checkouts
from cas.checkout import VerifiedFile
from cas.errors import ArgsError, NotFoundError, from_os_error
from cas.fsutil import fsync_dir, tmp_name
from cas.registry import Version

if TYPE_CHECKING:
    from cas.store import Store

#: ``cat`` reads this many chunks per group (about 1 MiB at the default chunk size).
CAT_GROUP = 16


class CatResult(msgspec.Struct):
    """The file ``cat`` wrote: its version, path, size and (verified) SHA-256."""

    name: str
    seq: int
    path: str
    size: int
    sha256: str


def iter_file(store: Store, version: Version, path: str) -> Iterator[bytes | memoryview]:
    """The bytes of one file of ``version``, in blocks, each verified against its BLAKE3
    before it is yielded; after the last block the size and SHA-256 of the whole are
    checked. Memory stays at a group of chunks whatever the file size.

    Raises:
        NotFoundError: no file ``path`` in the version.
        VerifyError: a damaged chunk (before its bytes are yielded), or a whole that differs
            from the manifest (after the last block).
    """
    manifest = store.manifest(version)
    entry = next((f for f in manifest.files if f.path == path), None)
    if entry is None:
        raise NotFoundError(f"{version.ref} has no file {path!r} (cas show {version.ref} "
                            "lists them)")
    check = VerifiedFile(store, entry)
    for i in range(0, len(check.chunks), CAT_GROUP):
        group = check.chunks[i : i + CAT_GROUP]
        for data, (oid, n) in zip(store.packs.read_many([oid for oid, _n in group]), group):
            check.chunk(data, oid, n)
            yield data
    check.finish()


def cat_to_file(store: Store, version: Version, path: str, target: Path) -> CatResult:
    """Write one file of ``version`` to the file ``target``, atomically: the bytes go to a
    temp beside it, are verified (see :func:`iter_file`) and fsynced, and only then renamed
    over ``target``, so a damaged file never leaves a partial file under that name (an
    existing ``target`` is unchanged, the temp removed). A symlink is written through (its
    target file is replaced, the link kept); an existing ``target`` keeps its mode. Something
    that is not a regular file (a FIFO, ``/dev/stdout``) is streamed into as it is.

    Raises:
        ArgsError: ``target`` is a directory.
        NotFoundError | VerifyError: as :func:`iter_file`; ``target`` is unchanged.
        DiskError | PermError: ``target`` cannot be written.
    """
    shown = checkouts.shown(target)
    try:
        try:
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise ArgsError(f"{shown} is a directory")
        if st is not None and not stat.S_ISREG(st.st_mode):
            with open(target, "wb") as out:
                return cat(store, version, path, out)
        final = Path(os.path.realpath(target))
        tmp = tmp_name(final.parent, f".{final.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                result = cat(store, version, path, out)
                if st is not None:
                    os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fsync_dir(final.parent)
        return result
    except OSError as exc:
        raise from_os_error(exc, f"writing {shown}") from None


def cat(store: Store, version: Version, path: str, out: BinaryIO) -> CatResult:
    """Write one file of ``version`` to ``out`` (see :func:`iter_file`). Errors that ``out``
    raises (a closed pipe) propagate unchanged."""
    size = 0
    for block in iter_file(store, version, path):
        out.write(block)
        size += len(block)
    out.flush()
    manifest_sha = next(f.sha256 for f in store.manifest(version).files if f.path == path)
    return CatResult(version.name, version.seq, path, size, manifest_sha)
