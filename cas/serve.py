"""``cas serve``: a store offered to other hosts (over ssh's stdio, or HTTP: :mod:`cas.http`).

The store is opened per connection, and made on a first push if no store exists at the path
(with the pusher's chunker parameters). ``--restrict-to DIR`` (repeatable) confines the paths a
client may name to those folders, for a forced command in ``authorized_keys``: there the client's
requested command arrives in ``SSH_ORIGINAL_COMMAND`` (``cas serve --stdio PATH``), whose PATH is
used when none is given on the command line. ``--read-only`` refuses every write;
``--append-only`` refuses forced ref updates (no history is ever rewritten or dropped), for
backup targets.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import msgspec

from cas.errors import ArgsError, CasError, NotFoundError, PermError
from cas.peer import Hello, LocalPeer
from cas.store import Store


class ServedStore:
    """The peer operations on the store at ``path``, opened when first needed; ``init``
    creates it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._peer: LocalPeer | None = None

    def _open(self) -> LocalPeer:
        if self._peer is None:
            if not (self.path / "config.json").exists():
                raise NotFoundError(f"no cas store at {self.path}")
            self._peer = LocalPeer(Store.open(self.path))
        return self._peer

    def init(self, chunker: dict[str, Any], derive: bool) -> None:
        from cas.chunking import ChunkerParams

        params = msgspec.convert(chunker, ChunkerParams) if chunker else None
        if params is not None:
            params.validate()
        if self._peer is None:
            Store.init(self.path, derive=derive, chunker=params).close()

    def hello(self) -> Hello:
        return self._open().hello()

    def raw_backend(self) -> Any:
        """The bytes at the served path, for raw storage (no store needed there)."""
        from cas.storage.local import LocalBackend

        self.path.mkdir(parents=True, exist_ok=True)
        return LocalBackend(self.path)

    def close(self) -> None:
        if self._peer is not None:
            self._peer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)


def resolve_path(path: str | None, restrict: tuple[str, ...]) -> Path:
    """The store path to serve: ``path``, else the PATH of ``SSH_ORIGINAL_COMMAND`` (a forced
    command), checked against ``restrict``.

    Raises:
        ArgsError: no path.
        PermError: the path is outside every ``--restrict-to`` folder.
    """
    if path is None:
        original = os.environ.get("SSH_ORIGINAL_COMMAND", "")
        try:
            words = shlex.split(original)
        except ValueError:
            words = []
        if "serve" in words and words[-1] not in ("serve", "--stdio"):
            path = words[-1]
    if not path:
        raise ArgsError("cas serve needs the store's PATH")
    resolved = Path(path).expanduser().resolve()
    if restrict:
        roots = [Path(r).expanduser().resolve() for r in restrict]
        if not any(resolved == r or r in resolved.parents for r in roots):
            raise PermError(f"{path} is outside the folders this server may serve")
    return resolved


class Refusing:
    """Answers every request with one error (a path this server may not serve): the client
    gets it as an answer in the protocol, with its code, not as a broken connection."""

    def __init__(self, error: CasError) -> None:
        self.error = error

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise self.error


def serve_stdio(path: str | None, restrict: tuple[str, ...] = (), *, read_only: bool = False,
                append_only: bool = False, raw_storage: bool = False) -> None:
    """Serve the store at ``path`` (see :func:`resolve_path`) on stdin and stdout until the
    client says bye."""
    from cas.rpc import Framed, serve

    served: ServedStore | Refusing
    try:
        served = ServedStore(resolve_path(path, restrict))
    except CasError as exc:
        served = Refusing(exc)
    framed = Framed(sys.stdin.buffer, sys.stdout.buffer, "the client")
    try:
        serve(served, framed, read_only=read_only, append_only=append_only,
              raw_storage=raw_storage)
    finally:
        served.close()
