"""Bearer tokens for HTTP remotes: who may use a ``cas serve --http``, and what a client sends.

Server side, ``tokens.json`` in the served store lists the tokens it accepts, each with a name
and an access level (``read``: hello, refs, registry objects, closure, missing, send;
``write``: also put objects, receive packs, move refs). Only the BLAKE3 of each token is kept,
so the file (mode 0600) does not hand out access when read. No file, or no matching token:
every request is refused (deny by default). ``cas token add NAME [--write]`` prints a new
token once; ``cas token list`` and ``cas token remove NAME`` manage them.

Client side, ``credentials.json`` in the pulling or pushing store (mode 0600) holds the token
for each remote name (``cas remote token NAME``, read from stdin so it never appears in a
process listing or shell history); ``CAS_TOKEN`` overrides it. Tokens never go in URLs, and no
message or log line prints one.

Both files are JSON documents (``docs/format.md``, "tokens.json and credentials.json").
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

import msgspec

from cas.clock import iso_utc
from cas.errors import ArgsError, ConflictError, NotFoundError, SchemaError, from_os_error
from cas.fsutil import atomic_write
from cas.ids import blake3_id

TOKENS = "tokens.json"
CREDENTIALS = "credentials.json"
ACCESS = ("read", "write")
PREFIX = "cas_"


class Token(msgspec.Struct, frozen=True):
    name: str
    #: BLAKE3 of the token's UTF-8 bytes, hex.
    hash: str
    access: str
    created_at: str


class _Tokens(msgspec.Struct):
    schema: str = "cas.tokens"
    version: int = 1
    tokens: list[Token] = []


class _Credentials(msgspec.Struct):
    schema: str = "cas.credentials"
    version: int = 1
    #: remote name -> token
    remotes: dict[str, str] = {}


def _read(path: Path, kind: type) -> object:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return kind()
    except OSError as exc:
        raise from_os_error(exc, f"reading {path.name}") from None
    try:
        doc = msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SchemaError(f"{path.name}: {exc}") from None
    if doc.version != 1:  # type: ignore[attr-defined]
        raise SchemaError(f"{path.name}: unknown version {doc.version}")  # type: ignore[attr-defined]
    return doc


def _write(path: Path, doc: msgspec.Struct) -> None:
    atomic_write(path, msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n",
                 mode=0o600)


def _hash(token: str) -> str:
    return blake3_id(token.encode()).hex()


def add(store_dir: Path, name: str, access: str) -> str:
    """A new token ``name`` with ``access``; returns the token (shown once). The caller holds
    the store's write lock.

    Raises:
        ArgsError: a bad name or access level.
        ConflictError: ``name`` exists.
    """
    if access not in ACCESS:
        raise ArgsError(f"token access {access!r}: read or write")
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
        raise ArgsError(f"token name {name!r}: letters, digits, '.', '_', '-' (at most 64)")
    doc: _Tokens = _read(store_dir / TOKENS, _Tokens)  # type: ignore[assignment]
    if any(t.name == name for t in doc.tokens):
        raise ConflictError(f"token {name!r} exists; 'cas token remove {name}' first")
    token = PREFIX + secrets.token_urlsafe(32)
    doc.tokens = [*doc.tokens, Token(name, _hash(token), access, iso_utc())]
    _write(store_dir / TOKENS, doc)
    return token


def remove(store_dir: Path, name: str) -> None:
    doc: _Tokens = _read(store_dir / TOKENS, _Tokens)  # type: ignore[assignment]
    kept = [t for t in doc.tokens if t.name != name]
    if len(kept) == len(doc.tokens):
        raise NotFoundError(f"no token {name!r}")
    doc.tokens = kept
    _write(store_dir / TOKENS, doc)


def list_tokens(store_dir: Path) -> list[Token]:
    doc: _Tokens = _read(store_dir / TOKENS, _Tokens)  # type: ignore[assignment]
    return list(doc.tokens)


class Checker:
    """Answers "what may the bearer of this token do" for a served store, re-reading
    ``tokens.json`` whenever it changed (a removed token stops working at once, without a
    restart)."""

    def __init__(self, store_dir: Path) -> None:
        self.path = store_dir / TOKENS
        self._stamp: tuple[int, int, int] | None = None
        self._by_hash: dict[str, Token] = {}

    def access(self, token: str | None) -> str | None:
        """``read``, ``write``, or None (refused)."""
        if not token:
            return None
        try:  # one stat per request: a removed token stops working at once
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = (0, 0, 0)
        if stamp != self._stamp:
            try:
                doc: _Tokens = _read(self.path, _Tokens)  # type: ignore[assignment]
                self._by_hash = {t.hash: t for t in doc.tokens}
            except Exception:  # noqa: BLE001 - an unreadable file accepts nobody
                self._by_hash = {}
            self._stamp = stamp
        h = _hash(token)
        for known, t in self._by_hash.items():
            if hmac.compare_digest(known, h):
                return t.access
        return None


def set_credential(store_dir: Path, remote: str, token: str | None) -> None:
    """Keep ``token`` for remote ``remote`` (None: forget it)."""
    doc: _Credentials = _read(store_dir / CREDENTIALS, _Credentials)  # type: ignore[assignment]
    if token is None:
        doc.remotes.pop(remote, None)
    else:
        token = token.strip()
        if not token or any(ord(c) < 33 for c in token):
            raise ArgsError("a token is one word of printable characters")
        doc.remotes[remote] = token
    _write(store_dir / CREDENTIALS, doc)


def credential(store_dir: Path | None, remote: str) -> str | None:
    """The token to send to ``remote``: ``CAS_TOKEN``, else the one kept for it."""
    env = os.environ.get("CAS_TOKEN")
    if env:
        return env.strip()
    if store_dir is None or not remote:
        return None
    doc: _Credentials = _read(store_dir / CREDENTIALS, _Credentials)  # type: ignore[assignment]
    return doc.remotes.get(remote)
