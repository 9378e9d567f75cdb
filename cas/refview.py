"""A remote's catalog read here: ``cas ls REMOTE:`` and ``cas show REMOTE:NAME[@V]``.

A fetch brings the remote's refs (as remote-tracking refs) and their registry objects; a
**view** of the store then reads the registry through those refs as if they were its own
(``refs/models/NAME`` read from ``refs/remotes/<remote>/models/NAME``, tags and pins
likewise), so ``ls``, ``show`` and ``log`` work on it unchanged. The view is read-only; its
content questions (presence) are this store's, not the remote's.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cas.registry import Registry
    from cas.store import Store

#: Tracking namespace for a remote named by URL only (no configured name): filled for one
#: command and emptied after it.
URL_REMOTE = "_url"


class _MappedRefs:
    """Refs under ``refs/`` read from ``prefix`` instead (read-only)."""

    def __init__(self, refs: Any, prefix: bytes) -> None:
        self._refs = refs
        self._prefix = prefix

    def _map(self, ref: bytes | None) -> bytes | None:
        if ref is not None and ref.startswith(b"refs/"):
            return self._prefix + ref[len(b"refs/"):]
        return ref

    def __getitem__(self, ref: bytes) -> bytes:
        return self._refs[self._map(ref)]

    def __contains__(self, ref: bytes) -> bool:
        return self._map(ref) in self._refs

    def keys(self, base: bytes | None = None) -> Any:
        return self._refs.keys(base=self._map(base))

    def as_dict(self, base: bytes | None = None) -> Any:
        return self._refs.as_dict(base=self._map(base))


class _RepoView:
    def __init__(self, repo: Any, prefix: bytes) -> None:
        self.object_store = repo.object_store
        self.refs = _MappedRefs(repo.refs, prefix)

    def __getitem__(self, sha: bytes) -> Any:
        return self.object_store[sha]

    def close(self) -> None:
        pass


def registry_view(reg: Registry, remote: str) -> Registry:
    """``reg`` reading remote ``remote``'s tracking refs as its own."""
    view = copy.copy(reg)
    view.repo = _RepoView(reg.repo, f"refs/remotes/{remote}/".encode())  # type: ignore[assignment]
    view._written = {}  # noqa: SLF001 - a fresh read cache
    return view


def store_view(store: Store, remote: str) -> Store:
    """``store`` whose registry reads ``remote``'s tracking refs (for catalog reads only)."""
    view = copy.copy(store)
    view.registry = registry_view(store.registry, remote)
    return view


def split_spec(store: Store, text: str) -> tuple[str, str] | None:
    """``(remote, rest)`` for ``REMOTE:`` or ``REMOTE:NAME[@V]`` (a configured remote name,
    or a URL followed by ``:``), else None."""
    from cas import remotes as rem

    for name in sorted(rem.load(store.backend), key=len, reverse=True):
        if text.startswith(name + ":"):
            return name, text[len(name) + 1:]
    if "://" in text or text.startswith(("/", "./", "../", "~")):
        head, sep, rest = text.rpartition(":")
        if sep and head and not rest.startswith("/"):
            return head, rest
    if ":" in text:  # no model name holds one: a remote that is not configured
        from cas.errors import ArgsError

        raise ArgsError(f"{text!r}: no remote named {text.split(':', 1)[0]!r} ('cas remote "
                        "list' shows them; a URL works too)")
    return None
