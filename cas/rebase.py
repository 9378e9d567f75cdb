"""Reconciling a model changed on two stores: local commits replayed on the remote's tip.

A model's history is a first-parent chain of commits (:mod:`cas.registry`). When this store
and a remote both changed a model since they last synced, ``pull`` replays this store's
commits since the common commit onto the remote's tip, one by one, with their authors,
times and messages, so the remote's tip becomes an ancestor (the next push fast-forwards):

- commits that add no version (annotate, tag, untag, rm, restore) replay as they are, unless
  the other side changed the same version (then the model is refused, naming the version and
  both events: nothing is lost, nothing moves);
- commits that add versions replay as they are if the remote added none (their numbers are
  still free); if both sides added versions, this store's are **renumbered** after the
  remote's (``pull --rebase`` only): each keeps its stable id, its manifest's ``seq`` and its
  commit's subject and trailers change, and the subject records the old number
  (``add NAME v7 (was v5 here)``); later commits naming it follow. A version that already
  left this store (another remote's tracking ref reaches its commit, or another store's
  location entry lists its id) is never renumbered without ``--force``: a script elsewhere
  may have captured ``NAME@5``.

Tags and pins of replayed commits are re-pointed at their replayed commits. Everything is
written before the model ref moves (by compare-and-swap from the tip the plan was made on),
under the store's write lock.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from cas import registry_transfer as rt
from cas.commits import commit_message, parse_trailers, resolve_identity
from cas.errors import CasError, ConflictError
from cas.format.manifest import Manifest
from cas.registry import PIN_REF_PREFIX, TAG_REF_PREFIX, model_ref

if TYPE_CHECKING:
    from cas.registry import Registry
    from cas.store import Store


class Rebased(msgspec.Struct):
    model: str
    #: The new local tip (hex).
    tip: str
    replayed: int = 0
    #: (old seq, new seq) of renumbered versions.
    renumbered: list[tuple[int, int]] = []


def both_added(reg: Registry, local: bytes, remote: bytes) -> list[int]:
    """The versions this side added since the common commit, when the other side added
    versions too (what only ``--rebase`` resolves); empty otherwise."""
    base = rt.merge_base(reg, local, remote)
    mine = [parse_trailers(c.message) for c in rt.first_parents(reg, local, base)]
    theirs = [parse_trailers(c.message) for c in rt.first_parents(reg, remote, base)]
    if not any(t.action == "add" for t in theirs):
        return []
    return sorted(s for t in mine if t.action == "add" for s in t.versions)


def rebase(store: Store, model: str, local: bytes, remote: bytes, *, renumber: bool,
           force: bool = False) -> Rebased:
    """Replay ``local``'s commits since its common commit with ``remote`` on ``remote`` and
    move the model ref from ``local`` to the result (see the module docstring). Tags and pins
    on replayed commits follow. The caller holds the write lock and has the remote's history
    and content for its versions here.

    Raises:
        ConflictError: both sides changed one version; both added versions and ``renumber``
            is off; a version to renumber left this store and ``force`` is off; the model
            ref moved meanwhile.
    """
    reg = store.registry
    base = rt.merge_base(reg, local, remote)
    mine = list(reversed(rt.first_parents(reg, local, base)))
    theirs = rt.first_parents(reg, remote, base)
    their_adds = [parse_trailers(c.message) for c in theirs]
    they_added = any(t.action == "add" for t in their_adds)
    my_adds = [c for c in mine if parse_trailers(c.message).action == "add"]
    if my_adds and they_added and not renumber:
        seqs = sorted(s for c in my_adds for s in parse_trailers(c.message).versions)
        raise ConflictError(
            f"{model}: both stores added versions since they last synced (here: "
            + ", ".join(f"v{s}" for s in seqs)
            + "); 'cas pull --rebase' renumbers this store's after the remote's")
    # What the remote side changed, by seq (to detect both sides touching one version).
    base_versions = rt.tree_versions(reg, rt.commit_info(reg, base).tree) if base else {}
    theirs_touched: dict[int, str] = {}
    for t in their_adds:
        for seq in t.versions:
            theirs_touched.setdefault(seq, t.action)
    next_seq = max([*_ever_added(reg, remote), *base_versions, 0]) + 1
    renumbered: dict[int, int] = {}
    if my_adds and they_added:
        _check_unshared(store, model, my_adds, force)
        for c in my_adds:
            for seq in parse_trailers(c.message).versions:
                renumbered[seq] = next_seq
                next_seq += 1
    committer = "{} <{}>".format(*resolve_identity()).encode()
    tip = remote
    moved: dict[bytes, bytes] = {}
    for c in mine:
        t = parse_trailers(c.message)
        before = rt.tree_versions(reg, rt.commit_info(reg, c.parent).tree) if c.parent else {}
        after = rt.tree_versions(reg, c.tree)
        changes = {s: after.get(s) for s in set(before) | set(after)
                   if before.get(s) != after.get(s)}
        for seq in changes:
            if seq in theirs_touched and seq not in renumbered:
                raise ConflictError(f"{model}@{seq}: changed on both stores ({t.action} here, "
                                    f"{theirs_touched[seq]} there); nothing was moved")
        current = rt.tree_versions(reg, rt.commit_info(reg, tip).tree)
        for seq, blob in changes.items():
            new_seq = renumbered.get(seq, seq)
            if blob is None:
                current.pop(new_seq, None)
            else:
                current[new_seq] = _renumbered_blob(reg, blob, seq, new_seq)
        message = _message(c.message, t, renumbered, model)
        tip = rt.write_commit(reg, tip, current, message, c, committer)
        moved[c.sha] = tip
    _retarget(reg, model, moved)
    reg._move_ref(model_ref(model), local, tip)  # noqa: SLF001 - compare-and-swap
    return Rebased(model, tip.decode(), len(mine), sorted(renumbered.items()))


def _ever_added(reg: Registry, tip: bytes) -> list[int]:
    """Every seq any add on ``tip``'s history used (numbers are never reused)."""
    out = []
    for c in rt.first_parents(reg, tip, None):
        t = parse_trailers(c.message)
        if t.action == "add":
            out += list(t.versions)
    return out


