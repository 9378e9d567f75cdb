"""Moving registry objects and refs between stores (sync's registry half).

With :mod:`cas.registry` and :mod:`cas.registry_storage`, the only module that imports dulwich.
Registry objects are git objects: each is named by the SHA-1 of its bytes, so a receiver that
stores an object under the id it computes itself cannot be given one object in place of
another. What a hostile sender can still send is well-formed nonsense: an object that does
not parse, a commit whose parents or tree it never sends, a tree that is not the registry's
shape. :func:`store_objects` refuses the first kind (``ShaFile.check``), and
:func:`check_reachable` the second before any ref may name a commit; the registry's readers
refuse the third as they refuse local damage.

Objects are stored dependencies first (an object after every object it names), each durably
before the next: a crash part way leaves only objects whose contents are all here, so a
present commit still means a present history, as in git.

On the wire an object is ``(type number, raw bytes)``: git's loose object content without its
header (``docs/format.md``, "Sync protocol").
"""

from __future__ import annotations

from collections.abc import Iterable

from dulwich.errors import ObjectFormatException
from dulwich.object_store import MissingObjectFinder
from dulwich.objects import Blob, Commit, ShaFile, Tag, Tree

from cas.errors import SchemaError, VerifyError
from cas.ids import is_hex
from cas.registry import Registry

#: Object types a registry holds, by git type number.
TYPES = {Commit.type_num: Commit, Tree.type_num: Tree, Blob.type_num: Blob,
         Tag.type_num: Tag}
#: At most this many objects in one answer (a registry's history is small: a hostile count is
#: refused before it costs memory).
MAX_OBJECTS = 1_000_000
#: Hex digits of a registry object id (git's SHA-1).
SHA_HEX_LEN = 40
#: The largest registry object accepted (manifests are the big ones: a few MB at most).
MAX_OBJECT_BYTES = 64 << 20


def is_sha(sha: bytes) -> bool:
    """True if ``sha`` is a registry object id: 40 lowercase hex characters. Ids from the
    other side are checked with it before dulwich sees them (dulwich takes 20 or 32 bytes as
    a binary id, and fails an assertion on other lengths)."""
    return is_hex(sha.decode("ascii", "replace"), SHA_HEX_LEN)


def has(reg: Registry, sha: bytes) -> bool:
    """True if object ``sha`` is here (False for anything that is not an object id)."""
    if not is_sha(sha):
        return False
    try:
        return sha in reg.repo.object_store
    except (OSError, ValueError):
        return False


def missing_objects(reg: Registry, wants: Iterable[bytes], haves: Iterable[bytes]
                    ) -> list[tuple[int, bytes]]:
    """The objects reachable from ``wants`` and not from ``haves`` (commit ids the other side
    has; unknown ones are ignored), as ``(type number, raw bytes)``, parents before children
    is not promised: a receiver stores them all before it moves a ref.

    Raises:
        VerifyError: a wanted id is not an object id.
        SchemaError: a wanted object or one it reaches is missing or damaged here.
    """
    odb = reg.repo.object_store
    wants = list(wants)
    for sha in wants:
        if not is_sha(sha):
            raise VerifyError(f"asked for registry object {_shown(sha)}, which is not an "
                              "object id")
    haves = [sha for sha in haves if has(reg, sha)]
    try:
        finder = MissingObjectFinder(odb, haves, wants)
        out = []
        for sha, _ in finder:
            obj = odb[sha]
            out.append((obj.type_num, obj.as_raw_string()))
    except (KeyError, ValueError, ObjectFormatException) as exc:
        arg = exc.args[0] if exc.args else ""
        detail = _shown(arg) if isinstance(arg, bytes) else str(exc)
        raise SchemaError(f"registry object missing or damaged while listing what to send: "
                          f"{detail}") from None
    return out


def store_objects(reg: Registry, objects: list[tuple[int, bytes]]) -> list[bytes]:
    """Parse, check and store ``objects`` (each durable, under the id computed from its
    bytes), every object after those of ``objects`` it names; return their ids. Objects
    already held are not written again. Nothing is written unless all of them parse.

    Raises:
        VerifyError: too many, too large, an unknown type, or an object that does not parse
            as its type (the id is named).
    """
    parsed = parse_objects(objects)
    odb = reg.repo.object_store
    for obj in _dependencies_first(parsed):
        if not has(reg, obj.id):
            odb.add_object(obj)
    return [obj.id for obj in parsed]


