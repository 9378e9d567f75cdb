"""Setting a code repository up for cas hooks: git's pre-push hook, and a wheelhouse for
installing the pre-commit hooks without a package index.

``install_pre_push`` writes ``<hooks dir>/pre-push`` (git's ``core.hooksPath`` respected), a
shell script that runs ``cas.hooks.pre_push`` with the Python of the cas that installed it and
then the pre-push hook that was there before. An existing hook that cas did not write is never
overwritten: it is renamed ``pre-push.cas-previous`` and called with the same arguments and
input (git-lfs's and pre-commit's hooks keep working). Installing again updates cas's script
and keeps the chain.

``build_wheelhouse`` repacks the distributions that cas needs, as they are installed in this
Python, into wheels in a folder. With ``PIP_NO_INDEX=1 PIP_FIND_LINKS=<folder>``, pre-commit
builds its hook environment from that folder alone: cas's own source comes from the hook
repository at the pinned revision, its build backend and dependencies from the wheelhouse.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import msgspec

from cas.errors import ArgsError, CasWarning, ConflictError, from_os_error

MARKER = "# cas-pre-push-hook v1"
PREVIOUS = "pre-push.cas-previous"
DIST = "cas-models"
#: The build backend ``pip install`` of cas's source needs (pyproject's build-system).
BUILD_REQUIRES = ("setuptools", "wheel")

_SCRIPT = """#!/bin/sh
{marker}: written by `cas hooks install`.
# Sends the model versions that cas.lock names in the pushed commits to the cas remote, then
# runs the pre-push hook that was here before it (kept as {previous}).
input=$(cat)
printf '%s\\n' "$input" | {python} -m cas.hooks.pre_push "$@" || exit $?
previous="$(dirname "$0")/{previous}"
if [ -x "$previous" ]; then
    printf '%s\\n' "$input" | "$previous" "$@" || exit $?
fi
exit 0
"""


class HookInstallResult(msgspec.Struct):
    hook: str
    #: "installed", "updated" or "unchanged".
    action: str
    #: The earlier hook now called after cas's ("" when there was none).
    chained: str = ""
    warnings: list[CasWarning] = []


def hooks_dir(root: Path) -> Path:
    """The repository's hooks folder (``core.hooksPath`` if set).

    Raises:
        ArgsError: ``root`` is not in a git repository.
    """
    r = subprocess.run(["git", "rev-parse", "--git-path", "hooks"], cwd=root,
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ArgsError(f"{root} is not in a git repository (cas hooks install needs one)")
    p = Path(r.stdout.strip())
    return p if p.is_absolute() else root / p


def install_pre_push(root: Path, python: str | None = None) -> HookInstallResult:
    """Install cas's pre-push hook in the repository at ``root`` (see the module docstring).

    Raises:
        ConflictError: a foreign hook is there and ``pre-push.cas-previous`` exists too.
    """
    d = hooks_dir(root)
    hook = d / "pre-push"
    script = _SCRIPT.format(marker=MARKER, previous=PREVIOUS,
                            python=shlex.quote(python or sys.executable))
    try:
        d.mkdir(parents=True, exist_ok=True)
        old = hook.read_text(errors="replace") if hook.exists() or hook.is_symlink() else None
        prev = d / PREVIOUS
        chained = str(prev) if prev.exists() or prev.is_symlink() else ""
        if old is not None and MARKER not in old:
            if chained:
                raise ConflictError(f"{hook} is not cas's and {prev} exists already: merge "
                                    "them by hand, or move one away and run again")
            os.replace(hook, prev)
            chained = str(prev)
        action = ("unchanged" if old == script else "installed" if old is None
                  or MARKER not in old else "updated")
        if old != script:
            from cas.fsutil import atomic_write

            atomic_write(hook, script.encode(), mode=0o777)
        hook.chmod(0o755)
    except OSError as exc:
        raise from_os_error(exc, f"installing {hook}") from None
    return HookInstallResult(str(hook), action, chained)


# -- wheelhouse --------------------------------------------------------------------------------


class WheelhouseResult(msgspec.Struct):
    folder: str
    wheels: list[str] = []
    #: Requirements not installed in this Python (the wheelhouse lacks them).
    missing: list[str] = []
    warnings: list[CasWarning] = []


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str] | None) -> list[str]:
    """Names of the requirements that apply here without extras (their environment markers
    evaluated with ``packaging`` when it is installed; taken as true otherwise: a wheelhouse
    with one wheel too many does no harm)."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging comes with pip's usual companions
        Requirement = None  # type: ignore[assignment,misc]
    out = []
    for r in reqs or []:
        if Requirement is not None:
            try:
                req = Requirement(r)
            except InvalidRequirement:
                continue
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out.append(req.name)
            continue
        if "extra ==" in r.replace("extra==", "extra =="):
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r)
        if m:
            out.append(m.group(1))
    return out


