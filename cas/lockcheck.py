"""Checking a working tree against its cas.lock, fast: what ``cas-verify-files`` runs.

A commit hook runs on every commit, so the common case (nothing changed) must cost about what
``git status`` costs: stat each locked file, compare with a cache, read nothing. The cache
(``<git dir>/cas/verify-files.cache``, never in the working tree; layout in
``docs/format.md``, "verify-files cache") keeps, like git's index and
:mod:`cas.statcache`:

- the bytes of the cas.lock it was built from, and the list of locked files parsed from it,
  so an unchanged lock is not parsed again (this module then imports only a few built-in
  modules: no msgspec, no dulwich, not even hashlib unless a file must be read);
- per locked file, its stat key (size, mtime ns, inode, ctime ns) and the SHA-256 its bytes
  had. A key that differs in any field means the file is read again. A file whose mtime was
  within ``RACY_MARGIN_NS`` of the moment it was read is not recorded (git's "racily clean"
  rule: a write in the same timestamp tick could keep the mtime).

The cache ends with the CRC-32 of what precedes it (it guards against damage, not against
someone who can write to .git); a damaged, foreign or unreadable cache is ignored and rewritten
(it costs a re-read, never a wrong answer).
"""

from __future__ import annotations

import marshal
import os
import time
import zlib
from pathlib import Path

CACHE_NAME = "cas/verify-files.cache"
#: The shell fast path's record (hooks/cas-verify-files), a file it sources: the paths, and
#: their stat lines.
FAST_SH = "cas/verify-files.sh"
MAGIC = b"CASVFC2\n"
RACY_MARGIN_NS = 1_000_000_000
LOCK_NAME = "cas.lock"

#: ``(display path, root-relative path, size, sha256)`` of one locked file.
Expected = tuple[str, str, int, str]


def find_repo(cwd: Path) -> tuple[Path, Path | None]:
    """``(work tree root, git dir)`` for ``cwd`` without running git: the nearest parent with
    a ``.git`` folder or ``.git`` file (``gitdir: ...``, as worktrees and submodules have).
    Not in a repository: ``(cwd, None)``."""
    here = cwd.absolute()
    for d in (here, *here.parents):
        dot = d / ".git"
        if dot.is_dir():
            return d, dot
        if dot.is_file():
            try:
                text = dot.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                return d, None
            if text.startswith("gitdir:"):
                g = Path(text[len("gitdir:"):].strip())
                return d, (g if g.is_absolute() else d / g)
            return d, None
    return here, None


class Cache:
    """The verify-files cache of one work tree (see the module docstring)."""

    def __init__(self, git_dir: Path | None) -> None:
        self.path = git_dir / CACHE_NAME if git_dir is not None else None
        self.lock_bytes = b""
        self.expected: list[Expected] = []
        self.entries: dict[str, tuple[int, int, int, int, str]] = {}
        self.dirty = False
        if self.path is None:
            return
        try:
            data = self.path.read_bytes()
        except OSError:
            return
        body = data[len(MAGIC):-4]
        if (not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4
                or zlib.crc32(body).to_bytes(4, "little") != data[-4:]):
            return
        try:
            lock_bytes, expected, entries = marshal.loads(body)
            if not (isinstance(lock_bytes, bytes) and isinstance(expected, list)
                    and isinstance(entries, dict)):
                return
        except (ValueError, EOFError, TypeError):
            return
        self.lock_bytes, self.expected, self.entries = lock_bytes, expected, entries

    def save(self) -> None:
        """Write the cache if it changed (temp file and rename; no fsync: losing it costs
        a re-read). A cache that cannot be written is skipped."""
        if self.path is None or not self.dirty:
            return
        body = marshal.dumps((self.lock_bytes, self.expected, self.entries))
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(exist_ok=True)
            tmp.write_bytes(MAGIC + body + zlib.crc32(body).to_bytes(4, "little"))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)


def _expected_from(data: bytes) -> list[Expected]:
    """Parse cas.lock (strictly, with :mod:`cas.codelock`) into the list of locked files."""
    from cas.codelock import decode

    lock = decode(data, LOCK_NAME)
    return [(f"{m.path}/{f.path}", f"{m.path}/{f.path}", f.size, f.sha256)
            for m in sorted(lock.models, key=lambda m: m.path)
            for f in sorted(m.files, key=lambda f: f.path)]


