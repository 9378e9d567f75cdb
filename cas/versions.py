"""What the registry knows about versions: the records one walk of a model's history builds.

A version has three names. Its **id** (:attr:`Version.id`) is chosen when it is created and
never changes: annotate, rm/restore and a later rebase keep it, and other stores, lock files,
bundles and pins name the version by it. Its **sequence number** is a local, human
convenience (``NAME@3``). Its **commit** is the registry commit that added it here. A version
registered before ids existed has no ``Cas-Id`` trailer: its id is its add commit (40 hex
characters). See ``docs/format.md``, Registry.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_VERSION_ID = re.compile(r"[0-9a-f]{32}(?:[0-9a-f]{8})?\Z")


def new_version_id() -> str:
    """A new version id: 128 random bits as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def is_version_id(text: object) -> bool:
    """True for a version id: 32 lowercase hex (made by ``add``) or 40 (the add commit of a
    version registered before ids existed)."""
    return isinstance(text, str) and _VERSION_ID.match(text) is not None


@dataclass(frozen=True, slots=True)
class Version:
    """One registered version of a model. ``commit`` is the commit that added it (tags point
    at it); ``id`` is the version's stable id (the ``Cas-Id`` of that commit, else the
    commit itself). Built with ``id`` left empty, the commit is taken."""

    name: str
    seq: int
    commit: str
    author: str
    timestamp: int
    message: str
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.commit)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.seq}"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One commit of a model's history.

    ``versions`` are the sequence numbers it affects; ``tags`` are ``(tag, seq)`` pairs that an
    ``rm`` deleted or a ``restore`` brought back (or a ``tag``/``untag`` set or deleted);
    ``pins`` are ``(scope, seq)`` pairs of the pins an ``rm`` deleted or a ``restore`` brought
    back; ``id`` is the version id an ``add`` recorded (None before ids existed).
    """

    action: str
    versions: tuple[int, ...]
    tags: tuple[tuple[str, int], ...]
    commit: str
    parent: str | None
    author: str
    timestamp: int
    message: str
    id: str | None = None
    pins: tuple[tuple[str, int], ...] = ()

    @property
    def seq(self) -> int:
        return self.versions[0]

    @property
    def version_id(self) -> str:
        """For an ``add``: the id of the version it added."""
        return self.id or self.commit


@dataclass(frozen=True, slots=True)
class RemovedVersion:
    """A version an ``rm`` took out of the model's tip: what ``restore`` can bring back."""

    version: Version
    removed_at: int
    removed_by: str
    removal_commit: str
    #: Blob id of the manifest as it was when removed.
    blob: str
    #: Tags the removal deleted.
    tags: tuple[str, ...]
    #: Position of the removal commit in the history, 0 being the newest commit.
    removal_index: int = 0
    #: Scopes of the pins the removal deleted (``all`` or a store UUID).
    pins: tuple[str, ...] = ()


@dataclass
class ModelState:
    """Everything one walk of a model's history tells: live versions, removed ones, events."""

    name: str
    head: bytes
    live: dict[int, bytes]
    added: dict[int, HistoryEntry]
    removed: dict[int, RemovedVersion]
    history: list[HistoryEntry]

    def version(self, seq: int) -> Version:
        h = self.added[seq]
        return Version(self.name, seq, h.commit, h.author, h.timestamp, h.message,
                       h.version_id)

    def live_versions(self) -> list[Version]:
        return [self.version(seq) for seq in sorted(self.live) if seq in self.added]

    def seq_of_id(self, version_id: str) -> int | None:
        """The sequence number of the version whose id is ``version_id``, live or removed."""
        for seq, h in self.added.items():
            if h.version_id == version_id:
                return seq
        return None

    def matching(self, prefix: str) -> list[int]:
        """Sequence numbers of the versions whose id or add commit starts with ``prefix``
        (lowercase hex), sorted."""
        return sorted(seq for seq, h in self.added.items()
                      if h.version_id.startswith(prefix) or h.commit.startswith(prefix))
