"""The registry: a bare git repository of manifests, written with dulwich.

This is the only module that imports dulwich. Layout (see ``docs/format.md``):

- a model ``NAME`` is the ref ``refs/models/NAME``;
- the tree of that ref's tip holds ``versions/<seq:06d>.json`` for every live version, so the
  tip alone tells which versions exist (gc and retention read only tips);
- each ``add`` is a commit that adds one manifest file; ``rm NAME@V`` is a commit that deletes
  one; both carry ``Cas-Action`` and ``Cas-Version`` trailers;
- a tag ``T`` on ``NAME@V`` is an annotated git tag ``refs/tags/NAME@T`` pointing at the commit
  that added the version (``@`` cannot occur in names, so tags never collide with models).

Plain ``git log refs/models/NAME``, ``git show`` and ``git fsck`` work on it. Callers hold the
store write lock for every mutation; refs are still moved with compare-and-swap so that a
concurrent writer that bypassed the lock cannot be silently overwritten.
"""

from __future__ import annotations

import getpass
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dulwich.errors import NotGitRepository, NotTreeError
from dulwich.objects import Blob, Commit, Tag, Tree
from dulwich.repo import Repo

from cas.errors import ArgsError, ConflictError, NotFoundError, SchemaError
from cas.names import VersionSpec, validate_model_name, validate_tag

MODEL_REF_PREFIX = b"refs/models/"
TAG_REF_PREFIX = b"refs/tags/"
VERSIONS_DIR = b"versions"
_TRAILER = re.compile(rb"^Cas-(Action|Version): (\S+)$", re.MULTILINE)


def version_path(seq: int) -> bytes:
    return VERSIONS_DIR + b"/" + f"{seq:06d}.json".encode()


def model_ref(name: str) -> bytes:
    return MODEL_REF_PREFIX + name.encode()


def tag_ref(name: str, tag: str) -> bytes:
    return TAG_REF_PREFIX + f"{name}@{tag}".encode()


def default_identity() -> tuple[str, str]:
    """``(user, user@host)``: who registers versions from this process when nothing says."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name configured for this uid
        user = "unknown"
    return user, f"{user}@{socket.gethostname()}"


_IDENTITY = re.compile(r"\s*([^<>\n]*?)\s*<([^<>\n]*)>\s*\Z")


def parse_identity(text: str) -> tuple[str, str]:
    """``Name <email>`` -> ``(Name, email)``; a bare name gets ``name@host`` as its email.

    Raises:
        ArgsError: empty, a newline, or angle brackets in the wrong places.
    """
    m = _IDENTITY.match(text)
    if m and m.group(1):
        return m.group(1), m.group(2)
    if text.strip() and not any(c in text for c in "<>\n"):
        return text.strip(), f"{text.strip().replace(' ', '.')}@{socket.gethostname()}"
    raise ArgsError(f"author {text!r} must be 'Name <email>' or a name")


def resolve_identity(explicit: str | None = None) -> tuple[str, str]:
    """Who is registering: ``explicit`` (``--author``), else ``$CAS_AUTHOR``, else the git
    identity (``user.name`` and ``user.email`` from the user's git config, also read from
    ``$GIT_AUTHOR_NAME``/``$GIT_AUTHOR_EMAIL``), else ``user@host`` of the process."""
    import os

    if explicit:
        return parse_identity(explicit)
    env = os.environ.get("CAS_AUTHOR")
    if env:
        return parse_identity(env)
    name = os.environ.get("GIT_AUTHOR_NAME")
    email = os.environ.get("GIT_AUTHOR_EMAIL")
    if not (name and email):
        try:
            from dulwich.config import StackedConfig

            cfg = StackedConfig.default()
            name = name or cfg.get((b"user",), b"name").decode()
            email = email or cfg.get((b"user",), b"email").decode()
        except (KeyError, OSError, UnicodeDecodeError, ValueError):
            pass
    if name and email:
        return parse_identity(f"{name} <{email}>")
    return default_identity()


@dataclass(frozen=True, slots=True)
class Version:
    """One registered version of a model."""

    name: str
    seq: int
    commit: str
    author: str
    timestamp: int
    message: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.seq}"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One commit of a model's history: an add or an rm of one version."""

    action: str
    seq: int
    commit: str
    author: str
    timestamp: int
    message: str


