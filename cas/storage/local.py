"""The local directory backend: a store's bytes as files under one folder.

Durability follows one order everywhere: write a temp file in ``tmp/``, fsync it, rename it
into place, fsync the folder (and every folder the rename had to create). A crash leaves the
old object or the new one under the final name, plus at most a temp that :meth:`sweep`
removes. ``swap`` locks a name as git does (``NAME.lock`` created with ``O_EXCL``, renamed over
``NAME``), so git itself and dulwich see the same locks on the registry's refs; names ending
in ``.lock`` are therefore reserved and never listed.
"""

from __future__ import annotations

import errno
import os
import threading
import socket
import time
import stat
from pathlib import Path

from cas.fsutil import fsync_dir, tmp_name
from cas.locking import process_alive
from cas.storage import ANY, Expected, check_name

TMP = "tmp"
LOCK_SUFFIX = ".lock"
#: This host, as temp names carry it (dots would split the name's fields).
_HOST = socket.gethostname().replace(".", "-").replace("/", "-") or "host"
#: Seconds after which another host's temp in ``tmp/`` is a crash's leftover.
FOREIGN_TEMP_STALE = 24 * 3600.0
#: Seconds after which a swap lock of a lease (``locks/NAME.lock``) is a crash's leftover.
LEASE_SWAP_STALE = 120.0
#: Folders with fewer components are never removed when they empty (``registry/refs``).
_KEEP_DEPTH = 3


#: Names of the temps this process's writers have open: a sweep by another thread of the
#: same process (a server handling requests side by side) must not take them for leftovers.
_OPEN_TEMPS: set[str] = set()
_OPEN_TEMPS_LOCK = threading.Lock()


