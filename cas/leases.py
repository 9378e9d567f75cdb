"""Lock objects in the store: leases that work through the storage seam on any backend.

A lease is a small JSON record under ``locks/`` (``docs/format.md``, "Lock objects"). Writers of
new objects (``add``, later push, pull, bundle import) each hold a *shared* lease
``locks/shared-<token>.json`` for the whole operation, so several run at once. ``gc`` and repack
hold the one *exclusive* lease ``locks/gc.json``, whose record also carries gc's plan: the packs
it is about to delete or rewrite, which writers that start later must not deduplicate against.
Readers take no lease.

Invariants:

- A lease is only ever changed by compare-and-swap from the exact bytes last seen (renewal,
  publishing a plan, release by its holder; breaking by anyone else), so a renewal and a break
  never both succeed, and a lease once broken is never written back.
- A holder renews every ``ttl / 3`` (a daemon thread) and stops trusting its lease once the
  expiry it wrote has passed by its own clock; others call it stale only ``margin`` seconds
  after that expiry, by theirs. Clocks that agree within the margin therefore never let a
  lease be broken while its holder still trusts it.
- A lease held on this host by a process that no longer exists is stale at once.
- A record that cannot be read is never stale (a crash cannot leave one: every write is
  atomic); it holds until someone deletes it by hand.

``flock`` (:mod:`cas.locking`) stays the short exclusive lock around registry updates on a
local store; leases are what several hosts sharing a store agree through.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Collection
from types import TracebackType

import msgspec

from cas.clock import iso_utc
from cas.errors import ArgsError, LockError, from_os_error
from cas.format.canonical import canonical_json
from cas.ids import is_hex
from cas.locking import check_timeout, process_alive
from cas.storage import Backend

SCHEMA = "cas.lock"
VERSION = 1
#: The folder of lease records.
LOCKS = "locks"
#: The exclusive lease of gc and repack.
GC_LEASE = f"{LOCKS}/gc.json"
SHARED_PREFIX = f"{LOCKS}/shared-"
#: Shared leases of readers (a checkout's ``use``, a hold's ``keep``, a drop's ``drop``):
#: listed like any lease, but gc does not wait for them, since they write nothing it could
#: miss (cas.drop).
READER_PREFIX = f"{LOCKS}/reader-"
#: Seconds a lease lasts without renewal.
DEFAULT_TTL = 60.0
#: Seconds past a lease's expiry (by the reader's clock) before it is stale and may be broken.
DEFAULT_MARGIN = 30.0
#: Environment overrides of the two above (for integration tests; read when Leases is made).
TTL_ENV = "CAS_LEASE_TTL"
MARGIN_ENV = "CAS_LEASE_MARGIN"
#: Longest pause between two polls of a waiting acquirer or barrier.
MAX_POLL = 1.0

#: Called once per poll while waiting, with the names still waited for.
OnWait = Callable[[list[str]], None]


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The bytes of one lease (canonical JSON). Later versions only add fields."""

    schema: str
    version: int
    kind: str  # "shared" | "gc"; an unknown kind is a lease like any other
    token: str
    purpose: str
    host: str
    pid: int
    acquired_at: float
    renewed_at: float
    expires_at: float
    plan: tuple[str, ...] = ()

    def encode(self) -> bytes:
        fields = msgspec.structs.asdict(self)
        fields["plan"] = list(self.plan)
        return canonical_json(fields)


class Holder(msgspec.Struct, frozen=True):
    """One lease found under ``locks/``, as :meth:`Leases.holders` reports it.

    ``record`` is None when the object could not be read as a lease (``problem`` says why);
    such a lease is never stale.
    """

    name: str
    record: LeaseRecord | None
    stale: bool
    problem: str | None = None
    #: The bytes read (what a break must still find to delete the lease).
    raw: bytes | None = None

    def describe(self) -> str:
        """One line: who holds it and since when."""
        r = self.record
        if r is None:
            return f"{self.name} (unreadable: {self.problem}; delete it if no cas is running)"
        state = ", stale" if self.stale else ""
        return (f"{self.name} ({r.purpose}, pid {r.pid} on {r.host}, since "
                f"{iso_utc(r.acquired_at)}, expires {iso_utc(r.expires_at)}{state})")


