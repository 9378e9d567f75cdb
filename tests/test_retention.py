"""cas retain: keep-last, keep-within, keep-best, what is always kept, dry runs, the rm commits
they make (log, restore), stored rules on refs/cas/retention, and the re-check under the lock."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from cas.errors import ArgsError
from cas.ingest import AddOptions
from cas.retention import Policy, apply, apply_stored, make_policy, parse_best, plan
from cas.retention_rules import FILE, REF
from cas.store import Store


def _add(store_path: Path, tmp: Path, name: str, n: int, metrics: list[dict] | None = None
         ) -> None:
    """Register ``n`` small versions of ``name`` (version i with ``metrics[i]``)."""
    with Store.open(store_path) as store:
        for i in range(n):
            d = tmp / f"{name.replace('/', '_')}-{i}"
            d.mkdir(parents=True)
            (d / "w.bin").write_bytes(f"{d} version {i}\n".encode() * 50)
            m = metrics[i] if metrics else {}
            store.add(name, d, AddOptions(metrics=m))


def _rows(doc: dict, name: str) -> dict[int, tuple[bool, list[str]]]:
    model = next(m for m in doc["models"] if m["name"] == name)
    return {v["seq"]: (v["keep"], v["reasons"]) for v in model["versions"]}


def _live(cas, name: str) -> list[int]:
    return [v["seq"] for v in cas("--json", "ls", name, "--long").json["versions"]]


def _refs(store_path: Path, git: str) -> str:
    return subprocess.run([git, "--git-dir", str(store_path / "registry"), "for-each-ref"],
                          capture_output=True, text=True, check=True).stdout


def test_keep_last_removes_older_in_one_rm_commit_that_log_shows_and_restore_undoes(
        cas, store_path, tmp_path):
    _add(store_path, tmp_path, "org/m", 5)
    r = cas("--json", "retain", "org/m", "--keep-last", "2").json
    assert r["applied"] and r["removed"] == 3 and r["kept"] == 2
    assert _rows(r, "org/m") == {1: (False, []), 2: (False, []), 3: (False, []),
                                 4: (True, ["last"]), 5: (True, ["latest", "last"])}
    assert _live(cas, "org/m") == [4, 5]
    history = cas("--json", "log", "org/m").json["history"]
    assert history[0]["action"] == "rm" and history[0]["versions"] == [1, 2, 3]
    assert "retain: keep-last 2" in history[0]["message"]
    assert r["models"][0]["commit"] == history[0]["commit"]
    # ordinary removals: listed as removed and brought back by restore
    assert {x["seq"] for x in cas("--json", "ls", "--removed").json["removed"]} == {1, 2, 3}
    cas("restore", "org/m")
    assert _live(cas, "org/m") == [1, 2, 3, 4, 5]
    # nothing left to remove: no commit
    cas("retain", "org/m", "--keep-last", "5")
    assert cas("--json", "log", "org/m").json["history"][0]["action"] == "restore"


def test_tagged_and_latest_are_never_removed(cas, store_path, tmp_path):
    _add(store_path, tmp_path, "org/m", 4)
    cas("tag", "org/m@1", "prod")
    r = cas("--json", "retain", "org/m", "--keep-best", "acc").json
    # no version has the metric: nothing is "best", but the tag and the latest stay
    assert _rows(r, "org/m") == {1: (True, ["tagged"]), 2: (False, []), 3: (False, []),
                                 4: (True, ["latest"])}
    assert _live(cas, "org/m") == [1, 4]
    assert cas("--json", "show", "org/m@prod").json["seq"] == 1


def test_keep_best_max_min_count_and_missing_metric(cas, store_path, tmp_path):
    metrics = [{"acc": 0.5, "loss": 2.0}, {"acc": 0.9, "loss": 1.5}, {"loss": 0.1},
               {"acc": 0.9, "loss": 3.0}, {"acc": 0.7, "loss": 1.0}, {"acc": 0.1}]
    _add(store_path, tmp_path, "org/m", 6, metrics)
    r = cas("--json", "retain", "org/m", "--keep-best", "loss:min", "--dry-run").json
    assert {s for s, (k, _) in _rows(r, "org/m").items() if k} == {3, 6}
    assert _rows(r, "org/m")[3] == (True, ["best:loss"])
    # max, 2 best: the tie at 0.9 is two versions; v3 has no acc and is never best
    r = cas("--json", "retain", "org/m", "--keep-best", "acc:max:2", "--dry-run").json
    assert {s for s, (k, _) in _rows(r, "org/m").items() if k} == {2, 4, 6}
    # max is the default; count 1 takes the newer of equal values
    r = cas("--json", "retain", "org/m", "--keep-best", "acc", "--dry-run").json
    assert {s for s, (k, _) in _rows(r, "org/m").items() if k} == {4, 6}
    # two metrics at once, each keeps its best
    r = cas("--json", "retain", "org/m", "--keep-best", "acc:max", "--keep-best",
            "loss:min").json
    assert _live(cas, "org/m") == [3, 4, 6]
    assert _rows(r, "org/m")[4] == (True, ["best:acc"])


def test_rules_are_a_union(cas, store_path, tmp_path):
    _add(store_path, tmp_path, "org/m", 6, [{"loss": v} for v in (0.5, 1, 2, 3, 4, 5)])
    r = cas("--json", "retain", "org/m", "--keep-last", "2", "--keep-best", "loss:min",
            "--keep-within", "1d").json
    # everything was created just now: keep-within keeps all, whatever the other rules say
    assert r["removed"] == 0
    r = cas("--json", "retain", "org/m", "--keep-last", "2", "--keep-best", "loss:min").json
    assert _rows(r, "org/m")[1] == (True, ["best:loss"])
    assert _live(cas, "org/m") == [1, 5, 6]


def test_dry_run_writes_nothing(cas, store_path, tmp_path, git):
    _add(store_path, tmp_path, "org/m", 3)
    before = _refs(store_path, git)
    r = cas("retain", "org/m", "--keep-last", "1", "--dry-run")
    assert "would remove 2 versions of 1 model" in r.out and "nothing was written" in r.out
    assert _refs(store_path, git) == before
    assert _live(cas, "org/m") == [1, 2, 3]
    assert cas("retain", "org/m", "--keep-last", "1", "--dry-run", "--quiet").out == ""


def test_glob_selects_several_models(cas, store_path, tmp_path):
    for name in ("org/a", "org/b", "other/c"):
        _add(store_path, tmp_path, name, 3)
    r = cas("--json", "retain", "org/*", "--keep-last", "1").json
    assert sorted(m["name"] for m in r["models"]) == ["org/a", "org/b"]
    assert r["removed"] == 4
    assert _live(cas, "org/a") == [3] and _live(cas, "org/b") == [3]
    assert _live(cas, "other/c") == [1, 2, 3]
    # each model gets its own rm commit
    for name in ("org/a", "org/b"):
        assert cas("--json", "log", name).json["history"][0]["versions"] == [1, 2]
    # without a pattern: every model
    r = cas("--json", "retain", "--keep-last", "2", "--dry-run").json
    assert [m["name"] for m in r["models"]] == ["org/a", "org/b", "other/c"]
    assert r["removed"] == 1


def test_a_model_with_unreadable_history_is_skipped_with_a_warning(cas, store_path, tmp_path):
    for name in ("org/a", "org/bad"):
        _add(store_path, tmp_path, name, 2)
    (store_path / "registry" / "refs" / "models" / "org" / "bad").write_text("ab" * 20 + "\n")
    r = cas("--json", "retain", "org/*", "--keep-last", "1").json
    assert [m["name"] for m in r["models"]] == ["org/a"] and r["removed"] == 1
    assert [w["code"] for w in r["warnings"]] == ["W_UNREADABLE_HISTORY"]
    assert "org/bad" in r["warnings"][0]["message"]
    text = cas("retain", "org/*", "--keep-last", "1")
    assert "[W_UNREADABLE_HISTORY]" in text.err and "nothing to remove" in text.out


def test_bad_arguments_are_e_args_and_unknown_model_e_not_found(cas, store_path, tmp_path):
    _add(store_path, tmp_path, "org/m", 2)
    for args in (["org/m"], ["org/m", "--keep-last", "0"], ["org/m", "--keep-within", "0"],
                 ["org/m", "--keep-within", "soon"], ["org/m", "--keep-best", ":min"],
                 ["org/m", "--keep-best", "a", "--keep-best", "a:min"],
                 ["--set", "--keep-last", "1", "--dry-run"], ["--show", "org/m"],
                 ["--unset"], ["--set"], ["--set", "--show"], ["--clear", "--keep-last", "1"],
                 ["--set", "bad name", "--keep-last", "1"], ["org/m", "--keep-last", "x"]):
        r = cas("--json", "retain", *args, ok=False)
        assert r.code == 2 and r.json["error"]["code"] == "E_ARGS", (args, r.out)
    r = cas("--json", "retain", "org/nope", "--keep-last", "1", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    assert _live(cas, "org/m") == [1, 2]


def test_stored_rules_round_trip(cas, store_path, tmp_path, git):
    for name in ("org/a", "org/b", "team/x"):
        _add(store_path, tmp_path, name, 3, [{"loss": v} for v in (1, 2, 3)])
    assert cas("--json", "retain", "--show").json["rules"] == []
    cas("retain", "--set", "org/b", "--keep-best", "loss:min")
    cas("retain", "--set", "org/*", "--keep-last", "2")
    cas("retain", "--set", "--keep-within", "2w")  # pattern *
    rules = cas("--json", "retain", "--show").json["rules"]
    assert [(r["pattern"], r["policy"]) for r in rules] == [
        ("org/b", {"keep_best": [{"metric": "loss", "order": "min", "count": 1}]}),
        ("org/*", {"keep_last": 2}), ("*", {"keep_within": 14 * 86400})]
    # setting a pattern again replaces its rule in place; setting it as it is changes nothing
    cas("retain", "--set", "org/*", "--keep-last", "1")
    again = cas("--json", "retain", "--set", "org/*", "--keep-last", "1").json
    assert again["changed"] is False
    assert [r["pattern"] for r in again["rules"]] == ["org/b", "org/*", "*"]
    # the document, as git sees it
    doc = subprocess.run([git, "--git-dir", str(store_path / "registry"), "show",
                          f"{REF.decode()}:{FILE.decode()}"], capture_output=True, text=True,
                         check=True).stdout
    assert doc.startswith('{"rules":[{"pattern":"org/b"') and '"schema":"cas.retention"' in doc
    subjects = subprocess.run([git, "--git-dir", str(store_path / "registry"), "log",
                               "--format=%s", REF.decode()], capture_output=True, text=True,
                              check=True).stdout.splitlines()
    assert subjects == ["retain --set org/*: keep-last 1", "retain --set *: keep-within 14d",
                        "retain --set org/*: keep-last 2",
                        "retain --set org/b: keep-best loss:min"]
    # applying without rules: each model gets the first rule that matches it
    r = cas("--json", "retain").json
    assert r["stored"] is True
    assert {m["name"]: m["pattern"] for m in r["models"]} == {
        "org/a": "org/*", "org/b": "org/b", "team/x": "*"}
    assert _live(cas, "org/a") == [3] and _live(cas, "org/b") == [1, 3]
    assert _live(cas, "team/x") == [1, 2, 3]
    assert "retain: keep-last 1" in cas("--json", "log", "org/a").json["history"][0]["message"]
    # a pattern restricts which models the stored rules are applied to
    cas("restore", "org/a")
    assert cas("--json", "retain", "team/*").json["removed"] == 0
    assert _live(cas, "org/a") == [1, 2, 3]
    # unset and clear
    cas("retain", "--unset", "org/*")
    assert [r["pattern"] for r in cas("--json", "retain", "--show").json["rules"]] == [
        "org/b", "*"]
    r = cas("--json", "retain", "--unset", "org/*", ok=False)
    assert r.json["error"]["code"] == "E_NOT_FOUND"
    cas("retain", "--clear")
    assert cas("--json", "retain", "--show").json["rules"] == []
    r = cas("--json", "retain", ok=False)
    assert r.json["error"]["code"] == "E_ARGS" and "--set" in r.json["error"]["message"]


def _store_document(store_path: Path, data: bytes) -> None:
    with Store.open(store_path) as store, store.writing():
        reg = store.registry
        found = reg.read_ref_file(REF, FILE)
        reg.commit_ref_file(REF, found[0] if found else None, FILE, data, "test",
                            ("t", "t@example.com"))


@pytest.mark.parametrize("data, code", [
    (b"not json", "E_SCHEMA"),
    (b'{"schema":"cas.retention","version":2,"rules":[]}', "E_FORMAT"),
    (b'{"schema":"cas.retention","version":0,"rules":[]}', "E_SCHEMA"),
    (b'{"schema":"other","version":1,"rules":[]}', "E_SCHEMA"),
    (b'{"schema":"cas.retention","version":1,"rules":[{"pattern":"*","policy":'
     b'{"keep_daily":7}}]}', "E_FORMAT"),
    (b'{"schema":"cas.retention","version":1,"rules":[{"pattern":"*","policy":'
     b'{"keep_last":0}}]}', "E_SCHEMA"),
    (b'{"schema":"cas.retention","version":1,"rules":[{"pattern":"*","policy":{}}]}',
     "E_SCHEMA"),
    (b'{"schema":"cas.retention","version":1,"rules":[{"pattern":"a b","policy":'
     b'{"keep_last":1}}]}', "E_SCHEMA"),
])
def test_unreadable_stored_rules_are_refused_and_clear_recovers(cas, store_path, tmp_path,
                                                                data, code):
    _add(store_path, tmp_path, "org/m", 2)
    _store_document(store_path, data)
    for args in (["--show"], [], ["--set", "--keep-last", "1"], ["--unset", "*"]):
        r = cas("--json", "retain", *args, ok=False)
        assert r.json["error"]["code"] == code, (args, r.out)
    assert _live(cas, "org/m") == [1, 2]
    cas("retain", "--clear")
    assert cas("--json", "retain", "--show").json["rules"] == []


def test_unknown_top_level_fields_are_carried(cas, store_path):
    _store_document(store_path, b'{"schema":"cas.retention","version":1,"note":{"by":"ops"},'
                                b'"rules":[]}')
    cas("retain", "--set", "--keep-last", "3")
    with Store.open(store_path) as store:
        _tip, data = store.registry.read_ref_file(REF, FILE)
    assert b'"note":{"by":"ops"}' in data and b'"keep_last":3' in data


# -- the library: time, the re-check under the lock, gc's entry point --------------------------

def test_keep_within_measures_creation_time_and_future_times_keep(store_path, tmp_path,
                                                                   monkeypatch):
    Store.init(store_path).close()
    day = 86400
    t0 = 2_000_000_000.0
    for age in (10, 6, 2):  # versions created 10, 6 and 2 days before t0
        monkeypatch.setattr(time, "time", lambda age=age: t0 - age * day)
        _add(store_path, tmp_path / str(age), "org/m", 1)
    monkeypatch.undo()
    with Store.open(store_path) as store:
        p = plan(store, "org/m", make_policy(keep_within="7d"), now=t0)
        assert {v.seq: v.reasons for v in p.models[0].versions} == {
            1: [], 2: ["within"], 3: ["latest", "within"]}
        assert p.models[0].versions[0].created_at == "2033-05-08T03:33:20+00:00"
        # a clock behind the versions (they are "in the future"): all recent, all kept
        p = plan(store, "org/m", make_policy(keep_within="1h"), now=t0 - 30 * day)
        assert p.removed == 0
        assert all("within" in v.reasons for v in p.models[0].versions)
        # measured against the plan's time, not the clock at apply
        p = plan(store, "org/m", make_policy(keep_within="3d"), now=t0)
        assert p.removed == 2
        apply(store, p)
        assert [v.seq for v in store.registry.versions("org/m")] == [3]


def test_apply_keeps_what_was_tagged_or_added_after_the_plan(cas, store_path, tmp_path):
    _add(store_path, tmp_path, "org/m", 4)
    with Store.open(store_path) as store:
        p = plan(store, "org/m", make_policy(keep_last=1))
        assert [v.seq for v in p.models[0].removed()] == [1, 2, 3]
    cas("tag", "org/m@2", "keep-me")
    _add(store_path, tmp_path / "later", "org/m", 1)  # v5: v4 leaves keep-last 1
    with Store.open(store_path) as store:
        done = apply(store, p)
    rows = {v.seq: (v.keep, v.reasons) for v in done.models[0].versions}
    assert rows == {1: (False, []), 2: (True, ["tagged"]), 3: (False, []),
                    4: (True, ["planned"])}
    assert done.removed == 2 and done.applied
    assert _live(cas, "org/m") == [2, 4, 5]


def test_apply_stored_for_gc(cas, store_path, tmp_path):
    _add(store_path, tmp_path, "org/m", 3)
    with Store.open(store_path) as store:
        empty = apply_stored(store)
        assert empty.models == [] and empty.removed == 0
    cas("retain", "--set", "org/*", "--keep-last", "1")
    with Store.open(store_path) as store:
        dry = apply_stored(store, dry_run=True)
        assert dry.removed == 2 and not dry.applied
        assert [v.seq for v in store.registry.versions("org/m")] == [1, 2, 3]
        with store.writing():  # gc calls it holding the lock
            done = apply_stored(store, locked=True)
        assert done.applied and done.removed == 2
    assert _live(cas, "org/m") == [3]


@pytest.mark.parametrize("everywhere", [False, True])
def test_pinned_versions_are_kept(cas, store_path, tmp_path, everywhere):
    pins = pytest.importorskip("cas.pins")
    _add(store_path, tmp_path, "org/m", 3)
    with Store.open(store_path) as store:
        pins.pin(store, "org/m@1", everywhere=everywhere)
    r = cas("--json", "retain", "org/m", "--keep-last", "1").json
    assert _rows(r, "org/m")[1] == (True, ["pinned"])
    assert _live(cas, "org/m") == [1, 3]


def test_pins_of_any_store_keep_and_an_unreadable_pin_keeps_everything(store_path, tmp_path,
                                                                       monkeypatch):
    """Against the pins interface (``pinned_versions(store, damaged=)``), stubbed here so that
    the rule is tested whatever the pins module does."""
    import sys
    import types

    Store.init(store_path).close()
    _add(store_path, tmp_path, "org/m", 3)
    with Store.open(store_path) as store:
        first = store.registry.versions("org/m")[0]
    state: dict = {"pins": [("org/m", first.id, False)], "damaged": []}

    def pinned_versions(store, damaged=None):
        if damaged is not None:
            damaged.extend(state["damaged"])
        return state["pins"]

    monkeypatch.setitem(sys.modules, "cas.pins",
                        types.SimpleNamespace(pinned_versions=pinned_versions))
    with Store.open(store_path) as store:
        p = plan(store, "org/m", make_policy(keep_last=1))
        assert {v.seq: v.reasons for v in p.models[0].versions} == {
            1: ["pinned"], 2: [], 3: ["latest", "last"]}
        state["damaged"] = ["pin refs/pins/all/org/m@x: damaged"]
        p = plan(store, "org/m", make_policy(keep_last=1))
        assert p.removed == 0 and [w.code for w in p.warnings] == ["W_RETAIN_SKIPPED"]
        assert all("pinned?" in v.reasons for v in p.models[0].versions)
        # a pin that became unreadable between the plan and the apply keeps everything too
        state["damaged"] = []
        p = plan(store, "org/m", make_policy(keep_last=1))
        state["damaged"] = ["pin refs/pins/all/org/m@x: damaged"]
        assert apply(store, p).removed == 0
        assert len(store.registry.versions("org/m")) == 3


@pytest.mark.parametrize("text, want", [
    ("loss", ("loss", "max", 1)), ("loss:min", ("loss", "min", 1)),
    ("acc:max:3", ("acc", "max", 3)), ("acc:3", ("acc", "max", 3)),
    ("eval/acc:top:min", ("eval/acc:top", "min", 1)), ("a:b", ("a:b", "max", 1)),
    ("min", ("min", "max", 1)),  # a metric named like an order is a metric
])
def test_parse_best(text, want):
    b = parse_best(text)
    assert (b.metric, b.order, b.count) == want
    assert parse_best(b.text()) == b


@pytest.mark.parametrize("text", ["", ":max", "acc:0", "acc:max:0", "a\nb:min"])
def test_parse_best_refuses(text):
    with pytest.raises(ArgsError):
        parse_best(text)


def test_policy_text_round_trips_through_make_policy():
    p = make_policy(keep_last=3, keep_within="12h", keep_best=["loss:min", "acc:max:2"])
    assert p.text() == "keep-last 3, keep-within 12h, keep-best loss:min, keep-best acc:max:2"
    assert Policy().empty() and not p.empty()