class LocalWriter:
    """A new object in a temp file; :meth:`commit` fsyncs and renames it into place."""

    def __init__(self, backend: LocalBackend, hint: str) -> None:
        self._backend = backend
        # The host is in the name: a store on a shared filesystem has other hosts' writers,
        # whose pids mean nothing here (see sweep()).
        self.tmp = tmp_name(backend.tmp_dir, f"{hint}.h-{_HOST}")
        with _OPEN_TEMPS_LOCK:
            _OPEN_TEMPS.add(self.tmp.name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            self.fd: int | None = os.open(self.tmp, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(backend.tmp_dir, exist_ok=True)
            self.fd = os.open(self.tmp, flags, 0o644)

    def write(self, *parts: bytes | memoryview) -> None:
        """Append ``parts`` with one ``writev`` (no copy into a user-space buffer)."""
        assert self.fd is not None, "write after commit or abort"
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        while views:
            n = os.writev(self.fd, views[:512])  # stay well under IOV_MAX (1024)
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if views and n:
                views[0] = views[0][n:]

    def commit(self, name: str) -> None:
        assert self.fd is not None, "commit after commit or abort"
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            self._backend._place(self.tmp, name)
        except BaseException:
            self.abort()
            raise
        self._release()

    def abort(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        self.tmp.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        with _OPEN_TEMPS_LOCK:
            _OPEN_TEMPS.discard(self.tmp.name)


def default_store_path() -> Path:
    """``$CAS_HOME``, else ``$XDG_DATA_HOME/cas``, else ``~/.local/share/cas``.

    Read at call time, never at import time.
    """
    home = os.environ.get("CAS_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "cas"


class LocalBackend:
    """A store's bytes as files under ``root`` (temps in ``root/tmp``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / TMP

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    def path(self, name: str) -> Path:
        """The file that holds ``name`` (for the readers that stay outside the seam)."""
        return self.root / check_name(name)

    # -- reading -----------------------------------------------------------------------------

    def list(self, folder: str) -> list[str]:
        base = self.root / check_name(folder) if folder else self.root
        prefix = f"{folder}/" if folder else ""
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(prefix + e.name for e in entries
                      if e.is_file(follow_symlinks=False) and not e.name.endswith(LOCK_SUFFIX))

    def list_tree(self, folder: str) -> list[str]:
        base = self.root / check_name(folder)
        found = []
        for top, dirs, files in os.walk(base, onerror=_raise_unless_missing):
            rel = os.path.relpath(top, self.root).replace(os.sep, "/")
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
            found += [f"{rel}/{f}" for f in files if not f.endswith(LOCK_SUFFIX)
                      and os.path.isfile(os.path.join(top, f))
                      and not os.path.islink(os.path.join(top, f))]
        return sorted(found)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        fd = os.open(self.path(name), os.O_RDONLY)
        try:
            if length is None:
                length = max(os.fstat(fd).st_size - offset, 0)
            parts = []
            while length > 0:
                part = os.pread(fd, length, offset)
                if not part:
                    break
                parts.append(part)
                offset += len(part)
                length -= len(part)
            return b"".join(parts)
        finally:
            os.close(fd)

    def size(self, name: str) -> int | None:
        try:
            st = os.stat(self.path(name), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if not _is_dir(st) else None

    # -- writing -----------------------------------------------------------------------------

    def write(self, name: str, data: bytes | memoryview) -> None:
        writer = self.open_write(name.rsplit("/", 1)[-1])
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit(name)

    def open_write(self, hint: str) -> LocalWriter:
        return LocalWriter(self, hint.replace("/", "_"))

    def _place(self, tmp: Path, name: str) -> None:
        """Rename the durable temp ``tmp`` to ``name`` and make the rename durable."""
        target = self.path(name)
        self._make_parents(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)

    def _make_parents(self, target: Path) -> None:
        """Create the missing folders above ``target``, each made durable in its parent."""
        missing = []
        parent = target.parent
        while not parent.is_dir():
            missing.append(parent)
            if parent == self.root:
                break
            parent = parent.parent
        for folder in reversed(missing):
            try:
                os.mkdir(folder)
            except FileExistsError:
                if not folder.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "a file is in the way",
                                             str(folder)) from None
                continue
            fsync_dir(folder.parent)

    def swap(self, name: str, expected: Expected, new: bytes | None) -> bool:
        target = self.path(name)
        lock = target.with_name(target.name + LOCK_SUFFIX)
        self._make_parents(target)
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        renamed = deleted = False
        try:
            current = self._current(target)
            if expected is not ANY and current != expected:
                return False
            if new is None:
                if current is not None:
                    os.unlink(target)
                    fsync_dir(target.parent)
                    deleted = True
                return True
            view = memoryview(new)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.replace(lock, target)
            renamed = True
            fsync_dir(target.parent)
            return True
        finally:
            os.close(fd)
            if not renamed:
                lock.unlink(missing_ok=True)
            if deleted:
                self._prune(target.parent)

    def _current(self, target: Path) -> bytes | None:
        """What ``target`` holds; an empty folder in its place (left by a crash between the two
        steps of a deletion, by this backend or by git) counts as absent and is removed."""
        try:
            with open(target, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            _remove_empty_tree(target)
            fsync_dir(target.parent)
            return None

    def delete(self, name: str) -> None:
        target = self.path(name)
        try:
            os.unlink(target)
        except FileNotFoundError:
            return
        fsync_dir(target.parent)
        self._prune(target.parent)

    def delete_many(self, names: list[str]) -> None:
        folders: dict[Path, None] = {}
        for name in names:
            target = self.path(name)
            try:
                os.unlink(target)
            except FileNotFoundError:
                continue
            folders[target.parent] = None
        for folder in folders:
            fsync_dir(folder)
        for folder in folders:
            self._prune(folder)

    def _prune(self, folder: Path) -> None:
        """Remove ``folder`` and its parents while they are empty (not the top folders)."""
        while len(folder.relative_to(self.root).parts) >= _KEEP_DEPTH:
            try:
                os.rmdir(folder)
            except OSError:
                return
            fsync_dir(folder.parent)
            folder = folder.parent

    def sweep(self) -> int:
        """Remove what killed writers left: temps whose process is gone (a temp of a
        process still running on this host is another writer's work in progress) and swap
        locks (``NAME.lock``) outside ``tmp/``, ``packs/`` and ``locks/`` (those of lock
        objects are left to :mod:`cas.leases`, which breaks stale ones itself)."""
        removed = 0
        try:
            temps = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            temps = []
        for entry in temps:
            if entry.name.endswith(".tmp") and not _writer_alive(entry):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        stale_before = time.time() - LEASE_SWAP_STALE
        for top, dirs, files in os.walk(self.root):
            if top == str(self.root):
                dirs[:] = [d for d in dirs if d not in (TMP, "packs")]
            leases = os.path.basename(top) == "locks" and os.path.dirname(top) == str(self.root)
            for f in files:
                if f.endswith(LOCK_SUFFIX):
                    path = os.path.join(top, f)
                    try:
                        # A lease's swap takes milliseconds and its holder does not hold the
                        # store lock: only one left far longer than that is a crash's.
                        if leases and os.stat(path).st_mtime > stale_before:
                            continue
                        os.unlink(path)
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed


def _writer_alive(entry: os.DirEntry[str]) -> bool:
    """True if the temp ``STEM[.h-HOST].PID.RAND.tmp`` (see :class:`LocalWriter`) may be a
    running writer's: its process runs on this host (this one: a writer of it still has it
    open), or it was made on another host less than
    :data:`FOREIGN_TEMP_STALE` seconds ago (that host's pids cannot be checked from here)."""
    parts = entry.name.split(".")
    if len(parts) < 4 or not parts[-3].isdigit():
        return False
    if len(parts) >= 5 and parts[-4].startswith("h-") and parts[-4][2:] != _HOST:
        try:
            return entry.stat(follow_symlinks=False).st_mtime > time.time() - FOREIGN_TEMP_STALE
        except FileNotFoundError:
            return False
    pid = int(parts[-3])
    if pid == os.getpid():
        with _OPEN_TEMPS_LOCK:
            return entry.name in _OPEN_TEMPS
    return process_alive(pid)


def _raise_unless_missing(exc: OSError) -> None:
    """``os.walk`` error handler: a folder that vanished is empty; anything else is an error
    (an unreadable folder must not look like one holding nothing)."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _remove_empty_tree(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing but empty folders, else raise IsADirectoryError."""
    for top, _dirs, files in os.walk(folder):
        if files or os.path.islink(top):
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(folder))
    for top, _dirs, _files in os.walk(folder, topdown=False):
        os.rmdir(top)


def _is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)
