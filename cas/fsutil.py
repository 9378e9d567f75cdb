"""Durable file operations: temp name, fsync, rename, fsync the directory.

Every mutable file the store writes goes through :func:`atomic_write` or follows the same order
by hand (packs). A crash leaves either the old file or the new one under the final name, plus at
most a temp file that the next writer removes (:func:`clean_tmp`).
"""

from __future__ import annotations

import os
import secrets
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
    return tmp_dir / f"{stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def atomic_write(path: Path, data: bytes, tmp_dir: Path | None = None) -> None:
    """Replace ``path`` with ``data`` durably and atomically.

    ``tmp_dir`` must be on the same filesystem as ``path`` (defaults to its directory).

    Raises:
        DiskError | PermError: the write failed; ``path`` is unchanged and the temp is gone.
    """
    tmp = tmp_name(tmp_dir or path.parent, path.name)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise from_os_error(exc, f"writing {path.name}") from None


def clean_tmp(tmp_dir: Path) -> int:
    """Remove temp files left by killed writers. Call only while holding the write lock.

    Returns the number of files removed.
    """
    removed = 0
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.endswith(".tmp"):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
