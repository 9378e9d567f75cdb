"""checkout --include: gitignore-style patterns on manifest paths select a subset of a
version's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas.include import include_pattern
from cas.errors import ArgsError

FILES = ["config.json", "tokenizer.json", "model.safetensors", "onnx/model.onnx",
         "onnx/config.json", "1_Pooling/config.json", "a/b/c/deep.txt", "README.md"]


@pytest.mark.parametrize(("pattern", "matches"), [
    # a name without '/' matches at any depth, as in .gitignore (and HF's allow_patterns)
    ("*.json", {"config.json", "tokenizer.json", "onnx/config.json", "1_Pooling/config.json"}),
    ("/*.json", {"config.json", "tokenizer.json"}),  # a leading '/' anchors it at the top
    ("**/*.json", {"config.json", "tokenizer.json", "onnx/config.json",
                   "1_Pooling/config.json"}),
    # a folder (by name, with or without '/', or '/**') selects everything under it
    ("onnx", {"onnx/model.onnx", "onnx/config.json"}),
    ("onnx/", {"onnx/model.onnx", "onnx/config.json"}),
    ("onnx/**", {"onnx/model.onnx", "onnx/config.json"}),
    ("b", {"a/b/c/deep.txt"}),
    ("a/**/deep.txt", {"a/b/c/deep.txt"}),
    # a '/' before the end anchors: '*' stays inside one component
    ("*/config.json", {"onnx/config.json", "1_Pooling/config.json"}),
    ("c/deep.txt", set()),
    ("[!m]*.json", {"config.json", "tokenizer.json", "onnx/config.json",
                    "1_Pooling/config.json"}),
    ("?EADME.md", {"README.md"}),
])
def test_pattern(pattern: str, matches: set[str]) -> None:
    match = include_pattern(pattern)
    assert {f for f in FILES if match(f)} == matches


@pytest.mark.parametrize("bad", ["", "  ", "#x", "!*.json", "/", "[z-a]*", "a\x00b"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(ArgsError):
        include_pattern(bad)


@pytest.fixture
def model(cas, tmp_path: Path):  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    for i, rel in enumerate(FILES):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(f"{rel} {i}".encode())
    cas("add", "m", str(src))
    return cas


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_include_checks_out_a_subset(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = model("--json", "checkout", "m", str(tmp_path / "d"), "--include", "/*.json",
              "--include", "onnx")
    assert r.json["files"] == 4 and r.json["include"] == ["/*.json", "onnx"]
    assert _files(tmp_path / "d") == {"config.json", "tokenizer.json", "onnx/model.onnx",
                                      "onnx/config.json"}
    assert (tmp_path / "d" / "onnx" / "model.onnx").read_bytes() == b"onnx/model.onnx 3"
    rows = model("--json", "checkouts").json["checkouts"]
    assert rows[0]["files"] == 4 and rows[0]["include"] == ["/*.json", "onnx"]


def test_an_include_that_matches_nothing_is_an_error(model, tmp_path: Path
                                                     ) -> None:  # type: ignore[no-untyped-def]
    r = model("checkout", "m", str(tmp_path / "d"), "--include", "*.json", "--include",
              "*.gguf", ok=False)
    assert r.code == 3 and "--include '*.gguf' matches no file of m@1" in r.err
    assert not (tmp_path / "d").exists()
    r = model("--json", "checkout", "m", str(tmp_path / "d"), "--include", "/x", ok=False)
    assert r.code == 3 and r.json["error"]["code"] == "E_NOT_FOUND"


@pytest.mark.parametrize("bad", ["[z-a]*", "!*.json", ""])
def test_a_malformed_pattern_is_refused_before_anything_is_written(
        model, tmp_path: Path, bad: str) -> None:  # type: ignore[no-untyped-def]
    r = model("--json", "checkout", "m", str(tmp_path / "d"), "--include", "*.json",
              "--include", bad, ok=False)
    assert r.code == 2 and r.json["error"]["code"] == "E_ARGS", r.out
    assert repr(bad) in r.json["error"]["message"]
    assert not (tmp_path / "d").exists()


def test_a_name_pattern_selects_at_any_depth(model, tmp_path: Path
                                             ) -> None:  # type: ignore[no-untyped-def]
    model("checkout", "m", str(tmp_path / "d"), "--include", "config.json")
    assert _files(tmp_path / "d") == {"config.json", "onnx/config.json",
                                      "1_Pooling/config.json"}
    model("checkout", "m", str(tmp_path / "top"), "--include", "/*.json")
    assert _files(tmp_path / "top") == {"config.json", "tokenizer.json"}
