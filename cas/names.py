"""Validation of every name that becomes a ref or a path: model names, tags, version specs and
relative file paths inside a model.

These checks run before anything is written. A model name maps to the git ref
``refs/models/<name>``, so names (and tags) are restricted to an ASCII character set that is
safe both as a git ref and as a directory name on every platform, which also rules out names
that differ only by Unicode normalisation; names that differ only in case are refused by the
registry, which knows the names already taken. File paths inside a manifest are relative POSIX paths
that cannot escape the checkout directory, reach into ``.git``, or collide with each other on a
case-insensitive filesystem.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from cas.errors import ArgsError, SchemaError

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
MAX_NAME_LEN = 200
MAX_TAG_LEN = 100
MAX_PATH_LEN = 4096


def validate_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise ArgsError.

    Valid: one or more ``/``-separated segments, each starting with a letter or digit and made
    of letters, digits, ``.``, ``_`` and ``-``; no ``..``; no segment ending in ``.`` or
    ``.lock``; at most 200 characters.
    """
    if not isinstance(name, str) or not name:
        raise ArgsError("model name is empty")
    if len(name) > MAX_NAME_LEN:
        raise ArgsError(f"model name is longer than {MAX_NAME_LEN} characters")
    if ".." in name:
        raise ArgsError(f"model name {name!r} contains '..'")
    for seg in name.split("/"):
        if not seg:
            raise ArgsError(f"model name {name!r} has an empty segment")
        if seg.endswith((".", ".lock")) and _SEGMENT.match(seg):
            raise ArgsError(f"model name {name!r}: segment {seg!r} may not end in '.' or "
                            "'.lock' (git reserves those names)")
        if not _SEGMENT.match(seg):
            raise ArgsError(
                f"model name {name!r}: segment {seg!r} must start with a letter or digit and "
                "use only letters, digits, '.', '_' and '-'"
            )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if valid, else raise ArgsError. Tags that are all digits are refused
    because ``NAME@3`` means sequence number 3."""
    if not isinstance(tag, str) or not tag:
        raise ArgsError("tag is empty")
    if len(tag) > MAX_TAG_LEN or ".." in tag or not _TAG.match(tag) or tag.endswith((".", ".lock")):
        raise ArgsError(
            f"tag {tag!r} must start with a letter or digit and use only letters, digits, "
            "'.', '_' and '-'"
        )
    if tag.isdigit():
        raise ArgsError(f"tag {tag!r} is all digits, which would read as a version number")
    return tag


@dataclass(frozen=True, slots=True)
class VersionSpec:
    """``NAME``, ``NAME@3``, ``NAME@TAG`` or ``NAME@<commit prefix>``, parsed."""

    name: str
    selector: str | None = None

    def __str__(self) -> str:
        return self.name if self.selector is None else f"{self.name}@{self.selector}"


def parse_version_spec(text: str) -> VersionSpec:
    """Split ``NAME[@V]``; validate the name. The selector is resolved by the registry."""
    if not isinstance(text, str) or not text:
        raise ArgsError("empty model reference")
    name, sep, selector = text.partition("@")
    validate_model_name(name)
    if sep and not selector:
        raise ArgsError(f"{text!r}: nothing after '@'")
    if sep and not _TAG.match(selector):
        raise ArgsError(f"{text!r}: version must be a number, a tag or a commit prefix")
    return VersionSpec(name, selector if sep else None)


_DRIVE = re.compile(r"[A-Za-z]:")
_RESERVED_COMPONENTS = frozenset({".git", ".cas"})


def validate_rel_path(path: str, *, user_input: bool = False) -> str:
    """Return ``path`` if it is a safe relative POSIX path for a file inside a model.

    Refused: empty, absolute (``/x``), drive (``C:\\x``, ``C:x``), UNC (``\\\\host``), any
    backslash, NUL or control character, ``.`` or ``..`` components, empty components, and any
    ``.git`` component (case-insensitive).

    Raises:
        ArgsError if ``user_input`` else SchemaError (a stored manifest carried it).
    """
    err = ArgsError if user_input else SchemaError
    if not isinstance(path, str) or not path:
        raise err("empty file path")
    if len(path) > MAX_PATH_LEN:
        raise err(f"file path longer than {MAX_PATH_LEN} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        raise err(f"file path {path!r} contains a control character")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise err(f"file path {path!r} is not valid UTF-8") from None
    if "\\" in path:
        raise err(f"file path {path!r} contains a backslash")
    if path.startswith("/"):
        raise err(f"file path {path!r} is absolute")
    if _DRIVE.match(path):
        raise err(f"file path {path!r} starts with a drive letter")
    for comp in path.split("/"):
        if comp in ("", ".", ".."):
            raise err(f"file path {path!r} has an empty, '.' or '..' component")
        if comp.lower() in _RESERVED_COMPONENTS:
            raise err(f"file path {path!r} reaches into {comp!r}")
    return path


def path_key(path: str) -> str:
    """What two paths must differ in to be two files everywhere: equal keys collide on a
    case-insensitive or normalising filesystem (macOS writes NFD names)."""
    return unicodedata.normalize("NFC", path).casefold()


def check_unique_paths(paths: Iterable[str], *, user_input: bool = False) -> None:
    """Refuse duplicate paths, paths equal up to case or Unicode normalisation (NFC/NFD, as
    macOS writes names), and a path that is also a directory of another path (``a`` and
    ``a/b``): each would overwrite another file at checkout on some filesystem."""
    err = ArgsError if user_input else SchemaError
    seen: dict[str, str] = {}
    dirs: set[str] = set()
    plist = list(paths)
    for p in plist:
        key = path_key(p)
        if key in seen:
            if seen[key] == p:
                raise err(f"file path {p!r} appears twice")
            raise err(f"file paths {seen[key]!r} and {p!r} differ only in case or "
                      "Unicode normalisation")
        seen[key] = p
        parts = key.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    for key, p in seen.items():
        if key in dirs:
            raise err(f"file path {p!r} is both a file and a directory")
