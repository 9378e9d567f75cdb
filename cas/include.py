"""``--include``: which files of a version a checkout (or a later command) takes, by
gitignore-style patterns on the version's file paths."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from cas.errors import ArgsError, NotFoundError
from cas.format.manifest import FileEntry


def include_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for one ``--include`` pattern, in gitignore syntax (as ``add --exclude``
    and ``.casignore``): a pattern without a ``/`` but at its end matches a file or folder
    name at any depth (``*.json``, ``onnx``); one with a ``/`` before its end is anchored at
    the top (``onnx/*.json``; a leading ``/`` anchors a name: ``/*.json``); ``*``, ``?`` and
    ``[...]`` stay inside one path component and ``**`` spans components. A pattern that
    matches a folder selects every file under it. Negation (``!``) is refused: each pattern
    selects.

    Raises:
        ArgsError: an empty pattern, a comment, a negation or a malformed pattern.
    """
    import pathspec  # only a checkout with --include pays for the import

    usage = ("a gitignore-style pattern on the file paths of the version, such as '*.json' "
             "or 'onnx/'")
    if not pattern.strip() or pattern.startswith("#") or "\x00" in pattern:
        raise ArgsError(f"--include {pattern!r}: selects nothing; give {usage}")
    if pattern.startswith("!"):
        raise ArgsError(f"--include {pattern!r}: a negated pattern selects nothing; give "
                        f"{usage} (a name that starts with '!' is written '\\!')")
    try:
        spec = pathspec.GitIgnoreSpec.from_lines([pattern])
    except (ValueError, re.error) as exc:
        raise ArgsError(f"--include {pattern!r}: not a valid pattern ({exc})") from None
    if not any(p.include for p in spec.patterns):
        raise ArgsError(f"--include {pattern!r}: selects nothing; give {usage}")
    return spec.match_file  # type: ignore[no-any-return]


def select_files(files: Sequence[FileEntry], include: Sequence[str],
                 what: str) -> list[FileEntry]:
    """The files that a pattern of ``include`` matches (see :func:`include_pattern`); all
    files if ``include`` is empty.

    Raises:
        ArgsError: a malformed pattern.
        NotFoundError: a pattern matches no file of the version (``what`` names it).
    """
    if not include:
        return list(files)
    pats = [include_pattern(p) for p in include]
    hit = [False] * len(pats)
    chosen = []
    for f in files:
        matched = False
        for i, match in enumerate(pats):
            if match(f.path):
                hit[i] = matched = True
        if matched:
            chosen.append(f)
    missing = [p for p, h in zip(include, hit) if not h]
    if missing:
        raise NotFoundError(f"--include {missing[0]!r} matches no file of {what}"
                            + (f" (nor do {len(missing) - 1} more patterns)"
                               if len(missing) > 1 else ""))
    return chosen
