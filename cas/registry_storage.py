"""The registry's git objects and refs on a storage backend (the adapter of the storage seam).

The registry stays an ordinary bare git repository (``docs/format.md``, Registry): loose objects
under ``objects/xx/<38 hex>`` (zlib, as git writes them), refs as files under ``refs/``. This
adapter gives dulwich an object store and a refs container whose every loose read and write is
a backend call, so a fault injected in the backend reaches registry writes like any other, and a
remote store can later hold a registry the same way:

- an object is written with :meth:`Backend.write` (durable before any ref can name it) and only
  if it is not there yet;
- a ref moves with :meth:`Backend.swap` from the value the writer read, so two writers moving
  one ref cannot both win; an empty folder left where a ref belongs (a crash between the two
  steps of a deletion, by cas or by git) counts as no ref.

Outside the adapter, read by dulwich from the local folder: git pack files and ``packed-refs``.
They appear only if someone runs ``git gc`` or ``git pack-refs`` in the registry, and cas keeps
reading them; cas never writes a git pack, and rewrites ``packed-refs`` only to delete a ref
that was packed (first, as git does). Loose ref names no ref could have (``check_ref_format``,
not UTF-8) are ignored, as git ignores them.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from dulwich.object_store import DiskObjectStore
from dulwich.objects import ZERO_SHA, ShaFile, sha_to_hex, valid_hexsha
from dulwich.file import FileLocked
from dulwich.refs import DiskRefsContainer, Ref, check_ref_format

from cas.errors import from_os_error
from cas.storage import Backend


class BackendObjectStore(DiskObjectStore):
    """dulwich's object store with loose objects read and written through ``backend``."""

    def __init__(self, path: str, backend: Backend, folder: str) -> None:
        super().__init__(path)
        self.backend = backend
        self.folder = folder

    def _name(self, sha: bytes) -> str:
        hex_sha = (sha_to_hex(sha) if len(sha) == 20 else sha).decode()  # type: ignore[arg-type]
        return f"{self.folder}/{hex_sha[:2]}/{hex_sha[2:]}"

    def _get_loose_object(self, sha: Any) -> ShaFile | None:
        name = self._name(sha)
        try:
            data = self.backend.read(name)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise from_os_error(exc, f"reading registry object {name}") from None
        hex_sha = sha_to_hex(sha) if len(sha) == 20 else sha
        return ShaFile.from_file(io.BytesIO(data), hex_sha)

    def contains_loose(self, sha: Any) -> bool:
        name = self._name(sha)
        try:
            return self.backend.size(name) is not None
        except OSError as exc:
            raise from_os_error(exc, f"reading registry object {name}") from None

    def _iter_loose_objects(self) -> Iterator[Any]:
        for name in self.backend.list_tree(self.folder):
            head, _, tail = name[len(self.folder) + 1 :].partition("/")
            sha = (head + tail).encode()
            if len(head) == 2 and valid_hexsha(sha):
                yield sha

    def add_object(self, obj: ShaFile) -> None:
        name = self._name(obj.id)
        try:
            if self.backend.size(name) is not None:
                return  # content-addressed: what is there is the same object
            self.backend.write(name, obj.as_legacy_object())
        except OSError as exc:
            raise from_os_error(exc, f"writing registry object {name}") from None

    def add_objects(self, objects: Sequence[tuple[ShaFile, str | None]],
                    progress: Callable[[str], None] | None = None) -> None:
        for obj, _path in objects:
            self.add_object(obj)


class BackendRefsContainer(DiskRefsContainer):
    """dulwich's refs with loose refs read, listed and moved through ``backend``."""

    def __init__(self, path: str, backend: Backend, folder: str) -> None:
        super().__init__(path)
        self.backend = backend
        self.folder = folder

    def _name(self, ref: bytes) -> str:
        return f"{self.folder}/{ref.decode()}"

    def _read_loose_bytes(self, ref: bytes) -> bytes | None:
        name = self._name(ref)
        try:
            return self.backend.read(name)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise from_os_error(exc, f"reading registry ref {name}") from None

    def _read_loose_ref_file(self, name: Ref) -> bytes | None:
        data = self._read_loose_bytes(name)
        if data is None:
            return None
        return data.split(b"\n", 1)[0].rstrip(b"\r")

    def _iter_loose_refs(self, base: bytes = b"refs/") -> Iterator[Ref]:
        folder = self._name(base.rstrip(b"/"))
        try:
            names = self.backend.list_tree(folder)
        except OSError as exc:
            raise from_os_error(exc, f"listing registry refs in {folder}") from None
        for name in names:
            try:
                ref = name[len(self.folder) + 1 :].encode()
            except UnicodeEncodeError:
                continue  # a file name that is not UTF-8 is not a ref git could have made
            if check_ref_format(Ref(ref)):  # as git, ignore files no ref could be named
                yield Ref(ref)

    def set_if_equals(self, name: Ref, old_ref: bytes | None, new_ref: bytes,
                      committer: bytes | None = None, timestamp: float | None = None,
                      timezone: int | None = None, message: bytes | None = None) -> bool:
        """Move ``name`` to ``new_ref`` if it holds ``old_ref`` (ZERO_SHA: absent; None: any)."""
        self._check_refname(name)
        loose = self._read_loose_bytes(name)
        current = (loose.split(b"\n", 1)[0].rstrip(b"\r") if loose is not None
                   else self.get_packed_refs().get(name))
        if old_ref is not None:
            if old_ref == ZERO_SHA and current is not None:
                return False
            if old_ref != ZERO_SHA and current != old_ref:
                return False
        return self.backend.swap(self._name(name), loose, new_ref + b"\n")

    def add_if_new(self, name: Ref, ref: bytes, committer: bytes | None = None,
                   timestamp: float | None = None, timezone: int | None = None,
                   message: bytes | None = None) -> bool:
        return self.set_if_equals(name, ZERO_SHA, ref)

    def remove_if_equals(self, name: Ref, old_ref: bytes | None,
                         committer: bytes | None = None, timestamp: float | None = None,
                         timezone: int | None = None, message: bytes | None = None) -> bool:
        """Delete ``name`` if it holds ``old_ref`` (None: whatever it holds)."""
        self._check_refname(name)
        loose = self._read_loose_bytes(name)
        packed = self.get_packed_refs().get(name)
        current = loose.split(b"\n", 1)[0].rstrip(b"\r") if loose is not None else packed
        if old_ref is not None and current != old_ref:
            return False
        if packed is not None:
            # As git: out of packed-refs first, so a crash in between cannot bring back the
            # older, packed value. packed-refs is rewritten by dulwich, outside the backend:
            # it exists only if someone ran git pack-refs in the registry.
            try:
                self._remove_packed_ref(name)
            except FileLocked as exc:
                raise FileExistsError(errno.EEXIST, "packed-refs is locked",
                                      str(exc)) from None
        if loose is not None and not self.backend.swap(self._name(name), loose, None):
            return False
        return True
