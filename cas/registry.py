"""The registry: a bare git repository of manifests, written with dulwich.

With its storage adapter (:mod:`cas.registry_storage`), the only module that imports
dulwich. Layout (see ``docs/format.md``):

- a model ``NAME`` is the ref ``refs/models/NAME``;
- the tree of that ref's tip holds ``versions/<seq:06d>.json`` for every live version, so the
  tip alone tells which versions exist (gc and retention read only tips);
- every change is one commit on the model's first-parent chain, with trailers saying what it
  did: ``add`` adds one manifest file, ``rm`` deletes one or more (removing every version
  leaves the ref with an empty tree, so the history stays reachable and sequence numbers are
  never reused), ``restore`` puts removed manifests back, ``annotate`` replaces one manifest
  with the same files and new metadata;
- a tag ``T`` on ``NAME@V`` is an annotated git tag ``refs/tags/NAME@T`` pointing at the commit
  that added the version (``@`` cannot occur in names, so tags never collide with models); the
  tags ``rm --force`` deletes are recorded in its commit, and ``restore`` recreates them.

Plain ``git log refs/models/NAME``, ``git show`` and ``git fsck`` work on it. Callers hold the
store write lock for every mutation; refs are still moved with compare-and-swap so that a
concurrent writer that bypassed the lock cannot be silently overwritten.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from dulwich.errors import NotGitRepository, NotTreeError, ObjectFormatException
from dulwich.objects import Blob, Commit, ShaFile, Tag, Tree
from dulwich.repo import Repo

from cas.clock import iso_utc
from cas.errors import (
    ArgsError,
    CasError,
    CasWarning,
    ConflictError,
    LockError,
    NotFoundError,
    SchemaError,
    from_os_error,
)
from cas.commits import (
    commit_message,
    parse_trailers,
    resolve_identity,
    versions_text,
)
from cas.names import VersionSpec, validate_model_name, validate_tag
from cas.versions import HistoryEntry, ModelState, RemovedVersion, Version, is_version_id

if TYPE_CHECKING:
    from cas.storage import Backend

MODEL_REF_PREFIX = b"refs/models/"
TAG_REF_PREFIX = b"refs/tags/"
PIN_REF_PREFIX = b"refs/pins/"
VERSIONS_DIR = b"versions"


def version_path(seq: int) -> bytes:
    return VERSIONS_DIR + b"/" + f"{seq:06d}.json".encode()


def model_ref(name: str) -> bytes:
    return MODEL_REF_PREFIX + name.encode()


def tag_ref(name: str, tag: str) -> bytes:
    return TAG_REF_PREFIX + f"{name}@{tag}".encode()


def pin_ref(scope: str, name: str, version_id: str) -> bytes:
    """The ref of the pin of version ``version_id`` of ``name`` for ``scope`` (a store UUID,
    or ``all``): see :mod:`cas.pins`."""
    return PIN_REF_PREFIX + f"{scope}/{name}@{version_id}".encode()


class Registry:
    """Read and write model refs, versions and tags in a bare git repository."""

    def __init__(self, path: Path, backend: Backend | None = None, folder: str = "registry"
                 ) -> None:
        """Open the registry at ``path``; with ``backend`` (whose ``folder`` is ``path``),
        loose objects and refs are read and written through it (:mod:`cas.registry_storage`)."""
        self.path = path
        #: Objects this process wrote, by id: read back from memory (once a ref names one,
        #: the command has committed, and a failing read must not turn that into an error).
        self._written: dict[bytes, ShaFile] = {}
        try:
            self.repo = Repo(str(path))
        except (NotGitRepository, OSError) as exc:
            raise NotFoundError(f"registry at {path} cannot be opened: {exc}") from None
        if backend is not None:
            from cas.registry_storage import BackendObjectStore, BackendRefsContainer

            self.repo.object_store.close()
            self.repo.object_store = BackendObjectStore(
                str(path / "objects"), backend, f"{folder}/objects")
            self.repo.refs = BackendRefsContainer(str(path), backend, folder)
        else:
            # Objects must be durable before a ref names them. Set here rather than in the
            # repo config, where git itself warns that core.fsyncObjectFiles is deprecated.
            self.repo.object_store.fsync_object_files = True

    @classmethod
    def init(cls, path: Path, backend: Backend | None = None, folder: str = "registry"
             ) -> Registry:
        path.mkdir(parents=True, exist_ok=True)
        Repo.init_bare(str(path)).close()
        return cls(path, backend, folder)

    def close(self) -> None:
        self.repo.close()

    # -- reading ---------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        """Every model with a ref, including those whose every version was removed (their ref
        remains, with an empty tree, so that history and sequence numbers survive)."""
        keys = self.repo.refs.keys(base=MODEL_REF_PREFIX.rstrip(b"/"))
        return sorted(k.decode() for k in keys)

    def head(self, name: str) -> bytes | None:
        try:
            return self.repo.refs[model_ref(name)]
        except KeyError:
            return None

    def find_case_clash(self, name: str) -> str | None:
        """An existing model whose name equals ``name`` up to case, or None. Refs are files,
        and such names collide on case-insensitive filesystems (macOS, Windows, SMB)."""
        key = name.casefold()
        for other in self.model_names():
            if other != name and other.casefold() == key:
                return other
        return None

    def _object(self, sha: bytes, kind: type[ShaFile], what: str) -> Any:
        """The registry object ``sha``, which must be a ``kind``.

        Raises:
            SchemaError: it is missing, unreadable or of another kind (named in the message).
        """
        obj = self._written.get(sha)
        try:
            if obj is None:
                obj = self.repo[sha]
        except (KeyError, ValueError, zlib.error, ObjectFormatException):
            raise SchemaError(f"registry {what} {sha.decode(errors='replace')} is missing or "
                              "damaged") from None
        if not isinstance(obj, kind):
            raise SchemaError(f"registry object {sha.decode(errors='replace')} is not a {what}")
        return obj

    def _commit(self, sha: bytes) -> Commit:
        return self._object(sha, Commit, "commit")

    def commit_versions(self, commit: str) -> dict[int, bytes]:
        """``seq -> manifest blob id`` in the tree of one registry commit.

        Raises:
            SchemaError: the commit or its trees are missing, damaged or of the wrong shape.
        """
        return self._tree_versions(self._commit(commit.encode()).tree)

    def _tree_versions(self, tree_sha: bytes) -> dict[int, bytes]:
        """Map seq -> blob sha of the manifests in a commit's tree."""
        tree = self._object(tree_sha, Tree, "tree")
        if VERSIONS_DIR not in tree:
            return {}
        _, sub_sha = tree[VERSIONS_DIR]
        sub = self._object(sub_sha, Tree, "tree")
        out: dict[int, bytes] = {}
        for item in sub.items():
            stem = item.path.decode()
            if stem.endswith(".json") and stem[:-5].isdigit():
                out[int(stem[:-5])] = item.sha
        return out

    def history(self, name: str, head: bytes | None = None) -> Iterator[HistoryEntry]:
        """Yield the model's commits, newest first (first-parent chain), from its ref's tip
        or from ``head``."""
        sha = head or self.head(name)
        while sha is not None:
            c = self._commit(sha)
            t = parse_trailers(c.message)
            parent = c.parents[0] if c.parents else None
            yield HistoryEntry(
                t.action, t.versions, t.tags, sha.decode(), parent.decode() if parent else None,
                c.author.decode(errors="replace"), c.author_time,
                c.message.decode(errors="replace").split("\n", 1)[0], t.id, t.pins,
            )
            sha = parent

    def state(self, name: str, head: bytes | None = None) -> ModelState:
        """Walk the model's history once (from its ref's tip, or from commit ``head``): live,
        added and removed versions, all events.

        Raises:
            NotFoundError: no such model.
        """
        head = head or self.head(name)
        if head is None:
            raise NotFoundError(f"model {name!r} is not registered" + self._did_you_mean(name))
        live = self._tree_versions(self._commit(head).tree)
        history = list(self.history(name, head))
        added: dict[int, HistoryEntry] = {}
        last_event: dict[int, HistoryEntry] = {}
        position: dict[str, int] = {}
        for i, h in enumerate(history):  # newest first
            position[h.commit] = i
            for seq in h.versions:
                if h.action in ("add", "rm", "restore"):
                    last_event.setdefault(seq, h)
                if h.action == "add":
                    added.setdefault(seq, h)
        removed: dict[int, RemovedVersion] = {}
        for seq, h in last_event.items():
            if h.action != "rm" or seq in live or seq not in added or h.parent is None:
                continue
            blob = self._tree_versions(self._commit(h.parent.encode()).tree).get(seq)
            if blob is None:
                continue
            a = added[seq]
            removed[seq] = RemovedVersion(
                Version(name, seq, a.commit, a.author, a.timestamp, a.message, a.version_id),
                h.timestamp, h.author, h.commit, blob.decode(),
                tuple(t for t, s in h.tags if s == seq), position[h.commit],
                tuple(p for p, s in h.pins if s == seq))
        return ModelState(name, head, live, added, removed, history)

    def _did_you_mean(self, name: str) -> str:
        other = self.find_case_clash(name)
        return f" (did you mean {other!r}?)" if other else ""

    def versions(self, name: str) -> list[Version]:
        """Live versions of ``name``, oldest first (empty for a removed model)."""
        return self.state(name).live_versions()

    def tags(self, name: str | None = None,
             damaged: list[tuple[str, str, SchemaError]] | None = None
             ) -> dict[tuple[str, str], str]:
        """Map ``(model, tag)`` to the commit it points at, for one model or all.

        Raises:
            SchemaError: a tag's object is missing or damaged (named in the message); with a
                ``damaged`` list, such tags are left out and appended to it instead.
        """
        out: dict[tuple[str, str], str] = {}
        for key, sha in self.repo.refs.as_dict(base=TAG_REF_PREFIX.rstrip(b"/")).items():
            model, sep, tag = key.decode().rpartition("@")
            if not sep or (name is not None and model != name):
                continue
            try:
                out[(model, tag)] = self._tag_target(model, tag, sha)
            except SchemaError as exc:
                if damaged is None:
                    raise
                damaged.append((model, tag, exc))
        return out

    def _tag_target(self, model: str, tag: str, sha: bytes) -> str:
        """The commit a tag ref's value ``sha`` names (an annotated tag object is peeled).

        Raises:
            SchemaError: the object is missing or damaged; the message names the tag.
        """
        try:
            obj = self._object(sha, ShaFile, "tag")
        except SchemaError as exc:
            raise SchemaError(f"tag {model}@{tag}: {exc.message}; 'cas tag {model} {tag} "
                              "--delete' removes the tag") from None
        target = obj.object[1] if isinstance(obj, Tag) else sha
        return target.decode()

    def version_of_commit(self, name: str, commit: str) -> Version:
        c = self._commit(commit.encode())
        t = parse_trailers(c.message)
        if t.action != "add":
            raise NotFoundError(f"{name}: commit {commit[:12]} does not add a version")
        return Version(name, t.versions[0], commit, c.author.decode(errors="replace"),
                       c.author_time, c.message.decode(errors="replace").split("\n", 1)[0],
                       t.id or commit)

    def resolve(self, spec: VersionSpec, *, removed_ok: bool = False,
                state: ModelState | None = None) -> Version:
        """Find the version ``spec`` names.

        ``NAME`` is the latest live version; ``NAME@3`` sequence number 3; ``NAME@TAG`` a tag;
        ``NAME@<hex>`` a prefix of at least 4 characters of a version id or of the commit that
        added a version (an all-digit selector is a sequence number). A removed version is refused
        (naming ``cas restore``) unless ``removed_ok``. ``state``: the model's
        :meth:`state` if the caller walked its history already (it is not walked again).

        Raises:
            NotFoundError: no such model, version, tag or commit, or the version was removed.
            ArgsError: a prefix that matches several versions (named in the message).
        """
        name, sel = spec.name, spec.selector
        st = state if state is not None and state.name == name else self.state(name)
        if sel is None:
            if not st.live:
                raise NotFoundError(
                    f"model {name!r} has no versions: all were removed"
                    + (f" ('cas restore {name}' brings them back)" if st.removed else ""))
            return st.live_versions()[-1]
        seq: int | None = None
        # Digits name a sequence number, unless there is no such version and they are the
        # start of an id or commit (which is hex, and may happen to be all digits).
        if sel.isdigit() and (int(sel) in st.added or len(sel) < 4 or not st.matching(sel)):
            seq = int(sel)
        else:
            tag = self.tags(name).get((name, sel))
            gone = [r for r in st.removed.values() if sel in r.tags]
            if tag is not None:
                seq = self.version_of_commit(name, tag).seq
                if seq not in st.added or st.added[seq].commit != tag:
                    raise SchemaError(
                        f"tag {name}@{sel} points at commit {tag[:12]}, which did not add a "
                        f"version of {name} (a damaged or crafted tag; delete it with "
                        f"'cas tag {name} {sel} --delete')")
            elif gone:  # a tag that an rm --force deleted (and recorded)
                r = gone[0]
                if removed_ok:
                    return r.version
                raise NotFoundError(
                    f"{name}@{sel} named version {r.version.seq}, removed on "
                    f"{_day(r.removed_at)} with its tags; 'cas restore {name}@{r.version.seq}' "
                    "brings both back")
            elif len(sel) >= 4 and re.fullmatch(r"[0-9a-fA-F]+", sel):
                hits = st.matching(sel.lower())
                if len(hits) > 1:
                    named = ", ".join(f"{name}@{s} (id {st.added[s].version_id[:12]})"
                                      for s in hits)
                    raise ArgsError(f"{name}@{sel}: prefix is ambiguous: {named}; give more "
                                    "characters")
                seq = hits[0] if hits else None
            if seq is None:
                raise NotFoundError(f"{name}@{sel}: no such version, tag, id or commit")
        if seq in st.live and seq in st.added:
            return st.version(seq)
        if seq in st.removed:
            if removed_ok:
                return st.removed[seq].version
            raise NotFoundError(
                f"{name}@{seq} was removed on {_day(st.removed[seq].removed_at)}; "
                f"'cas restore {name}@{seq}' brings it back")
        raise NotFoundError(f"{name}@{sel}: no such version")

    def manifest_bytes(self, version: Version) -> bytes:
        """The manifest JSON of ``version``: from the model's tip while the version is live
        (annotations included), else as it was when it was removed, else as added."""
        head = self.head(version.name)
        blob_sha = None
        if head is not None:
            blob_sha = self._tree_versions(self._commit(head).tree).get(version.seq)
            if blob_sha is None:
                gone = self.state(version.name).removed.get(version.seq)
                blob_sha = gone.blob.encode() if gone else None
        if blob_sha is None:
            c = self._commit(version.commit.encode())
            try:
                _, blob_sha = self.repo.object_store[c.tree].lookup_path(
                    self.repo.object_store.__getitem__, version_path(version.seq)
                )
            except (KeyError, NotTreeError):
                raise NotFoundError(f"{version.ref}: manifest missing from commit") from None
        return self.blob(blob_sha)

    def blob(self, sha: bytes) -> bytes:
        return self._object(sha, Blob, "blob").as_raw_string()

    def next_seq(self, name: str) -> int:
        return 1 + max((max(h.versions) for h in self.history(name)), default=0)

    # -- writing (caller holds the store write lock) -----------------------------------------

    def _check_name_free(self, name: str) -> None:
        """Refuse a new model name that collides with an existing one: equal up to case, or
        one a folder of the other (refs are files; ``a`` and ``a/b`` cannot both exist)."""
        other = self.find_case_clash(name)
        if other is not None:
            raise ConflictError(
                f"model name {name!r} differs only in case from existing model {other!r} "
                "(they would collide on case-insensitive filesystems)")
        key = name.casefold()
        segs = name.split("/")
        for other in self.model_names():
            o = other.casefold()
            if other != name and (o.startswith(key + "/") or key.startswith(o + "/")):
                raise ConflictError(
                    f"model name {name!r} clashes with existing model {other!r} "
                    "(one cannot be a folder of the other)"
                )
            # Folders of ref names collide up to case too: ORG/a beside org/b.
            for a, b in zip(segs[:-1], other.split("/")[:-1]):
                if a != b and a.casefold() == b.casefold():
                    raise ConflictError(
                        f"model name {name!r}: folder {a!r} differs only in case from "
                        f"{b!r} of existing model {other!r}")
                if a != b:
                    break

    def _store(self, obj: ShaFile) -> None:
        """Write ``obj`` durably (before any ref can name it) and remember it."""
        self.repo.object_store.add_object(obj)
        self._written[obj.id] = obj

    def _make_commit(
        self, tree: Tree, parent: bytes | None, message: str, identity: tuple[str, str]
    ) -> bytes:
        user, email = identity
        who = f"{user} <{email}>".encode()
        c = Commit()
        c.tree = tree.id
        c.parents = [parent] if parent else []
        c.author = c.committer = who
        now = int(time.time())
        c.author_time = c.commit_time = now
        c.author_timezone = c.commit_timezone = time.localtime(now).tm_gmtoff
        c.encoding = b"UTF-8"
        c.message = message.encode()
        self._store(c)
        return c.id

    def _tree_with(self, base_tree: bytes | None, changes: dict[int, bytes | None]) -> Tree:
        versions = self._tree_versions(base_tree) if base_tree else {}
        for seq, blob in changes.items():
            if blob is None:
                versions.pop(seq, None)
            else:
                versions[seq] = blob
        root = Tree()
        if versions:
            sub = Tree()
            for seq, blob_sha in versions.items():
                sub.add(f"{seq:06d}.json".encode(), 0o100644, blob_sha)
            self._store(sub)
            root.add(VERSIONS_DIR, 0o040000, sub.id)
        self._store(root)
        return root

    def _move_ref(self, ref: bytes, old: bytes | None, new: bytes) -> None:
        try:
            moved = self.repo.refs.set_if_equals(ref, old, new)
        except OSError as exc:
            # A failure after the rename (the folder's fsync) leaves the ref moved: then the
            # change is made and visible, and reporting it as failed would make a caller
            # retry what is done.
            try:
                landed = self.repo.refs.read_loose_ref(ref) == new
            except (OSError, CasError):
                landed = False
            if not landed:
                raise _ref_error(exc, ref, "moving") from None
            moved = True
        if not moved:
            raise ConflictError(f"{ref.decode()} moved while this command ran; try again")

    def _delete_ref(self, ref: bytes) -> None:
        try:
            self.repo.refs.remove_if_equals(ref, None)
        except OSError as exc:
            raise _ref_error(exc, ref, "deleting") from None

    def _commit_change(self, name: str, head: bytes | None, changes: dict[int, bytes | None],
                       message: str, identity: tuple[str, str] | None) -> bytes:
        base = self._commit(head).tree if head else None
        tree = self._tree_with(base, changes)
        commit = self._make_commit(tree, head, message, identity or resolve_identity())
        self._move_ref(model_ref(name), head or b"0" * 40, commit)
        return commit

    def add_version(
        self,
        name: str,
        seq: int,
        manifest_json: bytes,
        message: str,
        identity: tuple[str, str] | None = None,
        *,
        version_id: str | None = None,
    ) -> Version:
        """Commit ``manifest_json`` as version ``seq`` of ``name`` and move the model ref.

        The commit records the version's id (``Cas-Id``): ``version_id``, else the manifest's
        own ``id``; a manifest without one (made by hand, or before ids) records none, and the
        version's id is then its add commit.

        Raises:
            SchemaError: the manifest's ``id`` is malformed or differs from ``version_id``.
        """
        validate_model_name(name)
        carried = _manifest_id(manifest_json)
        if version_id is not None and carried not in (None, version_id):
            raise SchemaError(f"manifest id {carried} differs from the version id {version_id}")
        version_id = version_id or carried
        if version_id is not None and not is_version_id(version_id):
            raise SchemaError(f"version id {version_id!r} is not 32 or 40 lowercase hex")
        head = self.head(name)
        if head is None:
            self._check_name_free(name)
        blob = Blob.from_string(manifest_json)
        self._store(blob)
        subject = f"add {name} v{seq}" + (f": {message}" if message else "")
        commit = self._commit_change(name, head, {seq: blob.id},
                                     commit_message(subject, "add", [seq], [],
                                                    version_id=version_id), identity)
        c = self._commit(commit)
        return Version(name, seq, commit.decode(), c.author.decode(), c.author_time,
                       subject, version_id or commit.decode())

    def annotate_version(self, version: Version, manifest_json: bytes, message: str = "",
                         identity: tuple[str, str] | None = None) -> str:
        """Replace the live manifest of ``version`` (same files, new metadata) in one commit.

        Returns the commit id. Raises NotFoundError if the version is not live.
        """
        head = self.head(version.name)
        if head is None or version.seq not in self._tree_versions(self._commit(head).tree):
            raise NotFoundError(f"{version.ref} is not a live version")
        blob = Blob.from_string(manifest_json)
        self._store(blob)
        subject = f"annotate {version.name} v{version.seq}" + (f": {message}" if message else "")
        return self._commit_change(version.name, head, {version.seq: blob.id},
                                   commit_message(subject, "annotate", [version.seq], []),
                                   identity).decode()

    def remove_versions(self, name: str, versions: list[Version],
                        tags: list[tuple[str, int]], message: str = "",
                        identity: tuple[str, str] | None = None, *,
                        pins: list[tuple[str, int]] | None = None) -> str:
        """Take ``versions`` out of the model's tip in one commit that records the ``tags``
        (``(tag, seq)``) and ``pins`` (``(scope, seq)``) it deletes, then delete those tag and
        pin refs.

        The commit comes first: a crash before the refs are deleted leaves tags or pins naming
        removed versions (reported as removed; ``restore`` puts things back), never deleted
        refs that nothing recorded. Returns the commit id.
        """
        head = self.head(name)
        if head is None:
            raise NotFoundError(f"model {name!r} is not registered")
        seqs = sorted(v.seq for v in versions)
        subject = f"rm {name} {versions_text(seqs)}" + (f": {message}" if message else "")
        pins = sorted(pins or [])
        commit = self._commit_change(name, head, dict.fromkeys(seqs),
                                     commit_message(subject, "rm", seqs, sorted(tags),
                                                    pins=pins), identity)
        for tag, _seq in tags:
            self._delete_ref(tag_ref(name, tag))
        ids = {v.seq: v.id for v in versions}
        for scope, seq in pins:
            self._delete_ref(pin_ref(scope, name, ids[seq]))
        return commit.decode()

    def restore_versions(self, name: str, removed: list[RemovedVersion],
                         identity: tuple[str, str] | None = None) -> tuple[str, list[str]]:
        """Put removed manifests back in one commit, then recreate the tags their removal
        deleted, where no other version has taken the tag since. The commit records the pins
        the removal deleted (``Cas-Pin``); the caller recreates them (:mod:`cas.pins`).

        Returns ``(commit id, tags restored)``.
        """
        head = self.head(name)
        if head is None:
            raise NotFoundError(f"model {name!r} is not registered")
        taken = {t.casefold() for (_m, t) in self.tags(name)}
        tags = sorted((t, r.version.seq) for r in removed for t in r.tags
                      if t.casefold() not in taken)
        seqs = sorted(r.version.seq for r in removed)
        pins = sorted((p, r.version.seq) for r in removed for p in r.pins)
        commit = self._commit_change(
            name, head, {r.version.seq: r.blob.encode() for r in removed},
            commit_message(f"restore {name} {versions_text(seqs)}", "restore", seqs, tags,
                           pins=pins),
            identity)
        by_seq = {r.version.seq: r.version for r in removed}
        for tag, seq in tags:  # recorded by the restore commit itself
            self.set_tag(by_seq[seq], tag, identity=identity, record=False)
        return commit.decode(), [t for t, _ in tags]

    def set_tag(
        self,
        version: Version,
        tag: str,
        *,
        force: bool = False,
        identity: tuple[str, str] | None = None,
        record: bool = True,
        warnings: list[CasWarning] | None = None,
    ) -> bool:
        """Point ``NAME@tag`` at ``version`` with an annotated tag; with ``record``, then
        commit a ``tag`` event (same tree) to the model's history. Returns False, doing
        nothing, if the tag already names ``version``.

        The tag ref is the truth and moves first. If the event cannot be committed after it
        moved, the tag is set: with a ``warnings`` list, ``W_TAG_EVENT_NOT_RECORDED`` is added
        there and True returned; without one, the error is raised.
        """
        validate_tag(tag)
        ref = tag_ref(version.name, tag)
        try:
            old = self.repo.refs[ref]
        except KeyError:
            old = None
        if old is None:
            self.check_tag_case(version.name, tag)
        was = None
        if old is not None:
            obj = self._object(old, ShaFile, "tag")
            target = obj.object[1] if isinstance(obj, Tag) else old
            if target.decode() == version.commit:
                return False  # already names this version: nothing to do
            try:
                was = self.version_of_commit(version.name, target.decode()).seq
            except (NotFoundError, SchemaError):
                was = None
            if not force:
                raise ConflictError(
                    f"tag {version.name}@{tag} names another version"
                    + (f" (v{was})" if was else "") + " (use --force to move it)")
        t = self._new_tag(f"{version.name}@{tag}", version.commit,
                          f"{version.name}@{tag} -> version {version.seq}\n".encode(), identity)
        self._move_ref(ref, old or b"0" * 40, t.id)
        if record:
            # The ref is the truth; the event follows it (a crash in between loses only the
            # history line, never the tag).
            subject = f"tag {version.name}@{tag} -> v{version.seq}" + (
                f" (was v{was})" if was else "")
            try:
                self._commit_change(version.name, self.head(version.name), {},
                                    commit_message(subject, "tag", [version.seq],
                                             [(tag, version.seq)]), identity)
            except CasError as exc:
                if warnings is None:
                    raise
                warnings.append(CasWarning(
                    "W_TAG_EVENT_NOT_RECORDED",
                    f"tag {version.name}@{tag} is set, but the model's history does not "
                    f"record it: {exc.message}"))
        return True

    def _new_tag(self, name: str, commit: str, message: bytes,
                 identity: tuple[str, str] | None) -> Tag:
        """Write (durably) an annotated tag object named ``name`` pointing at ``commit``."""
        user, email = identity or resolve_identity()
        t = Tag()
        t.tagger = f"{user} <{email}>".encode()
        t.tag_time = int(time.time())
        t.tag_timezone = 0
        t.name = name.encode()
        t.object = (Commit, commit.encode())
        t.message = message
        self._store(t)
        return t

    # -- annotated refs outside models and tags (pins: cas.pins) -----------------------------

    def refs_under(self, prefix: bytes) -> dict[bytes, bytes]:
        """Every ref whose name starts with ``prefix`` (ending in ``/``): full name -> id."""
        found = self.repo.refs.as_dict(base=prefix.rstrip(b"/"))
        return {prefix + key: sha for key, sha in found.items()}

    def read_annotated(self, sha: bytes, what: str) -> tuple[str, bytes]:
        """``(target commit, message)`` of the annotated tag object ``sha``.

        Raises:
            SchemaError: missing, damaged or not an annotated tag of a commit.
        """
        obj = self._object(sha, Tag, what)
        kind, target = obj.object
        if kind is not Commit:
            raise SchemaError(f"registry {what} {sha.decode()} does not point at a commit")
        return target.decode(), obj.message

    def write_annotated_ref(self, ref: bytes, name: str, commit: str, message: bytes,
                            old: bytes | None, identity: tuple[str, str] | None = None) -> None:
        """Point ``ref`` at a new annotated tag ``name`` of ``commit`` whose message is
        ``message``; ``old``: the ref's current value (None: it must not exist).

        Raises:
            ConflictError: the ref moved meanwhile.
        """
        t = self._new_tag(name, commit, message, identity)
        self._move_ref(ref, old or b"0" * 40, t.id)

    def delete_ref(self, ref: bytes) -> None:
        """Delete ``ref`` if it exists."""
        self._delete_ref(ref)

    def check_tag_case(self, name: str, tag: str) -> None:
        """Refuse a new tag of ``name`` that differs only in case from one it has (tag refs
        are files, which collide on case-insensitive filesystems).

        Raises:
            ConflictError: naming the existing tag.
        """
        for (_m, other) in self.tags(name):
            if other != tag and other.casefold() == tag.casefold():
                raise ConflictError(f"tag {name}@{tag} differs only in case from existing tag "
                                    f"{name}@{other}")

    def delete_tag(self, name: str, tag: str, identity: tuple[str, str] | None = None
                   ) -> Version | None:
        """Delete tag ``NAME@tag`` and commit an ``untag`` event naming the version it named.
        Returns that version (None if the tag named nothing readable).

        Raises:
            NotFoundError: there is no such tag.
        """
        ref = tag_ref(name, tag)
        try:
            sha = self.repo.refs[ref]
        except KeyError:
            raise NotFoundError(f"tag {name}@{tag} does not exist") from None
        try:
            version: Version | None = self.version_of_commit(
                name, self._tag_target(name, tag, sha))
        except (NotFoundError, SchemaError):
            version = None  # a damaged tag can still be deleted
        self._delete_ref(ref)
        if version is not None and self.head(name) is not None:
            self._commit_change(name, self.head(name), {},
                                commit_message(f"untag {name}@{tag} (was v{version.seq})", "untag",
                                         [version.seq], [(tag, version.seq)]), identity)
        return version

    def tags_of(self, version: Version) -> list[str]:
        return sorted(t for (m, t), c in self.tags(version.name).items() if c == version.commit)

    def read_ref_file(self, ref: bytes, path: bytes) -> tuple[bytes, bytes | None] | None:
        """``(tip, bytes of file path in the tip's tree, or None)``; None without the ref.

        Raises:
            SchemaError: the commit, tree or blob is missing or damaged (named).
        """
        found = self.read_ref_files(ref)
        return None if found is None else (found[0], found[1].get(path))

    def read_ref_files(self, ref: bytes) -> tuple[bytes, dict[bytes, bytes]] | None:
        """``(tip, {path: bytes})`` of the files at the top of the tip's tree; None without
        the ref.

        Raises:
            SchemaError: the commit, tree or a blob is missing or damaged (named).
        """
        try:
            tip = self.repo.refs[ref]
        except KeyError:
            return None
        tree = self._object(self._commit(tip).tree, Tree, "tree")
        return tip, {item.path: self.blob(item.sha) for item in tree.items()
                     if not item.mode & 0o040000}

    def commit_ref_file(self, ref: bytes, old: bytes | None, path: bytes, data: bytes,
                        subject: str, identity: tuple[str, str]) -> bytes:
        """Commit a tree holding only ``path`` (``data``) on top of ``old``: see
        :meth:`commit_ref_files`."""
        return self.commit_ref_files(ref, old, {path: data}, subject, identity)

    def commit_ref_files(self, ref: bytes, old: bytes | None, files: dict[bytes, bytes],
                         subject: str, identity: tuple[str, str]) -> bytes:
        """Commit a tree holding exactly ``files`` (name -> bytes) on top of ``old`` and move
        ``ref`` from ``old`` (None: it must not exist) to it; the caller holds the write lock.

        Raises:
            ConflictError: ``ref`` no longer holds ``old``.
        """
        tree = Tree()
        for path, data in sorted(files.items()):
            blob = Blob.from_string(data)
            self._store(blob)
            tree.add(path, 0o100644, blob.id)
        self._store(tree)
        commit = self._make_commit(tree, old, subject + "\n", identity)
        self._move_ref(ref, old or b"0" * 40, commit)
        return commit


