"""gc's deletion protocol against other processes: adds that deduplicate against what gc is
about to delete, checkouts and verifies whose pack is repacked away, gc killed with SIGKILL at
each of its steps, and a fault (crash, full disk, I/O error) at every storage call of gc.

Each moment is reached through the test hooks (``CAS_TEST_PAUSE``: the child reports on a pipe
when it gets there and waits on another) or through the storage seam
(:class:`cas.storage.faults.FaultyBackend`), so nothing here sleeps.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
from pathlib import Path

import pytest

from cas.store import Store
from cas.storage.faults import CRASH_STATUS
from test_checkout_races import Paused
from test_faults import run_cas
from conftest import pack_sizes, write_files




def _added(cas, store: Path, *args: str) -> tuple[dict, set[str]]:  # type: ignore[no-untyped-def]
    """``cas add ARGS``: its JSON and the packs it wrote."""
    before = set(pack_sizes(store))
    doc = cas("--json", "add", *args).json
    return doc, set(pack_sizes(store)) - before


def _same(cas, spec: str, files: dict[str, bytes], dest: Path) -> None:  # type: ignore[no-untyped-def]
    """``spec`` checks out byte-identical to ``files``."""
    shutil.rmtree(dest, ignore_errors=True)
    cas("checkout", spec, str(dest))
    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files


def _verify_clean(cas) -> None:  # type: ignore[no-untyped-def]
    r = cas("--json", "verify", "--all", ok=False)
    assert r.code == 0, r.out + r.err
    assert r.json["ok"] and not r.json["broken_versions"], r.json


def _leftovers(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()
                  and (p.name.endswith(".tmp") or p.name.endswith(".lock")
                       or ".cas-tmp" in p.name))


def _json(out: str) -> dict:
    return json.loads(out)


# -- 1. an add deduplicating against what gc is about to delete --------------------------------


@pytest.fixture
def expired(cas, store_path: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """m@1 (alone in its pack, then removed), keep@1 live; returns m@1's pack, its file, and
    the folder of a version of m that shares every chunk of that file."""
    rng = random.Random(11)
    w = rng.randbytes(300_000)
    _, (p1,) = _added(cas, store_path, "m", str(write_files(tmp_path / "v1", {"w.bin": w})))
    cas("add", "keep", str(write_files(tmp_path / "k", {"k.bin": rng.randbytes(40_000)})))
    cas("rm", "m@1")
    cas("config", "set", "restore_window", "0s")  # m@1 is not restorable: its data may go
    files = {"w.bin": w, "new.bin": rng.randbytes(20_000)}
    return {"pack": p1, "files": files, "v2": write_files(tmp_path / "v2", files)}


def test_add_that_deduplicated_holds_gc_until_it_commits(cas, store_path: Path, expired
                                                         ) -> None:  # type: ignore[no-untyped-def]
    """The add deduplicated against m@1's pack before gc planned to delete it: gc must wait
    for the add's lease (here it times out, deleting nothing) while the add is unfinished."""
    add = Paused(store_path, "ingested", "--json", "add", "m", str(expired["v2"]))
    add.wait_paused()
    r = cas("--json", "--lock-timeout", "1", "gc", "--now", ok=False)
    assert r.json["error"]["code"] == "E_LOCK", r.json
    assert "writer" in r.json["error"]["message"]
    assert expired["pack"] in pack_sizes(store_path)
    code, out, err = add.resume()
    assert code == 0, out + err
    assert _json(out)["reused_chunks"] > 0 and _json(out)["seq"] == 2
    _same(cas, "m@2", expired["files"], store_path.parent / "out")
    _verify_clean(cas)


