"""A backend in memory: the reference implementation of the contract in :mod:`cas.storage`.

Nothing survives the process; it exists so that the generic backend suite has a second,
independent implementation to hold the contract to, and for tests that need a store's bytes
without a filesystem.
"""

from __future__ import annotations

import threading

from cas.storage import ANY, Expected, check_name


class MemoryWriter:
    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend
        self._parts: list[bytes] | None = []

    def write(self, *parts: bytes | memoryview) -> None:
        assert self._parts is not None, "write after commit or abort"
        self._parts += [bytes(p) for p in parts]

    def commit(self, name: str) -> None:
        assert self._parts is not None, "commit after commit or abort"
        data, self._parts = b"".join(self._parts), None
        with self._backend._lock:
            self._backend.objects[check_name(name)] = data

    def abort(self) -> None:
        self._parts = None


class MemoryBackend:
    """Objects in a dict; one lock makes every verb atomic."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def list(self, folder: str) -> list[str]:
        prefix = f"{check_name(folder)}/" if folder else ""
        with self._lock:
            return sorted(n for n in self.objects
                          if n.startswith(prefix) and "/" not in n[len(prefix):])

    def list_tree(self, folder: str) -> list[str]:
        prefix = f"{check_name(folder)}/"
        with self._lock:
            return sorted(n for n in self.objects if n.startswith(prefix))

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            try:
                data = self.objects[check_name(name)]
            except KeyError:
                raise FileNotFoundError(2, "no such object", name) from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def size(self, name: str) -> int | None:
        with self._lock:
            data = self.objects.get(check_name(name))
        return None if data is None else len(data)

    def write(self, name: str, data: bytes | memoryview) -> None:
        with self._lock:
            self.objects[check_name(name)] = bytes(data)

    def open_write(self, hint: str) -> MemoryWriter:
        return MemoryWriter(self)

    def swap(self, name: str, expected: Expected, new: bytes | None) -> bool:
        with self._lock:
            current = self.objects.get(check_name(name))
            if expected is not ANY and current != expected:
                return False
            if new is None:
                self.objects.pop(name, None)
            else:
                self.objects[name] = bytes(new)
            return True

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(check_name(name), None)

    def delete_many(self, names: list[str]) -> None:
        for name in names:
            self.delete(name)

    def sweep(self) -> int:
        return 0