class _IdOnly(msgspec.Struct):
    id: Any = None


def _manifest_id(manifest_json: bytes) -> str | None:
    """The top-level ``id`` of a manifest (None when absent), without decoding the rest.

    Raises:
        SchemaError: not a JSON object, or an ``id`` that is not a version id.
    """
    try:
        got = msgspec.json.decode(manifest_json, type=_IdOnly).id
    except msgspec.DecodeError as exc:
        raise SchemaError(f"manifest is not a JSON object: {exc}") from None
    if got is not None and not is_version_id(got):
        raise SchemaError(f"manifest id {got!r} is not 32 or 40 lowercase hex")
    return got


def _ref_error(exc: OSError, ref: bytes, doing: str) -> CasError:
    """The error of a failed ref update: a folder or file in the ref's place is a conflict
    (someone's files in the registry), a leftover lock a lock error, the rest disk errors."""
    name = ref.decode(errors="replace")
    if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
        return ConflictError(f"cannot move registry ref {name}: {exc.strerror} "
                             f"({exc.filename}); move that aside")
    if isinstance(exc, FileExistsError):
        return LockError(f"registry ref {name} is locked by another writer ({exc.filename}); "
                         "if no cas or git command is running, delete that file")
    return from_os_error(exc, f"{doing} registry ref {name}")


def _day(ts: int) -> str:
    return iso_utc(ts)[:10]
