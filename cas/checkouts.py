"""Checkout destinations: the records of where cas checked versions out, and how a checkout
walks a destination without ever following a symlink out of it.

Records
-------

cas writes nothing into a checkout's destination but the version's files. To recognise its own
checkouts (``checkout --clean`` deletes what is not in the version only where cas wrote), it
keeps one record per destination in the store, never in the destination:
``<store>/checkouts/<key>.json``, where ``key`` is the BLAKE3 (64 hex) of the destination's real
path (symlinks resolved, in the filesystem encoding). The record also holds the destination
directory's device and inode: a folder deleted and made again by someone else at the same path
is not taken for the one cas wrote.

A checkout writes its record twice: state ``writing`` before it changes anything in the
destination, state ``complete`` once every file is durable under its final name. Each write is
atomic (temp ``<key>.json.<pid>.<rand>.tmp`` in ``checkouts/`` itself, fsync, rename over the
record, fsync of ``checkouts/``): readers take no lock and see the old record or the new one.
The temps live in ``checkouts/`` and not in ``<store>/tmp/``, which writers empty under the
store lock that checkout does not take. Temps whose process is gone are removed by the next
record write. ``docs/format.md`` ("Checkout records") has the fields and the crash table.

Destinations
------------
:class:`DestTree` opens every folder under a destination with ``O_NOFOLLOW`` relative to its
parent's descriptor, so every create, rename and delete happens relative to a folder
descriptor and no path through a symlink is ever taken; it remembers each folder's identity to
notice one that was swapped while the checkout ran. :func:`scan_dest` walks a destination the
same way: it removes the temps of killed checkouts (``.NAME.PID.RAND.cas-tmp`` whose process is
gone, or the pid-less ``.NAME.RAND.cas-tmp`` of older cas; never a running checkout's, never
any other file) and lists what is not in the version, which :func:`remove_extras` deletes for
``checkout --clean``. The walk never leaves the destination's filesystem (a mount point
inside it is neither entered nor deleted) and skips what it cannot read.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_mod
from collections.abc import Iterator
from pathlib import Path

import msgspec

from cas.clock import iso_utc
from cas.errors import ArgsError, CasWarning, ConflictError, SchemaError, from_os_error
from cas.fsutil import atomic_write, fsync_dir

SCHEMA = "cas.checkout"
VERSION = 1
DIRNAME = "checkouts"
STATE_WRITING = "writing"
STATE_COMPLETE = "complete"

#: Most folder descriptors kept open at once (more are reopened, checked, as needed).
MAX_OPEN_DIRS = 256
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
_TEMP = re.compile(r"\..+?\.(?:(\d+)\.)?[0-9a-f]{8}\.cas-tmp", re.DOTALL)
_TEMP_STEM_BYTES = 180
_RECORD = re.compile(r"[0-9a-f]{64}\.json")
_RECORD_TMP = re.compile(r"[0-9a-f]{64}\.json\.(\d+)\.[0-9a-f]{8}\.tmp")


class CheckoutRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One destination cas checked a version out into (the JSON record, field for field)."""

    schema: str = SCHEMA
    version: int = VERSION
    #: Real path of the destination (symlinks resolved).
    dest: str
    #: Device and inode of the destination directory when the record was written.
    dest_dev: int
    dest_ino: int
    name: str
    seq: int
    commit: str
    #: ``writing`` while the checkout runs (or if it was killed), then ``complete``.
    state: str
    started_at: str
    finished_at: str | None = None
    #: The ``--include`` globs, empty for a whole version.
    include: list[str] = []
    #: Manifest paths of the files the checkout writes (all of them, or the included ones).
    files: list[str] = []
    #: ``path -> [inode, size, mtime_ns]`` of up to ``STAMPS`` of the files as written (in the
    #: ``complete`` record): a folder made again at the same path can get the old folder's
    #: inode back, but not the same files.
    stamps: dict[str, list[int]] = {}


class CheckoutRow(msgspec.Struct, frozen=True):
    """A record as ``cas checkouts`` shows it."""

    dest: str
    name: str
    seq: int
    commit: str
    state: str
    time: str
    files: int
    include: list[str]
    #: The destination still exists and is the directory the record names.
    present: bool


class CheckoutList(msgspec.Struct):
    """What ``cas checkouts`` lists: the readable records, and a warning per damaged one."""

    checkouts: list[CheckoutRow]
    warnings: list[CasWarning] = []


