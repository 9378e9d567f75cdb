"""Mutable store settings: ``<store>/settings.json``, apart from the immutable format config.

A setting is a named, typed value with a default; this module is the one table of them.
``cas config get|set|list`` reads and writes them; ``set`` validates the value, takes the store
write lock and replaces the file atomically (temp, fsync, rename, directory fsync), so a reader
sees either the old file or the new one. A missing file means every setting is at its default.

Keys this build does not know (written by a newer cas on the same store) are kept as they are
when the file is rewritten and listed by ``config list``; ``set`` refuses them, since this build
cannot validate them.

The file is sealed like ``config.json``: ``set`` writes a ``checksum`` field (the BLAKE3 of the
canonical encoding of the other keys, :mod:`cas.format.canonical`), and a file that does not
match it (a hand edit, a misspelled key that would silently mean "default", damage) is refused
with ``E_VERIFY`` naming the file. A file without a checksum (written before it existed, when
every writer knew every key) is read as before, except that an unknown key in it is refused as
a misspelling (``E_SCHEMA``); the next ``set`` seals it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from cas.errors import ArgsError, SchemaError, VerifyError, from_os_error
from cas.format.canonical import CHECKSUM, checksum
from cas.storage import ANY, Backend

FILE = "settings.json"
#: At most 15 digits: int() of thousands of digits raises ValueError, not ArgsError.
_DURATION = re.compile(r"\s*(\d{1,15})\s*([smhdw]?)\s*\Z")
#: Longest duration a setting takes (dates beyond it overflow the calendar).
MAX_DURATION = 100 * 366 * 86400
_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``14d``, ``36h``, ``2w``, ``90m``, ``0`` (a bare number is days) -> seconds.

    Raises:
        ArgsError: anything else.
    """
    m = _DURATION.match(str(text))
    if not m:
        raise ArgsError(f"{text!r} is not a duration (e.g. 14d, 36h, 2w, 0)")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds > MAX_DURATION:
        raise ArgsError(f"{text!r} is longer than 100 years")
    return seconds


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*\Z", re.I)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """``500000000``, ``20G``, ``1.5TiB``, ``800MB`` -> bytes (K, M, G, T, P and KiB... are
    powers of 1024; KB, MB, ... of 1000).

    Raises:
        ArgsError: anything else.
    """
    m = _SIZE.match(str(text))
    if not m:
        raise ArgsError(f"{text!r} is not a size (e.g. 500000000, 20G, 1.5TiB, 800MB)")
    number, unit, suffix = float(m.group(1)), m.group(2).lower(), m.group(3).lower()
    base = 1000 if suffix == "b" and unit else 1024
    return int(number * base ** _POW[unit])


def format_duration(seconds: int) -> str:
    """The largest exact unit up to days: ``1209600`` -> ``14d``, ``5400`` -> ``90m``."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def _description(value: str) -> str:
    value = str(value)
    if len(value) > 200 or any(ord(c) < 32 for c in value):
        raise ArgsError("description must be one line of at most 200 characters")
    return value


def _duration(value: str) -> str:
    return format_duration(parse_duration(value))


def _streams(value: str) -> str:
    text = str(value).strip().lower()
    if text == "auto":
        return text
    if not text.isdigit() or not 1 <= int(text) <= 16:
        raise ArgsError(f"{value!r}: give a number of streams from 1 to 16, or auto")
    return str(int(text))


def _quota(value: str) -> str:
    text = str(value).strip()
    if text.lower() in ("", "none", "off"):
        return "none"
    return str(parse_size(text))


def quota_bytes(value: str) -> int | None:
    """The ``quota`` setting in bytes (None: no quota)."""
    return None if value == "none" else int(value)


def transfer_streams(value: str) -> int:
    """The number of parallel streams a ``transfer_streams`` value means here."""
    import os

    return min(4, os.cpu_count() or 1) if value == "auto" else int(value)


@dataclass(frozen=True)
class Setting:
    """One known setting: its default and the function that validates and normalises a value
    given as text (raising ArgsError)."""

    key: str
    default: str
    normalise: Callable[[str], str]
    help: str


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("description", "", _description,
            "a human description of this store, shown in listings of stores"),
    Setting("restore_window", "14d", _duration,
            "how long removed versions can be brought back with 'cas restore' "
            "(garbage collection keeps their data that long)"),
    Setting("quota", "none", _quota,
            "the most bytes the store folder may hold: every gc drops the least recently "
            "used versions that have copies elsewhere to stay under it (e.g. 200G; none)"),
    Setting("transfer_streams", "auto", _streams,
            "parallel connections a large push, pull or clone over ssh or http uses (1-16; "
            "auto: the number of CPUs, at most 4)"),
)}


