"""The location log: which stores hold the content of which versions (``cas whereis``).

Carried in the registry on ``refs/cas/locations``: a commit whose tree holds one file per
store, ``<store uuid>.json`` (:class:`Entry`): the store's description, a serial number only
that store increases, when it wrote the entry, and the ids of the versions whose content it
holds, by model. Each store writes only its own entry (:func:`refresh`, before every sync);
entries of other stores arrive through syncs and are merged by serial (:func:`merge`: the
higher serial wins, so clocks play no part), so a host learns about stores it never
contacted. Entries from elsewhere are claims, shown as such; ``whereis --verify`` asks the
remotes themselves.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from cas.clock import iso_utc
from cas.commits import resolve_identity
from cas.errors import CasError, SchemaError

if TYPE_CHECKING:
    from cas.store import Store

REF = b"refs/cas/locations"
SCHEMA = "cas.location"
#: Entries larger than this are refused (500 models x 100 versions fit easily).
MAX_ENTRY_BYTES = 8 << 20
MAX_ENTRIES = 100_000


class Entry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    uuid: str
    serial: int
    updated_at: str
    #: model -> sorted ids of the versions whose content the store holds
    versions: dict[str, list[str]]
    description: str = ""
    schema: str = SCHEMA
    version: int = 1

    def encode(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"


def decode(raw: bytes) -> Entry:
    """Parse and check one entry.

    Raises:
        SchemaError: not an entry of this schema, or malformed.
    """
    if len(raw) > MAX_ENTRY_BYTES:
        raise SchemaError(f"location entry of {len(raw)} bytes is too large")
    try:
        e = msgspec.json.decode(raw, type=Entry)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"location entry: {exc}") from None
    from cas.commits import is_pin_scope

    if e.schema != SCHEMA or e.version != 1 or not is_pin_scope(e.uuid) or e.uuid == "all":
        raise SchemaError(f"location entry for {e.uuid!r}: not a version-1 {SCHEMA} entry")
    if e.serial < 0:
        raise SchemaError(f"location entry for {e.uuid}: negative serial")
    return e


def read(store: Store) -> dict[str, Entry]:
    """Every entry of this store's log, by store UUID (damaged ones are left out)."""
    try:
        found = store.registry.read_ref_files(REF)
    except CasError:
        return {}
    if found is None:
        return {}
    out = {}
    for path, raw in found[1].items():
        try:
            e = decode(raw)
        except SchemaError:
            continue
        if path == f"{e.uuid}.json".encode():
            out[e.uuid] = e
    return out


def _held(store: Store) -> dict[str, list[str]]:
    """model -> ids of the live versions whose content is here."""
    from cas import presence
    from cas.rootcache import RootCache

    absent = presence.load(store.backend)
    cache = RootCache(store)
    reg = store.registry
    out = {}
    for name in reg.model_names():
        try:
            s = cache.summary(reg, name)
        except CasError:
            continue
        ids = sorted(s.added[seq][1] for seq in s.live if seq in s.added
                     and s.added[seq][1] not in absent)
        if ids:
            out[name] = ids
    try:
        cache.save()
    except CasError:
        pass
    return out


def damage(store: Store) -> str | None:
    """Why the log cannot be read (a missing or damaged object), or None."""
    try:
        store.registry.read_ref_files(REF)
    except CasError as exc:
        return exc.message
    return None


def _commit(store: Store, entries: dict[str, Entry], subject: str) -> None:
    """Write ``entries`` as the new tip of the log (the caller holds the write lock). A log
    whose tip cannot be read is written over, on top of that tip: entries of other stores
    come back with the next syncs."""
    reg = store.registry
    try:
        found = reg.read_ref_files(REF)
    except CasError:
        found = None
    tip = found[0] if found else reg.refs_under(b"refs/cas/").get(REF)
    files = {f"{u}.json".encode(): e.encode() for u, e in sorted(entries.items())}
    if found is not None and found[1] == files:
        return
    reg.commit_ref_files(REF, tip, files, subject, resolve_identity())


def refresh(store: Store) -> Entry | None:
    """Bring this store's own entry up to date (a new serial only when what it holds or its
    description changed); returns it (None for a store without a UUID)."""
    uuid = store.uuid
    if not uuid:
        return None
    held = _held(store)
    desc = str(store.settings.get("description") or "")
    mine = read(store).get(uuid)
    if mine is not None and mine.versions == held and mine.description == desc:
        return mine  # nothing changed: no lock taken, nothing written
    with store.writing():
        entries = read(store)
        held = _held(store)
        mine = entries.get(uuid)
        if mine is not None and mine.versions == held and mine.description == desc:
            return mine
        # Above the last serial, and at least the time in seconds: a store whose log was lost
        # or damaged still outranks the entries of itself that others kept.
        serial = max((mine.serial + 1) if mine else 1, int(time.time()))
        entries[uuid] = Entry(uuid, serial, iso_utc(time.time()), held, desc)
        _commit(store, entries, f"locations: {uuid} holds "
                                f"{sum(len(v) for v in held.values())} versions")
        return entries[uuid]


