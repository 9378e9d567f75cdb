"""Remotes: named other stores this one pushes to and pulls from (``cas remote``).

A remote is a name and a URL, kept in the store's ``remotes.json`` (local configuration, as a
git repository's remotes are; ``docs/format.md``, "remotes.json"). Wherever a command takes a
REMOTE, a configured name or a URL works. URL kinds:

- a directory path (absolute, or relative to where the command runs: stored absolute): a
  store on local disk, NFS or a removable drive;
- ``ssh://[user@]host[:port]/path``, or git's short form ``[user@]host:path`` (a ``:`` before
  any ``/``): a store reached by running ``cas serve --stdio PATH`` through the system ``ssh``;
  ``cas_command`` names the far side's cas (as git's ``--upload-pack`` does);
- ``http://`` and ``https://``: a ``cas serve --http`` endpoint.

The file is sealed like ``settings.json`` (a ``checksum`` of its canonical encoding), so an
edit that leaves valid JSON is refused instead of silently sending models elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from cas.errors import ArgsError, NotFoundError, SchemaError
from cas.format.canonical import read_sealed_doc, write_sealed_doc
from cas.storage import Backend

NAME = "remotes.json"
SCHEMA = "cas.remotes"
VERSION = 1
KINDS = ("dir", "ssh", "http")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SCP_RE = re.compile(r"(?:(?P<user>[^@/:\s]+)@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>.*)")


class RemoteUrl(msgspec.Struct, frozen=True):
    """A parsed remote URL."""

    kind: str
    url: str
    host: str = ""
    user: str = ""
    port: int | None = None
    path: str = ""


class Remote(msgspec.Struct, frozen=True, omit_defaults=True):
    url: str
    #: The far side's cas command (ssh remotes), e.g. ``/opt/cas/bin/cas``.
    cas_command: str = ""
    #: The UUID the store there gave when last contacted ("" before the first sync).
    uuid: str = ""


def parse_url(text: str, cwd: Path | None = None) -> RemoteUrl:
    """Classify and check a remote URL (see the module docstring).

    Raises:
        ArgsError: an empty or malformed URL, an unknown scheme, a port out of range.
    """
    if not text or any(ord(c) < 32 for c in text):
        raise ArgsError(f"remote URL {text!r}: empty or holds control characters")
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        try:
            port = parts.port
        except ValueError:
            raise ArgsError(f"remote URL {text!r}: bad port") from None
        if scheme in ("http", "https"):
            if not parts.hostname:
                raise ArgsError(f"remote URL {text!r}: no host")
            if parts.username or parts.password:
                shown = f"{scheme}://***@{parts.hostname}{parts.path}"  # never echo a secret
                raise ArgsError(f"remote URL {shown!r}: credentials never go in URLs (keep the "
                                "token with 'cas remote token NAME')")
            return RemoteUrl("http", text, parts.hostname, "", port, parts.path or "/")
        if scheme == "ssh":
            if not parts.hostname or not parts.path or parts.path == "/":
                raise ArgsError(f"remote URL {text!r}: ssh URLs are ssh://[user@]host[:port]/path")
            return RemoteUrl("ssh", text, parts.hostname, parts.username or "", port,
                             parts.path)
        if scheme == "file":
            text = parts.path
        else:
            raise ArgsError(f"remote URL {text!r}: unknown scheme {scheme!r} (use a path, "
                            "ssh://, host:path, http:// or https://)")
    m = _SCP_RE.fullmatch(text)
    if m and "/" not in text.split(":", 1)[0] and len(m.group("host")) > 1:
        if not m.group("path"):
            raise ArgsError(f"remote URL {text!r}: no path after ':'")
        return RemoteUrl("ssh", text, m.group("host"), m.group("user") or "", None,
                         m.group("path"))
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    path = Path(os.path.normpath(path))
    return RemoteUrl("dir", str(path), path=str(path))


def check_name(name: str) -> str:
    """Raise ArgsError unless ``name`` is a valid remote name."""
    if not _NAME_RE.fullmatch(name) or name.endswith((".", ".lock")) or ".." in name:
        raise ArgsError(f"remote name {name!r}: use letters, digits, '.', '_' and '-' (at most "
                        "64, starting with a letter or digit)")
    return name


def load(backend: Backend) -> dict[str, Remote]:
    """The configured remotes (none if the file is absent).

    Raises:
        SchemaError: the file is not a remotes document.
        VerifyError: it does not match its checksum (edited by hand or damaged).
    """
    doc = read_sealed_doc(backend, NAME, SCHEMA, VERSION, "use 'cas remote' to change remotes")
    if doc is None:
        return {}
    try:
        return msgspec.convert(doc.get("remotes", {}), dict[str, Remote])
    except msgspec.ValidationError as exc:
        raise SchemaError(f"{NAME}: {exc}") from None


def _save(backend: Backend, remotes: dict[str, Remote]) -> None:
    write_sealed_doc(backend, NAME, SCHEMA, VERSION,
                     {"remotes": msgspec.to_builtins(dict(sorted(remotes.items())))})


def add(backend: Backend, name: str, url: str, cas_command: str = "",
        cwd: Path | None = None) -> Remote:
    """Configure remote ``name`` (caller holds the store's write lock).

    Raises:
        ArgsError: a bad name or URL, or ``cas_command`` for a remote that is not ssh.
        ConflictError: ``name`` is configured already.
    """
    from cas.errors import ConflictError

    check_name(name)
    parsed = parse_url(url, cwd)
    if cas_command and parsed.kind != "ssh":
        raise ArgsError("--cas-command applies to ssh remotes only")
    remotes = load(backend)
    if name in remotes:
        raise ConflictError(f"remote {name!r} exists ({remotes[name].url}); 'cas remote remove "
                            f"{name}' first")
    remote = Remote(parsed.url, cas_command)
    remotes[name] = remote
    _save(backend, remotes)
    return remote


def remove(backend: Backend, name: str) -> Remote:
    """Forget remote ``name``.

    Raises:
        NotFoundError: no such remote.
    """
    remotes = load(backend)
    if name not in remotes:
        raise NotFoundError(f"no remote {name!r}" + (f" (remotes: {', '.join(remotes)})"
                                                     if remotes else ""))
    gone = remotes.pop(name)
    _save(backend, remotes)
    return gone


def default_name(configured: dict[str, Remote], spec: str | None) -> str | None:
    """``spec``, else ``origin`` if configured, else the only configured remote, else None."""
    if spec:
        return spec
    if "origin" in configured:
        return "origin"
    return next(iter(configured)) if len(configured) == 1 else None


def resolve(backend: Backend, spec: str, cwd: Path | None = None) -> tuple[str, RemoteUrl,
                                                                           Remote]:
    """A configured remote by name, else ``spec`` as a URL: ``(name or "", parsed, remote)``.

    Raises:
        ArgsError: neither a configured name nor a valid URL.
    """
    remotes = load(backend)
    if spec in remotes:
        r = remotes[spec]
        return spec, parse_url(r.url), r
    parsed = parse_url(spec, cwd)
    return "", parsed, Remote(parsed.url)


def record_uuid(backend: Backend, name: str, uuid: str) -> None:
    """Remember the UUID remote ``name`` gave (the caller holds the store's write lock)."""
    remotes = load(backend)
    r = remotes.get(name)
    if r is None or r.uuid == uuid:
        return
    remotes[name] = msgspec.structs.replace(r, uuid=uuid)
    _save(backend, remotes)
