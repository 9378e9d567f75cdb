"""A crash at every write step of ``cas drop`` (here, and ``--from`` a remote), of the gc that
reclaims a dropped version's bytes, and of ``cas get``.

Two stores: ``a`` holds ``org/m`` v1 and a fine-tune v2 (they share most chunks) and pushed
both to ``far``, a directory remote. A first run of each command records every storage call
of both stores (one step counter, labels naming the store: tests/crashrun.py); then for each
write step a forked child runs the command through the real CLI and stops at that step as
``kill -9`` would. After each crash: the version is still present and whole in at least one
store, both stores verify clean, and a re-run completes (a drop whose crash came after its
commit finds nothing left to drop: E_NOT_FOUND); after the re-run the version is where the
command meant it to be and reads back byte for byte.

The test names the step kinds it must reach (the drop lease in the target, the hold in the
other store, presence.json, the location log, lease releases, pack writes and deletes) and
fails if one was never reached.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from cas import presence, transfer
from cas.peer import LocalPeer
from cas.storage.faults import CRASH_STATUS
from cas.store import Store
from conftest import edit_model, model_folder, read_files
import crashrun
from crashrun import WRITE_VERBS


@pytest.fixture(scope="module", autouse=True)
def no_fsync() -> None:
    """The crashes stop the process as ``kill -9`` does and the kernel keeps what it wrote:
    fsync matters only for a power loss, so it is skipped to keep the cases fast."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


