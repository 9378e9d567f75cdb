"""The text of a registry commit: who made it (the author identity) and what it did (a
one-line subject, then ``Cas-Action``, ``Cas-Version`` and ``Cas-Tag`` trailers in the last
paragraph; see ``docs/format.md``, Registry).

Trailers are read from the last paragraph only and subjects are one line without control
characters, so a user's message can never forge a trailer.
"""

from __future__ import annotations

import getpass
import re
import socket

from cas.errors import ArgsError, SchemaError

_TRAILER = re.compile(rb"^Cas-(Action|Version|Tag): ([^\n]+)$", re.MULTILINE)
ACTIONS = ("add", "rm", "restore", "annotate", "tag", "untag")


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


def parse_trailers(message: bytes
                   ) -> tuple[str, tuple[int, ...], tuple[tuple[str, int], ...]]:
    """``(action, versions, tags)`` from a commit message's trailers.

    Raises:
        SchemaError: the trailers are missing or malformed.
    """
    action = None
    versions: list[int] = []
    tags: list[tuple[str, int]] = []
    # Trailers are read from the message's last paragraph only: a subject can never add one.
    block = message.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    try:
        for key, value in _TRAILER.findall(block):
            value = value.strip()
            if key == b"Action":
                action = value.decode()
            elif key == b"Version":
                versions.append(int(value))
            else:
                tag, seq = value.decode().split(" ")
                tags.append((tag, int(seq)))
    except (ValueError, UnicodeDecodeError):
        raise SchemaError("registry commit has malformed Cas- trailers") from None
    if action not in ACTIONS or not versions:
        raise SchemaError("registry commit lacks Cas-Action/Cas-Version trailers")
    return action, tuple(versions), tuple(tags)


def check_message(message: str) -> str:
    """Return ``message`` if it can be a commit subject: one line, no control characters, at
    most 1000 characters. Raises ArgsError otherwise."""
    if len(message) > 1000 or any(ord(c) < 32 or c == "\x7f" for c in message):
        raise ArgsError("message must be one line of at most 1000 characters, "
                        "without control characters")
    return message


def commit_message(subject: str, action: str, seqs: list[int],
                   tags: list[tuple[str, int]]) -> str:
    """The full message of a commit: ``subject`` (checked), a blank line, the trailers."""
    check_message(subject)
    lines = [subject, "", f"Cas-Action: {action}"]
    lines += [f"Cas-Version: {seq}" for seq in seqs]
    lines += [f"Cas-Tag: {tag} {seq}" for tag, seq in tags]
    return "\n".join(lines) + "\n"


def versions_text(seqs: list[int]) -> str:
    return ", ".join(f"v{s}" for s in seqs)