def _sha256_of(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_files(root: Path, git_dir: Path | None, now: float | None = None
                 ) -> tuple[int, list[str]]:
    """Check every file that ``root``/cas.lock records against its size and SHA-256.

    Returns ``(files checked, problems)``: one line per file that is missing, not a regular
    file, of another size or of other content, or one line for a cas.lock that cannot be read
    (its code in brackets). No cas.lock: ``(0, [])``. Never raises for a user's mistake.
    """
    try:
        data = (root / LOCK_NAME).read_bytes()
    except FileNotFoundError:
        return 0, []
    except OSError as exc:
        return 0, [f"{LOCK_NAME}: cannot be read: {exc.strerror} [E_PERM]"]
    cache = Cache(git_dir)
    if data != cache.lock_bytes:
        from cas.errors import CasError

        try:
            cache.expected = _expected_from(data)
        except CasError as exc:
            return 0, [f"{exc.message} [{exc.code}]"]
        cache.lock_bytes = data
        cache.dirty = True
    problems = []
    seen = set()
    for display, rel, size, sha in cache.expected:
        seen.add(rel)
        path = root / rel
        try:
            st = os.stat(path)
        except FileNotFoundError:
            problems.append(f"{display}: missing (run `cas checkout --lock`)")
            continue
        except OSError as exc:
            problems.append(f"{display}: cannot be read: {exc.strerror}")
            continue
        if not (st.st_mode & 0o170000 == 0o100000):
            problems.append(f"{display}: not a regular file")
            continue
        if st.st_size != size:
            hint = " (truncated?)" if st.st_size < size else ""
            problems.append(f"{display}: {st.st_size} bytes, cas.lock records {size}{hint}")
            continue
        key = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        entry = cache.entries.get(rel)
        if entry is not None and entry[:4] == key:
            got = entry[4]
        else:
            started = time.time_ns()
            try:
                got = _sha256_of(path)
            except OSError as exc:
                problems.append(f"{display}: cannot be read: {exc.strerror}")
                continue
            if st.st_mtime_ns + RACY_MARGIN_NS < started:
                cache.entries[rel] = (*key, got)
            else:
                cache.entries.pop(rel, None)
            cache.dirty = True
        if got != sha:
            problems.append(f"{display}: SHA-256 {got[:12]}..., cas.lock records "
                            f"{sha[:12]}... (edited or damaged; `cas checkout --lock` "
                            "restores it)")
    stale = cache.entries.keys() - seen
    if stale:
        for rel in stale:
            del cache.entries[rel]
        cache.dirty = True
    cache.save()
    _fast_path(root, git_dir, [LOCK_NAME, *(rel for _, rel, _, _ in cache.expected)],
               not problems, time.time() if now is None else now)
    return len(cache.expected), problems


def _fast_path(root: Path, git_dir: Path | None, rels: list[str], good: bool,
               now: float) -> None:
    """Write (all files good) or remove the record the shell fast path of
    ``cas-verify-files`` sources: the paths, and the lines GNU ``stat -c '%s %Y %Z %i %n'``
    prints for them. Written only when every time is more than a second old (whole seconds
    can tell nothing newer apart), for a work tree whose git dir is ``.git`` at its root, and
    paths without a newline."""
    if git_dir is None:
        return
    record = git_dir / FAST_SH
    ok = good and git_dir == root / ".git" and not any("\n" in r for r in rels)
    lines = []
    if ok:
        limit = now - 2
        for rel in rels:
            try:
                st = os.stat(root / rel)
            except OSError:
                ok = False
                break
            if st.st_mtime >= limit or st.st_ctime >= limit:
                ok = False
                break
            lines.append(f"{st.st_size} {int(st.st_mtime)} {int(st.st_ctime)} {st.st_ino} {rel}")
    try:
        if not ok:
            record.unlink(missing_ok=True)
            return
        text = ("# cas-verify-files fast path: written by cas-verify-files-full\n"
                f"set -- {' '.join(_sh_quote(r) for r in rels)}\n"
                f"expect={_sh_quote(chr(10).join(lines))}\n")
        try:
            if record.read_text(encoding="utf-8") == text:
                return
        except OSError:
            pass
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, record)
    except OSError:
        pass  # the full check runs next time


def _sh_quote(text: str) -> str:
    """``text`` as one single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"
