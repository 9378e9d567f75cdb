"""Quarantine: where recovery sets aside pack files that cannot be indexed.

A pack in ``packs/`` without a usable index is normally the leftover of a writer killed between
its two renames, and the next writer rebuilds the index by scanning the pack. A pack that cannot
be scanned (cut, damaged header or trailer, a stray empty file) would make every writer fail
until someone deleted it by hand. Recovery (holding the write lock) moves such a pack, and its
index if it has one, into ``packs/quarantine/`` instead: readers and writers never look there,
``verify`` reports what it holds (``W_QUARANTINED``), and nothing is ever deleted from it by cas.

Order: the index moves before the pack, so a crash in between leaves a pack without an index,
which the next recovery scans and quarantines again; each rename is made durable by an fsync of
both folders. A name already taken in quarantine gets a ``.N`` suffix: nothing is overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cas.errors import NotFoundError, SchemaError, VerifyError, from_os_error
from cas.fsutil import fsync_dir

if TYPE_CHECKING:
    from cas.store import Store

FOLDER = "quarantine"


def index_or_quarantine(store: Store, pack_id: str) -> str:
    """Rebuild the index of pack ``pack_id`` from the pack; if the pack cannot be indexed
    (cut, damaged, empty, or naming another pack), move it and its index to quarantine.
    Call only while holding the write lock.

    Only for a pack whose index is missing or cannot be opened: a pack with a usable index
    keeps it (its objects stay readable), whatever the pack's own damage.

    Returns what was done: ``"rebuilt"``, ``"quarantined"``, ``"kept"`` (its index opens) or
    ``"gone"`` (no such pack).

    Raises:
        DiskError | PermError: the pack cannot be read (an I/O error is not damage: nothing
            is moved), or a move failed.
    """
    try:
        store.rebuild_index(pack_id)
        return "rebuilt"
    except NotFoundError:
        if not (store.packs_dir / f"pack-{pack_id}.idx").exists():
            return "gone"
        # An index whose pack is missing vouches for objects nothing holds: set it aside.
    except SchemaError:
        # An unknown pack version is a newer cas's pack, not damage: never moved.
        return "kept"
    except VerifyError:
        if pack_id in store.packs.packs:
            return "kept"
    store.packs.broken.pop(pack_id, None)
    quarantine_pack(store.packs_dir, pack_id)
    return "quarantined"


def quarantine_pack(packs_dir: Path, pack_id: str) -> list[str]:
    """Move ``pack-<pack_id>.idx`` (if present), then ``.pack`` (if present), into
    ``packs/quarantine/``. Call only while holding the write lock.

    Returns the names the files got, relative to ``packs_dir``.

    Raises:
        DiskError | PermError: a move failed (the files stay where they were).
    """
    target = packs_dir / FOLDER
    moved = []
    try:
        target.mkdir(exist_ok=True)
        for ext in ("idx", "pack"):
            src = packs_dir / f"pack-{pack_id}.{ext}"
            if not src.exists():
                continue
            dst = target / src.name
            n = 1
            while dst.exists():
                dst = target / f"{src.name}.{n}"
                n += 1
            os.rename(src, dst)
            fsync_dir(target)
            fsync_dir(packs_dir)
            moved.append(f"{FOLDER}/{dst.name}")
    except OSError as exc:
        raise from_os_error(exc, f"moving pack {pack_id} to quarantine") from None
    return moved


def quarantined(packs_dir: Path) -> list[str]:
    """Names of the files in quarantine, relative to ``packs_dir`` (sorted)."""
    try:
        return sorted(f"{FOLDER}/{n}" for n in os.listdir(packs_dir / FOLDER))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise from_os_error(exc, "listing the quarantine") from None
