"""``cas gc`` through the CLI: what it keeps (live, tagged, pinned, removed within the restore
window, derived-chunk bases, packs younger than the grace period, packs without an index),
what it reclaims, ``--dry-run``, ``--json``, stored retention rules, and one gc at a time."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cas import Store, graph
from test_checkout_races import Paused
from conftest import pack_sizes, write_files




def _tree(store: Path) -> dict[str, tuple[int, int]]:
    """Every file of the store (outside its lock and caches) -> (size, mtime_ns)."""
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in store.rglob("*") if p.is_file() and p.name != "lock"}


def _same(cas, spec: str, files: dict[str, bytes], dest: Path) -> None:  # type: ignore[no-untyped-def]
    shutil.rmtree(dest, ignore_errors=True)
    cas("checkout", spec, str(dest))
    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files


def _verify_clean(cas) -> None:  # type: ignore[no-untyped-def]
    r = cas("--json", "verify", "--all", ok=False)
    assert r.code == 0 and r.json["ok"], r.out + r.err


@pytest.fixture
def three(cas, tmp_path: Path):  # type: ignore[no-untyped-def]
    """m@1, m@2, m@3 of unrelated content (one pack each); m@1 removed."""
    rng = random.Random(1)
    files = {}
    for seq in (1, 2, 3):
        files[seq] = {"w.bin": rng.randbytes(120_000)}
        cas("add", "m", str(write_files(tmp_path / f"v{seq}", files[seq])))
    cas("rm", "m@1")
    return files


# -- dry run, JSON, human output ---------------------------------------------------------------


def test_dry_run_changes_nothing(cas, store_path: Path, three) -> None:  # type: ignore[no-untyped-def]
    before = _tree(store_path)
    doc = cas("--json", "gc", "--dry-run", "--now").json
    assert doc["dry_run"] is True
    assert [p["action"] for p in doc["packs"]].count("delete") == 1
    assert doc["reclaimed"] >= doc["dead_bytes"] > 100_000
    human = cas("gc", "--dry-run", "--now").out
    assert human.startswith("would reclaim") and "1 delete" in human
    assert _tree(store_path) == before
    assert cas("--json", "restore", "m@1").json["restored"] == ["m@1"]


def test_json_fields_and_quiet(cas, store_path: Path, three) -> None:  # type: ignore[no-untyped-def]
    cas("config", "set", "restore_window", "0s")
    packs = pack_sizes(store_path)
    doc = cas("--json", "gc", "--now").json
    assert set(doc) == {"ok", "dry_run", "roots", "packs_before", "packs_after",
                        "packs_deleted", "packs_repacked", "packs_written", "bytes_before",
                        "bytes_after", "reclaimed", "live_bytes", "dead_bytes", "dead_kept",
                        "registry_objects_pruned", "retention_removed", "packs", "warnings"}
    assert doc["ok"] and not doc["dry_run"] and doc["roots"] == {"live": 2}
    assert (doc["packs_before"], doc["packs_after"], doc["packs_deleted"]) == (3, 2, 1)
    assert doc["bytes_before"] == sum(packs.values())
    assert doc["bytes_after"] == sum(pack_sizes(store_path).values())
    assert doc["reclaimed"] == doc["bytes_before"] - doc["bytes_after"]
    rows = {p["pack"]: p for p in doc["packs"]}
    assert set(rows) == set(packs)
    for pack_id, row in rows.items():
        assert set(row) == {"pack", "size", "objects", "live_objects", "live_bytes",
                            "dead_bytes", "action"}
        assert row["size"] == packs[pack_id]
        assert row["action"] == ("delete" if row["live_objects"] == 0 else "keep")
        assert (pack_id in pack_sizes(store_path)) == (row["action"] == "keep")
    r = cas("--quiet", "gc", "--now")
    assert r.out == "" and r.err == ""


def test_now_excludes_grace_and_expire_removed(cas) -> None:  # type: ignore[no-untyped-def]
    r = cas("--json", "gc", "--now", "--grace", "1h", ok=False)
    assert r.code != 0 and r.json["error"]["code"] == "E_ARGS"
    r = cas("--json", "gc", "--grace", "soon", ok=False)
    assert r.json["error"]["code"] == "E_ARGS" and "--grace" in r.json["error"]["message"]


# -- reclaiming --------------------------------------------------------------------------------


def test_now_reclaims_nearly_all_unreachable_bytes(cas, store_path: Path, tmp_path: Path
                                                   ) -> None:  # type: ignore[no-untyped-def]
    """Ten versions, each a few edits away from the one before; every other one removed:
    ``gc --now`` with the default repack threshold reclaims at least 98% of the dead bytes,
    and the versions left check out."""
    rng = random.Random(2)
    data = bytearray(rng.randbytes(1_000_000))
    versions = {}
    for seq in range(1, 11):
        for _ in range(3):
            at = rng.randrange(0, len(data) - 20_000)
            data[at : at + 20_000] = rng.randbytes(20_000)
        versions[seq] = {"w.bin": bytes(data)}
        cas("add", "m", str(write_files(tmp_path / f"v{seq}", versions[seq])))
    for seq in range(1, 11, 2):
        cas("rm", f"m@{seq}")
    cas("config", "set", "restore_window", "0s")
    dry = cas("--json", "gc", "--now", "--dry-run").json
    doc = cas("--json", "gc", "--now").json
    assert dry["dead_bytes"] > 100_000
    assert doc["reclaimed"] >= 0.98 * dry["dead_bytes"], (doc["reclaimed"], dry["dead_bytes"])
    assert doc["bytes_after"] <= dry["live_bytes"] * 1.02
    _verify_clean(cas)
    for seq in (2, 10):
        _same(cas, f"m@{seq}", versions[seq], tmp_path / "out")


# -- what gc keeps -----------------------------------------------------------------------------


def test_removed_versions_within_the_window_survive(cas, store_path: Path, three,
                                                    tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    packs = pack_sizes(store_path)
    doc = cas("--json", "gc").json  # default grace: fresh packs are young
    assert {p["action"] for p in doc["packs"]} == {"young"} and doc["packs_deleted"] == 0
    doc = cas("--json", "gc", "--grace", "0").json
    assert doc["roots"] == {"live": 2, "removed": 1} and doc["packs_deleted"] == 0
    assert pack_sizes(store_path) == packs
    cas("restore", "m@1")
    _same(cas, "m@1", three[1], tmp_path / "out")
    _verify_clean(cas)


def test_expire_removed_0_makes_removed_versions_unrestorable(
        cas, store_path: Path, three) -> None:  # type: ignore[no-untyped-def]
    doc = cas("--json", "gc", "--grace", "0", "--expire-removed", "0").json
    assert doc["packs_deleted"] == 1 and doc["roots"] == {"live": 2}
    r = cas("--json", "restore", "m@1", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND", r.json
    _verify_clean(cas)


def test_expiry_recorded_by_gc_covers_removals_in_the_same_second(
        cas, store_path: Path, three) -> None:  # type: ignore[no-untyped-def]
    with Store.open(store_path) as store:
        removed_at = store.registry.state("m").removed[1].removed_at
        # What 'gc --expire-removed 0' records when it runs half a second after the rm.
        graph.record_expired_before(store, removed_at + 0.5)
        roots = graph.find_roots(store, now=removed_at + 10)
        assert [r.ref for r in roots.roots if r.why == graph.REMOVED] == []


def test_tagged_and_pinned_versions_survive_gc_now(cas, store_path: Path, tmp_path: Path
                                                   ) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(3)
    files = {seq: {"w.bin": rng.randbytes(60_000)} for seq in (1, 2, 3)}
    for seq, f in files.items():
        cas("add", "m", str(write_files(tmp_path / f"v{seq}", f)))
    cas("tag", "m@1", "prod")
    cas("pin", "m@2")
    r = cas("--json", "rm", "m", ok=False)
    assert r.json["error"]["code"] == "E_CONFLICT"  # tagged and pinned: --force needed
    cas("rm", "m@3")
    cas("config", "set", "restore_window", "0s")
    doc = cas("--json", "gc", "--now").json
    assert doc["packs_deleted"] == 1
    _same(cas, "m@prod", files[1], tmp_path / "out")
    _same(cas, "m@2", files[2], tmp_path / "out")
    _verify_clean(cas)


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layer.{i}.weight": (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
            for i in range(3)}


def test_derived_chunk_bases_survive_removal_of_the_base_version(
        cas, store_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An F16 conversion registered with --parent is stored as chunks derived from the F32
    model; removing the F32 version must not let gc take what the F16 one is computed from."""
    w = _weights(1)
    (tmp_path / "f32").mkdir()
    save_file(w, str(tmp_path / "f32" / "model.safetensors"))
    (tmp_path / "f16").mkdir()
    save_file({k: v.astype(np.float16) for k, v in w.items()},
              str(tmp_path / "f16" / "model.safetensors"))
    f16 = {"model.safetensors": (tmp_path / "f16" / "model.safetensors").read_bytes()}
    cas("add", "org/base", str(tmp_path / "f32"))
    base_packs = set(pack_sizes(store_path))
    cas("add", "org/base-f16", str(tmp_path / "f16"), "--parent", "org/base@1")
    f16_packs = set(pack_sizes(store_path)) - base_packs
    assert sum(pack_sizes(store_path)[p] for p in f16_packs) < len(f16["model.safetensors"]) / 4
    cas("rm", "org/base@1")
    cas("config", "set", "restore_window", "0s")
    doc = cas("--json", "gc", "--now").json
    assert doc["roots"] == {"live": 1}
    assert base_packs <= set(pack_sizes(store_path)), "the F16 model's bases were deleted"
    _same(cas, "org/base-f16", f16, tmp_path / "out")
    _verify_clean(cas)