def decode_record(raw: bytes) -> LeaseRecord:
    """Parse a lease record. Raises ValueError saying what is wrong."""
    try:
        record = msgspec.json.decode(raw, type=LeaseRecord)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
    if record.schema != SCHEMA:
        raise ValueError(f"schema is {record.schema!r}, not {SCHEMA!r}")
    if not all(math.isfinite(t) for t in (record.acquired_at, record.renewed_at,
                                          record.expires_at)):
        raise ValueError("a time is not a finite number")
    return record


def _setting(value: float | None, env: str, default: float) -> float:
    if value is None:
        text = os.environ.get(env)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ArgsError(f"{env}={text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ArgsError(f"lease {env.rsplit('_', 1)[-1].lower()} {value!r} must be a positive "
                        "number of seconds")
    return float(value)


class Leases:
    """The leases of one store's backend.

    Args:
        backend: the store's backend (every read and write goes through it).
        clock: UTC seconds now; every time written or compared comes from it.
        ttl: seconds a lease lasts without renewal (None: ``$CAS_LEASE_TTL`` or 60).
        margin: seconds past expiry before a lease is stale (None: ``$CAS_LEASE_MARGIN``
            or 30).
        host: this host's name as leases record it (default: the host name).
        sleep: how a waiting loop pauses between polls.
        autorenew: start a renewal thread for each lease acquired (off: call
            :meth:`Lease.renew` yourself, as tests with a fake clock do).
    """

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time,
                 ttl: float | None = None, margin: float | None = None,
                 host: str | None = None, sleep: Callable[[float], None] = time.sleep,
                 autorenew: bool = True) -> None:
        self.backend = backend
        self.clock = clock
        self.ttl = _setting(ttl, TTL_ENV, DEFAULT_TTL)
        self.margin = _setting(margin, MARGIN_ENV, DEFAULT_MARGIN)
        self.host = host if host is not None else socket.gethostname()
        self.sleep = sleep
        self.autorenew = autorenew

    # -- acquiring ---------------------------------------------------------------------------

    def _new_record(self, kind: str, purpose: str) -> LeaseRecord:
        now = self.clock()
        return LeaseRecord(schema=SCHEMA, version=VERSION, kind=kind, token=secrets.token_hex(16),
                           purpose=purpose, host=self.host, pid=os.getpid(), acquired_at=now,
                           renewed_at=now, expires_at=now + self.ttl)

    def acquire_shared(self, purpose: str, *, reader: bool = False) -> Lease:
        """Take a new shared lease (never waits: shared leases do not exclude each other).

        A writer reads :meth:`doomed_packs` *after* this returns: then either gc sees the
        lease when it lists writers after publishing its plan, or the writer sees the plan.

        Raises:
            DiskError | PermError: the record could not be written.
        """
        record = self._new_record("shared", purpose)
        name = f"{READER_PREFIX if reader else SHARED_PREFIX}{record.token}.json"
        raw = record.encode()
        try:
            self.backend.write(name, raw)
        except OSError as exc:
            raise from_os_error(exc, f"writing the lease {name}") from None
        return Lease(self, name, record, raw)

    def acquire_gc(self, purpose: str = "gc", wait: float = 0.0,
                   on_wait: OnWait | None = None) -> Lease:
        """Take the exclusive lease ``locks/gc.json``, waiting up to ``wait`` seconds for its
        holder to release it or go stale (a stale one is broken and taken over).

        Raises:
            LockError: still held after ``wait``; the message names the holder.
            DiskError | PermError: the backend failed.
        """
        deadline = self.clock() + check_timeout(wait)
        delay = 0.01
        while True:
            record = self._new_record("gc", purpose)
            raw = record.encode()
            seen = self._read_raw(GC_LEASE)
            held: str
            try:
                if seen is None:
                    if self.backend.swap(GC_LEASE, None, raw):
                        return Lease(self, GC_LEASE, record, raw)
                    continue  # taken between the read and the swap: look again
                holder = self._holder(GC_LEASE, seen)
                if holder.stale:
                    if self.backend.swap(GC_LEASE, seen, raw):
                        return Lease(self, GC_LEASE, record, raw)
                    continue  # renewed, released or broken by someone else meanwhile
                held = holder.describe()
            except FileExistsError:
                # Another process is between the two steps of a swap of this name (or one was
                # killed there: a writer's recovery removes its swap lock).
                held = f"{GC_LEASE} (being changed by another process)"
            except OSError as exc:
                raise from_os_error(exc, f"taking the lease {GC_LEASE}") from None
            if self.clock() >= deadline:
                raise LockError(f"gc lock is held: {held}; waited {wait:g}s")
            if on_wait is not None:
                on_wait([GC_LEASE])
            self.sleep(delay)
            delay = min(delay * 2, MAX_POLL)

    # -- reading -----------------------------------------------------------------------------

    def _read_raw(self, name: str) -> bytes | None:
        try:
            return self.backend.read(name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise from_os_error(exc, f"reading the lease {name}") from None

    def _holder(self, name: str, raw: bytes) -> Holder:
        try:
            record = decode_record(raw)
        except ValueError as exc:
            return Holder(name, None, False, str(exc), raw)
        return Holder(name, record, self.is_stale(record), None, raw)

    def is_stale(self, record: LeaseRecord) -> bool:
        """Whether ``record`` may be broken: its expiry passed more than ``margin`` ago by our
        clock, or it was taken on this host by a process that no longer exists."""
        if self.clock() > record.expires_at + self.margin:
            return True
        return record.host == self.host and record.pid != os.getpid() and \
            not process_alive(record.pid)

    def holders(self) -> list[Holder]:
        """Every lease under ``locks/``, sorted by name (for status and diagnostics)."""
        found = []
        try:
            names = self.backend.list(LOCKS)
        except OSError as exc:
            raise from_os_error(exc, f"listing {LOCKS}/") from None
        for name in names:
            if not name.endswith(".json"):
                continue
            raw = self._read_raw(name)
            if raw is not None:
                found.append(self._holder(name, raw))
        return found

    def doomed_packs(self) -> frozenset[str]:
        """The packs a writer must not deduplicate against: the plan in ``locks/gc.json``.

        A stale gc lease's plan counts too, until the lease is broken: not deduplicating costs
        only space, while a gc that is merely slow may still delete those packs. An unreadable
        record has no plan a writer could honour (and its gc, if alive, fails its next renewal).
        """
        raw = self._read_raw(GC_LEASE)
        if raw is None:
            return frozenset()
        try:
            return frozenset(decode_record(raw).plan)
        except ValueError:
            return frozenset()

    # -- breaking and waiting ----------------------------------------------------------------

    def _break(self, name: str, raw: bytes) -> bool:
        """Delete the lease ``name`` if it still holds ``raw``; True if it is gone."""
        try:
            if self.backend.swap(name, raw, None):
                return True
        except FileExistsError:
            return False  # its holder is renewing it right now
        except OSError as exc:
            raise from_os_error(exc, f"breaking the stale lease {name}") from None
        return self._read_raw(name) is None

    def break_stale(self) -> list[str]:
        """Delete every stale lease (each only if unchanged since it was read); returns their
        names. Safe at any time: a lease renewed meanwhile is left alone."""
        broken = []
        for holder in self.holders():
            if holder.stale and holder.raw is not None and self._break(holder.name, holder.raw):
                broken.append(holder.name)
        return broken

    def others(self, exclude: str) -> frozenset[str]:
        """Names of every writer's lease under ``locks/``: not ``exclude``, ``gc.json`` or a
        reader's lease."""
        try:
            names = self.backend.list(LOCKS)
        except OSError as exc:
            raise from_os_error(exc, f"listing {LOCKS}/") from None
        return frozenset(n for n in names
                         if n.endswith(".json") and n not in (exclude, GC_LEASE)
                         and not n.startswith(READER_PREFIX))

    def wait_for_writers(self, names: Collection[str], timeout: float,
                         on_wait: OnWait | None = None,
                         check: Callable[[], None] | None = None) -> None:
        """Return once none of the leases ``names`` exists any more: each is released, or
        stale and then broken here. Leases acquired after ``names`` was listed are not waited
        for (they saw gc's plan).

        Args:
            names: the leases to wait for (:meth:`Lease.publish_plan` returns them).
            timeout: seconds to wait in all.
            on_wait: called once per poll with the names still held.
            check: called once per poll (the waiting gc's :meth:`Lease.check`).

        Raises:
            LockError: some are still held after ``timeout`` (the message names them), or
                ``check`` raised it.
        """
        deadline = self.clock() + check_timeout(timeout)
        pending = sorted(names)
        delay = 0.01
        while True:
            still: list[str] = []
            described: list[str] = []
            for name in pending:
                raw = self._read_raw(name)
                if raw is None:
                    continue
                holder = self._holder(name, raw)
                if holder.stale and self._break(name, raw):
                    continue
                still.append(name)
                described.append(holder.describe())
            if not still:
                return
            if check is not None:
                check()
            if self.clock() >= deadline:
                raise LockError(f"waited {timeout:g}s for {len(still)} writer(s) to finish: "
                                f"{'; '.join(described)}")
            pending = still
            if on_wait is not None:
                on_wait(list(still))
            self.sleep(delay)
            delay = min(delay * 2, MAX_POLL)


class _Busy(Exception):
    """A swap of the lease found another swap of the same name in progress."""


class Lease:
    """A lease this process holds; renewed by a daemon thread until :meth:`release`.

    Use as a context manager. Call :meth:`check` before each commit point of the operation.
    """

    def __init__(self, leases: Leases, name: str, record: LeaseRecord, raw: bytes) -> None:
        self.leases = leases
        self.name = name
        self.record = record
        self._raw = raw
        self._lost: str | None = None
        self._released = False
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        #: The other leases present once the plan was published (gc only).
        self.writers_at_plan: frozenset[str] | None = None
        self._thread: threading.Thread | None = None
        if leases.autorenew:
            self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                            name=f"cas-lease-{record.kind}")
            self._thread.start()

    def __repr__(self) -> str:
        return f"Lease({self.name!r}, lost={self._lost!r})"

    @property
    def lost(self) -> str | None:
        """Why the lease was lost, or None while it holds."""
        return self._lost

    def _lose(self, why: str) -> LockError:
        if self._lost is None:
            self._lost = why
        self._stop.set()
        return LockError(f"lock lost: {self._lost}")

    def _expired(self) -> bool:
        return self.leases.clock() >= self.record.expires_at

    def _swap(self, record: LeaseRecord, what: str) -> None:
        """Replace our record with ``record`` (mutex held); lose the lease if that fails."""
        if self._lost is not None:
            raise LockError(f"lock lost: {self._lost}")
        if self._released:
            raise LockError(f"lock lost: {self.name} was released")
        if self._expired():
            raise self._lose(f"{self.name} expired at {iso_utc(self.record.expires_at)} "
                             "without renewal")
        raw = record.encode()
        try:
            ok = self.leases.backend.swap(self.name, self._raw, raw)
        except FileExistsError:
            # Another process is between the two steps of a swap of this name (breaking it,
            # if it thinks it stale): the outcome shows at the next attempt.
            raise _Busy from None
        except OSError as exc:
            raise self._lose(f"{what} {self.name} failed: {exc}") from None
        if not ok:
            raise self._lose(f"{self.name} was broken or taken over by another process")
        self.record, self._raw = record, raw

    def renew(self) -> None:
        """Push the expiry ``ttl`` seconds ahead (the renewal thread calls this every
        ``ttl / 3``).

        Raises:
            LockError: the lease is lost: renewal failed, the record changed or vanished, or
                its expiry had passed already. Lost is final.
        """
        with self._mutex:
            now = self.leases.clock()
            try:
                self._swap(msgspec.structs.replace(
                    self.record, renewed_at=now, expires_at=now + self.leases.ttl), "renewing")
            except _Busy:
                pass  # tried again at the next tick; the expiry still bounds the lease

    def _renew_loop(self) -> None:
        interval = self.leases.ttl / 3
        while not self._stop.wait(interval):
            try:
                self.renew()
            except LockError:
                return
            except Exception as exc:  # a bug must not leave a lease that looks held
                self._lose(f"renewing {self.name} failed: {exc!r}")
                return

    def check(self) -> None:
        """Raise unless the lease still holds: not lost, not past its expiry, and the record
        in the store is still the one this process wrote (one small read).

        Raises:
            LockError: ``lock lost: ...``; the operation must stop before its commit point.
            DiskError | PermError: the record could not be read (the operation stops too).
        """
        with self._mutex:
            if self._lost is not None:
                raise LockError(f"lock lost: {self._lost}")
            if self._released:
                raise LockError(f"lock lost: {self.name} was released")
            if self._expired():
                raise self._lose(f"{self.name} expired at {iso_utc(self.record.expires_at)} "
                                 "without renewal")
            # A read that fails (a full or failing disk) proves nothing either way: the
            # operation stops with that error, and the lease is not given up.
            current = self.leases._read_raw(self.name)
            if current != self._raw:
                raise self._lose(f"{self.name} was broken or taken over by another process")

    def publish_plan(self, pack_ids: Collection[str]) -> frozenset[str]:
        """Record in the gc lease the packs gc is about to delete or rewrite, then list the
        writers it must wait for: the other leases present after the plan is visible (a
        writer that started later read the plan). Returns them, also kept in
        :attr:`writers_at_plan`.

        Raises:
            LockError: the lease was lost.
            ArgsError: this is not the gc lease.
        """
        if self.record.kind != "gc":
            raise ArgsError("only the gc lease carries a plan")
        plan = tuple(sorted(set(pack_ids)))
        for pack_id in plan:
            if not is_hex(pack_id):
                raise ArgsError(f"a plan names packs by id, not {pack_id[:80]!r}")
        delay = 0.01
        while True:
            with self._mutex:
                try:
                    self._swap(msgspec.structs.replace(self.record, plan=plan),
                               "publishing the plan in")
                    break
                except _Busy:
                    pass  # until the swap settles or the lease expires (then _swap raises)
            self.leases.sleep(delay)
            delay = min(delay * 2, MAX_POLL)
        self.writers_at_plan = self.leases.others(self.name)
        return self.writers_at_plan

    def wait_for_writers(self, timeout: float, on_wait: OnWait | None = None) -> None:
        """Wait (see :meth:`Leases.wait_for_writers`) for the writers :meth:`publish_plan`
        found, checking this lease on every poll."""
        if self.writers_at_plan is None:
            raise ArgsError("publish the plan before waiting for writers")
        self.leases.wait_for_writers(self.writers_at_plan, timeout, on_wait, check=self.check)

    def release(self) -> bool:
        """Stop renewing and delete the record if it is still ours. Idempotent, never raises
        for the backend: a record left behind goes stale and is broken by the next acquirer.
        Returns True if the record was removed by this call."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._mutex:
            if self._released:
                return False
            self._released = True
            if self._lost is not None:
                return False
            try:
                return self.leases.backend.swap(self.name, self._raw, None)
            except OSError:
                return False

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


__all__ = ["DEFAULT_MARGIN", "DEFAULT_TTL", "GC_LEASE", "LOCKS", "Holder", "Lease",
           "LeaseRecord", "Leases", "decode_record"]
