"""``cas gc --quota``, the ``quota`` setting and ``cas archive``: the least recently used
versions' content leaves the store first, only where a copy exists elsewhere, never a pinned
version's, and the bytes freed are the ones the plan predicted.

Every store here has a directory remote ``far`` holding a copy of what it should be able to
drop. ``--now`` (grace 0) is used throughout: packs written a moment ago are otherwise young,
and gc (so the plan) does not count them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cas import access, evict, presence, settings
from cas.errors import ArgsError
from cas.store import Store
from conftest import CasCli, edit_model, model_folder, read_files
import crashrun

SIZE = 150_000


def _store(tmp_path: Path, models: tuple[str, ...] = ("org/a", "org/b", "org/c"),
           push: bool = True) -> CasCli:
    """A store with one version of each of ``models`` (added in that order, unrelated
    bytes), all pushed to the directory remote ``far``."""
    c = CasCli(tmp_path / "store")
    c("init")
    for i, name in enumerate(models):
        c("add", name, str(model_folder(tmp_path / f"src{i}", i + 1, SIZE)))
    c("remote", "add", "far", str(tmp_path / "far"))
    if push:
        c("push", "far")
    return c


def _plan(c: CasCli, quota: int) -> dict:
    r = c("--json", "gc", "--now", "--dry-run", "--quota", str(quota), ok=False)
    doc = r.json
    return doc if doc["ok"] else {**doc["result"], "error": doc["error"]}


def _drops(c: CasCli, quota: int) -> list[str]:
    return [d["version"] for d in _plan(c, quota)["drops"]]


def _size(c: CasCli) -> int:
    return evict.store_bytes(c.store)


def _present(c: CasCli) -> set[str]:
    with Store.open(c.store) as s:
        absent = presence.load(s.backend)
        reg = s.registry
        return {v.ref for name in reg.model_names() for v in reg.state(name).live_versions()
                if v.id not in absent}


def test_lru_order_follows_uses_not_adds_alone(tmp_path: Path) -> None:
    c = _store(tmp_path)
    one = _size(c) - SIZE // 2  # one drop is enough
    assert _drops(c, one) == ["org/a@1"]  # added first, never used since
    c("checkout", "org/a@1", str(tmp_path / "out"))
    assert _drops(c, one) == ["org/b@1"]
    c("cat", "org/b@1", "model.bin", "--output", str(tmp_path / "b.bin"))
    assert _drops(c, one) == ["org/c@1"]
    # A get is a use too: c dropped, then brought back, goes last.
    c("drop", "org/c@1")
    c("gc", "--now")
    c("get", "org/c@1")
    assert _drops(c, _size(c) - SIZE // 2) == ["org/a@1"]
    # So is an add (a new version of a is as recent as anything).
    c("add", "org/a", str(edit_model(tmp_path / "src0", tmp_path / "a2", 10)))
    c("push", "far")
    order = _drops(c, 0 + 1)
    assert order[-1] == "org/a@2" and order[:3] == ["org/a@1", "org/b@1", "org/c@1"]


def test_clock_skew_neither_saves_nor_dooms_a_version(tmp_path: Path) -> None:
    c = _store(tmp_path)
    ids = {}
    with Store.open(c.store) as s:
        for name in ("org/a", "org/b", "org/c"):
            ids[name] = s.resolve(f"{name}@1").id
    # a used with a clock far in the future, then b with a clock at zero, then c now: the
    # order of the records counts, not their times.
    access.record(c.store, [ids["org/a"]], when=time.time() + 50 * 365 * 86400)
    access.record(c.store, [ids["org/b"]], when=0)
    access.record(c.store, [ids["org/c"]])
    plan = _plan(c, _size(c) - 2 * SIZE + SIZE // 2)
    assert [d["version"] for d in plan["drops"]] == ["org/a@1", "org/b@1"]
    assert plan["drops"][1]["last_used"] == 0
    # A torn last record (a crash mid-append) is ignored.
    with open(c.store / access.NAME, "ab") as f:
        f.write(b"\x01" * (access.RECORD // 2))
    assert _drops(c, _size(c) - SIZE // 2) == ["org/a@1"]
    # Without any record: model then sequence order.
    (c.store / access.NAME).unlink()
    assert _drops(c, _size(c) - SIZE // 2) == ["org/a@1"]
    access.record(c.store, [ids["org/a"]])
    assert _drops(c, _size(c) - SIZE // 2) == ["org/b@1"]


def _records(c: CasCli) -> int:
    return (c.store / access.NAME).stat().st_size // access.RECORD


def test_gc_quota_compacts_a_long_access_log_keeping_the_order(tmp_path: Path) -> None:
    c = _store(tmp_path)
    with Store.open(c.store) as s:
        a, b, cc = (s.resolve(f"org/{n}@1").id for n in "abc")
    rounds = access.COMPACT_AT // 3 + 10
    access.record(c.store, [b, a, cc] * rounds)  # a is used after b: b is the LRU
    assert _records(c) > access.COMPACT_AT
    r = c("--json", "gc", "--now", "--quota", str(_size(c) - SIZE // 2)).json
    assert r["dropped"] == ["org/b@1"]
    assert _records(c) == 3
    log = access.read(c.store)
    assert sorted(log, key=lambda v: log[v][0]) == [b, a, cc]
    assert _drops(c, _size(c) - SIZE // 2) == ["org/a@1"]


def test_a_plain_gc_compacts_a_long_access_log(tmp_path: Path) -> None:
    c = _store(tmp_path, ("org/a",), push=False)
    with Store.open(c.store) as s:
        a = s.resolve("org/a@1").id
    access.record(c.store, [a] * (access.COMPACT_AT + 10))
    c("gc", "--now")
    assert _records(c) == 1


def test_pinned_versions_are_never_evicted(tmp_path: Path) -> None:
    c = _store(tmp_path)
    c("pin", "org/a@1")  # the least recently used, and the latest of its model
    c("tag", "org/b@1", "prod")
    c("pin", "org/b@1", "--everywhere")  # tagged and pinned for every store
    plan = _plan(c, 1)
    assert [d["version"] for d in plan["drops"]] == ["org/c@1"]
    assert {s["version"]: s["skip"] for s in plan["skipped"]} == {
        "org/a@1": "pinned for this store", "org/b@1": "pinned for this store"}
    r = c("--json", "gc", "--now", "--quota", "1", ok=False)
    assert r.code != 0 and r.json["error"]["code"] == "E_DISK"
    assert "pinned" in r.json["error"]["message"]
    assert _present(c) == {"org/a@1", "org/b@1"}
    assert c("--json", "verify", "--all").json["ok"]


def test_the_only_version_of_a_model_goes_when_a_copy_exists_elsewhere(tmp_path: Path) -> None:
    c = _store(tmp_path, ("org/a", "org/b"), push=False)
    c("push", "far", "org/b")
    plan = _plan(c, 1)
    assert [d["version"] for d in plan["drops"]] == ["org/b@1"]
    assert "0 known copies elsewhere" in plan["skipped"][0]["skip"]
    r = c("--json", "gc", "--now", "--quota", str(_size(c) - SIZE // 2)).json
    assert r["dropped"] == ["org/b@1"] and r["over_by"] == 0
    assert _present(c) == {"org/a@1"}
    # Still registered, latest of its model, and back on demand.
    assert c("--json", "show", "org/b").json["present"] is False
    c("checkout", "org/b@1", str(tmp_path / "out"))
    assert read_files(tmp_path / "out") == read_files(tmp_path / "src1")


def test_shared_chunks_counted_once_and_freed_as_predicted(tmp_path: Path) -> None:
    c = CasCli(tmp_path / "store")
    c("init")
    base = model_folder(tmp_path / "v1", 7, 2_000_000)
    c("add", "org/m", str(base))
    for i, at in enumerate((300_000, 1_000_000, 1_700_000), start=2):
        c("add", "org/m", str(edit_model(base, tmp_path / f"v{i}", at, b"tuned%d" % i)))
    c("add", "org/other", str(model_folder(tmp_path / "o", 8, 300_000)))
    c("remote", "add", "far", str(tmp_path / "far"))
    c("push", "far")
    c("cat", "org/other@1", "model.bin", "-o", str(tmp_path / "other.bin"))  # used last
    c("gc", "--now")  # nothing but live data left
    size = _size(c)
    everything = _plan(c, 1)
    frees = {d["version"]: d["frees"] for d in everything["drops"]}
    assert list(frees) == ["org/m@1", "org/m@2", "org/m@3", "org/m@4", "org/other@1"]
    # m@1's chunks are all needed by the fine-tunes: it frees its chunk list only; each
    # fine-tune frees its own edited chunks; the last version of m frees the shared base.
    assert frees["org/m@1"] < 1000, frees
    assert all(frees[f"org/m@{i}"] < 500_000 for i in (2, 3)), frees
    assert frees["org/m@4"] > 1_500_000, frees
    assert everything["predicted"] == sum(frees.values()) + everything["garbage"]
    packs = sum(p.stat().st_size for p in (c.store / "packs").glob("pack-*.pack"))
    assert abs(sum(frees.values()) - packs) < packs / 50, (frees, packs)
    # Under a quota that m's versions alone satisfy: they go, org/other stays.
    quota = size - sum(frees[f"org/m@{i}"] for i in (1, 2, 3)) - frees["org/m@4"] // 2
    plan = _plan(c, quota)
    assert [d["version"] for d in plan["drops"]] == [f"org/m@{i}" for i in (1, 2, 3, 4)]
    r = c("--json", "gc", "--now", "--quota", str(quota)).json
    assert r["plan"]["predicted"] == plan["predicted"]
    assert abs(r["freed"] - plan["predicted"]) <= plan["predicted"] / 100, (
        r["freed"], plan["predicted"])
    assert _size(c) <= quota and r["size_after"] == _size(c) and r["over_by"] == 0
    assert _present(c) == {"org/other@1"}
    assert c("--json", "verify", "--all").json["ok"]
    c("checkout", "org/m@4", str(tmp_path / "out"))
    assert read_files(tmp_path / "out") == read_files(tmp_path / "v4")


def _state(store: Path) -> dict[str, int]:
    """Every file that holds data or state (not caches) -> its size."""
    return {str(p.relative_to(store)): p.stat().st_size for p in store.rglob("*")
            if p.is_file() and not str(p.relative_to(store)).startswith("cache")}


def test_dry_run_changes_nothing_and_prints_the_plan(tmp_path: Path) -> None:
    c = _store(tmp_path)
    before = _state(c.store)
    quota = _size(c) - SIZE // 2
    r = c("gc", "--now", "--dry-run", "--quota", str(quota))
    assert "would drop org/a@1: frees" in r.out and "would free" in r.out
    assert _state(c.store) == before
    assert _present(c) == {"org/a@1", "org/b@1", "org/c@1"}


def test_over_quota_with_nothing_droppable_is_e_disk_naming_why(tmp_path: Path) -> None:
    c = _store(tmp_path, push=False)
    r = c("gc", "--now", "--quota", "100K", ok=False)
    assert r.code != 0 and "Traceback" not in r.err
    assert "[E_DISK]" in r.err and "over the quota" in r.err
    assert "org/a@1: 0 known copies elsewhere" in r.err
    assert _present(c) == {"org/a@1", "org/b@1", "org/c@1"}
    assert c("--json", "gc", "--now", "--quota", "lots", ok=False).json["error"]["code"] == (
        "E_ARGS")


def test_the_quota_setting_applies_to_a_plain_gc(tmp_path: Path) -> None:
    c = _store(tmp_path)
    quota = _size(c) - SIZE // 2
    c("config", "set", "quota", str(quota))
    r = c("--json", "gc", "--now").json
    assert r["dropped"] == ["org/a@1"] and _size(c) <= quota
    c("config", "set", "quota", "none")
    r = c("--json", "gc", "--now").json
    assert "dropped" not in r
    assert _present(c) == {"org/b@1", "org/c@1"}
    with pytest.raises(ArgsError):
        settings.parse_size("5 apples")
    assert settings.parse_size("5M") == 5 << 20 and settings.parse_size("5MB") == 5_000_000


def _old_clock(days: float):  # type: ignore[no-untyped-def]
    """A child setup for :func:`crashrun.run_cas`: the registry stamps commits ``days``
    ago (an add on a host that registered it long ago)."""
    def setup() -> None:
        import types

        import cas.registry

        offset = days * 86400
        cas.registry.time = types.SimpleNamespace(  # type: ignore[attr-defined]
            **{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
        cas.registry.time.time = lambda: time.time() - offset  # type: ignore[attr-defined]

    return setup


def test_archive_moves_old_versions_to_the_remote(tmp_path: Path) -> None:
    c = CasCli(tmp_path / "store")
    c("init")
    code, out, err, _ = crashrun.run_cas(c.store, ["add", "org/m", str(
        model_folder(tmp_path / "old", 1, SIZE))], setup=_old_clock(30))
    assert code == 0, (out, err)
    c("add", "org/m", str(model_folder(tmp_path / "new", 2, SIZE)))
    code, out, err, _ = crashrun.run_cas(c.store, ["add", "org/future", str(
        model_folder(tmp_path / "fut", 3, SIZE))], setup=_old_clock(-3650))
    assert code == 0, (out, err)
    c("remote", "add", "cold", str(tmp_path / "cold"))
    dry = c("--json", "archive", "--to", "cold", "--older-than", "7d", "--dry-run").json
    assert [(v["version"], v["status"]) for v in dry["versions"]] == [
        ("org/m@1", "would archive")]
    assert not (tmp_path / "cold").exists()
    r = c("--json", "archive", "--to", "cold", "--older-than", "7d").json
    assert [(v["version"], v["status"]) for v in r["versions"]] == [("org/m@1", "archived")]
    assert r["versions"][0]["bytes_sent"] > SIZE // 2 and r["versions"][0]["age_days"] >= 29
    assert _present(c) == {"org/m@2", "org/future@1"}
    cold = CasCli(tmp_path / "cold")
    assert cold("--json", "verify", "--all").json["versions_checked"] == 1
    c("checkout", "org/m@1", str(tmp_path / "out"))
    assert read_files(tmp_path / "out") == read_files(tmp_path / "old")
    # Pinned versions stay, even when old.
    c("pin", "org/m@1")
    assert c("--json", "archive", "--to", "cold", "--older-than", "7d").json["versions"] == []


def test_archive_in_the_library_with_a_clock_passed_in(tmp_path: Path) -> None:
    c = _store(tmp_path, ("org/a", "org/b"), push=False)
    with Store.open(c.store) as s:
        none = evict.archive(s, "far", 7 * 86400, dry_run=True)
        assert none.versions == []
        later = evict.archive(s, "far", 7 * 86400, now=time.time() + 8 * 86400)
        assert [(v.version, v.status) for v in later.versions] == [
            ("org/a@1", "archived"), ("org/b@1", "archived")]
    assert _present(c) == set()
    assert CasCli(tmp_path / "far")("--json", "verify", "--all").json["versions_checked"] == 2
