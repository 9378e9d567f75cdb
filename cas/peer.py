"""One side of a sync: the operations a store offers to another (``docs/format.md``, "Sync").

:class:`LocalPeer` runs them on a store this process opened: the store of the command itself,
a directory remote, or the store behind ``cas serve``. A remote reached over ssh or http is a
proxy with the same methods (:mod:`cas.rpc`). ``push`` and ``pull`` are the same exchange in
opposite directions (:mod:`cas.sync`): the side that holds the content computes what the
versions need, the other answers which ids it lacks, the content streams in transfer packs
(:mod:`cas.transfer`), and the receiver moves refs only after it checked them
(:meth:`LocalPeer.update_refs`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from cas import registry_transfer as rt
from cas import transfer
from cas.commits import is_pin_scope
from cas.errors import CasError, ConflictError, NotFoundError, SchemaError, VerifyError
from cas.format.manifest import Manifest
from cas.names import validate_model_name, validate_tag
from cas.registry import MODEL_REF_PREFIX, PIN_REF_PREFIX, TAG_REF_PREFIX, Registry
from cas.store import Store
from cas.versions import is_version_id

#: Ref namespaces a sync moves.
SYNCED_PREFIXES = (MODEL_REF_PREFIX, TAG_REF_PREFIX, PIN_REF_PREFIX)
ZERO = b"0" * 40


class Hello(msgspec.Struct, frozen=True):
    """What a store says about itself before a sync."""

    uuid: str
    format_version: int
    chunker: dict[str, object]
    derives: bool
    description: str = ""
    #: Protocol capabilities (``docs/format.md``, "Sync protocol").
    caps: list[str] = []


class RefUpdate(msgspec.Struct, frozen=True):
    """Move ``ref`` from ``old`` (what the sender last saw there; None: absent) to ``new``."""

    ref: str
    old: str | None
    new: str


class RefResult(msgspec.Struct, frozen=True):
    ref: str
    #: ``ok``, ``up-to-date`` or ``rejected``.
    status: str
    reason: str = ""


CAPS = ["transfer-packs-1", "registry-objects-1", "send-parts-1"]


class LocalPeer:
    """The sync operations on a store opened in this process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lease = None
        self._lacking_memo: dict[bytes, list[str]] | None = None
        self._holds: list[Any] = []
        self._dropping: tuple[Any, Any] | None = None

    # -- session -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, purpose: str) -> Iterator[None]:
        """Hold a shared lease on the store for a transfer and the ref updates after it (a
        gc running meanwhile keeps what arrives, as it does for an add)."""
        with self.store.leases.acquire_shared(purpose) as lease:
            self._lease = lease
            try:
                yield
            finally:
                self._lease = None

    def close(self) -> None:
        self.release_holds()
        self.drop_end()
        self.store.close()

    # -- holds and drops (:mod:`cas.drop`) ---------------------------------------------------

    def hold(self, blobs: list[str]) -> None:
        """Verify this store keeps the versions ``blobs`` whole and hold them (no drop here)
        until :meth:`release_holds`."""
        from cas import drop

        self._holds.append(drop.hold(self.store, blobs))

    def release_holds(self) -> None:
        holds, self._holds = self._holds, []
        for lease in holds:
            lease.release()

    def copies(self) -> bytes:
        """This store's numcopies setting document (:mod:`cas.copies`; ``b""``: none)."""
        from cas import copies

        return copies.encoded(self.store.registry)

    def merge_copies(self, data: bytes) -> bool:
        from cas import copies

        return copies.adopt(self.store, data)

    def drop_begin(self, blob: str) -> Any:
        """Start dropping the version of ``blob`` here; returns its :class:`cas.drop.Target`."""
        from cas import drop

        self.drop_end()
        self._dropping = drop.begin(self.store, blob)
        return self._dropping[1]

    def drop_commit(self, refresh: bool = True) -> None:
        from cas import drop
        from cas.errors import ArgsError

        if self._dropping is None:
            raise ArgsError("drop_commit without drop_begin")
        lease, target = self._dropping
        drop.commit(self.store, target, lease, refresh)

    def drop_end(self) -> None:
        dropping, self._dropping = self._dropping, None
        if dropping is not None:
            dropping[0].release()

    def twin(self) -> LocalPeer:
        """Another peer on the same store, with a store object of its own (for a transfer
        stream in another thread)."""
        from cas.store import Store

        return LocalPeer(Store.open(self.store.path))

    # -- reading -----------------------------------------------------------------------------

    def hello(self) -> Hello:
        cfg = self.store.config
        return Hello(self.store.uuid or "", cfg.version, msgspec.to_builtins(cfg.chunker),
                     cfg.derives, str(self.store.settings.get("description") or ""), CAPS)

    def refs(self) -> dict[str, str]:
        """Every model, tag and pin ref: name -> object id (hex)."""
        reg = self.store.registry
        out: dict[str, str] = {}
        for prefix in SYNCED_PREFIXES:
            for ref, sha in reg.refs_under(prefix).items():
                out[ref.decode()] = sha.decode()
        return out

    def registry_objects(self, wants: list[str], haves: list[str]) -> list[tuple[int, bytes]]:
        return rt.missing_objects(self.store.registry, [w.encode() for w in wants],
                                  [h.encode() for h in haves])

    def closure(self, blobs: list[str]) -> list[bytes]:
        """The ids of every object the manifests ``blobs`` need (chunk lists, chunks, bases).

        Raises:
            NotFoundError: a manifest's content is not complete here (named).
        """
        from cas import graph

        reg = self.store.registry
        manifests = [Manifest.decode(reg.blob(b.encode())) for b in blobs]
        c = graph.needs(self.store, manifests)
        if c.unreadable:
            oid, why = next(iter(c.unreadable.items()))
            raise NotFoundError(f"chunk list {oid.hex()} cannot be read here: {why}")
        return sorted(c.ids)

    def locations(self) -> list[bytes]:
        """This store's location log (its own entry brought up to date first)."""
        from cas import locations

        try:
            locations.refresh(self.store)
        except CasError:
            pass  # a store that cannot be written still answers with what it has
        return locations.encoded(self.store)

    def merge_locations(self, entries: list[bytes]) -> int:
        from cas import locations

        return locations.merge(self.store, entries)

    def missing(self, ids: list[bytes]) -> list[bytes]:
        return transfer.missing(self.store, ids)

    def send(self, ids: list[bytes], plain: bool = False, part: tuple[int, int] | None = None
             ) -> tuple[int, Iterator[bytes | memoryview]]:
        """The size (about) and the byte pieces of the transfer packs holding ``ids`` (all
        held here); ``plain``: derived chunks re-encoded plainly, for a receiver that keeps
        none (a store made with ``--no-derive``); ``part``: only that share of them, for
        parallel streams (:func:`cas.transfer.select`)."""
        generations = transfer.select(transfer.plan(self.store, ids, plain), part)
        return (transfer.size(generations),
                transfer.stream(self.store, generations, plain=plain))

    # -- writing -----------------------------------------------------------------------------

    def put_registry_objects(self, objects: list[tuple[int, bytes]]) -> int:
        with self.store.writing():
            return len(rt.store_objects(self.store.registry, objects))

    def receive(self, pieces: Iterable[bytes | memoryview],
                expect: transfer.Expected | None = None) -> transfer.TransferStats:
        """Receive the transfer packs in ``pieces`` (inside :meth:`session`); ``expect``:
        what they may carry (a bundle's declared content)."""
        with transfer.Prefetch(pieces) as ahead:
            f = io.BufferedReader(transfer.IterReader(ahead), 1 << 20)
            return transfer.receive(self.store, f, self._lease, expect)

    def absent(self) -> list[str]:
        """Ids of the versions registered here without their content (:mod:`cas.presence`)."""
        from cas import presence

        return sorted(presence.load(self.store.backend))

    def present(self, blobs: list[str]) -> list[str]:
        """The manifest blobs among ``blobs`` whose versions' content this store keeps: a
        version of one of its models that keeps data here (live, tagged, pinned, or removed
        within the restore window) and is not absent (:mod:`cas.presence`). Anything else,
        a manifest it merely fetched included, is not present."""
        import time

        from cas import graph, presence
        from cas.rootcache import RootCache

        absent = presence.load(self.store.backend)
        reg = self.store.registry
        kept: dict[str, set[str]] = {}
        since = graph.restore_cutoff(self.store, time.time())
        pinned = graph.pinned_here(self.store, [])
        cache = RootCache(self.store)
        tags = reg.tags()
        out = []
        for b in blobs:
            try:
                m = Manifest.decode(reg.blob(b.encode()))
            except CasError:
                continue
            if m.name not in kept:
                try:
                    summary = cache.summary(reg, m.name)
                    roots = graph.model_roots(reg, summary, tags, since, pinned, [])
                    kept[m.name] = {r.blob.decode() for r in roots if r.id not in absent}
                except CasError:
                    kept[m.name] = set()
            if b in kept[m.name]:
                out.append(b)
        try:
            cache.save()
        except CasError:
            pass
        return out

    def update_refs(self, updates: list[RefUpdate], force: bool = False,
                    content: list[str] | None = None) -> list[RefResult]:
        """Check and apply ``updates`` (models first, then tags and pins), each by
        compare-and-swap from the value the sender saw. A model ref moves only if its new
        tip's history is all here, it fast-forwards the current tip (or ``force``), and every
        version it adds has its manifest's name and number right. ``content``: the manifest
        blobs whose content the sender sent (None: every version the updates add); each must
        be complete here or its model's update is refused. A version added without its
        content is recorded absent (:mod:`cas.presence`); a version in ``content`` that was
        absent here and is now complete becomes present. A tag or pin is created, or moved
        with ``force``. Refused updates are reported, not raised; the others still apply."""
        order = sorted(updates, key=lambda u: (not u.ref.startswith("refs/models/"), u.ref))
        sent = None if content is None else set(content)
        self._lacking_memo = {}
        try:
            return self._apply(force, sent, order)
        finally:
            self._lacking_memo = None

    def _apply(self, force: bool, sent: set[str] | None,
               order: list[RefUpdate]) -> list[RefResult]:
        from cas import presence

        store = self.store
        out: list[RefResult] = []
        with store.writing():
            store.maintain_midx()  # what just arrived is looked up through one index
            reg = store.registry
            absent: dict[str, presence.Absent] = {}
            for u in order:
                try:
                    status = self._update(reg, u, force, sent, absent)
                except CasError as exc:
                    out.append(RefResult(u.ref, "rejected", f"{exc.code}: {exc.message}"))
                    continue
                out.append(RefResult(u.ref, status))
            arrived = set()
            for blob in sorted(sent or ()):
                try:
                    m = Manifest.decode(reg.blob(blob.encode()))
                except CasError:
                    continue
                if m.id is not None and self._lacking([m]) == []:
                    arrived.add(m.id)
            if absent or arrived:
                presence.update(store.backend, absent, arrived - set(absent))
            if arrived - set(absent):  # content that arrives counts as a use (eviction order)
                from cas import access

                access.record(store.path, sorted(arrived - set(absent)))
        return out

    def rebase_model(self, u: RefUpdate, *, renumber: bool, force: bool = False,
                     content: list[str] | None = None) -> RefResult:
        """Replay this store's commits of model ref ``u.ref`` (at ``u.old``) on the other
        side's tip ``u.new`` (:mod:`cas.rebase`), after the checks :meth:`update_refs` makes
        of the versions ``u.new`` brings. Refusals are reported, not raised."""
        from cas import presence
        from cas.rebase import rebase

        kind, name = check_ref_name(u.ref)
        store = self.store
        sent = None if content is None else set(content)
        with store.writing():
            reg = store.registry
            try:
                if kind != "model" or u.old is None:
                    raise ConflictError(f"{u.ref}: only a model this store has is rebased")
                current = reg.head(name)
                if current != u.old.encode():
                    raise ConflictError(f"{u.ref} moved while this command ran; try again")
                rt.check_reachable(reg, u.new.encode(), [current])
                missing_content = self._check_versions(reg, name, current, u.new.encode(),
                                                       sent)
                done = rebase(store, name, current, u.new.encode(), renumber=renumber,
                              force=force)
            except CasError as exc:
                return RefResult(u.ref, "rejected", f"{exc.code}: {exc.message}")
            st = reg.state(name)
            seqs = {seq for seq in missing_content}
            if seqs:
                presence.update(store.backend, {st.version(s).id: presence.Absent(name, s)
                                                for s in seqs if s in st.live})
        why = f"rebased: {done.replayed} commit(s) of this store replayed on the remote's"
        if done.renumbered:
            why += "; renumbered " + ", ".join(f"v{a} -> v{b}" for a, b in done.renumbered)
        return RefResult(u.ref, "ok", why)

    def _update(self, reg: Registry, u: RefUpdate, force: bool, sent: set[str] | None,
                absent: dict[str, object]) -> str:
        ref = u.ref.encode()
        new = u.new.encode()
        kind, name = check_ref_name(u.ref)
        try:
            current: bytes | None = reg.repo.refs[ref]
        except KeyError:
            current = None
        if current == new:
            return "up-to-date"
        expected = u.old.encode() if u.old else None
        if current != expected and not force:
            raise ConflictError(f"{u.ref} is at {_short(current)} here, not "
                                f"{_short(expected)} as the sender saw (fetch, then retry)")
        known = [current] if current else []
        rt.check_reachable(reg, new, known)
        if kind == "model":
            if current is not None and not force and not rt.is_ancestor(reg, current, new):
                raise ConflictError(f"{u.ref}: not a fast-forward (the model has versions here "
                                    "the sender lacks); pull first, or --force")
            if current is None:
                reg._check_name_free(name)  # noqa: SLF001 - the registry's one name check
            missing_content = self._check_versions(reg, name, current, new, sent)
        else:
            target = rt.tag_target(reg, new)
            if target is None:
                raise VerifyError(f"{u.ref} does not name a tag of a commit")
            model = name.split("@", 1)[0]
            head = reg.head(model)
            if head is None or not rt.is_ancestor(reg, target, head):
                raise VerifyError(f"{u.ref} names a commit outside model {model}'s history")
            if current is not None and not force:
                raise ConflictError(f"{u.ref} exists here with another value; --force "
                                    "replaces it")
        if kind == "model":
            # Versions that arrive without their content are recorded absent before the ref
            # names them: a crash between the two leaves an entry for a version not (yet)
            # registered, which nothing reads, never a version that looks whole and is not.
            from cas import presence

            st = reg.state(name, new)
            mine: dict[str, presence.Absent] = {}
            for seq in missing_content:
                mine[st.version(seq).id] = presence.Absent(name, seq)
            for root in self._kept_without_content(reg, st):
                mine[root.id] = presence.Absent(name, root.seq)
            if mine:
                presence.update(self.store.backend, mine)
                absent.update(mine)
        reg._move_ref(ref, current or ZERO, new)  # noqa: SLF001 - compare-and-swap
        return "ok"

    def _kept_without_content(self, reg: Registry, st: object) -> list[object]:
        """Versions of the model ``st`` that are not live but whose data this store would
        keep (tagged, pinned, removed within the restore window) and whose content is not
        here: the sender did not hold or send it."""
        import time

        from cas import graph

        problems: list[str] = []
        tags = reg.tags(st.name)  # type: ignore[attr-defined]
        pinned = graph.pinned_here(self.store, problems)
        since = graph.restore_cutoff(self.store, time.time())
        out = []
        for r in graph.model_roots(reg, st, tags, since, pinned, problems):  # type: ignore[arg-type]
            if r.why == graph.LIVE:
                continue
            try:
                m = Manifest.decode(reg.blob(r.blob))
            except CasError:
                continue
            if self._lacking([m]):
                out.append(r)
        return out

    def _check_versions(self, reg: Registry, name: str, current: bytes | None,
                        new: bytes, sent: set[str] | None) -> list[int]:
        """Every version live at ``new`` and not at ``current`` is a manifest of ``name``
        with its own number; each whose content was sent (``sent``: blob ids, None: all) is
        complete here. Returns the numbers of the added versions whose content is not here
        (to be recorded absent)."""
        before = set(reg.commit_versions(current.decode()).values()) if current else set()
        added = {seq: blob for seq, blob in reg.commit_versions(new.decode()).items()
                 if blob not in before}
        without = []
        for seq, blob in sorted(added.items()):
            m = Manifest.decode(reg.blob(blob))
            if m.name != name or m.seq != seq:
                raise VerifyError(f"refs/models/{name} v{seq}: its manifest says {m.name} "
                                  f"v{m.seq}")
            lacking = self._lacking([m])
            if not lacking:
                continue
            if sent is None or blob.decode() in sent:
                raise VerifyError(f"refs/models/{name} v{seq}: {len(lacking)} objects it needs "
                                  f"are not here (first {lacking[0]})")
            without.append(seq)
        return without

    def _lacking(self, manifests: list[Manifest]) -> list[str]:
        """Ids (hex) of objects ``manifests`` need that are not usable here (remembered per
        manifest for the rest of one :meth:`update_refs`)."""
        from cas import graph

        memo = self._lacking_memo
        key = b"".join(sorted(m.encode() for m in manifests)) if memo is not None else b""
        if memo is not None and key in memo:
            return memo[key]
        c = graph.needs(self.store, manifests)
        if c.unreadable:
            found = [oid.hex() for oid in c.unreadable]
        else:
            found = [oid.hex() for oid in transfer.missing(self.store, c.ids)]
        if memo is not None:
            memo[key] = found
        return found


