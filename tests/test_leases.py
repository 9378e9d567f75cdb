"""Lock objects (cas.leases) on every backend: shared and exclusive leases, renewal, loss,
staleness, gc's plan and the writer barrier; faults through the storage seam; two real
processes on one store folder. Time is a fake clock that waiting loops advance, so no test
sleeps to synchronise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import damaged
from hypothesis import given, settings

from cas.errors import ArgsError, DiskError, LockError
from cas.format.canonical import canonical_json
from cas.leases import GC_LEASE, LeaseRecord, Leases, decode_record
from cas.storage.faults import FaultyBackend
from cas.storage.local import LocalBackend
from cas.storage.memory import MemoryBackend

TTL, MARGIN = 60.0, 30.0


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["local", "memory", "faulty-local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalBackend(tmp_path)
    if request.param == "memory":
        return MemoryBackend()
    return FaultyBackend(LocalBackend(tmp_path))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(backend, clock: FakeClock, host: str = "host-a") -> Leases:
    """Leases whose waits advance the fake clock, renewed only when a test says so."""
    return Leases(backend, clock=clock, ttl=TTL, margin=MARGIN, host=host, sleep=clock.advance,
                  autorenew=False)


def stored(backend, name: str) -> LeaseRecord:
    return decode_record(backend.read(name))


# -- records and shared leases ------------------------------------------------------------------


def test_shared_leases_coexist_and_record_who_holds_them(backend, clock) -> None:
    leases = make(backend, clock)
    one, two = leases.acquire_shared("add"), leases.acquire_shared("pull")
    assert one.name != two.name and one.name.startswith("locks/shared-")
    raw = backend.read(one.name)
    assert raw == canonical_json(json.loads(raw))  # canonical JSON
    record = decode_record(raw)
    assert (record.schema, record.version, record.kind, record.purpose) == \
        ("cas.lock", 1, "shared", "add")
    assert (record.host, record.pid) == ("host-a", os.getpid())
    assert record.acquired_at == record.renewed_at == clock.now
    assert record.expires_at == clock.now + TTL and record.plan == ()
    assert len(record.token) == 32 and int(record.token, 16) >= 0
    assert [h.name for h in leases.holders()] == sorted([one.name, two.name])
    assert not any(h.stale for h in leases.holders())
    assert one.release() is True
    assert one.release() is False  # idempotent
    assert [h.name for h in leases.holders()] == [two.name]
    with two:
        pass
    assert leases.holders() == []


def test_a_full_disk_refuses_a_shared_lease_with_E_DISK(tmp_path, clock) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path), {0: "enospc"})
    with pytest.raises(DiskError) as info:
        make(faulty, clock).acquire_shared("add")
    assert info.value.code == "E_DISK" and "locks/shared-" in info.value.message
    assert LocalBackend(tmp_path).list("locks") == []


def test_settings_come_from_the_environment_and_are_checked(monkeypatch) -> None:
    monkeypatch.setenv("CAS_LEASE_TTL", "5")
    monkeypatch.setenv("CAS_LEASE_MARGIN", "2.5")
    leases = Leases(MemoryBackend())
    assert (leases.ttl, leases.margin) == (5.0, 2.5)
    assert Leases(MemoryBackend(), ttl=7).ttl == 7.0  # an argument wins
    monkeypatch.setenv("CAS_LEASE_TTL", "soon")
    with pytest.raises(ArgsError, match="CAS_LEASE_TTL"):
        Leases(MemoryBackend())
    with pytest.raises(ArgsError):
        Leases(MemoryBackend(), ttl=float("nan"))
    with pytest.raises(ArgsError):
        Leases(MemoryBackend(), ttl=5, margin=0)
    with pytest.raises(ArgsError):
        Leases(MemoryBackend(), ttl=5).acquire_gc(wait=float("nan"))
    with pytest.raises(ArgsError):
        Leases(MemoryBackend(), ttl=5).wait_for_writers([], timeout=-1)


_VALID = LeaseRecord(schema="cas.lock", version=1, kind="gc", token="ab" * 16, purpose="gc",
                     host="h", pid=7, acquired_at=1.5, renewed_at=1.5, expires_at=61.5,
                     plan=("c" * 64,)).encode()


@settings(max_examples=300)
@given(damaged(_VALID))
def test_a_damaged_record_is_read_as_damaged_or_as_a_lease(case) -> None:
    _how, raw = case
    try:
        record = decode_record(raw)
    except ValueError:
        return  # what holders() reports as unreadable, never a crash
    assert record.schema == "cas.lock"


# -- the exclusive gc lease ---------------------------------------------------------------------


def test_one_gc_at_a_time(backend, clock) -> None:
    leases = make(backend, clock)
    first = leases.acquire_gc("gc")
    with pytest.raises(LockError) as info:
        make(backend, clock, host="host-b").acquire_gc("repack", wait=0)
    assert info.value.code == "E_LOCK"
    assert f"pid {os.getpid()} on host-a" in info.value.message and "(gc," in info.value.message
    assert stored(backend, GC_LEASE).token == first.record.token  # untouched
    first.release()
    with make(backend, clock, host="host-b").acquire_gc("repack", wait=0) as second:
        assert stored(backend, GC_LEASE).purpose == "repack"
        assert second.record.kind == "gc"
    assert backend.size(GC_LEASE) is None


def test_a_waiting_gc_takes_the_lease_once_it_is_released(backend, clock) -> None:
    leases = make(backend, clock)
    first = leases.acquire_gc()
    polls: list[list[str]] = []

    def released_at_first_poll(names: list[str]) -> None:
        polls.append(names)
        first.release()

    second = make(backend, clock, host="host-b").acquire_gc(wait=10,
                                                            on_wait=released_at_first_poll)
    assert polls == [[GC_LEASE]]
    assert stored(backend, GC_LEASE).token == second.record.token


def test_a_gc_that_waits_too_long_gets_E_LOCK(backend, clock) -> None:
    leases = make(backend, clock)
    held = leases.acquire_gc()
    start = clock.now
    with pytest.raises(LockError, match="waited 5s"):
        make(backend, clock, host="host-b").acquire_gc(wait=5)
    assert 5 <= clock.now - start < 7  # bounded by the wait, polled in between
    held.check()  # the waiter broke nothing


# -- renewal, expiry, loss ----------------------------------------------------------------------


def test_renewal_pushes_the_expiry_and_check_reads_the_record_back(backend, clock) -> None:
    lease = make(backend, clock).acquire_shared("add")
    clock.advance(50)
    lease.renew()
    assert stored(backend, lease.name).expires_at == clock.now + TTL
    clock.advance(50)  # 100 s after acquiring: alive only thanks to the renewal
    lease.check()


def test_a_lease_whose_expiry_passed_without_renewal_is_lost_for_good(backend, clock) -> None:
    lease = make(backend, clock).acquire_shared("add")
    clock.advance(TTL)
    with pytest.raises(LockError, match="^lock lost: .* expired at"):
        lease.check()
    clock.advance(-TTL)  # even if the clock steps back, lost stays lost
    with pytest.raises(LockError, match="^lock lost"):
        lease.renew()
    assert lease.lost is not None
    assert lease.release() is False  # a lost lease never deletes what is there


@pytest.mark.parametrize("kind", ["shared", "gc"])
def test_a_vanished_or_replaced_record_is_detected(backend, clock, kind) -> None:
    leases = make(backend, clock)
    lease = leases.acquire_shared("add") if kind == "shared" else leases.acquire_gc()
    backend.delete(lease.name)
    with pytest.raises(LockError, match="^lock lost: .* broken or taken over"):
        lease.check()
    again = leases.acquire_shared("add") if kind == "shared" else leases.acquire_gc()
    backend.write(again.name, backend.read(again.name).replace(b'"add"', b'"pull"')
                  .replace(b'"gc"', b'"gcx"', 1))
    with pytest.raises(LockError, match="^lock lost"):
        again.renew()


def test_a_stale_gc_lease_is_broken_and_its_holder_aborts(backend, clock) -> None:
    crashed = make(backend, clock, host="host-a").acquire_gc()  # never renewed again
    other = make(backend, clock, host="host-b")
    clock.advance(TTL + MARGIN)  # expired, but within the margin: still respected
    with pytest.raises(LockError):
        other.acquire_gc(wait=0)
    clock.advance(1)
    taken = other.acquire_gc(wait=0)
    assert stored(backend, GC_LEASE).token == taken.record.token
    with pytest.raises(LockError, match="^lock lost"):
        crashed.check()
    assert crashed.release() is False
    assert stored(backend, GC_LEASE).token == taken.record.token  # the new holder's stays


class _RenewsDuringRead:
    """A backend on which the holder renews its lease right after someone reads it."""

    def __init__(self, inner, name: str) -> None:
        self.inner, self.name, self.holder = inner, name, None

    def __getattr__(self, verb):
        return getattr(self.inner, verb)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.read(name, offset, length)
        if name == self.name and self.holder is not None:
            holder, self.holder = self.holder, None
            holder.renew()
        return data


def test_a_renewal_between_a_breakers_read_and_its_swap_wins(tmp_path, clock) -> None:
    backend = MemoryBackend()
    holder = make(backend, clock, host="host-a").acquire_shared("add")
    # The breaker's clock runs past the lease's stale point; the holder's does not.
    skewed = FakeClock(clock.now + TTL + MARGIN + 1)
    racing = _RenewsDuringRead(backend, holder.name)
    breaker = make(racing, skewed, host="host-b")
    racing.holder = holder
    clock.advance(10)  # so the renewal writes a later expiry
    assert breaker.break_stale() == []
    holder.check()  # never broken, so never resurrected either


def test_a_dead_process_on_this_host_leaves_a_stale_lease_at_once(backend, clock) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(gone.stdout)
    leases = make(backend, clock, host="host-a")
    record = leases._new_record("gc", "gc")
    for host, stale in [("host-b", False), ("host-a", True)]:
        mine = LeaseRecord(**{**{f: getattr(record, f) for f in record.__struct_fields__},
                              "pid": dead_pid, "host": host})
        assert leases.is_stale(mine) is stale  # another host's pids mean nothing here
    backend.write(GC_LEASE, LeaseRecord(**{**{f: getattr(record, f)
                                              for f in record.__struct_fields__},
                                           "pid": dead_pid}).encode())
    taken = leases.acquire_gc(wait=0)
    assert stored(backend, GC_LEASE).pid == os.getpid() == taken.record.pid


def test_an_unreadable_record_is_never_stale(backend, clock) -> None:
    backend.write(GC_LEASE, b'{"schema": "cas.lock", "vers')
    backend.write("locks/shared-x.json", b"[]")
    leases = make(backend, clock)
    clock.advance(10 * TTL)
    holders = leases.holders()
    assert [(h.name, h.stale, h.record) for h in holders] == \
        [(GC_LEASE, False, None), ("locks/shared-x.json", False, None)]
    with pytest.raises(LockError, match="unreadable.*delete it if no cas is running"):
        leases.acquire_gc(wait=0)
    assert leases.break_stale() == []
    assert leases.doomed_packs() == frozenset()
    with pytest.raises(LockError, match="shared-x"):
        leases.wait_for_writers(["locks/shared-x.json"], timeout=3)


# -- gc's plan and the barrier ------------------------------------------------------------------


def test_writers_before_the_plan_are_waited_for_and_later_ones_see_it(backend, clock) -> None:
    leases = make(backend, clock)
    early = leases.acquire_shared("add")
    assert leases.doomed_packs() == frozenset()
    gc = make(backend, clock, host="host-b").acquire_gc()
    assert leases.doomed_packs() == frozenset()  # no plan published yet
    writers = gc.publish_plan(["b" * 64, "a" * 64, "a" * 64])
    assert writers == frozenset({early.name}) == gc.writers_at_plan
    assert stored(backend, GC_LEASE).plan == ("a" * 64, "b" * 64)
    late = leases.acquire_shared("add")
    assert leases.doomed_packs() == {"a" * 64, "b" * 64}
    seen: list[list[str]] = []

    def early_finishes(names: list[str]) -> None:
        seen.append(names)
        early.release()

    gc.wait_for_writers(timeout=60, on_wait=early_finishes)
    assert seen == [[early.name]]  # the late writer is not waited for
    late.check()
    gc.release()
    assert leases.doomed_packs() == frozenset()


def test_the_barrier_breaks_a_stale_writer_and_times_out_on_a_live_one(backend, clock) -> None:
    writers = make(backend, clock, host="host-a")
    stuck, alive = writers.acquire_shared("add"), writers.acquire_shared("pull")
    gc = make(backend, clock, host="host-b").acquire_gc()
    gc.publish_plan([])

    def keep_alive_renewing(_names: list[str]) -> None:
        alive.renew()
        gc.renew()

    with pytest.raises(LockError, match=r"waited 95s for 1 writer\(s\).*\(pull,"):
        gc.wait_for_writers(timeout=95, on_wait=keep_alive_renewing)
    assert backend.size(stuck.name) is None  # stale past expiry + margin: broken
    with pytest.raises(LockError, match="^lock lost"):
        stuck.check()
    alive.release()
    gc.wait_for_writers(timeout=0)


def test_a_gc_that_loses_its_lease_while_waiting_aborts(backend, clock) -> None:
    writer = make(backend, clock).acquire_shared("add")
    gc = make(backend, clock, host="host-b").acquire_gc()
    gc.publish_plan(["c" * 64])

    def stolen(_names: list[str]) -> None:
        writer.renew()
        backend.delete(GC_LEASE)

    with pytest.raises(LockError, match="^lock lost"):
        gc.wait_for_writers(timeout=60, on_wait=stolen)


def test_only_the_gc_lease_has_a_plan_and_it_is_published_first(backend, clock) -> None:
    leases = make(backend, clock)
    with pytest.raises(ArgsError):
        leases.acquire_shared("add").publish_plan(["a" * 64])
    gc = leases.acquire_gc()
    with pytest.raises(ArgsError):
        gc.wait_for_writers(timeout=1)
    with pytest.raises(ArgsError, match="names packs by id"):
        gc.publish_plan(["packs/pack-x.pack"])
    assert stored(backend, GC_LEASE).plan == ()


# -- faults through the storage seam ------------------------------------------------------------


@pytest.mark.parametrize("fault", ["eio", "enospc", "eio-after"])
def test_a_failed_renewal_loses_the_lease(tmp_path, clock, fault) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path))
    lease = make(faulty, clock).acquire_gc()
    faulty.plan[len(faulty.steps)] = fault
    with pytest.raises(LockError, match="^lock lost: renewing locks/gc.json failed"):
        lease.renew()
    assert faulty.steps[-1] == f"swap {GC_LEASE}"
    with pytest.raises(LockError, match="^lock lost"):
        lease.check()


class Crashed(BaseException):
    """Stands for the process dying at an injected crash point."""


def _crash() -> None:
    raise Crashed


@pytest.mark.parametrize("step", ["crash", "crash-after"])
def test_a_crash_while_taking_the_lease_leaves_nothing_or_a_stale_lease(tmp_path, clock,
                                                                        step) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path), crash=_crash)
    leases = make(faulty, clock, host="host-a")
    faulty.plan[1] = step  # step 0 reads locks/gc.json, step 1 swaps it
    with pytest.raises(Crashed):
        leases.acquire_gc()
    assert faulty.steps == ["read locks/gc.json", f"swap {GC_LEASE}"]
    local = LocalBackend(tmp_path)
    assert (local.size(GC_LEASE) is not None) is (step == "crash-after")
    other = make(local, clock, host="host-b")
    clock.advance(TTL + MARGIN + 1)
    with other.acquire_gc(wait=0) as taken:
        assert stored(local, GC_LEASE).token == taken.record.token


def test_a_crash_while_renewing_leaves_a_lease_that_goes_stale(tmp_path, clock) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path), crash=_crash)
    lease = make(faulty, clock, host="host-a").acquire_shared("add")
    faulty.plan[len(faulty.steps)] = "crash"
    with pytest.raises(Crashed):
        lease.renew()
    local = LocalBackend(tmp_path)
    gc = make(local, clock, host="host-b").acquire_gc()
    assert gc.publish_plan([]) == {lease.name}
    for _ in range(2):  # the writer's lease goes stale while gc keeps its own
        clock.advance(TTL / 2 + MARGIN / 2 + 1)
        gc.renew()
    gc.wait_for_writers(timeout=0)
    assert local.list("locks") == [GC_LEASE]


# -- the renewal thread -------------------------------------------------------------------------


def _until(condition, limit: float = 20.0) -> None:
    """Wait for a condition another thread makes true (not a sleep as synchronisation: the
    bound only keeps a broken build from hanging)."""
    import time

    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def test_the_renewal_thread_renews_and_marks_a_failed_renewal_lost(tmp_path) -> None:
    faulty = FaultyBackend(LocalBackend(tmp_path))
    leases = Leases(faulty, ttl=0.06, margin=10, host="host-a")
    lease = leases.acquire_shared("add")
    first = lease.record.expires_at
    _until(lambda: stored(faulty.inner, lease.name).expires_at > first)
    lease.check()
    faulty.plan[len(faulty.steps)] = "eio"
    faulty.plan.update({len(faulty.steps) + i: "eio" for i in range(1, 20)})
    _until(lambda: lease.lost is not None)
    with pytest.raises(LockError, match="^lock lost"):
        lease.check()
    assert lease.release() is False


# -- two real processes on one store folder -----------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from cas.leases import Leases
    from cas.storage.local import LocalBackend
    lease = Leases(LocalBackend(Path(sys.argv[1]))).acquire_gc("gc")
    print("held", flush=True)
    if sys.stdin.readline().strip() == "release":
        lease.release()
        print("released", flush=True)
    sys.stdin.readline()
""")


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_gc_process_is_refused_then_waits_for_the_first(tmp_path) -> None:
    proc = _holder(tmp_path)
    try:
        leases = Leases(LocalBackend(tmp_path), autorenew=False)
        with pytest.raises(LockError, match=f"pid {proc.pid} on"):
            leases.acquire_gc(wait=0)

        def release_the_first(_names: list[str]) -> None:
            proc.stdin.write("release\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "released"

        with leases.acquire_gc(wait=60, on_wait=release_the_first) as lease:
            assert stored(LocalBackend(tmp_path), GC_LEASE).pid == os.getpid()
            lease.check()
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_gc_process_lease_is_taken_over_at_once(tmp_path) -> None:
    proc = _holder(tmp_path)
    leases = Leases(LocalBackend(tmp_path), autorenew=False)
    try:
        with pytest.raises(LockError):
            leases.acquire_gc(wait=0)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: a zombie's pid still exists
    assert stored(LocalBackend(tmp_path), GC_LEASE).pid == proc.pid
    with leases.acquire_gc(wait=0):
        assert stored(LocalBackend(tmp_path), GC_LEASE).pid == os.getpid()