def test_add_that_deduplicated_keeps_the_pack_gc_planned_to_delete(
        cas, store_path: Path, expired, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Add paused with its objects durable (deduplicated against m@1's pack); gc runs to its
    published plan (that pack doomed); the add commits; gc re-marks and keeps the pack."""
    add = Paused(store_path, "ingested", "--json", "add", "m", str(expired["v2"]))
    add.wait_paused()
    gc = Paused(store_path, "planned", "--json", "gc", "--now")
    gc.wait_paused()
    # Doomed: m@1's pack, and the add's own pack (durable, not yet named by any version).
    plan = json.loads((store_path / "locks" / "gc.json").read_bytes())["plan"]
    assert expired["pack"] in plan and len(plan) == 2, plan
    code, out, err = add.resume()
    assert code == 0, out + err
    assert _json(out)["reused_chunks"] > 0
    code, out, err = gc.resume()
    assert code == 0, out + err
    doc = _json(out)
    actions = {p["pack"]: p["action"] for p in doc["packs"]}
    assert [actions[p] for p in plan] == ["keep", "keep"] and doc["packs_deleted"] == 0, doc
    assert set(plan) <= set(pack_sizes(store_path))
    _same(cas, "m@2", expired["files"], tmp_path / "out")
    _verify_clean(cas)
    # The next gc sees m@2 from the start: the pack is live and stays.
    cas("gc", "--now")
    assert expired["pack"] in pack_sizes(store_path)
    _same(cas, "m@2", expired["files"], tmp_path / "out")


def test_add_during_gc_stores_fresh_copies_of_doomed_objects(
        cas, store_path: Path, expired, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """gc paused with its plan published; an add of files sharing every chunk of the doomed
    pack must not deduplicate against it (a plain add reuses them: see the test above)."""
    gc = Paused(store_path, "planned", "--json", "gc", "--now")
    gc.wait_paused()
    doc, written = _added(cas, store_path, "m", str(expired["v2"]))
    assert doc["reused_chunks"] == 0 and doc["new_chunks"] > 0, doc
    assert written
    code, out, err = gc.resume()
    assert code == 0, out + err
    assert _json(out)["packs_deleted"] == 1, out
    assert expired["pack"] not in pack_sizes(store_path)
    _same(cas, "m@2", expired["files"], tmp_path / "out")
    _verify_clean(cas)


# -- 2. readers whose pack is repacked away ----------------------------------------------------


@pytest.fixture
def repackable(cas, store_path: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """m@1 = a.bin + b.bin (one pack), m@2 = a.bin + c.bin (c in a second pack); m@1 removed
    with a restore window of 0, so m@1's pack is half dead."""
    rng = random.Random(5)
    a, b, c = rng.randbytes(400_000), rng.randbytes(200_000), rng.randbytes(30_000)
    _, (p1,) = _added(cas, store_path, "m", str(write_files(tmp_path / "v1", {"a.bin": a,
                                                                        "b.bin": b})))
    files = {"a.bin": a, "c.bin": c}
    cas("add", "m", str(write_files(tmp_path / "v2", files)))
    cas("rm", "m@1")
    cas("config", "set", "restore_window", "0s")  # m@1 is not restorable: its data may go
    return {"pack": p1, "files": files}


def _repack_away(cas, store_path: Path, pack: str) -> None:  # type: ignore[no-untyped-def]
    doc = cas("--json", "gc", "--now", "--repack-threshold", "0").json
    assert doc["packs_repacked"] == 1 and doc["packs_written"] == 1, doc
    assert pack not in pack_sizes(store_path)


def test_checkout_whose_pack_is_repacked_away_completes(
        cas, store_path: Path, repackable, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dest"
    child = Paused(store_path, "scanned", "checkout", "m@2", str(dest))
    child.wait_paused()
    _repack_away(cas, store_path, repackable["pack"])
    code, out, err = child.resume()
    assert code == 0, out + err
    for rel, data in repackable["files"].items():
        assert (dest / rel).read_bytes() == data


@pytest.mark.parametrize("point", ["verify-snapshot", "verify-packs-read"])
def test_verify_all_whose_pack_is_repacked_away_is_clean(
        cas, store_path: Path, repackable, point: str) -> None:  # type: ignore[no-untyped-def]
    child = Paused(store_path, point, "--json", "verify", "--all")
    child.wait_paused()
    _repack_away(cas, store_path, repackable["pack"])
    code, out, err = child.resume()
    assert code == 0, out + err
    assert _json(out)["ok"], out


# -- 4. kill -9 of gc at each of its steps -----------------------------------------------------


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store where ``gc --now`` deletes two packs (x and y removed) and repacks one (m@1's,
    half dead); m@2 and keep@1 are live. Built once; each test works on a copy."""
    from conftest import CasCli

    top = tmp_path_factory.mktemp("mixed")
    cas = CasCli(top / "store")
    cas("init")
    rng = random.Random(9)
    a, b = rng.randbytes(400_000), rng.randbytes(300_000)
    cas("add", "m", str(write_files(top / "v1", {"a.bin": a, "b.bin": b})))
    live = {"m@2": {"a.bin": a, "c.bin": rng.randbytes(30_000)},
            "keep@1": {"k.bin": rng.randbytes(50_000)}}
    cas("add", "m", str(write_files(top / "v2", live["m@2"])))
    cas("add", "keep", str(write_files(top / "k", live["keep@1"])))
    for name in ("x", "y"):
        cas("add", name, str(write_files(top / name, {"d.bin": rng.randbytes(100_000)})))
        cas("rm", name)
    cas("rm", "m@1")
    cas("config", "set", "restore_window", "0s")  # removed versions are not restorable
    dry = cas("--json", "gc", "--now", "--dry-run").json
    assert [p["action"] for p in dry["packs"]].count("delete") == 2
    doomed = {p["pack"] for p in dry["packs"] if p["action"] in ("delete", "repack")}
    assert len(doomed) == 3
    return {"store": top / "store", "live": live, "doomed": doomed,
            "live_bytes": dry["live_bytes"]}


def _check_live(cas, live: dict[str, dict[str, bytes]], dest: Path) -> None:  # type: ignore[no-untyped-def]
    for spec, files in live.items():
        _same(cas, spec, files, dest / spec.replace("@", "-"))


@pytest.mark.parametrize("point", ["marked", "planned", "rechecked", "deleted-one"])
def test_kill_9_of_gc_then_gc_reruns_and_finishes(mixed_store: dict, tmp_path: Path,
                                                  point: str) -> None:
    from conftest import CasCli

    store_path = tmp_path / "store"
    shutil.copytree(mixed_store["store"], store_path)
    cas = CasCli(store_path)
    doomed, live = mixed_store["doomed"], mixed_store["live"]
    child = Paused(store_path, point, "gc", "--now")
    child.wait_paused()
    assert child.kill() == -signal.SIGKILL
    assert (store_path / "locks" / "gc.json").exists()  # left by the killed gc
    _verify_clean(cas)
    _check_live(cas, live, tmp_path / "out")
    doc = cas("--json", "gc", "--now").json
    assert not (store_path / "locks" / "gc.json").exists()
    assert not doomed & set(pack_sizes(store_path)), doc
    _verify_clean(cas)
    _check_live(cas, live, tmp_path / "out2")
    assert _leftovers(store_path) == []
    # Nothing live is kept twice (a repack the killed gc finished is not copied again).
    again = cas("--json", "gc", "--now").json
    assert again["packs_deleted"] == 0 and again["dead_bytes"] == 0, again
    stored = sum(pack_sizes(store_path).values())
    assert stored <= mixed_store["live_bytes"] + 200 * again["packs_after"], stored


# -- 3. a fault at every storage call of gc ----------------------------------------------------

#: Step label patterns of the write and delete steps the test must reach, by name.
GC_STEPS = {
    "pack data write": r"^(append pack|commit packs/pack-.*\.pack)$",
    "pack index write": r"^write packs/pack-.*\.idx$",
    "index delete": r"^delete packs/pack-.*\.idx$",
    "pack delete": r"^delete packs/pack-.*\.pack$",
    "midx write": r"^commit packs/midx-",
    "midx delete": r"^delete packs/midx-",
    "gc lease swap": r"^swap locks/gc\.json$",
    "gc.json write": r"^swap gc\.json$",
    "registry object delete": r"^delete registry/objects/",
}


@pytest.fixture(scope="module")
def faultable(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store of nine packs (so a multi-pack index covers some) where ``gc --now`` deletes
    two packs, repacks one, replaces a multi-pack index and prunes a stray registry object."""
    from dulwich.objects import Blob
    from dulwich.repo import Repo

    from conftest import CasCli

    top = tmp_path_factory.mktemp("gcfaults")
    store = top / "store"
    cas = CasCli(store)
    cas("init")
    rng = random.Random(13)
    a, b = rng.randbytes(200_000), rng.randbytes(150_000)
    cas("add", "m", str(write_files(top / "v1", {"a.bin": a, "b.bin": b})))
    live = {"m@2": {"a.bin": a, "c.bin": rng.randbytes(20_000)}}
    cas("add", "m", str(write_files(top / "v2", live["m@2"])))
    for i in range(5):
        spec = f"k{i}@1"
        live[spec] = {"k.bin": rng.randbytes(10_000)}
        cas("add", f"k{i}", str(write_files(top / f"k{i}", live[spec])))
    for name in ("x", "y"):
        cas("add", name, str(write_files(top / name, {"d.bin": rng.randbytes(50_000)})))
        cas("rm", name)
    cas("rm", "m@1")
    cas("config", "set", "restore_window", "0s")  # removed versions are not restorable
    assert list((store / "packs").glob("midx-*")), "the store should have a multi-pack index"
    # A registry object no ref reaches (what a writer killed before its ref update leaves).
    Repo(str(store / "registry")).object_store.add_object(Blob.from_string(b"stray\n"))
    dry = cas("--json", "gc", "--now", "--dry-run").json
    actions = sorted(p["action"] for p in dry["packs"])
    assert actions.count("delete") == 2 and actions.count("repack") == 1, actions
    doomed = {p["pack"] for p in dry["packs"] if p["action"] in ("delete", "repack")}
    return {"top": top, "store": store, "live": live, "doomed": doomed}


def _copy(faultable: dict, name: str) -> Path:
    case = faultable["top"] / "cases" / name
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir(parents=True)
    shutil.copytree(faultable["store"], case / "store")
    return case / "store"


def _check_after_fault(faultable: dict, store_path: Path, code: int, out: str, err: str,
                       fault: str) -> None:
    """After a fault in gc: a clear outcome, a sound store whose live versions restore, and a
    gc that finishes and reclaims (a pack whose index went first is indexed by that gc's
    recovery and deleted by the next), leaving no temp files."""
    if fault.startswith("crash"):
        assert code == CRASH_STATUS, (code, out, err)
    elif code != 0:
        doc = json.loads(out)
        error = doc["error"]
        # A read that fails while the roots are found: gc cannot tell what is live (E_VERIFY).
        assert error["code"] in ("E_DISK", "E_LOCK") or (
            error["code"] == "E_VERIFY" and "nothing was deleted" in error["message"]), doc
        assert "\n" not in error["message"]
    with Store.open(store_path) as store:
        report = store.verify()
        assert report.ok, report
        restored = store_path.parent / "restored"
        for spec, files in faultable["live"].items():
            for rel, data in files.items():
                store.cat(spec, rel, restored)
                assert restored.read_bytes() == data, (spec, rel)
    unindexed = {p for p in faultable["doomed"]
                 if not (store_path / "packs" / f"pack-{p}.idx").exists()}
    code, out, err, _ = run_cas(store_path, ["gc", "--now"])
    assert code == 0, (out, err)
    assert _leftovers(store_path) == [], _leftovers(store_path)
    assert faultable["doomed"] & set(pack_sizes(store_path)) <= unindexed
    if unindexed:
        code, out, err, _ = run_cas(store_path, ["gc", "--now"])
        assert code == 0, (out, err)
        assert not faultable["doomed"] & set(pack_sizes(store_path))
    with Store.open(store_path) as store:
        report = store.verify()
        assert report.ok, report


#: Verbs of steps that change nothing: a crash there is a crash after the step before.
READS = ("read ", "size ", "list ", "list_tree ")


@pytest.mark.parametrize("fault,steps", [
    ("crash", "writes"),
    *(pytest.param(f, "writes", marks=pytest.mark.slow)
      for f in ("crash-after", "enospc", "eio", "eio-after")),
    pytest.param("eio", "reads", marks=pytest.mark.slow)])
def test_fault_at_every_storage_call_of_gc(faultable: dict, fault: str, steps: str) -> None:
    """Each fault at every step of gc that writes or deletes (and, ``slow``, an I/O error at
    every read)."""
    counting = _copy(faultable, "count")
    code, out, err, labels = run_cas(counting, ["gc", "--now"])
    assert code == 0, (out, err)
    assert not faultable["doomed"] & set(pack_sizes(counting))
    chosen = [i for i, label in enumerate(labels)
              if label.startswith(READS) == (steps == "reads")]
    reached: dict[str, int] = {}
    for i in chosen:
        label = labels[i]
        store = _copy(faultable, f"{fault}-{i}")
        code, out, err, _ = run_cas(store, ["gc", "--now"], {i: fault})
        try:
            _check_after_fault(faultable, store, code, out, err, fault)
        except AssertionError as exc:
            raise AssertionError(f"{fault} at step {i} ({label}): {exc}") from None
        for kind, pattern in GC_STEPS.items():
            if re.search(pattern, label):
                reached[kind] = reached.get(kind, 0) + 1
        shutil.rmtree(store.parent)
    summary = ", ".join(f"{k}: {reached.get(k, 0)}" for k in GC_STEPS)
    print(f"{fault} injected at {len(chosen)} of {len(labels)} steps of gc; steps reached: "
          f"{summary}")
    if steps == "writes":
        missing = [k for k in GC_STEPS if not reached.get(k)]
        assert not missing, f"gc steps never reached: {missing} (steps: {labels})"