def test_stored_retention_rules_are_applied_by_gc(cas, store_path: Path, tmp_path: Path
                                                  ) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(4)
    for seq in range(1, 5):
        cas("add", "m", str(write_files(tmp_path / f"v{seq}", {"w.bin": rng.randbytes(30_000)})))
    cas("retain", "m", "--keep-last", "2", "--set")
    dry = cas("--json", "gc", "--dry-run").json
    assert dry["retention_removed"] == 2
    assert cas("--json", "ls").json["models"][0]["versions"] == 4  # the dry run removed none
    doc = cas("--json", "gc").json
    assert doc["retention_removed"] == 2 and doc["roots"] == {"live": 2, "removed": 2}
    assert cas("--json", "ls").json["models"][0]["versions"] == 2
    assert "retain" in cas("log", "m").out
    cas("restore", "m@1")  # ordinary removals: restorable within the window
    assert cas("--json", "ls").json["models"][0]["versions"] == 3


# -- packs without an index, young packs -------------------------------------------------------


def test_pack_without_index_is_never_deleted_as_an_orphan(
        cas, store_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The crash window of a writer (pack renamed into place, index not yet): gc deletes no
    pack it has not indexed and judged (listed in its report); a version whose objects are
    in such a pack keeps it (gc indexes it first, or deletes nothing at all); a writer
    indexes it, and then a gc deletes it only if nothing needs it."""
    rng = random.Random(5)
    live = {"w.bin": rng.randbytes(80_000)}
    before = set(pack_sizes(store_path))
    cas("add", "m", str(write_files(tmp_path / "m", live)))
    (live_pack,) = set(pack_sizes(store_path)) - before
    before = set(pack_sizes(store_path))
    cas("add", "x", str(write_files(tmp_path / "x", {"d.bin": rng.randbytes(80_000)})))
    (dead_pack,) = set(pack_sizes(store_path)) - before
    cas("rm", "x")
    cas("config", "set", "restore_window", "0s")
    for p in (live_pack, dead_pack):
        idx = store_path / "packs" / f"pack-{p}.idx"
        idx.rename(tmp_path / idx.name)
    r = cas("--json", "gc", "--now", ok=False)
    if r.code == 0:
        judged = {p["pack"]: p["action"] for p in r.json["packs"]}
        assert judged.get(live_pack) == "keep", r.json  # indexed by gc's recovery, live
        assert dead_pack in pack_sizes(store_path) or judged.get(dead_pack) == "delete", r.json
    else:
        assert r.json["error"]["code"] == "E_VERIFY", r.json
        assert "nothing was deleted" in r.json["error"]["message"]
        assert dead_pack in pack_sizes(store_path)
    assert live_pack in pack_sizes(store_path)
    cas("add", "k", str(write_files(tmp_path / "k", {"k.bin": rng.randbytes(1000)})))
    assert (store_path / "packs" / f"pack-{live_pack}.idx").exists()  # indexed by a writer
    _same(cas, "m", live, tmp_path / "out")
    cas("gc", "--now")
    assert dead_pack not in pack_sizes(store_path) and live_pack in pack_sizes(store_path)
    _same(cas, "m", live, tmp_path / "out")
    _verify_clean(cas)


def test_packs_younger_than_grace_are_kept(cas, store_path: Path, three) -> None:  # type: ignore[no-untyped-def]
    cas("config", "set", "restore_window", "0s")
    packs = pack_sizes(store_path)
    doc = cas("--json", "gc").json  # default grace: every pack was just written
    assert {p["action"] for p in doc["packs"]} == {"young"} and doc["packs_deleted"] == 0
    assert pack_sizes(store_path) == packs
    doc = cas("--json", "gc", "--grace", "0").json
    assert doc["packs_deleted"] == 1


# -- one gc at a time --------------------------------------------------------------------------


def test_second_gc_gets_e_lock_or_waits(cas, store_path: Path, three) -> None:  # type: ignore[no-untyped-def]
    cas("config", "set", "restore_window", "0s")
    first = Paused(store_path, "marked", "--json", "gc", "--now")
    first.wait_paused()
    r = cas("--json", "--lock-timeout", "0", "gc", "--now", ok=False)
    assert r.json["error"]["code"] == "E_LOCK", r.json
    assert "gc lock is held" in r.json["error"]["message"]
    assert f"pid {first.proc.pid}" in r.json["error"]["message"]
    waiting = Paused(store_path, "never", "--json", "--lock-timeout", "120", "gc", "--now")
    code, out, err = first.resume()
    assert code == 0 and json.loads(out)["packs_deleted"] == 1, out + err
    code, out, err = waiting.resume()
    assert code == 0 and json.loads(out)["packs_deleted"] == 0, out + err
    _verify_clean(cas)
