"""Writing one file of a version outside the store, verified: the step every export shares.

An export (Hugging Face cache, Ollama store, ``models/`` layout) writes each file the same
way: the bytes go to a temp name in the target folder, are hashed as they are written
(SHA-256, and the git blob id that a Hugging Face cache names small files by), fsynced, and
only then does the caller give the temp its final name (:meth:`Staged.publish`). A file whose
SHA-256 differs from the manifest's is deleted before it has a name: nothing unverified is
ever visible under a final name.

Sharing bytes (opt-in, ``share=True``): a file that ``cas checkout`` wrote before, still
holding the same bytes, is cloned (``FICLONE``: a reflink, copy-on-write, on btrfs, XFS,
bcachefs, ...) or, where the filesystem cannot clone, hard-linked to the temp instead of being
written again. The shared temp is hashed like a written one before it is published, so a
checkout edited since it was written is never exported; it is then written from the store.
A hard link shares the inode: editing either copy in place changes both, which is why it is
opt-in.

Candidates come from the checkout records (:mod:`cas.checkouts`): a complete checkout of any
version that has a file with the same SHA-256 and size, at the path where the record says cas
wrote it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import stat as stat_mod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cas import checkouts
from cas.errors import CasError, ConflictError, VerifyError, from_os_error
from cas.fsutil import fsync_dir
from cas.names import validate_rel_path

if TYPE_CHECKING:
    from cas.format.manifest import FileEntry
    from cas.registry import Version
    from cas.store import Store

#: ``ioctl(dst, FICLONE, src)`` (linux/fs.h): share all of ``src``'s extents with ``dst``.
FICLONE = 0x40049409
#: How a staged file got its bytes.
WRITTEN, REFLINKED, HARDLINKED = "written", "reflinked", "hardlinked"
_BLOCK = 1 << 20


@dataclass
class Staged:
    """A verified file under a temp name in its target folder, not yet published."""

    tmp: Path
    sha256: str
    #: The git blob id of the bytes (``sha1("blob <size>\\0" + bytes)``).
    git_sha1: str
    size: int
    how: str

    def publish(self, final: Path, mode: int | None = None) -> None:
        """Rename the temp to ``final`` (replacing what is there); ``mode`` is applied first
        unless the bytes are shared with a hard link (the other name keeps its mode)."""
        try:
            if mode is not None and self.how != HARDLINKED:
                os.chmod(self.tmp, mode)
            os.replace(self.tmp, final)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


@dataclass
class ShareSources:
    """Files ``cas checkout`` wrote, by ``(sha256, size)``: the candidates for sharing."""

    by_content: dict[tuple[str, int], list[Path]] = field(default_factory=dict)

    def candidates(self, entry: FileEntry) -> list[Path]:
        return self.by_content.get((entry.sha256, entry.size), [])


def share_sources(store: Store, wanted: Iterable[FileEntry]) -> ShareSources:
    """The checked-out files holding the content of ``wanted`` (complete checkout records
    only; a record or a version that cannot be read is passed over: sharing is a saving,
    never a requirement)."""
    keys = {(f.sha256, f.size) for f in wanted}
    out = ShareSources()
    folder = store.path / checkouts.DIRNAME
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            rec = checkouts.decode((folder / name).read_bytes(), str(folder / name))
            if rec.state != checkouts.STATE_COMPLETE:
                continue
            version = store.resolve(f"{rec.name}@{rec.seq}")
            if version.commit != rec.commit:
                continue
            files = store.manifest(version).files
        except (CasError, OSError):
            continue
        kept = set(rec.files)
        for f in files:
            if (f.sha256, f.size) in keys and f.path in kept and _safe(f.path):
                out.by_content.setdefault((f.sha256, f.size), []).append(
                    Path(rec.dest) / f.path)
    return out


def _safe(path: str) -> bool:
    try:
        validate_rel_path(path)
    except CasError:
        return False
    return True


def temp_path(folder: Path, prefix: str) -> Path:
    """A fresh temp name in ``folder``: ``prefix`` then random digits (as Go's
    ``os.CreateTemp`` makes them, so a tool that cleans its own temps cleans cas's too)."""
    return folder / f"{prefix}{secrets.randbelow(10**10):010d}"


def stage(store: Store, version: Version, entry: FileEntry, folder: Path, *,
          prefix: str = ".cas-export-", sources: ShareSources | None = None) -> Staged:
    """Put the bytes of ``entry`` (a file of ``version``) in a fresh temp in ``folder``,
    verified against the manifest's size and SHA-256 (see the module docstring). With
    ``sources``, a checked-out copy is shared first where the filesystem allows.

    Raises:
        VerifyError: a damaged chunk or a whole that differs from the manifest; the temp is
            removed.
        DiskError | PermError: the folder cannot be written.
    """
    for src in (sources.candidates(entry) if sources is not None else []):
        staged = _share(src, entry, folder, prefix)
        if staged is not None:
            return staged
    from cas.cat import iter_file

    tmp = temp_path(folder, prefix)
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % entry.size)
    size = 0
    try:
        with open(tmp, "xb") as out:
            for block in iter_file(store, version, entry.path):
                sha256.update(block)
                sha1.update(block)
                out.write(block)
                size += len(block)
            out.flush()
            os.fsync(out.fileno())
        _check(entry, sha256.hexdigest(), size)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise from_os_error(exc, f"writing {entry.path} to {folder}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(tmp, sha256.hexdigest(), sha1.hexdigest(), size, WRITTEN)


def _check(entry: FileEntry, sha256: str, size: int) -> None:
    if size != entry.size or sha256 != entry.sha256:
        raise VerifyError(f"{entry.path}: written bytes have SHA-256 {sha256} ({size} bytes), "
                          f"the manifest records {entry.sha256} ({entry.size} bytes)",
                          expected=entry.sha256, actual=sha256)


def _share(src: Path, entry: FileEntry, folder: Path, prefix: str) -> Staged | None:
    """Clone or hard-link ``src`` to a temp in ``folder`` and verify it; None when the
    filesystem allows neither or the copy no longer holds the bytes."""
    try:
        st = os.stat(src, follow_symlinks=False)
    except OSError:
        return None
    if not stat_mod.S_ISREG(st.st_mode) or st.st_size != entry.size:
        return None
    tmp = temp_path(folder, prefix)
    how = _reflink(src, tmp)
    if how is None:
        try:
            os.link(src, tmp, follow_symlinks=False)
            how = HARDLINKED
        except OSError:
            return None
    try:
        sha256, sha1, size = hash_file(tmp)
        _check(entry, sha256, size)
    except (OSError, VerifyError):
        tmp.unlink(missing_ok=True)
        return None
    return Staged(tmp, sha256, sha1, size, how)


def _reflink(src: Path, tmp: Path) -> str | None:
    try:
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        dfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError:
        os.close(sfd)
        return None
    try:
        fcntl.ioctl(dfd, FICLONE, sfd)
        os.fsync(dfd)
        return REFLINKED
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL...: this filesystem cannot clone
        tmp.unlink(missing_ok=True)
        return None
    finally:
        os.close(sfd)
        os.close(dfd)


def hash_file(path: Path) -> tuple[str, str, int]:
    """``(sha256, git blob id, size)`` of the file at ``path``, read in blocks."""
    size = os.stat(path).st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            sha256.update(block)
            sha1.update(block)
            n += len(block)
    return sha256.hexdigest(), sha1.hexdigest(), n


def holds(path: Path, entry: FileEntry) -> bool:
    """True if ``path`` is a regular file (not a symlink) with exactly the bytes of
    ``entry``, checked by hashing: a file is never trusted by its name."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat_mod.S_ISREG(st.st_mode) or st.st_size != entry.size:
        return False
    try:
        sha256, _sha1, size = hash_file(path)
    except OSError:
        return False
    return sha256 == entry.sha256 and size == entry.size


def real_dirs(root: Path, path: Path) -> None:
    """Create ``path`` under ``root``; a component that is a symlink or a file is refused,
    so that nothing is ever written outside ``root`` through a planted link.

    Raises:
        ConflictError: a component is not a real folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    cur = root
    for part in path.relative_to(root).parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            continue
        if not stat_mod.S_ISDIR(st.st_mode):
            raise ConflictError(f"{cur} is not a folder (a symlink or a file): refusing to "
                                "write through it")


def sync_folders(folders: Iterator[Path] | Iterable[Path]) -> None:
    """fsync each folder once (renames into them survive a power loss)."""
    for folder in dict.fromkeys(folders):
        fsync_dir(folder)