class Settings:
    """The settings of one store: known keys with their values, plus unknown keys carried."""

    def __init__(self, path: Path, values: dict[str, object]) -> None:
        self.path = path
        self.values = values

    @classmethod
    def load(cls, store_path: Path, backend: Backend) -> Settings:
        """Read ``settings.json`` of the store at ``store_path`` from its ``backend`` (absent:
        all defaults).

        Raises:
            SchemaError: the file is not a JSON object of settings (named in the message).
            VerifyError: the file does not match its checksum (edited or damaged).
        """
        path = store_path / FILE
        try:
            data = backend.read(FILE)
        except FileNotFoundError:
            return cls(path, {})
        except OSError as exc:
            raise from_os_error(exc, f"reading {path}") from None
        return cls.parse(path, data)

    @classmethod
    def parse(cls, path: Path, data: bytes) -> Settings:
        """The settings held by ``data``, the bytes of the file ``path`` (named in errors).

        Raises:
            SchemaError | VerifyError: as :meth:`load`.
        """
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"{path}: not valid JSON ({exc}); fix or delete it") from None
        except RecursionError:
            raise SchemaError(f"{path}: JSON nests too deeply; fix or delete it") from None
        if not isinstance(raw, dict):
            raise SchemaError(f"{path}: not a JSON object; fix or delete it")
        if CHECKSUM in raw:
            try:
                actual = checksum(raw)
            except SchemaError as exc:
                raise SchemaError(f"{path}: {exc.message}; fix or delete it") from None
            if raw.pop(CHECKSUM) != actual:
                raise VerifyError(
                    f"{path} does not match its checksum: it was edited or damaged. Undo the "
                    "edit and change settings with 'cas config set'; if the file is right as "
                    "it is, delete its \"checksum\" line (the next 'cas config set' seals it "
                    "again)", actual=actual)
        else:
            # Written before the checksum existed, when every writer knew every key: an
            # unknown one is misspelled, and would silently leave its setting at the default.
            unknown = sorted(k for k in raw if k not in SETTINGS)
            if unknown:
                raise SchemaError(
                    f"{path}: unknown setting {', '.join(map(repr, unknown))} (misspelled? "
                    f"known: {', '.join(SETTINGS)}); fix or delete it")
        for key, setting in SETTINGS.items():
            if key in raw:
                try:
                    setting.normalise(raw[key])  # type: ignore[arg-type]
                except ArgsError as exc:
                    raise SchemaError(f"{path}: {key}: {exc}; fix or delete it") from None
        return cls(path, raw)

    def get(self, key: str) -> str:
        """The value of a known setting, or its default.

        Raises:
            ArgsError: an unknown key.
        """
        setting = _known(key)
        value = self.values.get(key)
        return setting.default if value is None else setting.normalise(str(value))

    def restore_window_seconds(self) -> int:
        return parse_duration(self.get("restore_window"))

    def listing(self) -> dict[str, dict[str, object]]:
        """Every setting: ``{key: {"value", "default", "set", "known"}}``, known keys first."""
        out: dict[str, dict[str, object]] = {}
        for key, setting in SETTINGS.items():
            out[key] = {"value": self.get(key), "default": setting.default,
                        "set": key in self.values, "known": True}
        for key, value in sorted(self.values.items()):
            if key not in SETTINGS:
                out[key] = {"value": value, "default": None, "set": True, "known": False}
        return out

    def set(self, key: str, value: str | None, backend: Backend) -> str | None:
        """Set (or with ``value=None`` reset to its default) a known setting and write the
        file atomically. The caller holds the store write lock. Returns the stored value.

        Raises:
            ArgsError: unknown key or invalid value.
            DiskError | PermError: the file could not be written (it is unchanged).
        """
        setting = _known(key)
        values = dict(self.values)
        if value is None:
            values.pop(key, None)
            stored = None
        else:
            stored = setting.normalise(value)
            values[key] = stored
        try:
            backend.swap(FILE, ANY, encode(values))
        except OSError as exc:
            raise from_os_error(exc, f"writing {self.path}") from None
        self.values = values
        return stored


def encode(values: dict[str, object]) -> bytes:
    """``settings.json`` holding ``values``: indented JSON with ``checksum`` last."""
    doc = {k: v for k, v in values.items() if k != CHECKSUM}
    doc[CHECKSUM] = checksum(doc)
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def _known(key: str) -> Setting:
    try:
        return SETTINGS[key]
    except KeyError:
        raise ArgsError(f"unknown setting {key!r} (known: {', '.join(SETTINGS)})") from None