def ok(store: Path, *args: str) -> list[str]:
    code, out, err, steps = crashrun.run_cas(store, list(args))
    assert code == 0, (args, out, err)
    return steps


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``work/{a,far}`` (restored per case from ``snapshots/<state>/``): state ``both`` (each
    store holds both versions) and ``dropped`` (v1 dropped from ``a`` and reclaimed)."""
    top = tmp_path_factory.mktemp("drop-crash")
    work, files = top / "work", top / "files"
    work.mkdir()
    a, far = work / "a", work / "far"
    v1 = model_folder(files / "v1", 3, 400_000)
    v2 = edit_model(v1, files / "v2", 200_000)
    ok(a, "init")
    ok(a, "add", "org/m", str(v1))
    ok(a, "add", "org/m", str(v2))
    ok(a, "remote", "add", "far", str(far))
    ok(a, "push", "far")
    shutil.copytree(work, top / "snapshots" / "both")
    ok(a, "drop", "org/m@1", "--no-gc")
    shutil.copytree(work, top / "snapshots" / "dropped-unreclaimed")
    ok(a, "gc", "--now")
    shutil.copytree(work, top / "snapshots" / "dropped")
    return {"top": top, "work": work, "files": files}


def restore(prepared: dict, state: str) -> None:
    for name in ("a", "far"):
        shutil.rmtree(prepared["work"] / name)
        shutil.copytree(prepared["top"] / "snapshots" / state / name, prepared["work"] / name)


def holds(store: Path, spec: str) -> bool:
    """Whether ``store`` keeps the content of ``spec``: not absent, every object indexed."""
    with Store.open(store) as s:
        v = s.resolve(spec)
        if v.id in presence.load(s.backend):
            return False
        blob = s.registry.commit_versions(s.registry.head(v.name).decode())[v.seq].decode()
        return not transfer.missing(s, LocalPeer(s).closure([blob]))


def sound(store: Path, label: str) -> None:
    with Store.open(store) as s:
        report = s.verify()
        assert report.ok, (label, store.name, report)


def reads_back(prepared: dict, store: Path, label: str) -> None:
    with Store.open(store) as s:
        for spec, folder in (("org/m@1", "v1"), ("org/m@2", "v2")):
            for rel, data in read_files(prepared["files"] / folder).items():
                out = io.BytesIO()
                s.cat(spec, rel, out)
                assert out.getvalue() == data, (label, store.name, spec, rel)


#: scenario -> (snapshot, runner, args, the store that loses (or gains) org/m@1, step kinds)
SCENARIOS = {
    "drop": ("both", "a", ["drop", "org/m@1"], "a", {
        "drop lease": r"^a write locks/reader-",
        "hold in the other store": r"^far write locks/reader-",
        "presence": r"^a swap presence\.json$",
        "location log": r"^a (write registry/objects/|swap registry/refs/cas/locations)",
        "lease release": r"^(a|far) swap locks/reader-",
        "gc lease": r"^a swap locks/gc\.json$",
    }),
    "drop-from": ("both", "a", ["drop", "org/m@1", "--from", "far"], "far", {
        "drop lease": r"^far write locks/reader-",
        "hold in the other store": r"^a write locks/reader-",
        "presence": r"^far swap presence\.json$",
        "location log": r"^far (write registry/objects/|swap registry/refs/cas/locations)",
        "lease release": r"^(a|far) swap locks/reader-",
    }),
    "reclaim": ("dropped-unreclaimed", "a", ["gc", "--now"], "a", {
        "gc lease": r"^a swap locks/gc\.json$",
        "pack delete": r"^a delete packs/pack-",
    }),
    "get": ("dropped", "a", ["get", "org/m@1"], "a", {
        "lease": r"^a write locks/shared-",
        "pack data": r"^a (open_write pack|append pack|commit packs/pack-.*\.pack)$",
        "pack index": r"^a write packs/pack-.*\.idx$",
        "presence": r"^a swap presence\.json$",
    }),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_crash_at_every_write_step(prepared: dict, scenario: str) -> None:
    state, runner_name, args, moved, kinds = SCENARIOS[scenario]
    work = prepared["work"]
    runner = work / runner_name
    other = "far" if moved == "a" else "a"
    getting = args[0] == "get"
    restore(prepared, state)
    code, out, err, steps = crashrun.run_cas(runner, args)
    assert code == 0, (out, err)
    faulted = [i for i, label in enumerate(steps) if label.split()[1] in WRITE_VERBS]
    reached: dict[str, int] = {}
    for i in faulted:
        label = steps[i]
        restore(prepared, state)
        code, out, err, _ = crashrun.run_cas(runner, args, {i: "crash"})
        assert code == CRASH_STATUS, (label, code, out, err)
        # Never absent from both stores; both sound as the crash left them.
        assert holds(work / "a", "org/m@1") or holds(work / "far", "org/m@1"), label
        assert holds(work / other, "org/m@1") or getting, label
        for name in ("a", "far"):
            sound(work / name, label)
        # The re-run completes.
        code, out, err, _ = crashrun.run_cas(runner, args)
        doc = json.loads(out)
        if code != 0:
            assert args[0] == "drop" and doc["error"]["code"] == "E_NOT_FOUND", (label, out)
            assert "content is not in" in doc["error"]["message"], (label, out)
        if getting:
            assert holds(work / "a", "org/m@1"), label
        elif args[0] == "drop":
            assert not holds(work / moved, "org/m@1"), label
        assert holds(work / other, "org/m@1"), label
        for name in ("a", "far"):
            sound(work / name, label)
        reads_back(prepared, work / ("a" if getting or moved == "far" else other), label)
        with Store.open(work / "a") as s:  # the next writer removes a killed one's temps
            s.check_writable()
        temps = [p for name in ("a", "far") for p in (work / name).rglob("*.tmp")]
        assert not temps, (label, temps)
        for kind, pattern in kinds.items():
            if re.search(pattern, label):
                reached[kind] = reached.get(kind, 0) + 1
    print(f"{scenario}: crashed at {len(faulted)} of {len(steps)} steps; reached "
          + ", ".join(f"{k}: {reached.get(k, 0)}" for k in kinds))
    missing = [k for k in kinds if not reached.get(k)]
    assert not missing, f"write steps never reached: {missing} (steps: {steps})"