def merge(store: Store, incoming: list[bytes]) -> int:
    """Merge entries from another store (its log) into this one's: per UUID the higher
    serial wins; this store's own entry is never taken from elsewhere. Returns how many
    entries changed. Malformed entries are ignored."""
    if len(incoming) > MAX_ENTRIES:
        return 0
    theirs = []
    for raw in incoming:
        try:
            theirs.append(decode(raw))
        except SchemaError:
            continue
    known = read(store)
    if not any(e.uuid != store.uuid and (e.uuid not in known
                                         or e.serial > known[e.uuid].serial) for e in theirs):
        return 0  # nothing newer: no lock taken
    with store.writing():
        entries = read(store)
        changed = 0
        for e in theirs:
            if e.uuid == store.uuid:
                continue
            have = entries.get(e.uuid)
            if have is None or e.serial > have.serial:
                entries[e.uuid] = e
                changed += 1
        if changed:
            _commit(store, entries, f"locations: merged {changed} entries")
        return changed


def encoded(store: Store) -> list[bytes]:
    return [e.encode() for _, e in sorted(read(store).items())]


class Holder(msgspec.Struct):
    uuid: str
    description: str
    #: When that store last wrote its entry (UTC, ISO 8601).
    updated_at: str
    #: Configured remotes of this store that reach it.
    remotes: list[str]
    here: bool = False
    #: ``--verify``: True/False as the remote answered; None when not asked or unreachable.
    verified: bool | None = None


class Where(msgspec.Struct):
    version: str
    id: str
    stores: list[Holder]


class WhereisResult(msgspec.Struct):
    versions: list[Where]
    warnings: list[object] = []


def whereis(store: Store, spec: str, verify: bool = False) -> WhereisResult:
    """Which stores hold the content of model ``spec``'s live versions (or of ``NAME@V``),
    from the location log; with ``verify``, each configured remote is asked.

    Raises:
        NotFoundError: no such model or version.
    """
    from cas import remotes as rem
    from cas.errors import CasWarning
    from cas.names import parse_version_spec

    vs = parse_version_spec(spec)
    reg = store.registry
    if vs.selector is None:
        st = reg.state(vs.name)
        versions = st.live_versions()
    else:
        versions = [store.resolve(spec)]
    result = WhereisResult([])
    why = damage(store)
    if why is not None:
        result.warnings.append(CasWarning(
            "W_LOCATIONS_DAMAGED", f"the location log could not be read ({why}); it is "
            "rewritten with this store's entry, and the next syncs bring the others back"))
    try:
        refresh(store)
    except CasError as exc:
        result.warnings.append(CasWarning("W_LOCATIONS_NOT_SAVED",
                                          f"this store's location entry: {exc.message}"))
    entries = read(store)
    configured = rem.load(store.backend)
    by_uuid: dict[str, list[str]] = {}
    for name, r in sorted(configured.items()):
        if r.uuid:
            by_uuid.setdefault(r.uuid, []).append(name)
    for v in versions:
        holders = []
        for uuid, e in sorted(entries.items()):
            if v.id in e.versions.get(v.name, []):
                holders.append(Holder(uuid, e.description, e.updated_at, by_uuid.get(uuid, []),
                                      uuid == store.uuid))
        result.versions.append(Where(v.ref, v.id, holders))
    if verify:
        from cas import sync

        head = reg.head(versions[0].name) if versions else None
        live = reg.commit_versions(head.decode()) if head else {}
        blobs = {v.ref: live[v.seq].decode() for v in versions if v.seq in live}
        for name in sorted(configured):
            try:
                _, _, peer = sync.connect(store, name)
            except CasError as exc:
                result.warnings.append(CasWarning("W_REMOTE_UNREACHABLE",
                                                  f"remote {name}: {exc.message}"))
                continue
            try:
                uuid = peer.hello().uuid
                there = set(peer.present(list(blobs.values())))
            except CasError as exc:
                result.warnings.append(CasWarning("W_REMOTE_UNREACHABLE",
                                                  f"remote {name}: {exc.message}"))
                continue
            finally:
                peer.close()
            for w in result.versions:
                ok = blobs.get(w.version) in there
                h = next((h for h in w.stores if h.uuid == uuid), None)
                if h is None and ok:
                    h = Holder(uuid, "", "", [name])
                    w.stores.append(h)
                if h is not None:
                    h.verified = ok
    return result
