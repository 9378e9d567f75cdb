"""What ``add`` takes from a folder: the walk, the ignore rules, and what was left out.

:func:`scan_input` lists the regular files under the path given to ``add``, with their relative
paths validated, before anything is read or written. The rules, in the order they are applied
to each entry of a folder:

* ``.git`` and ``.cas`` folders are skipped, and so is the store itself if it lies inside the
  folder (it changes while it is written).
* Ignore rules, in gitignore syntax (negation with ``!``, folder patterns ending in ``/``,
  anchoring with a leading ``/``, ``**``): first the lines of ``.casignore`` at the top of the
  added folder, then the ``--exclude`` patterns, so a later pattern (the command line) overrides
  an earlier one. A skipped folder is not entered, so, as in git, nothing under it can be
  re-included. ``.casignore`` itself is never registered: it describes the add, not the model.
* Symlinks are followed: a link to a file registers the target's bytes under the link's path,
  a link to a folder registers that folder's files under the link's path (an alias registers
  the same bytes twice, deduplicated in the store). A link that makes a cycle (to a folder that
  is being walked, ``loop -> loop``, ``a -> b -> a``) is refused, naming the link. A dangling
  link is skipped with a ``W_DANGLING_SYMLINK`` warning.
* Anything else that is not a regular file or a folder (FIFO, socket, device) is refused.

What was skipped is summarised per reason (``excluded``, ``ignored``, ``.git``, ``.cas``,
``store``, ``dangling``): a count and the first few paths, a skipped folder counting once.
"""

from __future__ import annotations

import errno
import os
import re
import stat as stat_mod
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec

from cas.errors import ArgsError, CasWarning, NotFoundError, from_os_error
from cas.names import MAX_PATH_LEN, path_key, validate_rel_path

#: The ignore file read at the top of an added folder.
IGNORE_FILE = ".casignore"
MAX_IGNORE_FILE = 1 << 20
#: Paths kept per skip reason in the summary.
EXAMPLES = 5
#: Dangling links named one warning each; the rest are counted in one more warning.
MAX_LINK_WARNINGS = 10

_RESERVED_DIRS = {".git": ".git", ".cas": ".cas"}
#: A path component that :func:`cas.names.validate_rel_path` always accepts (no control
#: character, backslash, colon or leading dot), so that checking it costs one regex match
#: instead of a pass over every character of the whole path.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


class Skipped(msgspec.Struct, frozen=True):
    """Entries ``add`` left out for one reason."""

    #: ``excluded`` (--exclude), ``ignored`` (.casignore), ``.git``, ``.cas``, ``store``
    #: (the store's own folder) or ``dangling`` (a symlink to nothing).
    reason: str
    #: Entries skipped; a folder counts once, whatever it holds.
    count: int
    #: The first few, relative to the added folder; folders end with ``/``.
    paths: list[str]


@dataclass
class Scan:
    """The files an add registers and what it left out."""

    #: The folder the relative paths start from (the parent, for a single file).
    root: Path
    #: ``(relative path, absolute path, stat)``, sorted by relative path.
    files: list[tuple[str, str, os.stat_result]]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[CasWarning] = field(default_factory=list)


class IgnoreRules:
    """``.casignore`` lines then ``--exclude`` patterns, matched as gitignore does."""

    def __init__(self, ignore_lines: Sequence[str], excludes: Sequence[str],
                 source: str = IGNORE_FILE) -> None:
        import pathspec  # only an add with patterns pays for the import

        lines: list[str] = []
        for where, pattern in [*((f"{source} line {i}", line.rstrip("\r"))
                                 for i, line in enumerate(ignore_lines, 1)),
                               *((f"--exclude {p!r}", p) for p in excludes)]:
            if not pattern.strip() or pattern.startswith("#"):
                if where.startswith("--exclude"):
                    raise ArgsError(f"{where}: an empty pattern or a comment excludes nothing")
                continue
            try:
                pathspec.GitIgnoreSpec.from_lines([pattern])
            except (ValueError, re.error) as exc:
                raise ArgsError(f"{where}: not a valid pattern ({exc})") from None
            lines.append(pattern)
        #: Patterns before this index came from the ignore file.
        self._from_file = len(lines) - len(excludes)
        self._spec: Any = pathspec.GitIgnoreSpec.from_lines(lines)

    def reason(self, rel: str, is_dir: bool) -> str | None:
        """``"ignored"`` or ``"excluded"`` if the entry is left out (by the ignore file or by
        ``--exclude``, whichever pattern decided), else None."""
        result = self._spec.check_file(rel + "/" if is_dir else rel)
        if not result.include:
            return None
        return "ignored" if result.index < self._from_file else "excluded"


def read_ignore_file(folder: Path) -> list[str]:
    """The lines of ``folder/.casignore``, or none if there is no such file.

    Raises:
        ArgsError: the file is not UTF-8 text under 1 MiB, or not a regular file.
    """
    path = folder / IGNORE_FILE
    try:
        with open(path, "rb") as f:
            if not stat_mod.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ArgsError(f"{path}: not a regular file")
            data = f.read(MAX_IGNORE_FILE + 1)
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise ArgsError(f"{path}: not a regular file") from None
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    if len(data) > MAX_IGNORE_FILE:
        raise ArgsError(f"{path}: larger than {MAX_IGNORE_FILE >> 20} MiB")
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise ArgsError(f"{path}: not UTF-8 text") from None


class _Skips:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, rel: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES:
            shown.append(rel)

    def summary(self) -> list[Skipped]:
        return [Skipped(r, n, self.examples[r]) for r, n in self.counts.items()]