def now() -> str:
    """The current time as records hold it."""
    return iso_utc()


def shown(path: str | Path) -> str:
    """``path`` as text for messages and JSON: bytes that are not UTF-8 (which the OS hands
    over as surrogates) written as ``\\xNN``."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def dest_key(real_dest: str) -> str:
    """The record key of a destination: BLAKE3 hex of its real path."""
    import blake3

    return blake3.blake3(os.fsencode(real_dest)).hexdigest()


def record_path(store_path: Path, real_dest: str) -> Path:
    """Where the record of ``real_dest`` lives in the store (whether or not it exists)."""
    return store_path / DIRNAME / f"{dest_key(real_dest)}.json"


def decode(data: bytes, where: str) -> CheckoutRecord:
    """Parse a record.

    Raises:
        SchemaError: not a checkout record, an unknown version, or malformed fields.
    """
    try:
        rec = msgspec.json.decode(data, type=CheckoutRecord)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SchemaError(f"checkout record {where}: {exc}") from None
    if rec.schema != SCHEMA or rec.version != VERSION:
        raise SchemaError(f"checkout record {where}: schema {rec.schema!r} version "
                          f"{rec.version} is not {SCHEMA!r} version {VERSION}")
    if rec.state not in (STATE_WRITING, STATE_COMPLETE):
        raise SchemaError(f"checkout record {where}: unknown state {rec.state!r}")
    if "\x00" in rec.dest or not os.path.isabs(rec.dest):
        raise SchemaError(f"checkout record {where}: dest {rec.dest!r} is not an absolute path")
    return rec


def load(store_path: Path, real_dest: str) -> CheckoutRecord | None:
    """The record of ``real_dest``, or None if cas never checked out there.

    Raises:
        SchemaError: the record exists but is damaged or of an unknown version.
    """
    path = record_path(store_path, real_dest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise from_os_error(exc, f"reading checkout record {path}") from None
    rec = decode(data, str(path))
    if rec.dest != real_dest:
        raise SchemaError(f"checkout record {path} names {rec.dest!r}, not {real_dest!r}")
    return rec


#: Files whose identity a complete record keeps.
STAMPS = 16


def stamp(tree: DestTree, path: str) -> list[int] | None:
    """``[inode, size, mtime_ns]`` of file ``path`` under the destination, or None."""
    rel_dir, _, name = path.rpartition("/")
    try:
        st = os.stat(name, dir_fd=tree.fd(rel_dir), follow_symlinks=False)
    except (OSError, ConflictError):
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def stamps(tree: DestTree, paths: list[str]) -> dict[str, list[int]]:
    """The :func:`stamp` of the first ``STAMPS`` of ``paths`` (by path) that exist."""
    out = {}
    for path in sorted(paths)[:STAMPS]:
        got = stamp(tree, path)
        if got is not None:
            out[path] = got
    return out


def owns(record: CheckoutRecord | None, tree: DestTree) -> bool:
    """True if ``record`` says cas wrote into the destination ``tree`` has open: the same
    directory (device and inode) still holding at least one file exactly as cas wrote it.
    A directory deleted and made again often gets its old inode number back; its files do not
    come back with their inode, size and mtime."""
    if record is None or (record.dest_dev, record.dest_ino) != tree.ids[""]:
        return False
    return any(stamp(tree, path) == want for path, want in record.stamps.items())


def save(store_path: Path, record: CheckoutRecord) -> None:
    """Write ``record`` atomically and durably (see the module docstring).

    Raises:
        ArgsError: the destination's path is not valid UTF-8 (JSON cannot hold it).
        DiskError | PermError: the store cannot be written; the old record is unchanged.
    """
    try:
        data = msgspec.json.encode(record)
    except UnicodeEncodeError:
        raise ArgsError(f"{record.dest!r} is not valid UTF-8, which a record cannot "
                        "hold") from None
    folder = store_path / DIRNAME
    try:
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            fsync_dir(store_path)
        clean_stale_temps(folder)
    except OSError as exc:
        raise from_os_error(exc, f"creating {folder}") from None
    atomic_write(record_path(store_path, record.dest), data, folder)


def clean_stale_temps(folder: Path) -> int:
    """Remove record temps whose writing process is gone; returns how many."""
    removed = 0
    for name in os.listdir(folder):
        m = _RECORD_TMP.fullmatch(name)
        if m and not pid_alive(int(m.group(1))):
            try:
                os.unlink(folder / name)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists on this host (ours counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:
        return False
    return True


def list_checkouts(store_path: Path) -> CheckoutList:
    """Every record, newest first; a damaged record is skipped with a ``W_BAD_RECORD``
    warning that names it."""
    folder = store_path / DIRNAME
    try:
        names = sorted(n for n in os.listdir(folder) if _RECORD.fullmatch(n))
    except FileNotFoundError:
        return CheckoutList([])
    except OSError as exc:
        raise from_os_error(exc, f"listing {folder}") from None
    rows: list[CheckoutRow] = []
    warnings: list[CasWarning] = []
    for name in names:
        try:
            rec = decode((folder / name).read_bytes(), str(folder / name))
        except FileNotFoundError:
            continue  # replaced or removed while we listed
        except SchemaError as exc:
            warnings.append(CasWarning(code="W_BAD_RECORD", message=exc.message))
            continue
        except OSError as exc:
            warnings.append(CasWarning(code="W_BAD_RECORD",
                                       message=f"{folder / name}: {exc.strerror or exc}"))
            continue
        try:
            st = os.stat(rec.dest)
            present = (rec.dest_dev, rec.dest_ino) == (st.st_dev, st.st_ino)
        except (OSError, ValueError):  # ValueError: a path the OS cannot take
            present = False
        rows.append(CheckoutRow(rec.dest, rec.name, rec.seq, rec.commit, rec.state,
                                rec.finished_at or rec.started_at, len(rec.files),
                                rec.include, present))
    rows.sort(key=lambda r: r.time, reverse=True)
    return CheckoutList(rows, warnings)


# -- the destination -----------------------------------------------------------------------


def join(rel: str, name: str) -> str:
    """The manifest path of ``name`` in folder ``rel`` ("" is the destination)."""
    return f"{rel}/{name}" if rel else name


def temp_name(final_name: str) -> str:
    """The temp name of a file being written: ``.NAME.PID.RAND.cas-tmp`` (NAME shortened so
    that the temp stays within file-name limits)."""
    stem = final_name
    while len(os.fsencode(stem)) > _TEMP_STEM_BYTES:
        stem = stem[: len(stem) * 3 // 4]
    return f".{stem}.{os.getpid()}.{os.urandom(4).hex()}.cas-tmp"


def is_stale_temp(name: str) -> bool | None:
    """None if ``name`` is not a checkout temp; else whether its checkout is gone (its pid is
    not running, or the name is of the pid-less kind older cas wrote)."""
    m = _TEMP.fullmatch(name)
    if m is None:
        return None
    return m.group(1) is None or not pid_alive(int(m.group(1)))


def make_dest(dest: Path) -> list[Path]:
    """Create ``dest`` and missing parents; return the folders whose entries changed (to be
    fsynced once the checkout is done).

    Raises:
        ArgsError: ``dest`` exists and is not a directory.
        DiskError | PermError: it cannot be created.
    """
    if os.path.lexists(dest) and not dest.is_dir():
        raise ArgsError(f"{shown(dest)}: exists and is not a directory")
    missing = []
    p = dest
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, f"creating {shown(dest)}") from None
    return [m.parent for m in missing]


def _ancestors(path: str) -> Iterator[os.stat_result]:
    """The stat of ``path`` and of each folder above it, the missing ones skipped."""
    while True:
        try:
            yield os.stat(path)
        except OSError:
            pass
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def refuse_store(store_path: Path, dest: Path) -> None:
    """Refuse a destination that is the store, lies inside it or holds it (by folder
    identity, so another path to the same folder is refused too): a checkout there would
    write into the store, and ``--clean`` delete it.

    Raises:
        ArgsError: the destination is, is inside, or holds the store.
    """
    try:
        st = os.stat(store_path)
    except OSError:
        return
    store_id = (st.st_dev, st.st_ino)
    real_dest = os.path.realpath(dest)
    above = [(a.st_dev, a.st_ino) for a in _ancestors(real_dest)]
    if store_id in above:
        where = "is" if above[0] == store_id and os.path.lexists(real_dest) else "is inside"
    else:
        try:
            d = os.stat(real_dest)
        except OSError:
            return
        if not any((a.st_dev, a.st_ino) == (d.st_dev, d.st_ino)
                   for a in _ancestors(os.path.realpath(store_path))):
            return
        where = "holds"
    raise ArgsError(f"{shown(dest)} {where} the store {shown(store_path)}: "
                    "a checkout there would write into it (and --clean delete it); choose "
                    "another folder")


class DestTree:
    """Folder descriptors under the destination, each opened with ``O_NOFOLLOW`` from its
    parent's descriptor, so no path through a symlink is ever taken. The identity (device,
    inode) of every folder opened is kept: reopening one that was replaced meanwhile, or the
    final check, raises ``ConflictError``."""

    def __init__(self, root_fd: int, dest: Path) -> None:
        st = os.fstat(root_fd)
        self.root_fd = root_fd
        self.dest = dest
        self.fds: dict[str, int] = {}
        self.ids: dict[str, tuple[int, int]] = {"": (st.st_dev, st.st_ino)}
        self.created: set[str] = set()
        self.changed: set[str] = set()
        #: Manifest paths renamed into place by this checkout, in order.
        self.written: list[str] = []

    def fd(self, rel: str, *, create: bool = False) -> int:
        """The descriptor of folder ``rel`` ("" is the destination); made if ``create``.

        Raises:
            ConflictError: ``rel`` (or a folder above it) is not a plain folder, or is not the
                folder this checkout opened under that name before.
            FileNotFoundError: it does not exist and not ``create``.
        """
        if not rel:
            return self.root_fd
        fd = self.fds.pop(rel, None)
        if fd is not None:
            self.fds[rel] = fd  # most recently used last
            return fd
        parent, _, name = rel.rpartition("/")
        pfd = self.fd(parent, create=create)
        try:
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o777, dir_fd=pfd)
                self.created.add(rel)
                self.changed.add(parent)
                fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ConflictError(f"{self.dest / rel}: exists and is not a plain directory"
                                    " (a symlink or a file)") from None
            raise
        st = os.fstat(fd)
        if self.ids.setdefault(rel, (st.st_dev, st.st_ino)) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise ConflictError(f"{self.dest / rel}: replaced by another folder while "
                                "checkout ran")
        self.fds[rel] = fd
        while len(self.fds) > MAX_OPEN_DIRS:
            oldest = next(iter(self.fds))
            os.close(self.fds.pop(oldest))
        return fd

    def forget(self, rel: str) -> None:
        """Drop a folder that was removed."""
        fd = self.fds.pop(rel, None)
        if fd is not None:
            os.close(fd)
        self.ids.pop(rel, None)

    def check_unchanged(self) -> None:
        """Raise ConflictError if a folder this checkout wrote in was moved or replaced (for
        example swapped for a symlink): its files are then not where DEST says."""
        for rel in sorted(self.ids, key=lambda r: r.count("/")):
            if not rel:
                continue
            parent, _, name = rel.rpartition("/")
            try:
                st = os.stat(name, dir_fd=self.fd(parent), follow_symlinks=False)
                same = (st.st_dev, st.st_ino) == self.ids[rel]
            except FileNotFoundError:
                same = False
            if not same:
                raise ConflictError(f"{self.dest / rel}: moved or replaced while checkout "
                                    "ran; run the checkout again")

    def sync(self) -> None:
        """fsync every folder whose entries this checkout changed."""
        for rel in sorted(self.changed):
            os.fsync(self.fd(rel))

    def close(self) -> None:
        """Close every folder descriptor this tree opened (not the destination's own)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


#: Why :func:`scan_dest` skipped a folder: another filesystem (or a mount point), or no
#: permission to read it.
SKIP_MOUNT = "mount"
SKIP_UNREADABLE = "unreadable"


class Scan(msgspec.Struct):
    """What :func:`scan_dest` found in a destination."""

    #: Version paths that exist (whatever they are), and version folders that are not one.
    present: set[str] = set()
    #: Entries not in the version: (path, is a folder), parents before children.
    extras: list[tuple[str, bool]] = []
    stale: int = 0
    #: Every regular file found (temps aside), in the version or not.
    files: set[str] = set()
    #: Folders not entered, never deleted: (path, ``SKIP_MOUNT`` or ``SKIP_UNREADABLE``).
    skipped: list[tuple[str, str]] = []


def mount_points(real_dest: str) -> set[str]:
    """The paths, relative to ``real_dest``, where something is mounted below it (another
    filesystem, or a bind mount of the same one, which has the same device number), from
    ``/proc/self/mountinfo``; empty where there is no such file."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            data = f.read()
    except OSError:
        return set()
    prefix = os.fsencode(real_dest).rstrip(b"/") + b"/"
    out = set()
    for line in data.splitlines():
        fields = line.split(b" ")
        if len(fields) > 4 and fields[4].startswith(prefix):
            point = _MOUNT_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
            out.add(os.fsdecode(point[len(prefix):]))
    return out


#: Names a version can never hold (see cas.names.validate_rel_path), which a checkout therefore
#: never lists as extra nor deletes.
KEPT_NAMES = frozenset({".git", ".cas"})
_MOUNT_ESCAPE = re.compile(rb"\\([0-7]{3})")


def scan_dest(tree: DestTree, files: set[str], dirs: set[str],
              mounts: set[str] | frozenset[str] = frozenset()) -> Scan:
    """Walk the destination without following symlinks: remove temps of killed checkouts,
    find which version paths exist and which entries are not in the version (``extras``).

    The walk stays on the destination's filesystem: a folder on another device, or one of
    ``mounts`` (see :func:`mount_points`), is neither entered nor listed as extra (so never
    deleted), and neither is a folder that cannot be read; both go to ``skipped``. Entries
    named in ``KEPT_NAMES`` (``.git``, ``.cas``: no version can hold them) are ignored
    whatever the flags, so ``--force --clean`` in a git working tree keeps its repository."""
    scan = Scan(set(), [], 0, set(), [])
    root_dev = tree.ids[""][0]

    def walk(fd: int, rel: str, inside_extra: bool) -> None:
        with os.scandir(fd) as it:
            entries = list(it)
        for e in entries:
            if e.name in KEPT_NAMES:
                continue  # a repository's own data: never extra, never deleted
            stale = is_stale_temp(e.name)
            if stale is not None and not e.is_dir(follow_symlinks=False):
                if stale:
                    try:
                        os.unlink(e.name, dir_fd=fd)
                        scan.stale += 1
                        tree.changed.add(rel)
                    except FileNotFoundError:
                        pass
                continue
            path = join(rel, e.name)
            if path in mounts:
                scan.skipped.append((path, SKIP_MOUNT))
                continue
            is_dir = e.is_dir(follow_symlinks=False)
            sub = None
            if is_dir:
                try:
                    sub = os.open(e.name, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        continue  # swapped meanwhile: not followed
                    if exc.errno in (errno.EACCES, errno.EPERM):
                        scan.skipped.append((path, SKIP_UNREADABLE))
                        continue
                    raise
                if os.fstat(sub).st_dev != root_dev:
                    os.close(sub)
                    scan.skipped.append((path, SKIP_MOUNT))
                    continue
            elif e.is_file(follow_symlinks=False):
                scan.files.add(path)
            if inside_extra:
                extra = True
            elif path in files:
                scan.present.add(path)
                extra = not e.is_file(follow_symlinks=False)
            elif path in dirs:
                extra = not is_dir
                if extra:
                    scan.present.add(path)
            else:
                extra = True
            if extra:
                scan.extras.append((path, is_dir))
            if sub is not None:
                try:
                    walk(sub, path, extra)
                finally:
                    os.close(sub)

    walk(tree.root_fd, "", False)
    return scan


def probe(tree: DestTree, scan: Scan, paths: list[str]) -> None:
    """Add to ``scan`` which of ``paths`` (files to write) exist inside folders the walk
    skipped (another filesystem), looked up one by one rather than walked.

    Raises:
        ConflictError: a folder on the way is a symlink or a file.
        OSError: a folder on the way cannot be opened (EACCES).
    """
    skipped = [p + "/" for p, _why in scan.skipped]
    for path in paths:
        if not any(path.startswith(s) for s in skipped):
            continue
        rel_dir, _, name = path.rpartition("/")
        try:
            st = os.stat(name, dir_fd=tree.fd(rel_dir), follow_symlinks=False)
        except FileNotFoundError:
            continue
        scan.present.add(path)
        if stat_mod.S_ISREG(st.st_mode):
            scan.files.add(path)


class Extras(msgspec.Struct):
    """How a checkout treats the entries of DEST that are not in the version."""

    #: Extra files cas wrote: listed in the record that owns DEST, and still regular files.
    mine: list[str]
    #: Extra files (and symlinks, and anything else but folders) cas did not write.
    foreign: list[str]
    #: What ``--clean`` deletes, parents before children: with ``force`` every extra entry;
    #: else ``mine`` and the extra folders that hold one of them (removed once empty).
    remove: list[tuple[str, bool]]
    #: Files cas wrote before that stay in DEST (the new record keeps listing them).
    kept: set[str]


def sort_extras(scan: Scan, owned_files: set[str], *, clean: bool, force: bool) -> Extras:
    """Tell the extra entries cas wrote (``owned_files``: the ``files`` of the record that
    owns DEST, empty if none does) from the others, and decide what ``clean`` deletes."""
    mine: list[str] = []
    foreign: list[str] = []
    for path, is_dir in scan.extras:
        if not is_dir:
            (mine if path in owned_files and path in scan.files else foreign).append(path)
    remove: list[tuple[str, bool]] = []
    if clean and force:
        remove = list(scan.extras)
    elif clean:
        holders: set[str] = set()
        for path in mine:
            parent = path.rpartition("/")[0]
            while parent and parent not in holders:
                holders.add(parent)
                parent = parent.rpartition("/")[0]
        chosen = set(mine)
        remove = [(p, d) for p, d in scan.extras if (p in holders if d else p in chosen)]
    removed = {p for p, d in remove if not d}
    kept = {p for p in owned_files if p in scan.files and p not in removed}
    return Extras(mine, foreign, remove, kept)


def blocked(scan: Scan, paths: list[str], remove: list[tuple[str, bool]]) -> str | None:
    """Why one of ``paths`` (files to write) cannot be written once ``remove`` is deleted: a
    folder where the file goes, or something that is not a folder where one of its folders
    goes; None if nothing stands in the way. Finding it before anything is written keeps a
    checkout that would fail from changing DEST or its record."""
    if not scan.extras:
        return None
    kinds = dict(scan.extras)
    for p, _d in remove:
        kinds.pop(p, None)
    for path in paths:
        if kinds.get(path) is True:
            return f"{path} is a directory"
        parent = path.rpartition("/")[0]
        while parent:
            if kinds.get(parent) is False:
                return f"{parent}: exists and is not a plain directory (a symlink or a file)"
            parent = parent.rpartition("/")[0]
    return None


def writing_stamps(previous: CheckoutRecord | None, tree: DestTree, kept: set[str],
                   touched: set[str]) -> dict[str, list[int]]:
    """Stamps for the ``writing`` record of a checkout into a destination whose record
    ``previous`` owns it (None if none does): the previous stamps that still match, then
    files cas wrote before that this checkout leaves alone (``kept`` minus ``touched``), up
    to ``STAMPS``. They keep DEST owned if the checkout fails or is killed."""
    out: dict[str, list[int]] = {}
    if previous is not None:
        for path, want in previous.stamps.items():
            if path in kept and stamp(tree, path) == want:
                out[path] = want
    for path in sorted(kept - touched - out.keys()):
        if len(out) >= STAMPS:
            break
        got = stamp(tree, path)
        if got is not None:
            out[path] = got
    return out


def remove_extras(tree: DestTree, extras: list[tuple[str, bool]]) -> tuple[int, int]:
    """Remove ``extras`` children first, through folder descriptors; a symlink is removed as
    a link. Entries that changed meanwhile are left. Returns (files removed, folders removed)."""
    files = dirs = 0
    for path, is_dir in reversed(extras):
        parent, _, name = path.rpartition("/")
        try:
            pfd = tree.fd(parent)
        except (FileNotFoundError, ConflictError):
            continue
        try:
            if is_dir:
                tree.forget(path)
                try:
                    os.rmdir(name, dir_fd=pfd)
                    tree.changed.discard(path)
                    dirs += 1
                except NotADirectoryError:  # swapped for a symlink meanwhile: remove the link
                    os.unlink(name, dir_fd=pfd)
                    files += 1
            else:
                os.unlink(name, dir_fd=pfd)
                files += 1
            tree.changed.add(parent)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR,
                             errno.ENOTDIR, errno.EPERM, errno.EBUSY):
                continue  # changed under us, or holds a running checkout's temp
            raise
    return files, dirs
