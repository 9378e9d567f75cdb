"""A backend whose bytes live in a store served by ``cas serve --raw-storage`` (ssh or http).

The storage seam (:mod:`cas.storage`) over the sync protocol's frames (:mod:`cas.rpc`): each
verb is one request (``st_list``, ``st_list_tree``, ``st_read``, ``st_size``, ``st_write``,
``st_put``, ``st_swap``, ``st_delete``, ``st_delete_many``, ``st_sweep``) answered by the
served store's own backend, so a remote kind is a backend like any other and passes the one
generic suite (``tests/test_storage.py``). :meth:`RemoteBackend.open_write` keeps the bytes in
a local temp file and sends them whole at commit (``st_put``: a request, then the bytes as a
stream), so nothing is visible there before commit.

Raw storage bypasses what ``push`` checks (it writes bytes, not verified objects), so a server
answers these verbs only when started with ``--raw-storage``, writes only for a writer (not
``--read-only`` or a read token), and never deletes or swaps under ``--append-only``. Errors
come back as ``OSError``: ``FileNotFoundError`` for a missing name, ``EIO`` with the far
side's message otherwise.
"""

from __future__ import annotations

import errno
import tempfile
import threading
from typing import Any

from cas.errors import CasError
from cas.storage import ANY, Expected, check_name

#: Bytes per ``st_read`` answer and per ``st_write`` request (a frame holds at most 64 MiB).
CHUNK = 16 << 20


def _os_error(exc: CasError, name: str) -> OSError:
    if exc.code == "E_NOT_FOUND":
        return FileNotFoundError(errno.ENOENT, exc.message, name)
    return OSError(errno.EIO, exc.message, name)


class _Writer:
    def __init__(self, backend: RemoteBackend) -> None:
        self._backend = backend
        self._tmp: Any = tempfile.TemporaryFile()

    def write(self, *parts: bytes | memoryview) -> None:
        assert self._tmp is not None, "write after commit or abort"
        for p in parts:
            self._tmp.write(p)

    def commit(self, name: str) -> None:
        assert self._tmp is not None, "commit after commit or abort"
        check_name(name)
        tmp, self._tmp = self._tmp, None
        try:
            tmp.seek(0)
            self._backend._put(name, iter(lambda: tmp.read(CHUNK), b""))
        finally:
            tmp.close()

    def abort(self) -> None:
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None


class RemoteBackend:
    """The :class:`cas.storage.Backend` verbs, asked of a ``cas serve --raw-storage``."""

    def __init__(self, peer: Any) -> None:
        self.peer = peer
        # One connection carries one exchange at a time.
        self._lock = threading.Lock()

    def _ask(self, op: str, name: str = "", **args: Any) -> Any:
        try:
            with self._lock:
                return self.peer._call(op, name=name, **args)  # noqa: SLF001 - same protocol
        except CasError as exc:
            raise _os_error(exc, name) from None

    def list(self, folder: str) -> list[str]:
        return list(self._ask("st_list", folder))

    def list_tree(self, folder: str) -> list[str]:
        return list(self._ask("st_list_tree", folder))

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        parts = []
        while True:
            want = CHUNK if length is None else min(CHUNK, length)
            data = self._ask("st_read", name, offset=offset, length=want)
            if not isinstance(data, bytes):
                raise OSError(errno.EIO, "malformed answer", name)
            parts.append(data)
            offset += len(data)
            if length is not None:
                length -= len(data)
            if len(data) < want or (length is not None and length <= 0):
                return b"".join(parts)

    def size(self, name: str) -> int | None:
        check_name(name)
        return self._ask("st_size", name)

    def write(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        view = memoryview(data).cast("B")
        self._put(name, (view[i:i + CHUNK] for i in range(0, max(len(view), 1), CHUNK)))

    def _put(self, name: str, pieces: Any) -> None:
        try:
            with self._lock:
                self.peer.put(name, pieces)
        except CasError as exc:
            raise _os_error(exc, name) from None

    def open_write(self, hint: str) -> _Writer:
        return _Writer(self)

    def swap(self, name: str, expected: Expected, new: bytes | None) -> bool:
        check_name(name)
        exp: Any = {"any": True} if expected is ANY else expected
        return bool(self._ask("st_swap", name, expected=exp, new=new))

    def delete(self, name: str) -> None:
        check_name(name)
        self._ask("st_delete", name)

    def delete_many(self, names: list[str]) -> None:
        for n in names:
            check_name(n)
        self._ask("st_delete_many", names=names)

    def sweep(self) -> int:
        return int(self._ask("st_sweep"))


def serve_op(backend: Any, op: str, args: Any, *, write: bool, append_only: bool) -> Any:
    """Answer storage verb ``op`` with the served store's ``backend`` (see the module
    docstring for what each mode allows).

    Raises:
        CasError: the verb is refused, a name is invalid, or the backend failed (``E_NOT_FOUND``
            for a missing name).
    """
    from cas.errors import ArgsError, NotFoundError, PermError, from_os_error

    writes = {"st_put", "st_swap", "st_delete", "st_delete_many", "st_sweep"}
    if op in writes and not write:
        raise PermError("raw storage: this connection may only read")
    if append_only and op in {"st_swap", "st_delete", "st_delete_many", "st_sweep"}:
        raise PermError("raw storage: append-only: nothing is deleted or replaced")
    try:
        if op in ("st_list", "st_list_tree"):
            folder = args.name
            if folder:
                check_name(folder)
            return backend.list(folder) if op == "st_list" else backend.list_tree(folder)
        names = args.names if op == "st_delete_many" else [args.name] if args.name else []
        for n in names:
            check_name(n)
        if op == "st_read":
            if args.offset < 0 or not 0 <= args.length <= CHUNK:
                raise ArgsError("raw storage: bad range")
            return backend.read(args.name, args.offset, args.length)
        if op == "st_size":
            return backend.size(args.name)
        if op == "st_swap":
            expected = ANY if args.expected == {"any": True} else args.expected
            if expected is not ANY and not isinstance(expected, (bytes, type(None))):
                raise ArgsError("raw storage: bad expected value")
            return backend.swap(args.name, expected, args.new)
        if op == "st_delete":
            backend.delete(args.name)
            return None
        if op == "st_delete_many":
            backend.delete_many(args.names)
            return None
        if op == "st_sweep":
            return backend.sweep()
    except ValueError as exc:
        raise ArgsError(f"raw storage: {exc}") from None
    except FileNotFoundError:
        raise NotFoundError(f"raw storage: {args.name} does not exist") from None
    except OSError as exc:
        raise from_os_error(exc, f"raw storage {op}") from None
    raise ArgsError(f"unknown operation {op!r}")
