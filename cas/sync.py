"""push, fetch, pull and clone: models between this store and a remote.

Both directions are one exchange between two :class:`cas.peer.LocalPeer`-like sides (a
directory remote is a store opened here; ssh and http remotes are proxies, :mod:`cas.rpc`):

1. the receiver's refs are read; what to move is decided here (a model ref only
   fast-forwards; a tag or pin is only created, unless ``--force``);
2. the registry objects the receiver lacks go first (git objects: self-verifying ids);
3. the side holding the content lists every object the new versions need (chunk lists,
   chunks, derived chunks' bases), the receiver answers which it lacks, and only those move,
   in transfer packs it verifies before they become visible (:mod:`cas.transfer`);
4. the receiver moves each ref by compare-and-swap after checking that the new tip's
   history and every object its new versions need are there (:meth:`LocalPeer.update_refs`).

Remote-tracking refs (``refs/remotes/<remote>/models/NAME``, ``.../tags/...``,
``.../pins/...``) record what a configured remote held when last seen; they protect nothing
from gc here and are not models of this store.

Chunker parameters that differ between the two stores: objects are content-addressed, so
moving them is correct; files added on either side afterwards dedupe less against what came
from the other. Accepted with the warning ``W_CHUNKER_DIFFERS`` (the same rule for bundles).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from cas import registry_transfer as rt
from cas import remotes as rem
from cas import transfer
from cas.errors import ArgsError, CasError, CasWarning, ConflictError, NetError, NotFoundError
from cas.rebase import both_added
from cas.peer import SYNCED_PREFIXES, LocalPeer, RefResult, RefUpdate, check_ref_name
from cas.commits import parse_trailers
from cas.format.manifest import Manifest
from cas.names import parse_version_spec
from cas.registry import MODEL_REF_PREFIX, TAG_REF_PREFIX, Registry
from cas.store import Progress, Store

TRACKING_PREFIX = "refs/remotes/"


class SyncResult(msgspec.Struct):
    """What a push, pull or fetch did."""

    remote: str
    url: str
    refs: list[RefResult] = []
    registry_objects: int = 0
    #: Objects (and their stored bytes with entry headers) that moved, and that did not
    #: need to (the receiver held them).
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0
    packs: int = 0
    seconds: float = 0.0
    #: fetch: the remote's refs as recorded here (``ok``: new or moved, ``up-to-date``).
    fetched: list[RefResult] = []
    warnings: list[CasWarning] = []

    @property
    def rejected(self) -> list[RefResult]:
        return [r for r in self.refs if r.status == "rejected"]


def connect(store: Store | None, spec: str, *, create: bool = False,
            like: Store | None = None) -> tuple[str, rem.RemoteUrl, Any]:
    """``(remote name or "", parsed URL, peer)`` for a configured name or a URL. With
    ``create``, a directory where no store exists becomes one with the parameters of
    ``like``.

    Raises:
        ArgsError: an unknown name or bad URL, or the remote is this store.
        NotFoundError: nothing is there (without ``create``).
    """
    if store is not None:
        name, url, remote = rem.resolve(store.backend, spec)
    else:
        name, url, remote = "", rem.parse_url(spec), rem.Remote(spec)
    if url.kind == "dir":
        path = Path(url.path or url.url)
        if store is not None and path.resolve() == store.path.resolve():
            raise ArgsError(f"remote {spec!r} is this store")
        if create and not (path / "config.json").exists():
            src = like or store
            Store.init(path, derive=src.config.derives if src else None,
                       chunker=src.config.chunker if src else None).close()
        target = Store.open(path, cache_for=store)
        return name, url, LocalPeer(target)
    from cas.rpc import connect as rpc_connect
    from cas.tokens import credential

    peer = rpc_connect(url, remote, credential(store.path if store else None, name))
    try:
        peer.hello()
    except NotFoundError:
        src = like or store
        if not create or src is None:
            peer.close()
            raise
        peer.init(msgspec.to_builtins(src.config.chunker), src.config.derives)
    except BaseException:
        peer.close()
        raise
    return name, url, peer


def _chunker_warning(store: Store, hello: Any) -> list[CasWarning]:
    ours = msgspec.to_builtins(store.config.chunker)
    if dict(hello.chunker) != ours:
        return [CasWarning("W_CHUNKER_DIFFERS",
                           "the remote cuts files with other chunker parameters: what moves is "
                           "correct, but files added later dedupe less across the two stores")]
    return []


def _hello(store: Store, remote: str, peer: Any, result: SyncResult) -> None:
    """Greet ``peer``: warn if its chunker differs; remember its UUID for ``remote``."""
    hello = peer.hello()
    result.warnings += _chunker_warning(store, hello)
    if remote and hello.uuid:
        known = rem.load(store.backend).get(remote)
        if known is not None and known.uuid != hello.uuid:
            with store.writing():
                rem.record_uuid(store.backend, remote, hello.uuid)


def _share_locations(store: Store, peer: Any, result: SyncResult, send: bool) -> None:
    """Merge the peer's location log into this store's (both directions with ``send``, as a
    push does). The log is advisory: failing to share it warns, never fails the sync."""
    from cas import locations

    try:
        locations.refresh(store)
        if send:
            peer.merge_locations(locations.encoded(store))
        locations.merge(store, peer.locations())
    except CasError as exc:
        result.warnings.append(CasWarning("W_LOCATIONS_NOT_SHARED",
                                          f"the location log was not shared: {exc.message}"))
    from cas import copies

    try:  # numcopies/mincopies: the higher serial wins on both sides
        copies.adopt(store, peer.copies())
        if send:
            peer.merge_copies(copies.encoded(store.registry))
    except CasError as exc:
        result.warnings.append(CasWarning("W_COPIES_NOT_SHARED",
                                          f"the numcopies setting was not shared: "
                                          f"{exc.message}"))


def _model_of(ref: str) -> str:
    kind, name = check_ref_name(ref)
    return name if kind == "model" else name.split("@", 1)[0]


def _select(refs: dict[str, str], names: Iterable[str]) -> dict[str, str]:
    """The refs of the models ``names`` (every synced ref without names)."""
    wanted = set(names)
    out = {}
    for ref, sha in refs.items():
        try:
            model = _model_of(ref)
        except CasError:
            continue  # a ref no sync moves is left alone
        if not wanted or model in wanted:
            out[ref] = sha
    return out


def _selection(names: list[str]) -> dict[str, set[str] | None]:
    """``NAME`` or ``NAME@V`` arguments: model -> the version selectors named (None: every
    version).

    Raises:
        ArgsError: a malformed name or selector.
    """
    out: dict[str, set[str] | None] = {}
    for n in names:
        spec = parse_version_spec(n)
        if spec.selector is None:
            out[spec.name] = None
        elif out.get(spec.name, set()) is not None:
            out.setdefault(spec.name, set()).add(spec.selector)  # type: ignore[union-attr]
    return out


def _live(reg: Registry, commit: str | None) -> dict[int, str]:
    """seq -> manifest blob id of the versions live at ``commit`` (none if it is None or
    not here)."""
    if not commit or not rt.has(reg, commit.encode()):
        return {}
    return {seq: b.decode() for seq, b in reg.commit_versions(commit).items()}


def _resolve_at(reg: Registry, model: str, tip: str, selector: str,
                refs: dict[str, str]) -> str:
    """The manifest blob of version ``selector`` (number, tag in ``refs``, or id prefix) of
    ``model`` at commit ``tip``.

    Raises:
        NotFoundError: no such version there.
    """
    live = _live(reg, tip)
    if selector.isdigit() and int(selector) in live:
        return live[int(selector)]
    tag = refs.get(f"{TAG_REF_PREFIX.decode()}{model}@{selector}")
    if tag is not None:
        target = rt.tag_target(reg, tag.encode())
        if target is not None:
            added = parse_trailers(reg._commit(target).message)  # noqa: SLF001
            for seq in added.versions:
                if seq in live:
                    return live[seq]
    if len(selector) >= 4:
        for _seq, blob in sorted(live.items()):
            m = Manifest.decode(reg.blob(blob.encode()))
            if m.id is not None and m.id.startswith(selector):
                return blob
    raise NotFoundError(f"{model}@{selector}: no such live version")


class _Job(msgspec.Struct):
    """One model whose content may move: its selectors (None: every version that keeps
    data), the receiver's tip (``old``) and the sender's (``new``)."""

    model: str
    selectors: set[str] | None
    old: str | None
    new: str


def _content(reg: Registry, sender: Any, receiver: Any, jobs: list[_Job],
             refs: dict[str, str], cutoff: float, receiver_absent: set[str]) -> list[str]:
    """The manifest blobs whose content to move, asked of both sides in one call each: the
    selected versions; for a model whose ref moves, every version at ``new`` that keeps data
    (live, tagged, pinned, removed at or after ``cutoff``: still restorable); for a model
    already in step, those the receiver registered without their content
    (``receiver_absent``: version ids). Only those the sender holds, less those the
    receiver holds."""
    by_model = _labels(refs)
    cand: list[str] = []
    for job in jobs:
        if job.selectors is not None:
            cand += sorted({_resolve_at(reg, job.model, job.new, v, refs)
                            for v in job.selectors})
            continue
        if job.old == job.new and not receiver_absent:
            continue  # in step, and the receiver lacks no content: nothing to ask
        roots = _roots_at(reg, job.model, job.new, by_model.get(job.model, ({}, set())),
                          cutoff)
        if job.old == job.new:
            roots = [r for r in roots if r.id in receiver_absent]
        cand += sorted({r.blob.decode() for r in roots})
    if not cand:
        return []
    cand = sender.present(cand)
    there = set(receiver.present(cand)) if cand else set()
    return [b for b in cand if b not in there]


def _labels(refs: dict[str, str]) -> dict[str, tuple[dict[str, bytes], set[str]]]:
    """model -> (its tags: tag -> tag object id, its pinned version ids), in one pass."""
    out: dict[str, tuple[dict[str, bytes], set[str]]] = {}
    for ref, sha in refs.items():
        if ref.startswith(MODEL_REF_PREFIX.decode()):
            continue
        try:
            kind, name = check_ref_name(ref)
        except CasError:
            continue
        owner, _, label = name.rpartition("@")
        tags, pins = out.setdefault(owner, ({}, set()))
        if kind == "tag":
            tags[label] = sha.encode()
        else:
            pins.add(label)
    return out


def _roots_at(reg: Registry, model: str, commit: str,
              labels: tuple[dict[str, bytes], set[str]], cutoff: float) -> list[Any]:
    """The versions of ``model`` at ``commit`` that keep data: live, tagged or pinned (by
    ``labels``), removed at or after ``cutoff``."""
    from cas import graph

    tags: dict[tuple[str, str], str] = {}
    for label, sha in labels[0].items():
        target = rt.tag_target(reg, sha)
        if target is not None:
            tags[(model, label)] = target.decode()
    pinned = {(model, vid) for vid in labels[1]}
    st = reg.state(model, commit.encode())
    return graph.model_roots(reg, st, tags, cutoff, pinned, [])


def _cutoff(store: Store) -> float:
    """Versions removed at or after this time are still restorable here: their content
    travels with their model."""
    from cas import graph

    return graph.restore_cutoff(store, time.time())


#: A transfer estimated (at the chunker's average chunk size) above this many bytes uses
#: parallel streams over ssh and http (``transfer_streams``); smaller ones are not worth the
#: extra connections.
PARALLEL_MIN_BYTES = 64 << 20


def _move_content(src: Any, dst: Any, blobs: list[str], result: SyncResult,
                  progress: Progress | None, streams: int = 1) -> None:
    """Send what ``dst`` lacks of the content of manifests ``blobs`` (held by ``src``), over
    ``streams`` parallel connections when the transfer is large and one side is a server
    that takes parts."""
    if not blobs:
        return
    ids = src.closure(blobs)
    lacking = dst.missing(ids)
    result.objects_skipped += len(ids) - len(lacking)
    if not lacking:
        return
    # A receiver that keeps no derived chunks (--no-derive) gets them re-encoded plainly.
    plain = not dst.hello().derives
    remote = dst if isinstance(src, LocalPeer) else src
    estimate = len(lacking) * remote.hello().chunker.get("avg_size", 65536)
    if (streams > 1 and estimate >= PARALLEL_MIN_BYTES and not isinstance(remote, LocalPeer)
            and "send-parts-1" in remote.hello().caps):
        _parallel(src, dst, lacking, plain, streams, result, progress)
        return
    total, pieces = src.send(lacking, plain)
    _add(result, dst.receive(transfer.counted(pieces, total, progress)))


def _streams(store: Store) -> int:
    from cas.settings import transfer_streams

    return transfer_streams(store.settings.get("transfer_streams"))


def _add(result: SyncResult, stats: transfer.TransferStats) -> None:
    result.objects_sent += stats.objects
    result.bytes_sent += stats.bytes
    result.packs += stats.packs


def _parallel(src: Any, dst: Any, ids: list[bytes], plain: bool, n: int, result: SyncResult,
              progress: Progress | None) -> None:
    """Move ``ids`` in ``n`` parts at once, each over its own pair of peers (the given pair
    carries part 0; the others are twins: a new connection, a store object of their own),
    then the objects that need others sent with them, over the given pair. Every part is a
    transfer of its own: its packs are checkpoints whatever happens to the others."""
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    totals = [0] * (n + 1)
    done = [0] * (n + 1)

    def report(i: int) -> Callable[[int, int, str], None] | None:
        if progress is None:
            return None

        def update(sent: int, total: int, label: str) -> None:
            with lock:
                done[i], totals[i] = sent, total
                progress(sum(done), sum(totals), label)
        return update

    def part(i: int) -> transfer.TransferStats:
        twins = 0 < i < n
        pair = (src.twin(), dst.twin()) if twins else (src, dst)
        try:
            with contextlib.ExitStack() as stack:
                if twins:  # what arrives is kept from a gc, as on the given pair
                    stack.enter_context(pair[1].session("transfer"))
                total, pieces = pair[0].send(ids, plain, (i, n))
                return pair[1].receive(transfer.counted(pieces, total, report(i)))
        finally:
            if twins:
                for peer in pair:
                    peer.close()

    with ThreadPoolExecutor(n, thread_name_prefix="cas-stream") as pool:
        futures = [pool.submit(part, i) for i in range(n)]
        failures = []
        for f in futures:
            try:
                _add(result, f.result())
            except BaseException as exc:  # noqa: BLE001 - the first is raised below
                failures.append(exc)
    if failures:
        raise failures[0]
    _add(result, part(n))


def _track(store: Store, remote: str, theirs: dict[str, str], prune: bool) -> None:
    """Record ``theirs`` (the remote's refs) as remote-tracking refs; with ``prune``, drop
    tracking refs of refs the remote no longer has."""
    if not remote:
        return
    reg = store.registry
    base = f"{TRACKING_PREFIX}{remote}/"
    have = {k.decode(): v.decode() for k, v in reg.refs_under(base.encode()).items()}
    wanted = {base + r[len("refs/"):]: sha for r, sha in theirs.items()}
    if have == wanted or (not prune and all(have.get(k) == v for k, v in wanted.items())):
        return
    with store.writing():
        have = {k.decode(): v.decode() for k, v in reg.refs_under(base.encode()).items()}
        for ref, sha in theirs.items():
            local = base + ref[len("refs/"):]
            if have.get(local) != sha and rt.has(reg, sha.encode()):
                reg._move_ref(local.encode(),  # noqa: SLF001 - compare-and-swap
                              have[local].encode() if local in have else b"0" * 40,
                              sha.encode())
        if prune:
            for local in have:
                if local not in wanted:
                    reg.delete_ref(local.encode())


def tracking_refs(store: Store, remote: str) -> dict[str, str]:
    """What ``remote`` held when last seen: its ref names -> ids."""
    base = f"{TRACKING_PREFIX}{remote}/"
    return {"refs/" + k.decode()[len(base):]: v.decode()
            for k, v in store.registry.refs_under(base.encode()).items()}


# -- push ----------------------------------------------------------------------------------------


def push(store: Store, spec: str, names: list[str] = (), *, force: bool = False,  # type: ignore[assignment]
         progress: Progress | None = None) -> SyncResult:
    """Push models ``names`` (``NAME``, or ``NAME@V`` for the content of one version; every
    model without names), with their tags and pins, to ``spec``: a directory where no store
    is yet becomes one. See the module docstring.

    Raises:
        ArgsError | NotFoundError: a bad remote, or a named model this store does not have.
        VerifyError: the receiver found bad bytes (nothing of them became visible).
    """
    selection = _selection(list(names))
    t0 = time.monotonic()
    local = LocalPeer(store)
    ours = _select(local.refs(), selection)
    for n in selection:
        if f"{MODEL_REF_PREFIX.decode()}{n}" not in ours:
            raise NotFoundError(f"model {n!r} is not registered here")
    remote, url, peer = connect(store, spec, create=True)
    result = SyncResult(remote, url.url)
    with contextlib.closing(peer):
        _hello(store, remote, peer, result)
        theirs = peer.refs()
        reg = store.registry
        cutoff = _cutoff(store)
        updates, jobs = [], []
        for ref, sha in sorted(ours.items()):
            old = theirs.get(ref)
            model_ref = ref.startswith(MODEL_REF_PREFIX.decode())
            if old != sha:
                reason = _refuse(reg, ref, old, sha, force)
                if reason:
                    result.refs.append(RefResult(ref, "rejected", reason))
                    continue
                updates.append(RefUpdate(ref, old, sha))
            else:
                result.refs.append(RefResult(ref, "up-to-date"))
            if model_ref:
                model = ref[len(MODEL_REF_PREFIX):]
                jobs.append(_Job(model, selection.get(model), old, sha))
        content = _content(reg, local, peer, jobs, ours, cutoff, set(peer.absent()))
        if updates or content:
            with peer.session("push"):
                if updates:
                    haves = [s.encode() for s in theirs.values() if rt.has(reg, s.encode())]
                    objs = rt.missing_objects(reg, [u.new.encode() for u in updates], haves)
                    if objs:
                        peer.put_registry_objects(objs)
                    result.registry_objects = len(objs)
                _move_content(local, peer, content, result, progress, _streams(store))
                result.refs += peer.update_refs(updates, force, content)
            theirs = peer.refs()
        _track(store, remote, theirs, prune=not selection)
        _share_locations(store, peer, result, send=True)
    result.refs.sort(key=lambda r: r.ref)
    result.seconds = time.monotonic() - t0
    return result


def _refuse(reg: Registry, ref: str, old: str | None, new: str, force: bool) -> str:
    """Why the sender will not ask to move ``ref`` from ``old`` to ``new`` ("" if it will)."""
    if old is None or force:
        return ""
    if ref.startswith(MODEL_REF_PREFIX.decode()):
        if rt.has(reg, old.encode()) and rt.is_ancestor(reg, old.encode(), new.encode()):
            return ""
        if rt.has(reg, old.encode()) and rt.is_ancestor(reg, new.encode(), old.encode()):
            return "the other side is ahead (it has versions or changes this side lacks)"
        if not rt.has(reg, old.encode()):
            return ("not a fast-forward: the other side has changes this store has not "
                    "seen (pull first, then push; or --force)")
        return ("diverged: both sides changed the model since they last synced "
                "(pull, then push; or --force)")
    return "exists on the other side with another value (--force replaces it)"


# -- fetch and pull ------------------------------------------------------------------------------


def _fetch(store: Store, peer: Any, remote: str, result: SyncResult, prune: bool,
           wanted: Iterable[str] = ()) -> dict[str, str]:
    """Bring the registry objects of every ref of ``peer`` and record them as tracking refs;
    return the peer's refs whose history is here. A ref whose objects the peer cannot send
    (damaged there) or that do not check out is reported ``rejected`` and left out: it does
    not stop the others (a warning only, for a model outside ``wanted`` when models are
    named)."""
    wanted = set(wanted)
    _hello(store, remote, peer, result)
    theirs: dict[str, str] = {}
    for ref, sha in peer.refs().items():
        try:
            check_ref_name(ref)
        except CasError:
            continue  # a ref no sync moves is ignored
        theirs[ref] = sha
    reg = store.registry
    wants = sorted({s for s in theirs.values() if not rt.has(reg, s.encode())})
    if wants:
        haves = sorted({v.decode() for p in (*SYNCED_PREFIXES, TRACKING_PREFIX.encode())
                        for v in reg.refs_under(p).values()})
        try:
            batches = [(wants, peer.registry_objects(wants, haves))]
        except CasError:
            # Something there is damaged: ask ref by ref, so the rest still comes.
            batches = []
            for w in wants:
                try:
                    batches.append(([w], peer.registry_objects([w], haves)))
                except CasError as exc:
                    _drop(theirs, {w}, result, exc, wanted)
        for shas, objs in batches:
            try:
                with store.writing():
                    rt.store_objects(reg, objs)
                result.registry_objects += len(objs)
            except CasError as exc:
                _drop(theirs, set(shas), result, exc, wanted)
                continue
            for s in shas:
                try:
                    rt.check_reachable(reg, s.encode())
                except CasError as exc:
                    _drop(theirs, {s}, result, exc, wanted)
    before = tracking_refs(store, remote) if remote else {}
    _track(store, remote, theirs, prune)
    result.fetched = [RefResult(ref, "up-to-date" if before.get(ref) == sha else "ok")
                      for ref, sha in sorted(theirs.items())]
    _share_locations(store, peer, result, send=False)
    return theirs


def _drop(theirs: dict[str, str], shas: set[str], result: SyncResult, exc: CasError,
          wanted: set[str]) -> None:
    """Leave out the refs whose values are ``shas``: rejected (with the error's code), or a
    warning for a model outside ``wanted`` (when models are named)."""
    for ref, sha in list(theirs.items()):
        if sha in shas:
            del theirs[ref]
            why = f"its history cannot be fetched: {exc.message}"
            if wanted and _model_of(ref) not in wanted:
                result.warnings.append(CasWarning("W_REF_NOT_FETCHED", f"{ref}: {why}"))
            else:
                result.refs.append(RefResult(ref, "rejected", f"{exc.code}: {why}"))


def fetch(store: Store, spec: str, track_as: str = "") -> SyncResult:
    """Bring ``spec``'s refs into remote-tracking refs, with their registry objects (no
    content). ``track_as``: the tracking namespace for a remote named by URL (none by
    default)."""
    t0 = time.monotonic()
    remote, url, peer = connect(store, spec)
    result = SyncResult(remote, url.url)
    with contextlib.closing(peer):
        _fetch(store, peer, remote or track_as, result, prune=True)
    result.refs = sorted(result.refs + result.fetched, key=lambda r: r.ref)
    result.seconds = time.monotonic() - t0
    return result


def pull(store: Store, spec: str, names: list[str] = (), *,  # type: ignore[assignment]
         progress: Progress | None = None, content: bool = True, rebase: bool = False,
         force: bool = False) -> SyncResult:
    """Fetch, then bring the named models (``NAME``, or ``NAME@V`` for one version's content;
    every remote model without names) here: the content of their versions that this store
    lacks and the remote holds, then fast-forward their refs; create tags and pins this store
    lacks. Versions whose content does not come (not selected, not held by the remote, or
    ``content=False``) are registered absent (:mod:`cas.presence`).

    A model changed on both sides has this store's commits replayed on the remote's tip
    (:mod:`cas.rebase`) when they add no version or the remote added none; when both added
    versions, only with ``rebase`` (this store's are renumbered; ``force`` also renumbers
    versions that already left this store). Otherwise it is ``rejected`` and nothing of it
    moves.
    """
    selection = _selection(list(names))
    t0 = time.monotonic()
    remote, url, peer = connect(store, spec)
    result = SyncResult(remote, url.url)
    local = LocalPeer(store)
    with contextlib.closing(peer):
        fetched = _fetch(store, peer, remote, result, prune=not selection,
                         wanted=selection)
        theirs = _select(fetched, selection)
        for n in selection:
            if f"{MODEL_REF_PREFIX.decode()}{n}" not in theirs:
                raise NotFoundError(f"model {n!r} is not on remote {spec}")
        ours = local.refs()
        reg = store.registry
        cutoff = _cutoff(store)
        updates, jobs, diverged = [], [], []
        for ref, sha in sorted(theirs.items()):
            old = ours.get(ref)
            model_ref = ref.startswith(MODEL_REF_PREFIX.decode())
            target = sha
            if old == sha:
                result.refs.append(RefResult(ref, "up-to-date"))
            elif old and model_ref and rt.is_ancestor(reg, sha.encode(), old.encode()):
                result.refs.append(RefResult(ref, "up-to-date", "this store is ahead"))
                target = old
            elif old and model_ref and not rt.is_ancestor(reg, old.encode(), sha.encode()):
                mine = [] if rebase else both_added(reg, old.encode(), sha.encode())
                if mine:  # refused before any content moves
                    result.refs.append(RefResult(ref, "rejected", (
                        f"E_CONFLICT: {ref[len(MODEL_REF_PREFIX):]}: both stores added "
                        "versions since they last synced (here: "
                        + ", ".join(f"v{s}" for s in mine)
                        + "); 'cas pull --rebase' renumbers this store's after the "
                          "remote's")))
                    continue
                diverged.append(RefUpdate(ref, old, sha))
            else:
                reason = _refuse(reg, ref, old, sha, False)
                if reason:
                    result.refs.append(RefResult(ref, "rejected", reason))
                    continue
                updates.append(RefUpdate(ref, old, sha))
            if model_ref and content:
                model = ref[len(MODEL_REF_PREFIX):]
                jobs.append(_Job(model, selection.get(model), old, target))
        blobs = _content(reg, peer, local, jobs, fetched, cutoff, set(local.absent()))
        if updates or blobs or diverged:
            with local.session("pull"):
                _move_content(peer, local, blobs, result, progress, _streams(store))
                # Models first (rebased ones too), then tags and pins, which may name
                # commits a rebase just wrote.
                result.refs += local.update_refs(
                    [u for u in updates if u.ref.startswith(MODEL_REF_PREFIX.decode())],
                    content=blobs)
                for u in diverged:
                    result.refs.append(local.rebase_model(u, renumber=rebase, force=force,
                                                          content=blobs))
                result.refs += local.update_refs(
                    [u for u in updates if not u.ref.startswith(MODEL_REF_PREFIX.decode())],
                    content=[])
    result.refs.sort(key=lambda r: r.ref)
    result.seconds = time.monotonic() - t0
    return result


def clone(spec: str, path: Path, progress: Progress | None = None,
          description: str | None = None, content: bool = True) -> tuple[Store, SyncResult]:
    """A new store at ``path`` with the remote's chunker parameters, the remote as
    ``origin``, and every model pulled (``content=False``: the registry only, every version
    absent until pulled or checked out).

    Raises:
        ConflictError: ``path`` holds a store already.
    """
    if (Path(path) / "config.json").exists():
        raise ConflictError(f"{path} is a store already; use 'cas pull' there")
    _, url, peer = connect(None, spec)
    with contextlib.closing(peer):
        hello = peer.hello()
    from cas.chunking import ChunkerParams

    chunker = msgspec.convert(hello.chunker, ChunkerParams)
    store = Store.init(path, derive=hello.derives, chunker=chunker, description=description)
    try:
        with store.writing():
            rem.add(store.backend, "origin", url.url)
        result = pull(store, "origin", progress=progress, content=content)
    except BaseException:
        store.close()
        raise
    return store, result


def get(store: Store, version: Any, spec: str | None = None,
        progress: Progress | None = None) -> SyncResult:
    """Bring the content of ``version`` (registered here, absent) from remote ``spec``, else
    from the first configured remote that holds it (those whose remote-tracking ref has it
    live first). No ref moves.

    Raises:
        NotFoundError: no remote could supply it (each one's reason named).
        NetError: ``CAS_OFFLINE=1`` and only network remotes hold it.
    """
    blob = live_blob(store, version).encode()
    names = [spec] if spec else holders_first(store, version.name, blob.decode())
    local = LocalPeer(store)
    reasons = []
    offline: NetError | None = None
    for r in names:
        try:
            remote, url, peer = connect(store, r)
        except CasError as exc:
            reasons.append(f"{r}: {exc.message}")
            if isinstance(exc, NetError):
                offline = offline or exc
            continue
        with contextlib.closing(peer):
            if not peer.present([blob.decode()]):
                reasons.append(f"{r}: does not hold its content")
                continue
            result = SyncResult(remote, url.url)
            t0 = time.monotonic()
            with local.session("get"):
                _move_content(peer, local, [blob.decode()], result, progress, _streams(store))
                local.update_refs([], content=[blob.decode()])
            result.seconds = time.monotonic() - t0
            from cas import access

            access.record(store.path, [version.id])  # a get is a use (eviction order)
            return result
    message = (f"{version.ref}: its content is not in this store and no remote supplied it"
               + (f" ({'; '.join(reasons)})" if reasons else " (no remote is configured)"))
    if offline is not None:
        raise NetError(message)  # the network was needed and not used (or not reachable)
    raise NotFoundError(message)


def live_blob(store: Store, version: Any) -> str:
    """The manifest blob (hex) of live ``version`` at its model's tip.

    Raises:
        NotFoundError: the version is not live here.
    """
    reg = store.registry
    head = reg.head(version.name)
    blob = reg.commit_versions(head.decode()).get(version.seq) if head is not None else None
    if blob is None:
        raise NotFoundError(f"{version.ref} is not live here")
    return blob.decode()


def holders_first(store: Store, model: str, blob: str) -> list[str]:
    """Configured remotes, those whose tracking ref of ``model`` has ``blob`` live first."""
    configured = sorted(rem.load(store.backend))
    reg = store.registry

    def has_it(r: str) -> bool:
        tip = tracking_refs(store, r).get(f"{MODEL_REF_PREFIX.decode()}{model}")
        return blob in _live(reg, tip).values()

    return sorted(configured, key=lambda r: not has_it(r))


def catalog(store: Store, spec: str) -> tuple[Store, SyncResult, Any]:
    """Fetch ``spec`` and return a view of this store that reads its refs as its own (see
    :mod:`cas.refview`), the fetch's result, and a function to call when done (it drops the
    tracking refs of a remote named by URL)."""
    from cas import refview

    name = spec if spec in rem.load(store.backend) else ""
    track = name or refview.URL_REMOTE
    result = fetch(store, spec, track_as=track)

    def done() -> None:
        if not name:
            _track(store, track, {}, prune=True)

    return refview.store_view(store, track), result, done
