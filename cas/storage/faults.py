"""A backend wrapper that injects faults: the one tool of every crash and full-disk test.

Each call of a verb, and each ``write``/``commit`` of an object being written, is one *step*,
numbered from 0 and labelled ``"<verb> <name>"``. A plan maps step numbers to faults:

- ``"enospc"`` / ``"eio"``: the call raises that ``OSError`` before doing anything;
- ``"crash"``: the process stops at that call, as ``kill -9`` would stop it (``os._exit``, so
  no ``finally`` block and no cleanup runs);
- ``"eio-after"`` / ``"crash-after"``: the call is made, then it raises ``EIO`` (as when the
  last fsync of a write fails after its rename) or the process stops.

With an empty plan the wrapper only records the steps, which is how a test learns how many
calls an operation makes and what each one is.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from cas.storage import Backend, Expected, ObjectWriter

T = TypeVar("T")

FAULTS = ("enospc", "eio", "crash", "eio-after", "crash-after")
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
        self._outer._call(f"append {self._hint}", lambda: self._inner.write(*parts))

    def commit(self, name: str) -> None:
        # A commit refused before it starts throws the object away, as a real one would.
        self._outer._call(f"commit {name}", lambda: self._inner.commit(name),
                          refused=self._inner.abort)

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

    def _step(self, label: str) -> str | None:
        """Count a call; apply a fault due before it; return one due after it."""
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
        return fault

    def _after(self, fault: str | None, label: str) -> None:
        """Apply a fault due once the call has been made."""
        if fault == "eio-after":
            raise OSError(errno.EIO, os.strerror(errno.EIO), label)
        if fault == "crash-after":
            self._crash()

    def _call(self, label: str, call: Callable[[], T],
              refused: Callable[[], None] | None = None) -> T:
        """Make ``call`` as step ``label``, with the faults planned for it (``refused`` runs
        when a fault stops the call before it is made)."""
        try:
            fault = self._step(label)
        except OSError:
            if refused is not None:
                refused()
            raise
        try:
            result = call()
        except BaseException:
            if fault == "crash-after":
                self._crash()
            raise  # the call's own failure wins over an injected EIO
        self._after(fault, label)
        return result

    def path(self, name: str) -> object:
        """The inner backend's file for ``name`` (readers outside the seam; not a step)."""
        return self.inner.path(name)  # type: ignore[attr-defined]

    def list(self, folder: str) -> list[str]:
        return self._call(f"list {folder}", lambda: self.inner.list(folder))

    def list_tree(self, folder: str) -> list[str]:
        return self._call(f"list_tree {folder}", lambda: self.inner.list_tree(folder))

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"read {name}", lambda: self.inner.read(name, offset, length))

    def size(self, name: str) -> int | None:
        return self._call(f"size {name}", lambda: self.inner.size(name))

    def write(self, name: str, data: bytes | memoryview) -> None:
        self._call(f"write {name}", lambda: self.inner.write(name, data))

    def open_write(self, hint: str) -> ObjectWriter:
        return _FaultyWriter(self, self._call(f"open_write {hint}",
                                              lambda: self.inner.open_write(hint)), hint)

    def swap(self, name: str, expected: Expected, new: bytes | None) -> bool:
        return self._call(f"swap {name}", lambda: self.inner.swap(name, expected, new))

    def delete(self, name: str) -> None:
        self._call(f"delete {name}", lambda: self.inner.delete(name))

    def delete_many(self, names: list[str]) -> None:
        # One step per name, so that a fault can land between any two removals.
        for name in names:
            self.delete(name)

    def sweep(self) -> int:
        return self._call("sweep", self.inner.sweep)