def _kind(mode: int) -> str:
    for test, name in ((stat_mod.S_ISFIFO, "a FIFO"), (stat_mod.S_ISSOCK, "a socket"),
                       (stat_mod.S_ISCHR, "a character device"),
                       (stat_mod.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _link_target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def scan_input(path: Path, *, store_dir: Path | None = None,
               exclude: Sequence[str] = ()) -> Scan:
    """List the regular files to register under ``path`` (see the module docstring).

    Every relative path is validated and the list is checked for collisions before anything
    is read. A ``path`` inside ``store_dir`` is refused.

    Raises:
        NotFoundError: ``path`` does not exist.
        ArgsError: a special file, a symlink cycle, an unsafe or colliding name, a bad
            pattern, or nothing left to register.
        PermError | DiskError: a folder cannot be listed or an entry cannot be stat'ed.
    """
    try:
        top = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    store_id = None
    if store_dir is not None and store_dir.exists():
        st = os.stat(store_dir)
        store_id = (st.st_dev, st.st_ino)
        real, store_real = path.resolve(), store_dir.resolve()
        if real == store_real or store_real in real.parents:
            raise ArgsError(f"{path}: is inside the store; register files from elsewhere")
    if stat_mod.S_ISREG(top.st_mode):
        rel = path.name
        validate_rel_path(rel, user_input=True)
        if exclude and IgnoreRules([], exclude).reason(rel, False):
            raise ArgsError(f"{path}: excluded by --exclude; nothing to register")
        return Scan(path.parent, [(rel, str(path.absolute()), top)])
    if not stat_mod.S_ISDIR(top.st_mode):
        raise ArgsError(f"{path}: {_kind(top.st_mode)}, not a regular file or directory")
    lines = read_ignore_file(path)
    rules = IgnoreRules(lines, exclude) if lines or exclude else None
    skips = _Skips()
    warnings: list[CasWarning] = []
    dangling = 0
    found: list[tuple[str, str, os.stat_result]] = []
    # Depth-first, each folder with the identities of the folders above it: a folder whose
    # identity is among them is reached again through a symlink, which would never end.
    # Walking every alias separately (rather than each folder once) is what lets a link to a
    # sibling folder register its files under the link's path.
    todo: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (str(path.absolute()), "", frozenset({(top.st_dev, top.st_ino)}))]
    # Bound once: this loop runs for every entry of the tree.
    plain, is_reg, keep = _PLAIN.match, stat_mod.S_ISREG, found.append
    while todo:
        folder, prefix, above = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise from_os_error(exc, f"listing {folder}") from None
        # Names that would collide on a case-insensitive filesystem meet in one folder (their
        # parents are otherwise different), so checking each folder's names is the whole of
        # cas.names.check_unique_paths for a walked tree, in one pass.
        folded: dict[str, str] = {}
        for e in entries:
            name = e.name
            rel = prefix + name
            if not prefix and name == IGNORE_FILE:
                continue
            if rules is not None or name in _RESERVED_DIRS:
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False  # an unreadable link: the stat below says why
                if name in _RESERVED_DIRS:  # a folder, or a worktree's or submodule's .git file
                    skips.add(_RESERVED_DIRS[name], rel + "/" if is_dir else rel)
                    continue
                why = rules.reason(rel, is_dir) if rules is not None else None
                if why is not None:
                    skips.add(why, rel + "/" if is_dir else rel)
                    continue
            if plain(name) is None or len(rel) > MAX_PATH_LEN:
                validate_rel_path(rel, user_input=True)
            try:
                st = e.stat()  # follows symlinks
            except OSError as exc:
                shown = os.path.join(path, rel)
                if not e.is_symlink():
                    raise from_os_error(exc, f"reading {shown}") from None
                if exc.errno == errno.ELOOP:
                    raise ArgsError(f"{shown}: symlink loop (-> {_link_target(e.path)}); "
                                    f"leave it out with --exclude {rel!r}") from None
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    raise from_os_error(exc, f"following the symlink {shown}") from None
                skips.add("dangling", rel)
                dangling += 1
                if dangling <= MAX_LINK_WARNINGS:
                    warnings.append(CasWarning(
                        "W_DANGLING_SYMLINK",
                        f"{shown}: dangling symlink (-> {_link_target(e.path)}); skipped"))
                continue
            other = folded.setdefault(path_key(name), name)
            if other is not name:
                first, second = sorted((prefix + other, rel))
                raise ArgsError(f"file paths {first!r} and {second!r} differ only in case or "
                                "Unicode normalisation")
            if is_reg(st.st_mode):
                keep((rel, e.path, st))
                continue
            shown = os.path.join(path, rel)
            if stat_mod.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident == store_id:
                    skips.add("store", rel + "/")
                    continue
                if ident in above:
                    raise ArgsError(
                        f"{shown}: symlink to a folder that contains it "
                        f"(-> {_link_target(e.path)}), a cycle; leave it out with "
                        f"--exclude {rel!r}")
                todo.append((e.path, rel + "/", above | {ident}))
            else:
                raise ArgsError(f"{shown}: {_kind(st.st_mode)}, not a regular file; "
                                f"leave it out with --exclude {rel!r}")
    if dangling > MAX_LINK_WARNINGS:
        warnings.append(CasWarning(
            "W_DANGLING_SYMLINK",
            f"{dangling - MAX_LINK_WARNINGS} more dangling symlinks skipped"))
    if not found:
        left_out = sum(skips.counts.values())
        raise ArgsError(f"{path}: directory holds no files"
                        + (f" ({left_out} entries skipped)" if left_out else ""))
    found.sort(key=itemgetter(0))
    return Scan(path.absolute(), found, skips.summary(), warnings)