def _trailers(message: bytes) -> tuple[str, int]:
    found = dict(_TRAILER.findall(message))
    try:
        return found[b"Action"].decode(), int(found[b"Version"])
    except (KeyError, ValueError):
        raise SchemaError("registry commit lacks Cas-Action/Cas-Version trailers") from None


class Registry:
    """Read and write model refs, versions and tags in a bare git repository."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.repo = Repo(str(path))
        except (NotGitRepository, OSError) as exc:
            raise NotFoundError(f"registry at {path} cannot be opened: {exc}") from None
        # Objects must be durable before a ref names them. Set here rather than in the repo
        # config, where git itself warns that core.fsyncObjectFiles is deprecated.
        self.repo.object_store.fsync_object_files = True

    @classmethod
    def init(cls, path: Path) -> Registry:
        path.mkdir(parents=True, exist_ok=True)
        Repo.init_bare(str(path)).close()
        return cls(path)

    def close(self) -> None:
        self.repo.close()

    # -- reading ---------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        keys = self.repo.refs.keys(base=MODEL_REF_PREFIX.rstrip(b"/"))
        return sorted(k.decode() for k in keys)

    def head(self, name: str) -> bytes | None:
        try:
            return self.repo.refs[model_ref(name)]
        except KeyError:
            return None

    def _commit(self, sha: bytes) -> Commit:
        obj = self.repo[sha]
        if not isinstance(obj, Commit):
            raise SchemaError(f"registry object {sha.decode()} is not a commit")
        return obj

    def _tree_versions(self, tree_sha: bytes) -> dict[int, bytes]:
        """Map seq -> blob sha of the manifests in a commit's tree."""
        tree = self.repo[tree_sha]
        assert isinstance(tree, Tree)
        if VERSIONS_DIR not in tree:
            return {}
        _, sub_sha = tree[VERSIONS_DIR]
        sub = self.repo[sub_sha]
        out: dict[int, bytes] = {}
        for item in sub.items():
            stem = item.path.decode()
            if stem.endswith(".json") and stem[:-5].isdigit():
                out[int(stem[:-5])] = item.sha
        return out

    def history(self, name: str) -> Iterator[HistoryEntry]:
        """Yield the model's commits, newest first (first-parent chain)."""
        sha = self.head(name)
        while sha is not None:
            c = self._commit(sha)
            action, seq = _trailers(c.message)
            yield HistoryEntry(
                action,
                seq,
                sha.decode(),
                c.author.decode(errors="replace"),
                c.author_time,
                c.message.decode(errors="replace").split("\n", 1)[0],
            )
            sha = c.parents[0] if c.parents else None

    def versions(self, name: str) -> list[Version]:
        """Live versions of ``name``, oldest first."""
        head = self.head(name)
        if head is None:
            raise NotFoundError(f"model {name!r} is not registered")
        live = self._tree_versions(self._commit(head).tree)
        found: list[Version] = []
        for h in self.history(name):
            if h.action == "add" and h.seq in live:
                found.append(Version(name, h.seq, h.commit, h.author, h.timestamp, h.message))
        return sorted(found, key=lambda v: v.seq)

    def tags(self, name: str | None = None) -> dict[tuple[str, str], str]:
        """Map ``(model, tag)`` to the commit it points at, for one model or all."""
        out: dict[tuple[str, str], str] = {}
        for key, sha in self.repo.refs.as_dict(base=TAG_REF_PREFIX.rstrip(b"/")).items():
            model, sep, tag = key.decode().rpartition("@")
            if not sep or (name is not None and model != name):
                continue
            obj = self.repo[sha]
            target = obj.object[1] if isinstance(obj, Tag) else sha
            out[(model, tag)] = target.decode()
        return out

    def version_of_commit(self, name: str, commit: str) -> Version:
        c = self._commit(commit.encode())
        action, seq = _trailers(c.message)
        if action != "add":
            raise NotFoundError(f"{name}: commit {commit[:12]} does not add a version")
        return Version(
            name,
            seq,
            commit,
            c.author.decode(errors="replace"),
            c.author_time,
            c.message.decode(errors="replace").split("\n", 1)[0],
        )

    def resolve(self, spec: VersionSpec) -> Version:
        """Find the version ``spec`` names.

        ``NAME`` is the latest live version; ``NAME@3`` sequence number 3; ``NAME@TAG`` a tag
        (it keeps naming its version even after ``rm NAME@V``); ``NAME@<hex>`` a commit prefix
        of at least 4 characters.

        Raises:
            NotFoundError: no such model, version, tag or commit.
            ArgsError: a commit prefix that matches several versions.
        """
        name, sel = spec.name, spec.selector
        if self.head(name) is None:
            raise NotFoundError(f"model {name!r} is not registered")
        live = self.versions(name)
        if sel is None:
            if not live:
                raise NotFoundError(f"model {name!r} has no versions")
            return live[-1]
        if sel.isdigit():
            for v in live:
                if v.seq == int(sel):
                    return v
            raise NotFoundError(f"{name}@{sel}: no such version")
        tag = self.tags(name).get((name, sel))
        if tag is not None:
            return self.version_of_commit(name, tag)
        if len(sel) >= 4 and re.fullmatch(r"[0-9a-fA-F]+", sel):
            hits = [v for v in live if v.commit.startswith(sel.lower())]
            if len(hits) > 1:
                raise ArgsError(f"{name}@{sel}: commit prefix is ambiguous")
            if hits:
                return hits[0]
        raise NotFoundError(f"{name}@{sel}: no such version, tag or commit")

    def manifest_bytes(self, version: Version) -> bytes:
        """The manifest JSON of ``version``, read from the commit that added it."""
        c = self._commit(version.commit.encode())
        try:
            _, blob_sha = self.repo.object_store[c.tree].lookup_path(
                self.repo.object_store.__getitem__, version_path(version.seq)
            )
        except (KeyError, NotTreeError):
            raise NotFoundError(f"{version.ref}: manifest missing from commit") from None
        blob = self.repo[blob_sha]
        assert isinstance(blob, Blob)
        return blob.as_raw_string()

    def next_seq(self, name: str) -> int:
        return 1 + max((h.seq for h in self.history(name)), default=0)

    # -- writing (caller holds the store write lock) -----------------------------------------

    def _check_no_prefix_clash(self, name: str) -> None:
        for other in self.model_names():
            if other != name and (other.startswith(name + "/") or name.startswith(other + "/")):
                raise ConflictError(
                    f"model name {name!r} clashes with existing model {other!r} "
                    "(one cannot be a folder of the other)"
                )

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
        self.repo.object_store.add_object(c)
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
            self.repo.object_store.add_object(sub)
            root.add(VERSIONS_DIR, 0o040000, sub.id)
        self.repo.object_store.add_object(root)
        return root

    def _move_ref(self, ref: bytes, old: bytes | None, new: bytes) -> None:
        if not self.repo.refs.set_if_equals(ref, old, new):
            raise ConflictError(f"{ref.decode()} moved while this command ran; try again")

    def add_version(
        self,
        name: str,
        seq: int,
        manifest_json: bytes,
        message: str,
        identity: tuple[str, str] | None = None,
    ) -> Version:
        """Commit ``manifest_json`` as version ``seq`` of ``name`` and move the model ref."""
        validate_model_name(name)
        self._check_no_prefix_clash(name)
        head = self.head(name)
        blob = Blob.from_string(manifest_json)
        self.repo.object_store.add_object(blob)
        base = self._commit(head).tree if head else None
        tree = self._tree_with(base, {seq: blob.id})
        body = f"add {name} v{seq}"
        if message:
            body += f": {message}"
        full = f"{body}\n\nCas-Action: add\nCas-Version: {seq}\n"
        identity = identity or default_identity()
        commit = self._make_commit(tree, head, full, identity)
        self._move_ref(model_ref(name), head or b"0" * 40, commit)
        c = self._commit(commit)
        return Version(name, seq, commit.decode(), c.author.decode(), c.author_time, body)

    def remove_version(self, version: Version, identity: tuple[str, str] | None = None) -> bool:
        """Drop ``version`` from the model's tip. Returns True if the model ref was deleted
        because no live version remained."""
        name = version.name
        head = self.head(name)
        if head is None:
            raise NotFoundError(f"model {name!r} is not registered")
        tree = self._tree_with(self._commit(head).tree, {version.seq: None})
        if not len(tree):
            self.remove_model(name)
            return True
        msg = f"rm {name} v{version.seq}\n\nCas-Action: rm\nCas-Version: {version.seq}\n"
        commit = self._make_commit(tree, head, msg, identity or default_identity())
        self._move_ref(model_ref(name), head, commit)
        return False

    def remove_model(self, name: str) -> list[str]:
        """Delete the model ref and its tags; return the tags deleted."""
        head = self.head(name)
        if head is None:
            raise NotFoundError(f"model {name!r} is not registered")
        removed = []
        for (_, tag), _sha in self.tags(name).items():
            self.repo.refs.remove_if_equals(tag_ref(name, tag), None)
            removed.append(tag)
        if not self.repo.refs.remove_if_equals(model_ref(name), head):
            raise ConflictError(f"model {name!r} moved while removing it; try again")
        return removed

    def set_tag(
        self,
        version: Version,
        tag: str,
        *,
        force: bool = False,
        identity: tuple[str, str] | None = None,
    ) -> None:
        """Point ``NAME@tag`` at ``version`` with an annotated tag."""
        validate_tag(tag)
        ref = tag_ref(version.name, tag)
        try:
            old = self.repo.refs[ref]
        except KeyError:
            old = None
        if old is not None and not force:
            raise ConflictError(f"tag {version.name}@{tag} exists (use --force to move it)")
        user, email = identity or default_identity()
        t = Tag()
        t.tagger = f"{user} <{email}>".encode()
        t.tag_time = int(time.time())
        t.tag_timezone = 0
        t.name = f"{version.name}@{tag}".encode()
        t.object = (Commit, version.commit.encode())
        t.message = f"{version.name}@{tag} -> version {version.seq}\n".encode()
        self.repo.object_store.add_object(t)
        self._move_ref(ref, old or b"0" * 40, t.id)

    def delete_tag(self, name: str, tag: str) -> None:
        ref = tag_ref(name, tag)
        if ref not in self.repo.refs:
            raise NotFoundError(f"tag {name}@{tag} does not exist")
        self.repo.refs.remove_if_equals(ref, None)

    def tags_of(self, version: Version) -> list[str]:
        return sorted(t for (m, t), c in self.tags(version.name).items() if c == version.commit)

    def all_manifest_blobs(self) -> Iterator[tuple[str, int, bytes]]:
        """Every manifest that keeps data alive: live versions in model tips and tagged versions.

        Yields ``(name, seq, manifest_json)``; a version both live and tagged appears once.
        """
        seen: set[tuple[str, int]] = set()
        for name in self.model_names():
            head = self.head(name)
            assert head is not None
            for seq, blob in sorted(self._tree_versions(self._commit(head).tree).items()):
                seen.add((name, seq))
                yield name, seq, self.repo[blob].as_raw_string()
        for (name, _tag), commit in sorted(self.tags().items()):
            v = self.version_of_commit(name, commit)
            if (name, v.seq) not in seen:
                seen.add((name, v.seq))
                yield name, v.seq, self.manifest_bytes(v)
