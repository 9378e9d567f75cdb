"""Local copies of a folder remote's pack indexes and multi-pack indexes.

A folder remote may sit on NFS or a USB drive, where opening every pack index of the far store
at each push or pull costs a read of each over the link. Pack indexes and midxs never change
once written (a pack index belongs to the pack named by its id, a BLAKE3 over the pack's entry
ids; a midx is named by its own checksum), so each is fetched once into the local store's
``cache/remotes/<far uuid>/`` and read from there afterwards; only the far ``packs/`` folder is
listed each time, to see what appeared and what went.

A copy is checked whole before it is used (an index's checksum and the pack id it names, a
midx's checksum against its name) and renamed into the cache only then, so a damaged or lying
far index is refused as it would be without the cache. Copies of files that are no longer in
the far folder (packs collected by a gc there, merged midxs) are deleted when the listing
shows them gone. Pack data is always read from the far pack itself, and every read checks the
entry found at the indexed offset (see :mod:`cas.packs`), so a copy can never make cas return
wrong bytes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cas.errors import from_os_error
from cas.fsutil import tmp_name

#: Where a store keeps the copies, under its ``cache/`` folder, one folder per far store UUID.
FOLDER = "remotes"


class IndexCache:
    """The verified local copies of the index files of the store whose packs are in
    ``far_packs``."""

    def __init__(self, far_packs: Path, cache_dir: Path) -> None:
        self.far_packs = far_packs
        self.dir = cache_dir
        #: Files copied from the far side by this process (for tests and reports).
        self.fetched: list[str] = []

    def local(self, name: str, check: type | None = None) -> Path:
        """The local copy of far file ``name``, fetched and checked by ``check(path, name)``
        first when there is none.

        Raises:
            VerifyError | SchemaError | FormatError: the far file failed the check.
            NotFoundError | DiskError | PermError: it could not be read or copied.
        """
        path = self.dir / name
        if path.exists():
            return path
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_name(self.dir, name)
        try:
            shutil.copyfile(self.far_packs / name, tmp)
            if check is not None:
                check(tmp, name)
            os.replace(tmp, path)
        except OSError as exc:
            raise from_os_error(exc, f"caching the far index {name}") from None
        finally:
            tmp.unlink(missing_ok=True)
        self.fetched.append(name)
        return path

    def prune(self, far_names: set[str]) -> None:
        """Delete the copies of far files that are gone. (Temps of copies a crash interrupted
        stay: another process may be writing one; they are a few KB each, and rare.)"""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name not in far_names and not name.endswith(".tmp"):
                try:
                    (self.dir / name).unlink()
                except OSError:
                    pass  # a copy that cannot be deleted now is deleted next time


def check_index(path: Path, name: str) -> None:
    """A pack index copy is whole: header, checksum, and the pack id it names is its own."""
    from cas.packs import PACK_PREFIX, Pack

    pack_id = name[len(PACK_PREFIX):-len(".idx")]
    pack = Pack(path.parent, pack_id, idx_path=path)
    try:
        pack.verify_index()
    finally:
        pack.close()


def check_midx(path: Path, name: str) -> None:
    """A midx copy is whole: its checksum, which is also its name."""
    from cas.multipack import OpenMidx

    opened = OpenMidx(path, name)
    try:
        opened.midx.verify()
    finally:
        opened.close()
