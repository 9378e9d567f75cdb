"""numcopies/mincopies: stored in refs/cas/copies (a commit per change), checked, and carried
by every sync: the higher serial wins on both sides, whichever store changed it."""

from __future__ import annotations

import json
from pathlib import Path

from cas import copies
from cas.store import Store
from conftest import CasCli, model_folder, registry_git


def _two(tmp_path: Path) -> tuple[CasCli, CasCli, Path]:
    a, b = CasCli(tmp_path / "a"), CasCli(tmp_path / "b")
    far = tmp_path / "far"
    for c in (a, b):
        c("init")
        c("remote", "add", "origin", str(far))
    a("add", "org/m", str(model_folder(tmp_path / "m", 1, 100_000)))
    return a, b, far


def test_defaults_set_and_bad_values(tmp_path: Path) -> None:
    a = CasCli(tmp_path / "a")
    a("init")
    assert a("copies", "--json").json == {"ok": True, "numcopies": 1, "mincopies": 1,
                                          "trust_source": False, "serial": 0, "commit": ""}
    r = a("copies", "--numcopies", "3", "--mincopies", "2", "--json").json
    assert (r["numcopies"], r["mincopies"], r["serial"]) == (3, 2, 1) and r["commit"]
    for bad in (["--mincopies", "0"], ["--numcopies", "1", "--mincopies", "2"],
                ["--numcopies", "65"]):
        assert a("copies", *bad, "--json", ok=False).json["error"]["code"] == "E_ARGS"
    assert a("copies", "--json").json["numcopies"] == 3  # refused changes changed nothing
    assert len(registry_git(a.store, "log", "--format=%s", "refs/cas/copies").splitlines()) == 1


def test_the_setting_travels_with_every_sync(tmp_path: Path) -> None:
    a, b, far = _two(tmp_path)
    a("copies", "--numcopies", "2")
    a("push")
    assert CasCli(far)("copies", "--json").json["numcopies"] == 2
    b("pull")
    assert b("copies", "--json").json["numcopies"] == 2
    b("copies", "--numcopies", "3", "--mincopies", "2")  # serial 2 beats a's serial 1
    b("push")
    a("fetch")
    got = a("copies", "--json").json
    assert (got["numcopies"], got["mincopies"], got["serial"]) == (3, 2, 2)
    # An older setting never wins back.
    a("copies", "--numcopies", "3", "--mincopies", "2")  # unchanged: no new serial
    a("push")
    assert CasCli(far)("copies", "--json").json["serial"] == 2


def test_a_malformed_setting_from_a_remote_is_refused_with_a_warning(tmp_path: Path) -> None:
    a, b, far = _two(tmp_path)
    a("push")
    store = Store.open(far)
    with store.writing():
        tip = copies.load(store.registry).commit
        bad = json.dumps({"schema": "cas.copies", "version": 1, "numcopies": 1,
                          "mincopies": 0, "serial": 99}).encode()
        store.registry.commit_ref_file(copies.REF, tip.encode() or None, copies.FILE, bad,
                                       "hand-made", ("x", "x@example.com"))
    store.close()
    r = b("pull", "--json")
    assert "W_COPIES_NOT_SHARED" in {w["code"] for w in r.json["warnings"]}
    assert b("copies", "--json").json["mincopies"] == 1