def parse_objects(objects: list[tuple[int, bytes]]) -> list[ShaFile]:
    """Parse and check ``objects`` (see :func:`store_objects`), storing nothing.

    Raises:
        VerifyError: as :func:`store_objects`.
    """
    if len(objects) > MAX_OBJECTS:
        raise VerifyError(f"the other side sent {len(objects)} registry objects, more than "
                          f"{MAX_OBJECTS}")
    parsed: list[ShaFile] = []
    for type_num, raw in objects:
        kind = TYPES.get(type_num)
        if kind is None:
            raise VerifyError(f"registry object of unknown type {type_num}")
        if len(raw) > MAX_OBJECT_BYTES:
            raise VerifyError(f"registry object of {len(raw)} bytes is larger than "
                              f"{MAX_OBJECT_BYTES}")
        try:
            obj = ShaFile.from_raw_string(type_num, raw)
            obj.check()
        except (ObjectFormatException, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise VerifyError(f"registry object does not parse as a {kind.__name__.lower()}: "
                              f"{exc}") from None
        parsed.append(obj)
    return parsed


def names(obj: ShaFile) -> list[bytes]:
    """The ids of the objects ``obj`` names (a commit's tree and parents, a tree's entries,
    a tag's target)."""
    return _names(obj)


def _names(obj: ShaFile) -> list[bytes]:
    """The ids of the objects ``obj`` names."""
    if isinstance(obj, Commit):
        return [obj.tree, *obj.parents]
    if isinstance(obj, Tree):
        return [item.sha for item in obj.items()]
    if isinstance(obj, Tag):
        return [obj.object[1]]
    return []


def _dependencies_first(objects: list[ShaFile]) -> list[ShaFile]:
    """``objects`` (without repeats) ordered so that each comes after every object of the
    list it names: blobs and subtrees before their trees, trees and parents before their
    commits, targets before their tags. Written in this order, an object that is here has
    everything it names here too, even after a crash part way, so "the tip is here" keeps
    meaning "its history is here" (:mod:`cas.sync` fetches only tips it lacks)."""
    by_id = {obj.id: obj for obj in objects}
    placed: set[bytes] = set()
    out: list[ShaFile] = []
    for root in objects:
        if root.id in placed:
            continue
        placed.add(root.id)
        stack = [(root, iter(_names(root)))]
        while stack:  # depth first, without recursion: histories can be long
            obj, names = stack[-1]
            for sha in names:
                child = by_id.get(sha)
                if child is not None and sha not in placed:
                    placed.add(sha)
                    stack.append((child, iter(_names(child))))
                    break
            else:
                stack.pop()
                out.append(obj)
    return out


def check_reachable(reg: Registry, tip: bytes, known: Iterable[bytes] = ()) -> None:
    """Every object reachable from ``tip`` is here and parses, stopping at commits in
    ``known`` (ones already checked: the current tips' histories).

    Raises:
        VerifyError: naming the first missing or damaged object.
    """
    stop = set(known)
    seen_trees: set[bytes] = set()
    todo = [tip]
    seen: set[bytes] = set()
    while todo:
        sha = todo.pop()
        if sha in seen or sha in stop:
            continue
        seen.add(sha)
        obj = _get(reg, sha)
        if isinstance(obj, Tag):
            todo.append(obj.object[1])
            continue
        if not isinstance(obj, Commit):
            raise VerifyError(f"registry object {sha.decode()} is not a commit")
        todo.extend(obj.parents)
        _check_tree(reg, obj.tree, seen_trees)


def _check_tree(reg: Registry, sha: bytes, seen: set[bytes]) -> None:
    if sha in seen:
        return
    seen.add(sha)
    tree = _get(reg, sha)
    if not isinstance(tree, Tree):
        raise VerifyError(f"registry object {sha.decode()} is not a tree")
    for item in tree.items():
        if item.mode & 0o040000:
            _check_tree(reg, item.sha, seen)
        elif not has(reg, item.sha):
            raise VerifyError(f"registry object {item.sha.decode()} is missing")


def _get(reg: Registry, sha: bytes) -> ShaFile:
    if not is_sha(sha):
        raise VerifyError(f"{_shown(sha)} is not a registry object id")
    try:
        return reg.repo.object_store[sha]
    except (KeyError, ValueError, ObjectFormatException):
        raise VerifyError(f"registry object {sha.decode(errors='replace')} is missing or "
                          "damaged") from None


def _shown(sha: bytes) -> str:
    """An id from the other side, quoted for a message (cut short, never raw bytes)."""
    return repr(sha[:80].decode("ascii", "replace"))


def is_ancestor(reg: Registry, old: bytes, new: bytes, limit: int = 1_000_000) -> bool:
    """True if commit ``old`` is ``new`` or one of its ancestors (all parents followed)."""
    todo, seen = [new], set()
    while todo and len(seen) < limit:
        sha = todo.pop()
        if sha == old:
            return True
        if sha in seen:
            continue
        seen.add(sha)
        obj = reg.repo.object_store[sha] if has(reg, sha) else None
        if isinstance(obj, Commit):
            todo.extend(obj.parents)
    return False


def tag_target(reg: Registry, sha: bytes) -> bytes | None:
    """The commit an annotated tag object points at (None: not a tag of a commit here)."""
    obj = reg.repo.object_store[sha] if has(reg, sha) else None
    if isinstance(obj, Tag) and obj.object[0] is Commit:
        return obj.object[1]
    return None


# -- history surgery for pull --rebase (cas.rebase) -----------------------------------------------


class CommitInfo:
    """What replaying a registry commit needs of it."""

    def __init__(self, sha: bytes, c: Commit) -> None:
        self.sha = sha
        self.parent = c.parents[0] if c.parents else None
        self.tree = c.tree
        self.message = c.message
        self.author = c.author
        self.author_time = c.author_time
        self.author_timezone = c.author_timezone


def commit_info(reg: Registry, sha: bytes) -> CommitInfo:
    obj = _get(reg, sha)
    if not isinstance(obj, Commit):
        raise VerifyError(f"registry object {sha.decode()} is not a commit")
    return CommitInfo(sha, obj)


def first_parents(reg: Registry, tip: bytes, stop: bytes | None) -> list[CommitInfo]:
    """The commits from ``tip`` back along first parents, newest first, until ``stop``
    (excluded; None: the root)."""
    out = []
    sha: bytes | None = tip
    while sha is not None and sha != stop:
        info = commit_info(reg, sha)
        out.append(info)
        sha = info.parent
    if stop is not None and sha != stop:
        raise VerifyError(f"commit {stop.decode()} is not on the history of {tip.decode()}")
    return out


def merge_base(reg: Registry, a: bytes, b: bytes) -> bytes | None:
    """The newest commit on both first-parent histories (None: they share none)."""
    seen = set()
    sha: bytes | None = a
    while sha is not None:
        seen.add(sha)
        sha = commit_info(reg, sha).parent
    sha = b
    while sha is not None:
        if sha in seen:
            return sha
        sha = commit_info(reg, sha).parent
    return None


def tree_versions(reg: Registry, tree: bytes) -> dict[int, bytes]:
    return reg._tree_versions(tree)  # noqa: SLF001 - the registry's one tree reader


def write_commit(reg: Registry, parent: bytes, versions: dict[int, bytes], message: bytes,
                 like: CommitInfo, committer: bytes) -> bytes:
    """A commit on ``parent`` whose tree holds ``versions`` (seq -> manifest blob), with
    ``like``'s author and time and ``message``; stored durably, no ref moved."""
    import time as _time

    tree = reg._tree_with(None, versions)  # noqa: SLF001 - the registry's one tree writer
    c = Commit()
    c.tree = tree.id
    c.parents = [parent]
    c.author = like.author
    c.author_time = like.author_time
    c.author_timezone = like.author_timezone
    c.committer = committer
    c.commit_time = int(_time.time())
    c.commit_timezone = 0
    c.encoding = b"UTF-8"
    c.message = message
    reg._store(c)  # noqa: SLF001
    return c.id


def store_blob(reg: Registry, data: bytes) -> bytes:
    """Store ``data`` as a blob (durably); return its id."""
    b = Blob.from_string(data)
    reg._store(b)  # noqa: SLF001
    return b.id


def retarget_tag(reg: Registry, sha: bytes, commit: bytes) -> bytes:
    """A copy of annotated tag ``sha`` (name, tagger, message) pointing at ``commit``."""
    old = _get(reg, sha)
    if not isinstance(old, Tag):
        raise VerifyError(f"registry object {sha.decode()} is not a tag")
    t = Tag()
    t.tagger = old.tagger
    t.tag_time = old.tag_time
    t.tag_timezone = old.tag_timezone
    t.name = old.name
    t.object = (Commit, commit)
    t.message = old.message
    reg._store(t)  # noqa: SLF001
    return t.id
