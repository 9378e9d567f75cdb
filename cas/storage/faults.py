"""A backend wrapper that injects faults: the one tool of every crash and full-disk test.

Each call of a verb, and each ``write``/``commit`` of an object being written, is one *step*,
numbered from 0 and labelled ``"<verb> <name>"``. A plan maps step numbers to faults:

- ``"enospc"`` / ``"eio"``: the call raises that ``OSError`` before doing anything;
- ``"crash"``: the process stops at that call, as ``kill -9`` would stop it (``os._exit``, so
  no ``finally`` block and no cleanup runs).

With an empty plan the wrapper only records the steps, which is how a test learns how many
calls an operation makes and what each one is.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

from cas.storage import Backend, Expected, ObjectWriter

FAULTS = ("enospc", "eio", "crash")
#: Exit status of a process stopped by a ``"crash"`` fault (as after SIGKILL).
CRASH_STATUS = 137


def _crash() -> None:
    os._exit(CRASH_STATUS)


class _FaultyWriter:
    def __init__(self, outer: FaultyBackend, inner: ObjectWriter, hint: str) -> None:
        self._outer = outer
        self._inner = inner
        self._hint = hint

    def write(self, *parts: bytes | memoryview) -> None:
        self._outer._step(f"append {self._hint}")
        self._inner.write(*parts)

    def commit(self, name: str) -> None:
        try:
            self._outer._step(f"commit {name}")
        except OSError:
            self._inner.abort()
            raise
        self._inner.commit(name)

    def abort(self) -> None:
        self._inner.abort()


class FaultyBackend:
    """Wraps ``inner``; counts steps in :attr:`steps` and applies ``plan`` to them."""

    def __init__(self, inner: Backend, plan: dict[int, str] | None = None,
                 crash: Callable[[], None] = _crash) -> None:
        for fault in (plan or {}).values():
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}")
        self.inner = inner
        self.plan = dict(plan or {})
        self.steps: list[str] = []
        self._crash = crash
        self._lock = threading.Lock()

    def _step(self, label: str) -> None:
        with self._lock:
            index = len(self.steps)
            self.steps.append(label)
        fault = self.plan.get(index)
        if fault == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), label)
        if fault == "eio":
            raise OSError(errno.EIO, os.strerror(errno.EIO), label)
        if fault == "crash":
            self._crash()

    def path(self, name: str) -> object:
        """The inner backend's file for ``name`` (readers outside the seam; not a step)."""
        return self.inner.path(name)  # type: ignore[attr-defined]

    def list(self, folder: str) -> list[str]:
        self._step(f"list {folder}")
        return self.inner.list(folder)

    def list_tree(self, folder: str) -> list[str]:
        self._step(f"list_tree {folder}")
        return self.inner.list_tree(folder)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._step(f"read {name}")
        return self.inner.read(name, offset, length)

    def size(self, name: str) -> int | None:
        self._step(f"size {name}")
        return self.inner.size(name)

    def write(self, name: str, data: bytes | memoryview) -> None:
        self._step(f"write {name}")
        self.inner.write(name, data)

    def open_write(self, hint: str) -> ObjectWriter:
        self._step(f"open_write {hint}")
        return _FaultyWriter(self, self.inner.open_write(hint), hint)

    def swap(self, name: str, expected: Expected, new: bytes | None) -> bool:
        self._step(f"swap {name}")
        return self.inner.swap(name, expected, new)

    def delete(self, name: str) -> None:
        self._step(f"delete {name}")
        self.inner.delete(name)

    def sweep(self) -> int:
        self._step("sweep")
        return self.inner.sweep()
