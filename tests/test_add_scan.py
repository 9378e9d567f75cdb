"""``cas add`` of a folder: symlinks, special files, --exclude, .casignore and the skipped
summary, through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _files(cas, spec: str = "m") -> list[str]:
    return [f["path"] for f in cas("--json", "show", spec).json["manifest"]["files"]]


def _packs(store: Path) -> list[str]:
    return sorted(os.listdir(store / "packs")) if (store / "packs").exists() else []


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- symlinks ----------------------------------------------------------------------------------


def test_a_link_to_a_sibling_folder_registers_its_files_under_the_link(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "a" / "x.bin", b"x" * 1000)
    _write(src / "a" / "deep" / "y.bin", b"y" * 1000)
    (src / "b").symlink_to("a")  # an alias, not a loop
    (src / "z.bin").symlink_to(src / "a" / "x.bin")
    r = cas("--json", "add", "m", str(src)).json
    assert r["created"] and r["files"] == 5
    assert _files(cas) == ["a/deep/y.bin", "a/x.bin", "b/deep/y.bin", "b/x.bin", "z.bin"]
    out = tmp_path / "out"
    cas("checkout", "m", str(out))
    assert (out / "b" / "deep" / "y.bin").read_bytes() == b"y" * 1000
    assert not (out / "b").is_symlink()


def _link_to_ancestor(src: Path) -> Path:
    (src / "sub").mkdir()
    (src / "sub" / "up").symlink_to("..")
    return src / "sub" / "up"


def _link_to_itself(src: Path) -> Path:
    (src / "loop").symlink_to("loop")
    return src / "loop"


def _two_links_to_each_other(src: Path) -> Path:
    (src / "a").symlink_to("b")
    (src / "b").symlink_to("a")
    return src / "a"


@pytest.mark.parametrize("make_cycle", [_link_to_ancestor, _link_to_itself,
                                        _two_links_to_each_other])
def test_a_symlink_cycle_is_refused_naming_the_link(cas, store_path, tmp_path, make_cycle):
    src = tmp_path / "src"
    _write(src / "00big.bin", os.urandom(1 << 20))
    link = make_cycle(src)
    before = _packs(store_path)
    r = cas("--json", "add", "m", str(src), ok=False)
    assert r.code == 2 and r.json["error"]["code"] == "E_ARGS"
    message = r.json["error"]["message"]
    if make_cycle is _two_links_to_each_other:
        assert str(src / "a") in message or str(src / "b") in message
    else:
        assert str(link) in message
    assert "loop" in message or "cycle" in message
    assert _packs(store_path) == before
    # Leaving the link out is enough.
    excluded = [a for p in ("loop", "up", "a", "b") for a in ("--exclude", p)]
    assert cas("--json", "add", "m", str(src), *excluded).json["files"] == 1


def test_a_dangling_symlink_is_skipped_with_a_warning(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "w.bin", b"w" * 5000)
    (src / "gone.bin").symlink_to(src / "nowhere")
    (src / "sub").mkdir()
    (src / "sub" / "old").symlink_to("../missing-folder")
    r = cas("--json", "add", "m", str(src))
    doc = r.json
    assert doc["created"] and doc["files"] == 1
    codes = [w["code"] for w in doc["warnings"]]
    assert codes == ["W_DANGLING_SYMLINK", "W_DANGLING_SYMLINK"]
    named = " ".join(w["message"] for w in doc["warnings"])
    assert str(src / "gone.bin") in named and str(src / "sub" / "old") in named
    assert {"reason": "dangling", "count": 2, "paths": ["gone.bin", "sub/old"]} in \
        [{**s, "paths": sorted(s["paths"])} for s in doc["skipped"]]
    assert _files(cas) == ["w.bin"]
    human = cas("add", "m2", str(src))
    assert human.err.count("[W_DANGLING_SYMLINK]") == 2
    assert "2 dangling symlinks" in human.out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_special_file_is_refused_clearly_unless_left_out(cas, store_path, tmp_path):
    src = tmp_path / "src"
    _write(src / "w.bin", b"w" * 5000)
    os.mkfifo(src / "pipe")
    r = cas("--json", "add", "m", str(src), ok=False)
    assert r.json["error"]["code"] == "E_ARGS"
    assert str(src / "pipe") in r.json["error"]["message"]
    assert "FIFO" in r.json["error"]["message"]
    assert _packs(store_path) == []
    assert cas("--json", "add", "m", str(src), "--exclude", "pipe").json["files"] == 1


# -- --exclude and .casignore ------------------------------------------------------------------


def _training_output(src: Path) -> None:
    _write(src / "model.bin", b"m" * 20_000)
    _write(src / "config.json", b'{"model_type": "bert"}')
    _write(src / "optimizer.pt", b"o" * 30_000)
    _write(src / "optimizer_1.pt", b"p" * 30_000)
    _write(src / "train.lock", b"")
    _write(src / "keep.lock", b"k")
    _write(src / "runs" / "1" / "events.log", b"e" * 100)
    _write(src / "sub" / "runs" / "2" / "events.log", b"f" * 100)
    _write(src / ".git" / "config", b"[core]\n")
    _write(src / ".casignore", b"# training leftovers\n*.lock\n!keep.lock\nruns/\n\n")


def test_exclude_and_casignore_leave_paths_out_and_say_so(cas, tmp_path):
    src = tmp_path / "src"
    _training_output(src)
    doc = cas("--json", "add", "m", str(src), "--exclude", "optimizer*.pt").json
    assert _files(cas) == ["config.json", "keep.lock", "model.bin"]  # no .casignore either
    skipped = {s["reason"]: (s["count"], sorted(s["paths"])) for s in doc["skipped"]}
    assert skipped == {
        "excluded": (2, ["optimizer.pt", "optimizer_1.pt"]),
        "ignored": (3, ["runs/", "sub/runs/", "train.lock"]),
        ".git": (1, [".git/"]),
    }
    human = cas("add", "m", str(src), "--exclude", "optimizer*.pt", "--rehash")
    line = next(x for x in human.out.splitlines() if "skipped" in x)
    assert "by --exclude" in line and "by .casignore" in line and ".git" in line


def test_a_command_line_pattern_overrides_the_ignore_file(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "a.bin", b"a" * 100)
    _write(src / "keep.bin", b"k" * 100)
    _write(src / "notes.txt", b"n")
    _write(src / ".casignore", b"*.bin\n")
    cas("add", "m", str(src), "--exclude", "!keep.bin")
    assert _files(cas) == ["keep.bin", "notes.txt"]


def test_patterns_follow_gitignore_rules(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "runs", b"a file named like a folder pattern")
    _write(src / "d" / "runs" / "x.bin", b"x")
    _write(src / "top.bin", b"t")
    _write(src / "d" / "top.bin", b"u")
    _write(src / "ckpt" / "a" / "b" / "optimizer.pt", b"o")
    _write(src / "ckpt" / "model.pt", b"m")
    cas("add", "m", str(src), "--exclude", "runs/", "--exclude", "/top.bin",
        "--exclude", "ckpt/**/optimizer.pt")
    assert _files(cas) == ["ckpt/model.pt", "d/top.bin", "runs"]


def test_a_folder_left_out_cannot_be_reincluded(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "runs" / "best.bin", b"b")
    _write(src / "w.bin", b"w")
    _write(src / ".casignore", b"runs/\n!runs/best.bin\n")
    cas("add", "m", str(src))
    assert _files(cas) == ["w.bin"]


def test_bad_patterns_and_an_empty_result_are_refused(cas, store_path, tmp_path):
    src = tmp_path / "src"
    _write(src / "w.bin", b"w")
    bad = cas("--json", "add", "m", str(src), "--exclude", "\\", ok=False)
    assert bad.json["error"]["code"] == "E_ARGS" and "--exclude" in bad.json["error"]["message"]
    _write(src / ".casignore", b"ok\n[z-a]\n")
    bad = cas("--json", "add", "m", str(src), ok=False)
    assert bad.json["error"]["code"] == "E_ARGS"
    assert ".casignore line 2" in bad.json["error"]["message"]
    (src / ".casignore").write_bytes(b"*\n")
    empty = cas("--json", "add", "m", str(src), ok=False)
    assert empty.json["error"]["code"] == "E_ARGS"
    assert "no files" in empty.json["error"]["message"]
    assert _packs(store_path) == []
    single = cas("--json", "add", "m", str(src / "w.bin"), "--exclude", "*.bin", ok=False)
    assert single.json["error"]["code"] == "E_ARGS"


def test_names_that_differ_only_in_case_are_refused_even_in_subfolders(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "d" / "Sub" / "x.bin", b"1")
    _write(src / "d" / "sub" / "x.bin", b"2")
    r = cas("--json", "add", "m", str(src), ok=False)
    assert r.json["error"]["code"] == "E_ARGS"
    assert "'d/Sub' and 'd/sub' differ only in case" in r.json["error"]["message"]
    # Excluding one of them is enough.
    assert cas("--json", "add", "m", str(src), "--exclude", "Sub/").json["files"] == 1


def test_an_unusable_ignore_file_is_refused_clearly(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "w.bin", b"w")
    (src / ".casignore").mkdir()
    r = cas("--json", "add", "m", str(src), ok=False)
    assert r.json["error"]["code"] == "E_ARGS" and ".casignore" in r.json["error"]["message"]
    (src / ".casignore").rmdir()
    (src / ".casignore").write_bytes(b"\xff\xfe*.bin\n")
    r = cas("--json", "add", "m", str(src), ok=False)
    assert r.json["error"]["code"] == "E_ARGS" and "UTF-8" in r.json["error"]["message"]


# -- names the scan must refuse or skip (found in review) ----------------------------------------


def test_names_equal_up_to_unicode_normalisation_refused_before_any_pack(cas, store_path,
                                                                          tmp_path):
    src = tmp_path / "src"
    _write(src / "caf\u00e9.txt", b"nfc")
    _write(src / "cafe\u0301.txt", b"nfd")
    r = cas("--json", "add", "m", str(src), ok=False).json
    assert r["error"]["code"] == "E_ARGS" and "normalisation" in r["error"]["message"]
    assert _packs(store_path) == []


def test_a_git_file_of_a_worktree_is_skipped_like_a_git_folder(cas, tmp_path):
    src = tmp_path / "src"
    _write(src / "w.bin", b"w" * 100)
    _write(src / ".git", b"gitdir: /elsewhere/.git/worktrees/src\n")
    r = cas("--json", "add", "m", str(src)).json
    assert _files(cas) == ["w.bin"]
    assert any(s["reason"] == ".git" for s in r["skipped"]), r["skipped"]


def test_a_name_that_is_not_utf8_is_refused(cas, store_path, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(os.path.join(os.fsencode(src), b"f\xff.bin"), "wb") as f:
        f.write(b"x")
    r = cas("--json", "add", "m", str(src), ok=False).json
    assert r["error"]["code"] == "E_ARGS" and "UTF-8" in r["error"]["message"]
    assert _packs(store_path) == []