def _closure(roots: list[str]) -> tuple[list[object], list[str]]:
    from importlib import metadata

    seen: dict[str, object] = {}
    missing = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        key = _norm(name)
        if key in seen or key in missing:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(key)
            continue
        seen[key] = dist
        todo += _requirement_names(dist.requires)
    return list(seen.values()), sorted(missing)


def _wheel_tag(dist: object) -> str:
    text = dist.read_text("WHEEL") or ""  # type: ignore[attr-defined]
    tags = [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Tag:")]
    if not tags:
        return "py3-none-any"
    parts = [t.split("-") for t in tags]
    return "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))


def repack(dist: object, folder: Path) -> Path | None:
    """A wheel in ``folder`` of the installed distribution ``dist`` (its RECORD's files,
    without byte-code and scripts, which pip regenerates); None for an editable or
    RECORD-less install."""
    files = dist.files  # type: ignore[attr-defined]
    if not files or any(str(f).endswith(".pth") and "__editable__" in str(f) for f in files):
        return None
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])  # type: ignore[attr-defined]
    version = dist.version  # type: ignore[attr-defined]
    out = folder / f"{name}-{version}-{_wheel_tag(dist)}.whl"
    record: list[str] = []
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        dist_info = ""
        for f in files:
            rel = str(f)
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            top, _, leaf = rel.partition("/")
            if top.endswith(".dist-info") and "/" not in leaf:
                if leaf == "RECORD":
                    dist_info = top
                if leaf in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                    continue  # the installer writes these
            src = Path(dist.locate_file(f))  # type: ignore[attr-defined]
            if not src.is_file():
                continue
            data = src.read_bytes()
            z.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{rel},sha256={digest.decode()},{len(data)}")
        if not dist_info:
            tmp.unlink()
            return None
        record.append(f"{dist_info}/RECORD,,")
        z.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    os.replace(tmp, out)
    return out


def build_wheelhouse(folder: Path) -> WheelhouseResult:
    """Wheels, in ``folder``, of cas's build backend and of every distribution cas depends
    on (recursively), repacked from this Python's installation."""
    from importlib import metadata

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise from_os_error(exc, f"creating {folder}") from None
    roots = list(BUILD_REQUIRES) + _requirement_names(metadata.requires(DIST))
    dists, missing = _closure(roots)
    result = WheelhouseResult(str(folder), missing=missing)
    for dist in sorted(dists, key=lambda d: d.metadata["Name"].lower()):  # type: ignore[attr-defined]
        try:
            w = repack(dist, folder)
        except OSError as exc:
            raise from_os_error(exc, f"writing a wheel into {folder}") from None
        if w is not None:
            result.wheels.append(w.name)
    if missing:
        result.warnings.append(CasWarning("W_WHEELHOUSE_INCOMPLETE", (
            f"not installed here, so not in the wheelhouse: {', '.join(missing)} "
            f"(add them with `pip download -d {folder} {' '.join(missing)}` where an index "
            "is reachable)")))
    return result
