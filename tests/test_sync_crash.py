"""A crash at every write step of a push into a directory remote and of a pull from one.

Three stores: ``local`` holds ``org/m`` v1 and v2 (v2 an F16 conversion of v1: derived
chunks, so two generations of transfer packs), the tag ``prod`` and a pin, and a small
model; ``remote`` (a directory remote of ``local``) and ``mirror`` (a clone of ``local``)
hold what ``local`` held before v2, in packs enough that v2's make them write a multi-pack
index. With the transfer pack
size set tiny, v2's objects cross in several packs.

A first run of ``cas push origin`` (in ``local``) and of ``cas pull origin`` (in ``mirror``)
records every storage call of both stores (one step counter over both, labelled with the
store). Then, for each write step, a forked process runs the same command through the real
CLI and stops at that step as ``kill -9`` would (:class:`cas.storage.faults.FaultyBackend`).
Afterwards the command is run again and must complete, sending no object the receiver
already held in a visible pack; both stores verify clean; the receiver's refs are the
sender's; every file of both versions reads back byte for byte; no temp file survives the
next writer.

The test names the write steps it must reach (leases, registry objects, pack data, pack
indexes, the multi-pack index, model, tag and pin refs, tracking refs) and fails if one was
never reached, or if no crash fell between two transfer packs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from dulwich.objects import ShaFile
from safetensors.numpy import save_file

import cas.store
import cas.transfer
from cas.packs import scan_pack
from cas.peer import LocalPeer
from cas.storage.faults import CRASH_STATUS
from cas.store import Store
import crashrun
from crashrun import WRITE_VERBS

def write_steps(receiver: str, sender: str) -> dict[str, str]:
    """The write steps a sync must reach, by name: label patterns (``STORE VERB NAME``)."""
    r = receiver
    return {
        "lease": rf"^{r} (write|swap|delete) locks/",
        "registry object": rf"^{r} write registry/objects/",
        "pack data": rf"^{r} (open_write pack|append pack|commit packs/pack-.*\.pack)$",
        "pack index": rf"^{r} write packs/pack-.*\.idx$",
        "multi-pack index": rf"^{r} commit packs/midx-",
        "model ref": rf"^{r} swap registry/refs/models/",
        "tag ref": rf"^{r} swap registry/refs/tags/",
        "pin ref": rf"^{r} swap registry/refs/pins/",
        "tracking ref": (rf"^{sender} swap registry/refs/remotes/" if r == "remote"
                         else rf"^{r} swap registry/refs/remotes/"),
    }


def _tiny_packs() -> None:
    cas.transfer.TRANSFER_PACK_BYTES = 1  # a pack per run of neighbouring objects


def run_cas(store: Path, args: list[str], plan: dict[int, str] | None = None
            ) -> tuple[int, str, str, list[str]]:
    """:func:`crashrun.run_cas` with tiny transfer packs."""
    return crashrun.run_cas(store, args, plan, _tiny_packs)


def ok(store: Path, *args: str) -> dict:
    code, out, err, _ = run_cas(store, list(args))
    assert code == 0, (args, out, err)
    return json.loads(out)


@pytest.fixture(scope="module", autouse=True)
def no_fsync() -> None:
    """The crashes here stop the process (as ``kill -9`` does), and the kernel keeps what it
    wrote: fsync matters only for a power loss, so it is skipped to keep the ~100 cases fast
    (children inherit this through ``fork``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``work/`` holds the three stores (remotes are configured by absolute path, so each
    case is restored at the same place from ``snapshot/``); ``files/`` the versions."""
    top = tmp_path_factory.mktemp("sync-crash")
    work, files = top / "work", top / "files"
    work.mkdir()
    local, remote, mirror = work / "local", work / "remote", work / "mirror"
    rng = np.random.default_rng(5)
    w = {f"layer.{i}.weight": (rng.standard_normal((128, 256)) * 0.02).astype(np.float32)
         for i in range(2)}
    v1, v2 = files / "v1", files / "v2"
    v1.mkdir(parents=True)
    v2.mkdir()
    save_file(w, str(v1 / "model.safetensors"))
    save_file({k: v.astype(np.float16) for k, v in w.items()}, str(v2 / "model.safetensors"))
    (v1 / "notes.bin").write_bytes(random.Random(1).randbytes(5000))
    (v2 / "notes.bin").write_bytes(random.Random(2).randbytes(5000))
    ok(local, "init")
    ok(local, "add", "org/m", str(v1))
    ok(local, "remote", "add", "origin", str(remote))
    ok(local, "push", "origin")
    ok(mirror, "clone", str(local))
    # Packs that no multi-pack index covers yet, so that the packs of v2 make the receivers
    # write one.
    for i in range(1):
        small = files / f"small{i}"
        small.mkdir()
        (small / "s.bin").write_bytes(random.Random(10 + i).randbytes(3000))
        ok(local, "add", f"org/small{i}", str(small))
    ok(local, "push", "origin")
    ok(mirror, "pull", "origin")
    ok(local, "add", "org/m", str(v2), "--tag", "prod")
    ok(local, "pin", "org/m@2", "--everywhere")
    shutil.copytree(work, top / "snapshot")
    return {"top": top, "work": work, "files": files}


def restore(prepared: dict, stores: tuple[Path, Path]) -> None:
    """Put ``stores`` back as they were before the sync."""
    for store in stores:
        shutil.rmtree(store)
        shutil.copytree(prepared["top"] / "snapshot" / store.name, store)


def synced_refs(store: Store) -> dict[bytes, bytes]:
    return {k: v for p in (b"refs/models/", b"refs/tags/", b"refs/pins/")
            for k, v in store.registry.refs_under(p).items()}


def objects_in_pack_files(store: Store) -> set[bytes]:
    """Ids in every complete pack file, indexed or not (a crash between a pack and its
    index leaves one that the next writer indexes)."""
    out: set[bytes] = set()
    for p in store.packs_dir.glob("pack-*.pack"):
        out.update(e.oid for e in scan_pack(p)[0])
    return out


def check_after(prepared: dict, sender: Path, receiver: Path, new_ids: list[bytes],
                sent: int, lacking: tuple[int, int], label: str) -> None:
    """After the re-run: it sent what was still missing; both stores are sound; the
    receiver holds the sender's refs and both versions byte for byte; no temp survives the
    next writer."""
    durable, visible = lacking
    assert durable <= sent <= visible, (label, durable, sent, visible)
    with Store.open(sender) as s, Store.open(receiver) as r:
        for store in (s, r):
            report = store.verify()
            assert report.ok, (label, store.path, report)
        assert synced_refs(r) == synced_refs(s), label
        assert not cas.transfer.missing(r, new_ids), label
        out = prepared["top"] / "restored"
        for spec, folder in (("org/m@1", "v1"), ("org/m@prod", "v2")):
            for f in (prepared["files"] / folder).iterdir():
                r.cat(spec, f.name, out)
                assert out.read_bytes() == f.read_bytes(), (label, spec, f.name)
        for store in (s, r):  # the next writer removes a killed writer's temps
            store.check_writable()
    temps = [p for store in (sender, receiver) for p in store.rglob("*.tmp")]
    assert not temps, (label, temps)


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_crash_at_every_write_step_of_a_sync(prepared: dict, direction: str) -> None:
    work = prepared["work"]
    if direction == "push":
        sender, receiver = work / "local", work / "remote"
        runner, args = sender, ["push", "origin"]
    else:
        sender, receiver = work / "local", work / "mirror"
        runner, args = receiver, ["pull", "origin"]
    restore(prepared, (sender, receiver))
    with Store.open(sender) as s, Store.open(receiver) as r:
        blobs = [b.decode() for b in s.registry.commit_versions(
            s.registry.head("org/m").decode()).values()]
        new_ids = cas.transfer.missing(r, LocalPeer(s).closure(blobs))
    code, out, err, steps = run_cas(runner, args)
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert doc["objects_sent"] == len(new_ids) and doc["packs"] >= 3, doc
    patterns = write_steps(receiver.name, sender.name)
    reached: dict[str, int] = {}
    resumed = 0
    faulted = [i for i, label in enumerate(steps) if label.split()[1] in WRITE_VERBS]
    for i in faulted:
        label = steps[i]
        restore(prepared, (sender, receiver))
        code, out, err, _ = run_cas(runner, args, {i: "crash"})
        assert code == CRASH_STATUS, (label, code, out, err)
        with Store.open(receiver) as r:
            visible = len(cas.transfer.missing(r, new_ids))
            durable = len(set(new_ids) - objects_in_pack_files(r))
        code, out, err, _ = run_cas(runner, args)
        assert code == 0, (label, out, err)
        again = json.loads(out)
        assert all(ref["status"] in ("ok", "up-to-date") for ref in again["refs"]), again
        check_after(prepared, sender, receiver, new_ids, again["objects_sent"],
                    (durable, visible), label)
        if 0 < again["objects_sent"] < len(new_ids):
            resumed += 1
        for kind, pattern in patterns.items():
            if re.search(pattern, label):
                reached[kind] = reached.get(kind, 0) + 1
    summary = ", ".join(f"{k}: {reached.get(k, 0)}" for k in patterns)
    print(f"{direction}: crashed at {len(faulted)} of {len(steps)} steps; reached {summary}; "
          f"{resumed} re-runs sent only part of the objects")
    missing = [k for k in patterns if not reached.get(k)]
    assert not missing, f"write steps never reached: {missing} (steps: {steps})"
    assert resumed, "no crash fell between two transfer packs"


def test_registry_objects_land_dependencies_first(prepared: dict, tmp_path: Path) -> None:
    """A fetch stops (a failed write, as a crash would) after each registry object it
    stores: every object then here has every object it names here too, so a present tip
    still means a present history, which is what a re-run relies on to skip it."""
    from cas import registry_transfer as rt

    with Store.open(prepared["top"] / "snapshot" / "local") as src:
        tips = list(synced_refs(src).values())
        objects = rt.missing_objects(src.registry, tips, [])
    objects.reverse()  # children before what they name, whatever order the sender used
    sent = {ShaFile.from_raw_string(kind, raw).id for kind, raw in objects}
    assert len(sent) >= 10
    for stop in range(len(objects)):
        dst = Store.init(tmp_path / f"dst{stop}")
        odb = dst.registry.repo.object_store
        written: list[bytes] = []
        add = odb.add_object

        def failing_add(obj, add=add, written=written, stop=stop):  # type: ignore[no-untyped-def]
            if len(written) == stop:
                raise OSError(28, "No space left on device")
            add(obj)
            written.append(obj.id)

        odb.add_object = failing_add  # type: ignore[method-assign]
        with pytest.raises(OSError):
            rt.store_objects(dst.registry, objects)
        assert len(written) == stop
        for sha in written:
            named = rt._names(dst.registry.repo.object_store[sha])  # noqa: SLF001
            assert all(rt.has(dst.registry, n) for n in named if n in sent), (stop, sha)
        dst.close()
