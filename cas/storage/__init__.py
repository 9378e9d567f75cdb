"""The storage seam: the few verbs every place that holds a store's bytes must offer.

A backend knows nothing about packs, chunks or git: it stores named byte strings. Names are
relative, ``/``-separated paths (``packs/pack-<id>.pack``, ``registry/refs/models/org/m``),
each component non-empty and neither ``.`` nor ``..``. The verbs:

- :meth:`Backend.list` the names under a folder;
- :meth:`Backend.read` a whole object or a byte range of it;
- :meth:`Backend.write` / :meth:`Backend.open_write` a new object, durably: once the call (or
  :meth:`ObjectWriter.commit`) returns, the object survives a crash and is visible whole, and
  until then it is not visible at all;
- :meth:`Backend.swap` compare-and-swap of a small mutable object (a ref, a settings file): the
  object changes only if it still holds what the caller expects, and a crash leaves either the
  old or the new bytes;
- :meth:`Backend.delete` an object.

Errors are ``OSError``: ``FileNotFoundError`` for a name that does not exist, anything else
(``ENOSPC``, ``EIO``, ``EACCES``) for a failure. After a failure the backend holds what it held
before the call, or, when only the last step failed (the folder fsync after a rename), the new
object: a caller must not undo a write because it reported a failure (it may have landed), and
reads back a swap that failed to learn whether it happened. Callers turn them into
:class:`cas.errors.CasError` with their own context (:func:`cas.errors.from_os_error`).

Wrappers (fault injection, later retries and caching) are backends around a backend. Every
backend passes the one generic test suite (``tests/test_storage.py``). What stays outside the
seam, and why, is in ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import Protocol


class _Any:
    """The ``expected`` value of :meth:`Backend.swap` that matches whatever is stored."""

    def __repr__(self) -> str:
        return "ANY"


#: Pass as ``expected`` to :meth:`Backend.swap` to replace an object unconditionally.
ANY = _Any()

#: What :meth:`Backend.swap` compares against: the bytes held, None for "absent", or :data:`ANY`.
Expected = bytes | None | _Any


class ObjectWriter(Protocol):
    """A new object being written front to back; invisible until :meth:`commit`."""

    def write(self, *parts: bytes | memoryview) -> None:
        """Append ``parts`` (in order)."""

    def commit(self, name: str) -> None:
        """Make the bytes written so far durable and visible under ``name``.

        An existing object of that name is replaced (names of immutable objects are derived
        from their content, so it holds the same bytes). The writer is closed afterwards,
        also when commit raises.
        """

    def abort(self) -> None:
        """Throw the bytes away. Safe to call after commit or a failed call (does nothing)."""


class Backend(Protocol):
    """Where a store's bytes live. See the module docstring for the contract of each verb."""

    def list(self, folder: str) -> list[str]:
        """Names of the objects directly inside ``folder`` ("" for the top), sorted.

        Only objects, not sub-folders; a missing folder lists as empty.
        """

    def list_tree(self, folder: str) -> list[str]:
        """Names (relative to the top) of every object under ``folder``, at any depth, sorted."""

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes of ``name`` from ``offset`` (None: to the end). Short only at EOF."""

    def size(self, name: str) -> int | None:
        """The length of ``name``, or None if it does not exist."""

    def write(self, name: str, data: bytes | memoryview) -> None:
        """Write the object ``name`` durably (see :meth:`ObjectWriter.commit`)."""

    def open_write(self, hint: str) -> ObjectWriter:
        """Start a new object whose name is given at commit (``hint`` names its temp)."""

    def swap(self, name: str, expected: Expected, new: bytes | None) -> bool:
        """Replace ``name`` with ``new`` (None: delete it) if it holds ``expected``.

        Returns False, changing nothing, when the stored value differs (an absent object
        matches only ``None``). Concurrent swaps of one name are serialised: at most one of
        two swaps from the same expected value succeeds.
        """

    def delete(self, name: str) -> None:
        """Remove ``name``; a missing name is not an error."""

    def delete_many(self, names: list[str]) -> None:
        """Remove each of ``names`` (missing ones are not errors), every removal durable on
        return; a failure may leave any subset removed. One folder sync for many names."""

    def sweep(self) -> int:
        """Remove what writers killed mid-write left behind (temps, stale swap locks).

        Call only while no writer can be running (the store's write lock held). Returns the
        number of leftovers removed.
        """


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise ValueError (a caller's bug)."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ValueError(f"invalid storage object name: {name!r}")
    return name

