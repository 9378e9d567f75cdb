"""Healing: damaged copies are recorded and never built on again; damaged and missing objects
are healed by re-adding the original files or by ``verify --all --repair --from PATH``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


from cas import Store
from cas.ids import parse_hex
from conftest import CasCli, CasRun, damage_chunk

BAD = "bad-objects.json"


def run(cas: CasCli, *args: str, code: int = 0) -> CasRun:
    """Run ``cas --json ARGS``: the exit code must be ``code``, and there is never a traceback."""
    r = cas("--json", *args, ok=False)
    assert "Traceback" not in r.err, r.err
    assert r.code == code, f"cas {' '.join(args)} exited {r.code}:\n{r.out}\n{r.err}"
    return r


def write_files(folder: Path, **files: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def age(folder: Path) -> None:
    """Move mtimes a minute back: the stat cache keeps only files older than the add."""
    for p in folder.rglob("*"):
        t = p.stat().st_mtime - 60
        os.utime(p, (t, t))


def pack_ids(store: Path) -> set[str]:
    return {p.name[len("pack-"):-len(".pack")] for p in (store / "packs").glob("pack-*.pack")}


def drop_pack(store: Path, pack_id: str) -> None:
    for ext in ("pack", "idx"):
        (store / "packs" / f"pack-{pack_id}.{ext}").unlink()


def file_objects(store: Path, spec: str, path: str) -> tuple[str, list[tuple[str, str]]]:
    """The chunk list id of file ``path`` of ``spec``, and its chunks as (id, pack id)."""
    s = Store.open(store)
    try:
        entry = next(f for f in s.manifest(s.resolve(spec)).files if f.path == path)
        out = []
        for cid, _n in s.read_chunk_list(parse_hex(entry.chunks)).chunks:
            loc = s.packs.locate(cid)
            assert loc is not None
            out.append((cid.hex(), loc.pack.id))
        return entry.chunks, out
    finally:
        s.close()


def assert_checks_out(cas: CasCli, spec: str, dest: Path, src: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    run(cas, "checkout", spec, str(dest))
    want = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    got = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == want


def history(cas: CasCli, name: str) -> list[dict]:
    return run(cas, "log", name).json["history"]


def test_verify_records_damaged_copies_and_tells_damaged_from_missing(cas, store_path, tmp_path):
    a = write_files(tmp_path / "a", **{"a.bin": os.urandom(600_000)})
    b = write_files(tmp_path / "b", **{"b.bin": os.urandom(100_000)})
    run(cas, "add", "ma", str(a))
    before = pack_ids(store_path)
    run(cas, "add", "mb", str(b))
    (pack_b,) = pack_ids(store_path) - before
    _, chunks = file_objects(store_path, "ma", "a.bin")
    damaged, damaged_pack = chunks[1]
    damage_chunk(store_path, "ma", "a.bin", 1)
    list_b, _ = file_objects(store_path, "mb", "b.bin")
    drop_pack(store_path, pack_b)

    doc = run(cas, "verify", "--all", code=4).json
    assert doc["error"]["code"] == "E_VERIFY"
    report = doc["report"]
    # Only the damaged copy is a bad object; the missing list is missing, not bad.
    assert [(o["id"], o["pack"]) for o in report["bad_objects"]] == [(damaged, damaged_pack)]
    reasons = {v["version"]: v["reasons"] for v in report["broken_versions"]}
    assert reasons == {"ma@1": [f"a.bin: chunk {damaged} is damaged"],
                       "mb@1": [f"b.bin: chunk list {list_b} is missing"]}
    record = json.loads((store_path / BAD).read_bytes())
    assert record["schema"] == "cas.bad-objects" and record["version"] == 1
    # the damaged copy with its pack, the missing list with none
    assert sorted((o["id"], o["pack"]) for o in record["objects"]) == sorted(
        [(damaged, damaged_pack), (list_b, "")])

    text = cas("verify", "--all", ok=False)
    assert text.code == 4
    assert f"bad chunk {damaged} in pack {damaged_pack}" in text.err
    assert f"chunk {damaged} is damaged" in text.err
    assert f"chunk list {list_b} is missing" in text.err


def test_readd_heals_every_version_and_gc_drops_the_damaged_copy(cas, store_path, tmp_path):
    shared = os.urandom(600_000)
    src = write_files(tmp_path / "one", **{"w.bin": shared})
    src2 = write_files(tmp_path / "two", **{"w.bin": shared, "x.bin": os.urandom(5000)})
    age(src)  # the re-add below finds w.bin in the stat cache: the cache must not vouch for it
    age(src2)
    run(cas, "add", "m1", str(src))
    run(cas, "add", "m2", str(src2))
    _, chunks = file_objects(store_path, "m1", "w.bin")
    damaged, damaged_pack = chunks[2]
    damage_chunk(store_path, "m1", "w.bin", 2)
    run(cas, "verify", "--all", code=4)
    log1, log2 = history(cas, "m1"), history(cas, "m2")

    doc = run(cas, "add", "m1", str(src)).json
    assert doc["created"] is False  # same content as the latest: no new version
    assert doc["new_chunks"] >= 1 and doc["new_stored_bytes"] > 0
    assert history(cas, "m1") == log1 and history(cas, "m2") == log2
    # One re-add heals both models that share the chunk.
    assert_checks_out(cas, "m1", tmp_path / "out1", src)
    assert_checks_out(cas, "m2", tmp_path / "out2", src2)
    report = run(cas, "verify", "--all").json
    assert report["ok"] and report["bad_objects"] == []
    (warning,) = report["warnings"]
    assert warning["code"] == "W_DAMAGED_COPY"
    assert damaged in warning["message"] and damaged_pack in warning["message"]

    run(cas, "gc", "--now")
    assert damaged_pack not in pack_ids(store_path)
    report = run(cas, "verify", "--all").json
    assert report["ok"] and report["warnings"] == []
    assert not (store_path / BAD).exists()
    assert_checks_out(cas, "m2", tmp_path / "out2", src2)


def test_checkout_of_a_damaged_chunk_fails_until_it_is_healed(cas, store_path, tmp_path):
    src = write_files(tmp_path / "src", **{"w.bin": os.urandom(300_000)})
    run(cas, "add", "m", str(src))
    _, chunks = file_objects(store_path, "m", "w.bin")
    damaged = chunks[0][0]
    damage_chunk(store_path, "m", "w.bin", 0)
    dest = tmp_path / "out"
    # Before verify knows of the damage, and after it recorded it (the only copy is damaged).
    for recorded in (False, True):
        if recorded:
            run(cas, "verify", "--all", code=4)
            assert (store_path / BAD).exists()
        err = run(cas, "checkout", "m", str(dest), code=4).json["error"]
        assert err["code"] == "E_VERIFY" and damaged in err["message"]
        assert not (dest / "w.bin").exists()
    run(cas, "verify", "--all", "--repair", "--from", str(src))
    assert_checks_out(cas, "m", dest, src)


def test_repair_from_heals_damaged_and_missing_objects_without_a_version(cas, store_path,
                                                                          tmp_path):
    head = os.urandom(600_000)
    a = write_files(tmp_path / "orig" / "a", **{"a.bin": head})
    b = write_files(tmp_path / "orig" / "b", **{"b.bin": head + os.urandom(300_000)})
    run(cas, "add", "ma", str(a))
    first = pack_ids(store_path)
    run(cas, "add", "mb", str(b))
    (second,) = pack_ids(store_path) - first
    (first,) = first
    _, b_chunks = file_objects(store_path, "mb", "b.bin")
    # b.bin starts with a.bin's chunks (first pack) and ends with its own (second pack).
    assert b_chunks[0][1] == first and b_chunks[-1][1] == second
    damage_chunk(store_path, "mb", "b.bin", len(b_chunks) - 1)
    drop_pack(store_path, first)  # a.bin's chunk list and chunks: missing
    logs = history(cas, "ma"), history(cas, "mb")
    report = run(cas, "verify", "--all", code=4).json["report"]
    assert {v["version"] for v in report["broken_versions"]} == {"ma@1", "mb@1"}
    (store_path / BAD).unlink()  # repair finds the damage itself

    doc = run(cas, "verify", "--all", "--repair", "--from", str(tmp_path / "orig")).json
    assert doc["ok"] and doc["healed_objects"] > 0
    assert [w["code"] for w in doc["warnings"]] == ["W_DAMAGED_COPY"]
    assert (history(cas, "ma"), history(cas, "mb")) == logs
    assert_checks_out(cas, "ma", tmp_path / "out-a", a)
    assert_checks_out(cas, "mb", tmp_path / "out-b", b)


def test_from_needs_verify_all_repair(cas, store_path, tmp_path):
    src = write_files(tmp_path / "src", **{"w.bin": os.urandom(50_000)})
    run(cas, "add", "m", str(src))
    packs = pack_ids(store_path)
    for args in (["--all", "--from", str(src)], ["m", "--from", str(src)],
                 ["m", "--repair", "--from", str(src)]):
        assert run(cas, "verify", *args, code=2).json["error"]["code"] == "E_ARGS"
    assert pack_ids(store_path) == packs


def test_add_stores_a_missing_object_again(cas, store_path, tmp_path):
    src = write_files(tmp_path / "src", **{"w.bin": os.urandom(400_000)})
    run(cas, "add", "m1", str(src))
    (pack,) = pack_ids(store_path)
    n = len(file_objects(store_path, "m1", "w.bin")[1])
    drop_pack(store_path, pack)
    doc = run(cas, "add", "m2", str(src)).json
    assert doc["new_chunks"] == n and doc["reused_chunks"] == 0
    assert_checks_out(cas, "m1", tmp_path / "out", src)  # m1 is whole again
    run(cas, "verify", "--all")


def test_unchanged_readd_with_a_warm_stat_cache_heals_missing_objects(cas, store_path,
                                                                     tmp_path):
    src = write_files(tmp_path / "src", **{"w.bin": os.urandom(300_000)})
    age(src)
    run(cas, "add", "m", str(src))
    (pack,) = pack_ids(store_path)
    drop_pack(store_path, pack)
    run(cas, "verify", "--all", code=4)  # names the chunk list missing
    doc = run(cas, "add", "m", str(src)).json
    assert doc["created"] is False
    assert doc["new_chunks"] > 0
    assert_checks_out(cas, "m", tmp_path / "out", src)


def test_stat_cache_hit_whose_chunk_is_missing_is_read_again(cas, store_path, tmp_path):
    head = os.urandom(600_000)
    a = write_files(tmp_path / "a", **{"a.bin": head})
    src = write_files(tmp_path / "b", **{"b.bin": head + os.urandom(200_000),
                                         "u.bin": os.urandom(3000)})
    run(cas, "add", "ma", str(a))
    first = pack_ids(store_path)
    age(src)
    run(cas, "add", "mb", str(src))
    (first,) = first
    list_b, b_chunks = file_objects(store_path, "mb", "b.bin")
    packs_b = {p for _, p in b_chunks}
    assert first in packs_b and len(packs_b) == 2  # its list is in the second pack
    drop_pack(store_path, first)  # b.bin's list stays; some of its chunks go

    (src / "c.bin").write_bytes(os.urandom(2000))
    doc = run(cas, "add", "mb", str(src)).json
    assert doc["created"] is True and doc["seq"] == 2
    assert doc["stat_cache_hits"] == 1  # u.bin; b.bin was read again
    assert_checks_out(cas, "mb@2", tmp_path / "out", src)
    run(cas, "verify", "mb@2")


def _record(objects: object, schema: str = "cas.bad-objects", version: int = 1) -> bytes:
    return json.dumps({"schema": schema, "version": version, "objects": objects}).encode()


def test_damaged_or_unknown_bad_objects_record_is_ignored(cas, store_path, tmp_path):
    src = write_files(tmp_path / "src", **{"w.bin": os.urandom(200_000)})
    run(cas, "add", "m0", str(src))
    _, chunks = file_objects(store_path, "m0", "w.bin")
    # Records that would mark every chunk bad, if they were read.
    every = [{"id": cid, "pack": pack, "reason": "test"} for cid, pack in chunks]
    bodies = {
        "garbage": b"\x00\xffnot json{",
        "empty": b"",
        "a list": b"[]",
        "unknown schema": _record(every, schema="cas.other"),
        "unknown version": _record(every, version=2),
        "objects not a list": _record("x"),
        "entry without fields": _record([{"id": chunks[0][0]}]),
        "ids not hex": _record([{"id": "zz" * 32, "pack": chunks[0][1], "reason": "r"}]),
    }
    path = store_path / BAD
    for i, (what, body) in enumerate(bodies.items(), 1):
        path.write_bytes(body)
        doc = run(cas, "add", f"m{i}", str(src)).json
        assert doc["new_chunks"] == 0, what  # deduplicated: nothing is known to be bad
        report = run(cas, "verify", "--all").json
        assert report["ok"] and report["warnings"] == [], what
    # A folder in its place: unreadable, so ignored too.
    path.unlink()
    path.mkdir()
    assert run(cas, "add", "mdir", str(src)).json["new_chunks"] == 0
    assert run(cas, "verify", "--all").json["ok"]
    assert_checks_out(cas, "m0", tmp_path / "out", src)


def test_a_valid_record_is_honoured(cas, store_path, tmp_path):
    """The counterpart of the test above: the same record, in the current schema, makes add
    store fresh copies of the chunks it names."""
    src = write_files(tmp_path / "src", **{"w.bin": os.urandom(200_000)})
    run(cas, "add", "m0", str(src))
    _, chunks = file_objects(store_path, "m0", "w.bin")
    every = [{"id": cid, "pack": pack, "reason": "test"} for cid, pack in chunks]
    (store_path / BAD).write_bytes(_record(every))
    assert run(cas, "add", "m1", str(src)).json["new_chunks"] == len(chunks)