def _renumbered_blob(reg: Registry, blob: bytes, old: int, new: int) -> bytes:
    """``blob`` with its manifest's ``seq`` changed from ``old`` to ``new`` (stored)."""
    if old == new:
        return blob
    m = Manifest.decode(reg.blob(blob))
    return rt.store_blob(reg, msgspec.structs.replace(m, seq=new).encode())


_SUBJECT_SEQ = re.compile(r"\bv(\d+)\b")


def _message(message: bytes, t: object, renumbered: dict[int, int], model: str) -> bytes:
    """``message`` with renumbered versions changed in its subject and trailers; an add
    that was renumbered says what it was."""
    if not renumbered or not any(s in renumbered for s in t.versions):  # type: ignore[attr-defined]
        return message
    subject = message.split(b"\n", 1)[0].decode(errors="replace")

    def sub(m: re.Match[str]) -> str:
        return f"v{renumbered.get(int(m.group(1)), int(m.group(1)))}"

    new_subject = _SUBJECT_SEQ.sub(sub, subject, count=1)
    if t.action == "add":  # type: ignore[attr-defined]
        olds = ", ".join(f"v{s}" for s in t.versions)  # type: ignore[attr-defined]
        new_subject = f"{new_subject} (was {olds} here)"
    seqs = [renumbered.get(s, s) for s in t.versions]  # type: ignore[attr-defined]
    tags = [(tag, renumbered.get(s, s)) for tag, s in t.tags]  # type: ignore[attr-defined]
    pins = [(scope, renumbered.get(s, s)) for scope, s in t.pins]  # type: ignore[attr-defined]
    return commit_message(new_subject[:1000], t.action, seqs, tags,  # type: ignore[attr-defined]
                          version_id=t.id, pins=pins).encode()  # type: ignore[attr-defined]


def _retarget(reg: Registry, model: str, moved: dict[bytes, bytes]) -> None:
    """Point tags and pins of ``model`` whose commit was replayed at the replayed commit."""
    from cas.peer import check_ref_name

    refs = {**reg.refs_under(TAG_REF_PREFIX), **reg.refs_under(PIN_REF_PREFIX)}
    for ref, sha in sorted(refs.items()):
        try:
            _kind, name = check_ref_name(ref.decode())
        except CasError:
            continue
        if name.rsplit("@", 1)[0] != model:
            continue
        target = rt.tag_target(reg, sha)
        if target in moved:
            new = rt.retarget_tag(reg, sha, moved[target])
            reg._move_ref(ref, sha, new)  # noqa: SLF001 - compare-and-swap


def _check_unshared(store: Store, model: str, my_adds: list[rt.CommitInfo],
                    force: bool) -> None:
    """Refuse to renumber a version that left this store (see the module docstring)."""
    if force:
        return
    reg = store.registry
    adds = {c.sha for c in my_adds}
    for ref, sha in sorted(reg.refs_under(b"refs/remotes/").items()):
        if not ref.decode().endswith(f"/models/{model}"):
            continue
        if adds & {c.sha for c in rt.first_parents(reg, sha, None)}:
            raise ConflictError(f"{model}: versions added here were pushed to remote "
                                f"{ref.decode().split('/')[2]} already; renumbering them "
                                "would change what NAME@N means there (--force to do it "
                                "anyway)")
    from cas import locations

    ids = {parse_trailers(c.message).id for c in my_adds} - {None}
    for uuid, e in locations.read(store).items():
        if uuid != store.uuid and ids & set(e.versions.get(model, [])):
            raise ConflictError(f"{model}: versions added here are held by store {uuid} "
                                "already; renumbering them would change what NAME@N means "
                                "there (--force to do it anyway)")
