"""rm keeps history and records tags; restore brings versions back within the window; log of
one version; ls --removed; sequence numbers never reused."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cas.registry import model_ref


def _files(tmp_path: Path, name: str, content: bytes) -> Path:
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "w.bin").write_bytes(content)
    return d


@pytest.fixture
def two_versions(cas, tmp_path):
    cas("add", "org/m", str(_files(tmp_path, "v1", b"one" * 1000)), "--tag", "prod")
    cas("add", "org/m", str(_files(tmp_path, "v2", b"two" * 1000)), "--tag", "next")
    return cas


def test_rm_model_refuses_while_tagged_and_loses_nothing(two_versions):
    cas = two_versions
    r = cas("--json", "rm", "org/m", ok=False)
    assert r.code == 10 and r.json["error"]["code"] == "E_CONFLICT"
    assert "org/m@prod" in r.json["error"]["message"]
    assert [v["seq"] for v in cas("--json", "ls", "-l").json["versions"]] == [1, 2]
    assert cas("--json", "show", "org/m@prod").json["seq"] == 1


def test_rm_force_records_tags_and_restore_brings_them_back(two_versions, tmp_path):
    cas = two_versions
    r = cas("--json", "rm", "org/m", "--force", "-m", "cleanup").json
    assert r["removed"] == ["org/m@1", "org/m@2"] and sorted(r["tags_removed"]) == ["next", "prod"]
    assert r["model_removed"] is True
    # gone from listings and lookups, with a message naming restore
    assert cas("--json", "ls").json["models"] == []
    shown = cas("--json", "show", "org/m@1", ok=False).json["error"]
    assert shown["code"] == "E_NOT_FOUND" and "cas restore org/m@1" in shown["message"]
    assert "restore" in cas("--json", "show", "org/m", ok=False).json["error"]["message"]
    assert cas("--json", "show", "org/m@prod", ok=False).json["error"]["code"] == "E_NOT_FOUND"
    # the removal commit records the tags (plain git can read it)
    reg = cas.store / "registry"
    msg = subprocess.run(["git", "--git-dir", str(reg), "log", "-1", "--format=%B",
                          model_ref("org/m").decode()], capture_output=True, text=True).stdout
    assert "Cas-Action: rm" in msg and "Cas-Tag: prod 1" in msg and "Cas-Tag: next 2" in msg
    removed = cas("--json", "ls", "--removed").json["removed"]
    assert {(r["seq"], tuple(r["tags"]), r["expired"]) for r in removed} == {
        (1, ("prod",), False), (2, ("next",), False)}
    # log still shows the whole history
    history = cas("--json", "log", "org/m").json["history"]
    assert history[0]["action"] == "rm" and history[0]["versions"] == [1, 2]
    # restore NAME undoes the latest removal, tags included
    back = cas("--json", "restore", "org/m").json
    assert back["restored"] == ["org/m@1", "org/m@2"]
    assert sorted(back["tags_restored"]) == ["next", "prod"]
    assert cas("--json", "show", "org/m@prod").json["seq"] == 1
    assert cas("--json", "show", "org/m@next").json["seq"] == 2
    out = tmp_path / "out"
    cas("checkout", "org/m@prod", str(out))
    assert (out / "w.bin").read_bytes() == b"one" * 1000
    assert cas("--json", "verify", "--all").json["ok"]


def test_readd_after_rm_continues_sequence_numbers(two_versions, tmp_path):
    cas = two_versions
    cas("rm", "org/m", "--force")
    r = cas("--json", "add", "org/m", str(_files(tmp_path, "v3", b"three" * 100))).json
    assert r["seq"] == 3
    assert [v["seq"] for v in cas("--json", "ls", "-l").json["versions"]] == [3]
    # the removed versions can still come back beside the new one
    cas("restore", "org/m@1")
    assert [v["seq"] for v in cas("--json", "ls", "-l").json["versions"]] == [1, 3]


def test_rm_one_tagged_version_and_restore_it(two_versions):
    cas = two_versions
    assert cas("--json", "rm", "org/m@1", ok=False).json["error"]["code"] == "E_CONFLICT"
    cas("rm", "org/m@1", "--force")
    assert cas("--json", "show", "org/m").json["seq"] == 2
    # another version took the tag meanwhile: restore keeps it where it is and says so
    cas("tag", "org/m@2", "prod")
    back = cas("--json", "restore", "org/m@1").json
    assert back["restored"] == ["org/m@1"] and back["tags_taken"] == ["prod"]
    assert cas("--json", "show", "org/m@prod").json["seq"] == 2
    r = cas("--json", "restore", "org/m@1", ok=False).json["error"]
    assert r["code"] == "E_CONFLICT" and "not removed" in r["message"]


def test_restore_window_is_a_setting(two_versions):
    cas = two_versions
    cas("rm", "org/m@2", "--force")
    cas("config", "set", "restore_window", "0")
    row = cas("--json", "ls", "--removed").json["removed"][0]
    # removed "now": with a zero window it may be expired only once a second has passed;
    # move the setting instead of the clock
    cas("config", "set", "restore_window", "1d")
    assert cas("--json", "ls", "--removed").json["removed"][0]["expired"] is False
    assert row["version"] == "org/m@2"
    cas("restore", "org/m@2")


def test_restore_refused_beyond_the_window(two_versions, monkeypatch):
    """A removal older than the window is refused (the clock is moved by faking time in the
    library, not by waiting)."""
    from cas import Store
    from cas import removal

    cas = two_versions
    cas("rm", "org/m@2", "--force")
    store = Store.open(cas.store)
    real = time.time
    monkeypatch.setattr(removal.time, "time", lambda: real() + 15 * 86400)
    with pytest.raises(Exception) as info:
        store.restore("org/m@2")
    assert info.value.code == "E_NOT_FOUND" and "restore window" in info.value.message
    assert store.removed().removed[0].expired is True
    monkeypatch.setattr(removal.time, "time", lambda: real() - 86400)  # clock skew: not expired
    assert store.removed().removed[0].expired is False
    store.close()


def test_log_of_one_version_shows_its_events(two_versions):
    cas = two_versions
    cas("annotate", "org/m@1", "--metric", "acc=0.5")
    cas("rm", "org/m@1", "--force")
    cas("restore", "org/m@1")
    events = [h["action"] for h in cas("--json", "log", "org/m@1").json["history"]]
    commits = [e for e in events if e != "tag"]
    assert commits == ["restore", "rm", "annotate", "add"]
    assert events.count("tag") == 1  # prod, re-created by the restore
    assert all(1 in h["versions"] for h in cas("--json", "log", "org/m@1").json["history"])
    text = cas("log", "org/m@1").out
    assert "annotated" in text and "removed" in text and "restored" in text


def test_case_only_model_and_tag_names_refused(two_versions, tmp_path):
    cas = two_versions
    r = cas("--json", "add", "Org/M", str(_files(tmp_path, "v9", b"x")), ok=False).json
    assert r["error"]["code"] == "E_CONFLICT" and "case" in r["error"]["message"]
    r = cas("--json", "add", "ORG/m/sub", str(_files(tmp_path, "v9", b"x")), ok=False).json
    assert r["error"]["code"] == "E_CONFLICT"
    t = cas("--json", "tag", "org/m@2", "PROD", ok=False).json
    assert t["error"]["code"] == "E_CONFLICT" and "case" in t["error"]["message"]
    # a removed model still holds its name
    cas("rm", "org/m", "--force")
    r = cas("--json", "add", "Org/M", str(_files(tmp_path, "v9", b"x")), ok=False).json
    assert r["error"]["code"] == "E_CONFLICT"
    miss = cas("--json", "show", "ORG/M", ok=False).json["error"]
    assert miss["code"] == "E_NOT_FOUND" and "org/m" in miss["message"]


def test_ls_columns_dates_sort_long_names_only(cas, tmp_path):
    long_name = "a-very-long-organisation-name/" + "m" * 60
    cas("add", long_name, str(_files(tmp_path, "a", b"a" * 10)), "--tag", "old")
    cas("add", long_name, str(_files(tmp_path, "b", b"b" * 20)))
    cas("add", "z/small", str(_files(tmp_path, "c", b"c")))
    lines = cas("ls").out.splitlines()
    assert lines[0].split()[:7] == ["NAME", "LATEST", "VERS", "SIZE", "FORMAT", "UPDATED", "TAGS"]
    # columns aligned: the FORMAT column starts at the same offset on every line
    starts = {line.index("other") for line in lines[1:]}
    assert len(starts) == 1 and lines[0].index("FORMAT") in starts
    assert "old=@1" in lines[1]
    assert cas("ls", "--names-only").out.split() == [long_name, "z/small"]
    doc = cas("--json", "ls", "--sort", "size").json["models"]
    assert [m["name"] for m in doc] == [long_name, "z/small"]
    assert doc[0]["updated_at"].endswith("+00:00")
    rows = cas("--json", "ls", "--long").json["versions"]
    assert [(r["seq"], r["tags"]) for r in rows] == [(1, ["old"]), (2, []), (1, [])]
    text = cas("ls", "--long").out.splitlines()
    assert f"{long_name}@1" in text[1] and "old" in text[1] and "old" not in text[2]


def test_show_names_parents_by_number(cas, tmp_path):
    cas("add", "base/m", str(_files(tmp_path, "a", b"a" * 10)))
    cas("add", "tuned/m", str(_files(tmp_path, "b", b"b" * 10)), "--parent", "base/m")
    doc = cas("--json", "show", "tuned/m").json
    assert doc["parents"] == ["base/m@1"]
    assert doc["manifest"]["metadata"]["parents"][0].startswith("base/m@")
    assert "parents      base/m@1" in cas("show", "tuned/m").out


def test_author_from_flag_env_and_git(cas, tmp_path):
    cas("add", "a/m", str(_files(tmp_path, "a", b"1")), "--author", "Ada L <ada@example.org>")
    assert cas("--json", "show", "a/m").json["author"] == "Ada L <ada@example.org>"
    cas.env["CAS_AUTHOR"] = "Bob <bob@example.org>"
    cas("add", "a/m", str(_files(tmp_path, "b", b"2")))
    assert cas("--json", "show", "a/m").json["author"] == "Bob <bob@example.org>"
    del cas.env["CAS_AUTHOR"]
    gitcfg = tmp_path / "gitconfig"
    gitcfg.write_text("[user]\n\tname = Cy Git\n\temail = cy@example.org\n")
    cas.env["HOME"] = str(tmp_path)
    (tmp_path / ".gitconfig").write_text(gitcfg.read_text())
    cas.env.pop("GIT_AUTHOR_NAME", None)
    cas.env.pop("GIT_AUTHOR_EMAIL", None)
    cas.env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    cas("add", "a/m", str(_files(tmp_path, "c", b"3")))
    assert cas("--json", "show", "a/m").json["author"] == "Cy Git <cy@example.org>"
    bad = cas("--json", "add", "a/m", str(_files(tmp_path, "d", b"4")), "--author", "<x>",
              ok=False).json
    assert bad["error"]["code"] == "E_ARGS"
    log = json.loads(cas("--json", "log", "a/m").out)["history"]
    assert [h["author"].split(" <")[0] for h in log] == ["Cy Git", "Bob", "Ada L"]


def test_removed_version_named_by_its_deleted_tag(two_versions):
    cas = two_versions
    cas("rm", "org/m@1", "--force")
    err = cas("--json", "show", "org/m@prod", ok=False).json["error"]
    assert err["code"] == "E_NOT_FOUND" and "cas restore org/m@1" in err["message"]
    assert [h["action"] for h in cas("--json", "log", "org/m@prod").json["history"]][0] == "rm"
    assert cas("--json", "restore", "org/m@prod").json["restored"] == ["org/m@1"]
    assert cas("--json", "show", "org/m@prod").json["seq"] == 1


def test_restore_name_undoes_the_newest_removal_even_within_one_second(two_versions):
    cas = two_versions
    cas("rm", "org/m@1", "--force")
    cas("rm", "org/m@2", "--force")  # same second, most likely: order comes from history
    assert cas("--json", "restore", "org/m").json["restored"] == ["org/m@2"]
    assert cas("--json", "restore", "org/m").json["restored"] == ["org/m@1"]


def test_messages_cannot_forge_trailers(cas, tmp_path):
    src = _files(tmp_path, "v1", b"x" * 100)
    r = cas("--json", "add", "org/m", str(src), "-m", "first\nCas-Version: 7", ok=False).json
    assert r["error"]["code"] == "E_ARGS"
    assert not list((cas.store / "packs").glob("*.pack"))  # refused before any data
    cas("add", "org/m", str(src), "-m", "Cas-Version: 7")  # one line: just a subject
    assert [h["versions"] for h in cas("--json", "log", "org/m").json["history"]] == [[1]]
    cas("tag", "org/m@1", "prod")
    assert cas("--json", "show", "org/m@prod").json["seq"] == 1


def test_tag_of_a_removed_version_can_be_deleted(two_versions):
    """A crash between an rm's commit and its tag deletions leaves tags naming removed
    versions; 'cas tag -d' removes them (simulated by re-pointing a tag at a removed one)."""
    from cas import Store

    cas = two_versions
    cas("rm", "org/m@1", "--force")
    store = Store.open(cas.store)
    with store.writing():
        v1 = store.registry.resolve(__import__("cas.names").names.parse_version_spec("org/m@1"),
                                    removed_ok=True)
        store.registry.set_tag(v1, "stale")
    store.close()
    assert cas("--json", "show", "org/m@stale", ok=False).json["error"]["code"] == "E_NOT_FOUND"
    r = cas("--json", "tag", "org/m", "stale", "--delete").json
    assert r["deleted"] is True and r["seq"] == 1
    assert cas("--json", "tag", "org/m", "stale", "-d", ok=False).json["error"]["code"] == \
        "E_NOT_FOUND"


def test_rm_reads_its_settings_before_committing(two_versions):
    cas = two_versions
    (cas.store / "settings.json").write_text("{broken")
    r = cas("--json", "rm", "org/m@2", "--force", ok=False).json
    assert r["error"]["code"] == "E_SCHEMA"
    (cas.store / "settings.json").unlink()
    assert cas("--json", "show", "org/m@next").json["seq"] == 2  # nothing was removed
    big = cas("--json", "config", "set", "restore_window", "99999999999d", ok=False).json
    assert big["error"]["code"] == "E_ARGS"


def test_verify_all_checks_what_restore_could_bring_back(two_versions):
    cas = two_versions
    cas("rm", "org/m@1", "--force")
    assert cas("--json", "verify", "--all").json["versions_checked"] == 2
    cas("config", "set", "restore_window", "0")  # nothing is restorable any more
    assert cas("--json", "verify", "--all").json["versions_checked"] == 1


def test_tag_moves_and_deletions_are_history(two_versions):
    cas = two_versions
    cas("tag", "org/m@2", "prod", "--force")
    moved = cas("--json", "log", "org/m").json["history"][0]
    assert moved["action"] == "tag" and moved["tags"] == ["prod"] and "(was v1)" in moved["message"]
    again = cas("--json", "tag", "org/m@2", "prod").json
    assert again["changed"] is False and "nothing to do" in cas("tag", "org/m@2", "prod").out
    wrong = cas("--json", "tag", "org/m@1", "prod", "--delete", ok=False).json["error"]
    assert wrong["code"] == "E_CONFLICT" and "does not name org/m@1" in wrong["message"]
    gone = cas("--json", "tag", "org/m", "prod", "--delete").json
    assert gone["deleted"] and gone["seq"] == 2
    events = [(h["action"], h["tags"]) for h in cas("--json", "log", "org/m@2").json["history"]]
    assert events[:2] == [("untag", ["prod"]), ("tag", ["prod"])]
    assert ("tag", ["prod"]) in [(h["action"], h["tags"])
                                 for h in cas("--json", "log", "org/m@1").json["history"]]


def test_name_folders_differing_only_in_case_refused(two_versions, tmp_path):
    cas = two_versions
    r = cas("--json", "add", "ORG/other", str(_files(tmp_path, "o", b"o")), ok=False).json
    assert r["error"]["code"] == "E_CONFLICT" and "'ORG'" in r["error"]["message"]
    cas("add", "org/other", str(_files(tmp_path, "o", b"o")))  # same folder, same case: fine


def test_a_tag_pointing_at_another_models_commit_is_refused(two_versions, tmp_path):
    from cas import Store
    from cas.names import parse_version_spec

    cas = two_versions
    cas("add", "other/m", str(_files(tmp_path, "x", b"other model" * 100)))
    store = Store.open(cas.store)
    with store.writing():
        foreign = store.registry.resolve(parse_version_spec("other/m@1"))
        forged = type(foreign)("org/m", 1, foreign.commit, "", 0, "")
        store.registry.set_tag(forged, "evil", record=False)
    store.close()
    r = cas("--json", "checkout", "org/m@evil", str(tmp_path / "out"), ok=False).json
    assert r["error"]["code"] == "E_SCHEMA" and "did not add a version" in r["error"]["message"]
    assert not (tmp_path / "out").exists()
    cas("tag", "org/m", "evil", "--delete")
