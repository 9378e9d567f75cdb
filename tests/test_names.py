"""Tests for cas.names: model names, tags, version specs and relative file paths."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.errors import ArgsError, CasError, SchemaError
from cas.names import (
    MAX_NAME_LEN,
    VersionSpec,
    check_unique_paths,
    parse_version_spec,
    validate_model_name,
    validate_rel_path,
    validate_tag,
)

VALID_NAMES = [
    "TinyLlama/TinyLlama-1.1B-Chat",
    "a",
    "A",
    "0",
    "org/m_1.2",
    "org/team/model-v2",
    "meta-llama/Llama-3.1-8B",
    "x" * 200,
    "a.b",
    "a-",
    "a_",
]

INVALID_NAMES = [
    "../x",
    "a/../b",
    "a//b",
    "/a",
    "a/",
    "a..b",
    ".hidden",
    "org/.hidden",
    "a.lock",
    "org/a.lock",
    "a.",
    "a b",
    "a@b",
    "",
    "x" * 201,
    "-a",
    "_a",
    "a\\b",
    "a:b",
    "a~1",
    "a^b",
    "a*",
    "a?",
    "a[b",
    "a\x00b",
    "a\nb",
    "é",
    "ｍodel",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_model_names(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_model_names(name):
    with pytest.raises(ArgsError) as info:
        validate_model_name(name)
    err = info.value
    assert err.code == "E_ARGS"
    assert err.exit_code == 2
    assert isinstance(err, ValueError) and isinstance(err, CasError)
    assert err.to_dict()["code"] == "E_ARGS"
    assert "\n" not in err.message


def test_name_length_limit_is_200():
    assert MAX_NAME_LEN == 200
    validate_model_name("a/" + "b" * 198)
    with pytest.raises(ArgsError):
        validate_model_name("a/" + "b" * 199)


@pytest.mark.parametrize("value", [None, 3, b"abc"])
def test_non_string_name_refused(value):
    with pytest.raises(ArgsError):
        validate_model_name(value)  # type: ignore[arg-type]


_SEG_FIRST = string.ascii_letters + string.digits
_SEG_REST = _SEG_FIRST + "._-"
segment = st.builds(
    lambda a, b: a + b,
    st.sampled_from(_SEG_FIRST),
    st.text(alphabet=_SEG_REST, max_size=12),
).filter(lambda s: ".." not in s and not s.endswith(".") and not s.endswith(".lock"))
model_names = st.lists(segment, min_size=1, max_size=4).map("/".join)


@settings(max_examples=60, deadline=None)
@given(model_names)
def test_generated_valid_names_accepted(name):
    assert validate_model_name(name) == name
    spec = parse_version_spec(name)
    assert spec == VersionSpec(name, None)
    assert str(spec) == name


@settings(max_examples=60, deadline=None)
@given(model_names, st.sampled_from(" @:~^*?[]\\\t\x00#%!$'\"<>|,;=+"), st.integers(0, 50))
def test_names_with_forbidden_character_refused(name, bad, pos):
    pos = min(pos, len(name))
    with pytest.raises(ArgsError):
        validate_model_name(name[:pos] + bad + name[pos:])


# --------------------------------------------------------------------------- tags


@pytest.mark.parametrize("tag", ["prod", "v1", "v1.2.3", "1a", "release-2024_01", "3d", "T"])
def test_valid_tags(tag):
    assert validate_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    ["", "3", "42", "007", "a..b", ".x", "-x", "x.", "x.lock", "a b", "a/b", "a@b", "x" * 101],
)
def test_invalid_tags(tag):
    with pytest.raises(ArgsError) as info:
        validate_tag(tag)
    assert info.value.code == "E_ARGS"


def test_digit_only_tag_message():
    with pytest.raises(ArgsError, match="all digits"):
        validate_tag("12")


def test_tag_length_limit():
    assert validate_tag("t" * 100) == "t" * 100
    with pytest.raises(ArgsError):
        validate_tag("t" * 101)


# --------------------------------------------------------------------------- version specs


@pytest.mark.parametrize(
    "text, name, selector",
    [
        ("org/model", "org/model", None),
        ("org/model@3", "org/model", "3"),
        ("org/model@prod", "org/model", "prod"),
        ("org/model@1a2b3c4", "org/model", "1a2b3c4"),
        ("a@v1.2", "a", "v1.2"),
    ],
)
def test_parse_version_spec(text, name, selector):
    spec = parse_version_spec(text)
    assert spec == VersionSpec(name, selector)
    assert (spec.name, spec.selector) == (name, selector)
    assert str(spec) == text


@pytest.mark.parametrize(
    "text",
    ["", "@3", "org/model@", "org/model@a@b", "org/model@ x", "org/model@-x", "../x@1",
     "a b@1", "org/model@.x", "org/model@a/b"],
)
def test_parse_version_spec_refuses(text):
    with pytest.raises(ArgsError) as info:
        parse_version_spec(text)
    assert info.value.code == "E_ARGS"


# --------------------------------------------------------------------------- paths


VALID_PATHS = [
    "model.safetensors",
    "a/b/c.bin",
    "onnx/model.onnx",
    ".gitattributes",
    "dir/.gitignore",
    "git/config",
    "a..b",
    "...",
    "a b/c d.txt",
    "ünïcode/файл",
    "x" * 255,
]

UNSAFE_PATHS = [
    "",
    "../x",
    "a/../b",
    "..",
    ".",
    "/x",
    "/etc/passwd",
    "C:\\x",
    "C:x",
    "c:/x",
    "\\\\host\\share",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a\tb",
    "a\x7fb",
    ".git/config",
    ".GIT/config",
    "sub/.git/hooks/x",
    ".git",
    ".cas/x",
    "a/./b",
    "./a",
    "a/",
    "a//b",
    "x" * 4097,
]


@pytest.mark.parametrize("path", VALID_PATHS)
def test_valid_rel_paths(path):
    assert validate_rel_path(path) == path
    assert validate_rel_path(path, user_input=True) == path


@pytest.mark.parametrize("path", UNSAFE_PATHS)
def test_unsafe_rel_paths(path):
    with pytest.raises(SchemaError) as info:
        validate_rel_path(path)
    assert info.value.code == "E_SCHEMA"
    with pytest.raises(ArgsError) as info2:
        validate_rel_path(path, user_input=True)
    assert info2.value.code == "E_ARGS"
    assert not isinstance(info2.value, SchemaError)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_accepted_paths_never_escape(path):
    try:
        validate_rel_path(path)
    except SchemaError:
        return
    parts = path.split("/")
    assert path and not path.startswith("/") and "\\" not in path
    assert all(p not in ("", ".", "..") for p in parts)
    assert all(p.lower() not in (".git", ".cas") for p in parts)
    assert all(ord(c) >= 32 and c != "\x7f" for c in path)


# --------------------------------------------------------------------------- uniqueness


def test_unique_paths_accepted():
    check_unique_paths(["a", "b", "c/d", "c/e", "ab/c"])
    check_unique_paths([])


@pytest.mark.parametrize(
    "paths, match",
    [
        (["a", "a"], "twice"),
        (["A.bin", "a.bin"], "case"),
        (["dir/File", "DIR/file"], "case"),
        (["a", "a/b"], "both a file and a directory"),
        (["a/b", "a"], "both a file and a directory"),
        (["x/a", "x/a/b/c"], "both a file and a directory"),
        (["A", "a/b"], "both a file and a directory"),
    ],
)
def test_path_clashes(paths, match):
    with pytest.raises(SchemaError, match=match):
        check_unique_paths(paths)
    with pytest.raises(ArgsError, match=match) as info:
        check_unique_paths(iter(paths), user_input=True)
    assert info.value.code == "E_ARGS"


def test_paths_equal_up_to_unicode_normalisation_refused():
    """macOS writes NFD names: 'café' (NFC) and 'cafe' + combining accent (NFD) are one file
    there, so a manifest may not hold both."""
    nfc, nfd = "caf\u00e9/w.bin", "cafe\u0301/w.bin"
    with pytest.raises(ArgsError, match="normalisation"):
        check_unique_paths([nfc, nfd], user_input=True)
    with pytest.raises(SchemaError):
        check_unique_paths(["\u00c5.bin", "A\u030a.bin"])
    check_unique_paths([nfc, "cafe/w.bin"])  # different names stay different
