"""A crash at every write step of ``cas bundle import``.

The sender holds ``org/m`` v1, v2 (an F16 conversion of v1: derived chunks, a second
generation of transfer packs; tagged ``prod`` and pinned everywhere) and v3 (v2 with other
notes). Two imports are crashed, both cut in transfer packs of one object each:

- ``new``: a full bundle into a store that does not exist yet (the import creates it), enough
  packs for the import to write a multi-pack index;
- ``incremental``: ``org/m@2`` cut against the state of a site that holds v1, so v3 arrives
  registered without its content (a presence record).

A first run of the import through the real CLI records every storage call
(:class:`cas.storage.faults.FaultyBackend`, labelled with the store's folder name). Then, for
each write step, a forked process runs the same command and stops at that step as ``kill -9``
would. What the crash left must verify clean; the import is run again and must complete;
then the store verifies clean, holds the sender's refs, and every file of the versions with
content reads back byte for byte; no temp file survives the next writer. The test names the
write steps it must reach and fails if one never was.
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
from safetensors.numpy import save_file

import cas.store
import cas.transfer
from cas import bundle as bd
from cas.ingest import AddOptions
from cas.storage.faults import CRASH_STATUS
from cas.store import Store
from crashrun import WRITE_VERBS, run_cas

def write_steps(store: str) -> dict[str, str]:
    """The write steps an import must reach, by name: label patterns (``STORE VERB NAME``)."""
    s = store
    steps = {
        "lease": rf"^{s} (write|swap|delete) locks/",
        "temp sweep": rf"^{s} sweep$",
        "registry object": rf"^{s} write registry/objects/",
        "pack data": rf"^{s} (open_write pack|append pack|commit packs/pack-.*\.pack)$",
        "pack index": rf"^{s} write packs/pack-.*\.idx$",
        "model ref": rf"^{s} swap registry/refs/models/",
        "tag ref": rf"^{s} swap registry/refs/tags/",
        "pin ref": rf"^{s} swap registry/refs/pins/",
    }
    if s == "new":
        steps["store config"] = rf"^{s} write config\.json$"
        steps["multi-pack index"] = rf"^{s} (open_write midx|append midx|commit packs/midx-)"
    else:
        steps["presence record"] = rf"^{s} (write|swap) presence\.json$"
    return steps


@pytest.fixture(scope="module", autouse=True)
def no_fsync() -> None:
    """The crashes here stop the process (as ``kill -9`` does), and the kernel keeps what it
    wrote: fsync matters only for a power loss, so it is skipped to keep the cases fast
    (children inherit this through ``fork``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``files/`` the versions; ``full.cbundle`` and ``v2.cbundle``; ``snapshot/site`` a
    store holding v1; ``work/`` where each case runs."""
    top = tmp_path_factory.mktemp("bundle-crash")
    files, work, snapshot = top / "files", top / "work", top / "snapshot"
    work.mkdir()
    rng = np.random.default_rng(5)
    w = {f"layer.{i}.weight": (rng.standard_normal((128, 256)) * 0.02).astype(np.float32)
         for i in range(2)}
    tensors = [w, {k: v.astype(np.float16) for k, v in w.items()}]
    src = Store.init(top / "src")
    for seq in (1, 2, 3):
        folder = files / f"v{seq}"
        folder.mkdir(parents=True)
        save_file(tensors[min(seq, 2) - 1], str(folder / "model.safetensors"))
        (folder / "notes.bin").write_bytes(random.Random(seq).randbytes(5000))
        src.add("org/m", folder, AddOptions(tags=["prod"] if seq == 2 else []))
        if seq == 1:
            bd.create(src, str(top / "v1.cbundle"))
            site = Store.init(snapshot / "site")
            bd.import_bundle(site, str(top / "v1.cbundle"))
            (top / "state.json").write_bytes(bd.export_state(site))
            site.close()
    src.close()
    assert run_cas(top / "src", ["pin", "org/m@2", "--everywhere"])[0] == 0
    with pytest.MonkeyPatch.context() as mp, Store.open(top / "src") as src:
        mp.setattr(cas.transfer, "TRANSFER_PACK_BYTES", 1)  # an object per transfer pack
        mp.setattr(cas.transfer, "RUN_BYTES", 1)
        bd.create(src, str(top / "full.cbundle"))
        bd.create(src, str(top / "v2.cbundle"), ["org/m@2"],
                  since=bd.read_state((top / "state.json").read_bytes()))
        refs = {k: v for p in (b"refs/models/", b"refs/tags/", b"refs/pins/")
                for k, v in src.registry.refs_under(p).items()}
    return {"top": top, "work": work, "files": files, "snapshot": snapshot, "refs": refs}


def synced_refs(store: Store) -> dict[bytes, bytes]:
    return {k: v for p in (b"refs/models/", b"refs/tags/", b"refs/pins/")
            for k, v in store.registry.refs_under(p).items()}


def check_crashed(store: Path, label: str) -> None:
    """What a crash left is consistent: the store (if it got as far as one) verifies clean."""
    if not (store / "config.json").exists():
        return
    with Store.open(store) as s:
        report = s.verify()
        assert report.ok, (label, [b.version for b in report.broken_versions],
                           report.problems, report.bad_objects)


def check_after(prepared: dict, store: Path, present: list[int], label: str) -> None:
    """After the re-run: the store is sound, holds the sender's refs, reads back the versions
    ``present`` byte for byte and records the others absent; no temp survives the next
    writer."""
    out = prepared["top"] / "restored"
    with Store.open(store) as s:
        report = s.verify()
        assert report.ok, (label, [b.version for b in report.broken_versions],
                           report.problems, report.bad_objects)
        assert synced_refs(s) == prepared["refs"], label
        state = s.registry.state("org/m")
        absent = {state.version(seq).id for seq in (1, 2, 3) if seq not in present}
        assert set(bd.read_state(bd.export_state(s)).absent) == absent, label
        for seq in present:
            for f in (prepared["files"] / f"v{seq}").iterdir():
                s.cat(f"org/m@{seq}", f.name, out)
                assert out.read_bytes() == f.read_bytes(), (label, seq, f.name)
        s.check_writable()  # the next writer removes a killed writer's temps
    temps = list(store.rglob("*.tmp"))
    assert not temps, (label, temps)


def crash_everywhere(prepared: dict, kind: str) -> tuple[dict[str, int], list[str]]:
    """Crash the import of ``kind`` at each of its write steps (at the first append of each
    object written in pieces: the later ones leave the same state), re-run it, and check
    both states. Returns how often each named step was reached and the failures."""
    work = prepared["work"]
    store = work / ("new" if kind == "new" else "site")
    bundle = prepared["top"] / ("full.cbundle" if kind == "new" else "v2.cbundle")
    args = ["bundle", "import", str(bundle)]
    present = [1, 2, 3] if kind == "new" else [1, 2]

    def restore() -> None:
        shutil.rmtree(store, ignore_errors=True)
        if kind == "incremental":
            shutil.copytree(prepared["snapshot"] / "site", store)

    restore()
    code, out, err, steps = run_cas(store, args)
    assert code == 0, (out, err)
    doc = json.loads(out)
    assert all(r["status"] == "ok" for r in doc["refs"]) and doc["packs"] >= 4, doc
    check_after(prepared, store, present, "without a crash")
    patterns = write_steps(store.name)
    reached: dict[str, int] = {}
    failures: list[str] = []
    faulted = [i for i, label in enumerate(steps) if label.split()[1] in WRITE_VERBS
               and not (label.split()[1] == "append" and steps[i - 1].split()[1] == "append")]
    for i in faulted:
        label = steps[i]
        restore()
        code, out, err, _ = run_cas(store, args, {i: "crash"})
        assert code == CRASH_STATUS, (label, code, out, err)
        try:
            check_crashed(store, label)
        except AssertionError as exc:
            failures.append(f"after the crash: {exc}")
        code, out, err, _ = run_cas(store, args)
        assert code == 0, (label, out, err)
        again = json.loads(out)
        assert all(r["status"] in ("ok", "up-to-date") for r in again["refs"]), (label, again)
        try:
            check_after(prepared, store, present, label)
        except AssertionError as exc:
            failures.append(f"after the re-run: {exc}")
        for name, pattern in patterns.items():
            if re.search(pattern, label):
                reached[name] = reached.get(name, 0) + 1
    summary = ", ".join(f"{k}: {reached.get(k, 0)}" for k in patterns)
    print(f"{kind}: crashed at {len(faulted)} of {len(steps)} steps; reached {summary}")
    missing = [k for k in patterns if not reached.get(k)]
    assert not missing, f"write steps never reached: {missing} (steps: {steps})"
    return reached, failures


def test_a_crash_at_every_write_step_of_a_full_import_into_a_new_store(prepared: dict) -> None:
    _, failures = crash_everywhere(prepared, "new")
    assert not failures, "\n".join(failures)


def test_a_crash_at_every_write_step_of_an_import_that_registers_a_version_without_content(
        prepared: dict) -> None:
    _, failures = crash_everywhere(prepared, "incremental")
    assert not failures, "\n".join(failures)
