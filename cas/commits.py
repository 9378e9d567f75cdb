"""The text of a registry commit: who made it (the author identity) and what it did (a
one-line subject, then ``Cas-Action``, ``Cas-Version``, ``Cas-Id``, ``Cas-Tag`` and ``Cas-Pin``
trailers in the last paragraph; see ``docs/format.md``, Registry).

Trailers are read from the last paragraph only and subjects are one line without control
characters, so a user's message can never forge a trailer.
"""

from __future__ import annotations

import getpass
import re
import socket
from typing import NamedTuple

from cas.errors import ArgsError, SchemaError
from cas.versions import is_version_id

_TRAILER = re.compile(rb"^Cas-(Action|Version|Id|Tag|Pin): ([^\n]+)$", re.MULTILINE)
ACTIONS = ("add", "rm", "restore", "annotate", "tag", "untag")
#: A pin's scope: ``all`` (every store) or a store UUID (lowercase, as ``config.json`` has it).
_PIN_SCOPE = re.compile(r"all\Z|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def is_pin_scope(text: object) -> bool:
    """True for ``all`` or a store UUID in lowercase."""
    return isinstance(text, str) and _PIN_SCOPE.match(text) is not None


class Trailers(NamedTuple):
    """What a commit's trailers say (see ``docs/format.md``, Registry)."""

    action: str
    versions: tuple[int, ...]
    #: ``(tag, seq)`` pairs that the event set, deleted or brought back.
    tags: tuple[tuple[str, int], ...]
    #: The version id an ``add`` recorded (``Cas-Id``), or None (a commit from before ids).
    id: str | None = None
    #: ``(scope, seq)`` pairs of the pins an ``rm`` deleted or a ``restore`` brought back.
    pins: tuple[tuple[str, int], ...] = ()


def default_identity() -> tuple[str, str]:
    """``(user, user@host)``: who registers versions from this process when nothing says."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name configured for this uid
        user = "unknown"
    return user, f"{user}@{socket.gethostname()}"


_IDENTITY = re.compile(r"\s*([^<>\n]*?)\s*<([^<>\n]*)>\s*\Z")


def parse_identity(text: str) -> tuple[str, str]:
    """``Name <email>`` -> ``(Name, email)``; a bare name gets ``name@host`` as its email.

    Raises:
        ArgsError: empty, a newline, or angle brackets in the wrong places.
    """
    m = _IDENTITY.match(text)
    if m and m.group(1):
        return m.group(1), m.group(2)
    if text.strip() and not any(c in text for c in "<>\n"):
        return text.strip(), f"{text.strip().replace(' ', '.')}@{socket.gethostname()}"
    raise ArgsError(f"author {text!r} must be 'Name <email>' or a name")


def resolve_identity(explicit: str | None = None) -> tuple[str, str]:
    """Who is registering: ``explicit`` (``--author``), else ``$CAS_AUTHOR``, else the git
    identity (``user.name`` and ``user.email`` from the user's git config, also read from
    ``$GIT_AUTHOR_NAME``/``$GIT_AUTHOR_EMAIL``), else ``user@host`` of the process."""
    import os

    if explicit:
        return parse_identity(explicit)
    env = os.environ.get("CAS_AUTHOR")
    if env:
        return parse_identity(env)
    name = os.environ.get("GIT_AUTHOR_NAME")
    email = os.environ.get("GIT_AUTHOR_EMAIL")
    if not (name and email):
        try:
            # git's own config (the one other place dulwich is used outside the registry).
            from dulwich.config import StackedConfig

            cfg = StackedConfig.default()
            name = name or cfg.get((b"user",), b"name").decode()
            email = email or cfg.get((b"user",), b"email").decode()
        except (KeyError, OSError, UnicodeDecodeError, ValueError):
            pass
    if name and email:
        return parse_identity(f"{name} <{email}>")
    return default_identity()


def parse_trailers(message: bytes) -> Trailers:
    """What a commit message's trailers say.

    Raises:
        SchemaError: the trailers are missing or malformed.
    """
    action = None
    versions: list[int] = []
    tags: list[tuple[str, int]] = []
    pins: list[tuple[str, int]] = []
    ids: list[str] = []
    # Trailers are read from the message's last paragraph only: a subject can never add one.
    block = message.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    try:
        for key, value in _TRAILER.findall(block):
            value = value.strip()
            if key == b"Action":
                action = value.decode()
            elif key == b"Version":
                versions.append(int(value))
            elif key == b"Id":
                ids.append(value.decode())
            else:
                what, seq = value.decode().split(" ")
                (tags if key == b"Tag" else pins).append((what, int(seq)))
    except (ValueError, UnicodeDecodeError):
        raise SchemaError("registry commit has malformed Cas- trailers") from None
    if action not in ACTIONS or not versions:
        raise SchemaError("registry commit lacks Cas-Action/Cas-Version trailers")
    if ids and (action != "add" or len(ids) > 1 or not is_version_id(ids[0])):
        raise SchemaError("registry commit has a malformed Cas-Id trailer (one, in an add, "
                          "of 32 or 40 lowercase hex)")
    if not all(is_pin_scope(scope) for scope, _seq in pins):
        raise SchemaError("registry commit has a Cas-Pin trailer whose scope is neither 'all' "
                          "nor a store UUID")
    return Trailers(action, tuple(versions), tuple(tags), ids[0] if ids else None, tuple(pins))


def check_message(message: str) -> str:
    """Return ``message`` if it can be a commit subject: one line, no control characters, at
    most 1000 characters. Raises ArgsError otherwise."""
    if len(message) > 1000 or any(ord(c) < 32 or c == "\x7f" for c in message):
        raise ArgsError("message must be one line of at most 1000 characters, "
                        "without control characters")
    return message


def commit_message(subject: str, action: str, seqs: list[int],
                   tags: list[tuple[str, int]], *, version_id: str | None = None,
                   pins: list[tuple[str, int]] | tuple[tuple[str, int], ...] = ()) -> str:
    """The full message of a commit: ``subject`` (checked), a blank line, the trailers
    (``version_id``: the ``Cas-Id`` of an ``add``; ``pins``: ``(scope, seq)`` pairs)."""
    check_message(subject)
    lines = [subject, "", f"Cas-Action: {action}"]
    lines += [f"Cas-Version: {seq}" for seq in seqs]
    if version_id is not None:
        lines.append(f"Cas-Id: {version_id}")
    lines += [f"Cas-Tag: {tag} {seq}" for tag, seq in tags]
    lines += [f"Cas-Pin: {scope} {seq}" for scope, seq in pins]
    return "\n".join(lines) + "\n"


def versions_text(seqs: list[int]) -> str:
    return ", ".join(f"v{s}" for s in seqs)