def check_ref_name(ref: str) -> tuple[str, str]:
    """``(kind, name)`` of a ref a sync may move: ``model`` with the model name, ``tag`` with
    ``NAME@TAG``, ``pin`` with ``NAME@ID``.

    Raises:
        SchemaError: any other ref, or a name that is not valid (path traversal included).
    """
    for prefix, kind in ((MODEL_REF_PREFIX, "model"), (TAG_REF_PREFIX, "tag"),
                         (PIN_REF_PREFIX, "pin")):
        p = prefix.decode()
        if not ref.startswith(p):
            continue
        rest = ref[len(p):]
        try:
            if kind == "model":
                validate_model_name(rest)
                return kind, rest
            if kind == "pin":
                scope, _, rest = rest.partition("/")
                if not is_pin_scope(scope):
                    raise SchemaError(f"pin scope {scope!r}")
            model, at, label = rest.partition("@")
            validate_model_name(model)
            if not at:
                raise SchemaError("no @")
            if kind == "tag":
                validate_tag(label)
            elif not is_version_id(label):
                raise SchemaError(f"pin id {label!r}")
            return kind, rest
        except CasError as exc:
            raise SchemaError(f"ref {ref!r} is not a valid {kind} ref: {exc.message}") from None
    raise SchemaError(f"ref {ref!r} is not a ref cas syncs")


def _short(sha: bytes | None) -> str:
    return sha.decode()[:12] if sha else "nothing"
