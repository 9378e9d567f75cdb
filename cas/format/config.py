"""The store config: format version, store identity, and the parameters that are part of the
format.

``config.json`` at the top of a store is written by ``init`` and rewritten only by ``upgrade``.
A store whose format name or version this build does not know is refused with ``E_FORMAT``
before anything else is read, and so is a store that lists a required feature this build does
not know (``features``). Keys this build does not know are optional by definition: they are
accepted, and ``upgrade`` carries them over when it rewrites the file.

The file is sealed: its ``checksum`` field is the BLAKE3 of the canonical encoding of the other
fields (:mod:`cas.format.canonical`), so an edit or damage that leaves valid JSON (a misspelled
key read as an unknown optional one, a changed parameter) is refused with ``E_VERIFY`` instead
of being reinterpreted. Configs written before the checksum existed have none and keep opening,
but must then hold every field their version defines (a misspelled key leaves one missing);
``upgrade`` seals them.

Versions: 1 (cas 0.1); 2 added derived chunks (pack codec 3, see :mod:`cas.derive`); 3 added
the store UUID and the ``features`` list, the evolution rule in ``docs/format.md``. Versions 1
and 2 are still read and written as they are; ``cas upgrade`` brings them to 3.

Mutable settings (description, restore window...) live apart, in :mod:`cas.settings`.
"""

from __future__ import annotations

import uuid as uuid_mod

import msgspec

from cas.chunking import ChunkerParams
from cas.errors import FormatError, SchemaError, VerifyError
from cas.format.canonical import CHECKSUM, checksum

FORMAT_NAME = "cas-store"
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = frozenset({1, 2, 3})

#: Required features a store may list that this build understands. A reader refuses a store
#: that lists any other (``E_FORMAT``): it could misread data written with it.
FEATURE_DERIVED = "derived-chunks"
KNOWN_FEATURES = frozenset({FEATURE_DERIVED})

#: Fields every writer of a version has written (so a config without a checksum that lacks
#: one was damaged or mistyped): top level, and in ``compression``.
_ALWAYS = ("format", "version", "hash", "chunker", "compression", "pack_target_bytes",
           "created_at")
_ALWAYS_V3 = (*_ALWAYS, "uuid", "features")
_COMPRESSION_ALWAYS = ("codec", "level")
_COMPRESSION_ALWAYS_V3 = (*_COMPRESSION_ALWAYS, "derive")


class CompressionParams(msgspec.Struct, frozen=True):
    codec: str = "zstd"
    level: int = 1
    #: Store fine-tuned and dtype-converted tensors as residuals against their base version
    #: (codec 3, see cas.derive). Only in format version 2 and later; ``init`` sets it.
    derive: bool = False


def new_store_id() -> str:
    """A random store UUID (version 4), as 32 lowercase hex digits with dashes."""
    return str(uuid_mod.uuid4())


class StoreConfig(msgspec.Struct, frozen=True):
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    #: Random identity of the store, fixed at creation (version 3; empty in older stores).
    uuid: str = ""
    #: Required features readers must understand (version 3).
    features: list[str] = []
    hash: str = "blake3-256"
    chunker: ChunkerParams = ChunkerParams()
    compression: CompressionParams = CompressionParams()
    #: Pack files are closed once they reach this many bytes.
    pack_target_bytes: int = 256 * 1024 * 1024
    created_at: str = ""

    @property
    def derives(self) -> bool:
        """True if writers may store derived chunks: a version-1 store never holds one."""
        if self.version >= 3:
            return FEATURE_DERIVED in self.features and self.compression.derive
        return self.version >= 2 and self.compression.derive

    def encode(self) -> bytes:
        """``config.json`` as ``init`` writes it: every field, then ``checksum``."""
        return seal(msgspec.to_builtins(self))

    @classmethod
    def create(cls, *, derive: bool, created_at: str, chunker: ChunkerParams | None = None
               ) -> StoreConfig:
        """The config of a new store of the current version (``chunker``: another store's
        parameters, for a store made to sync with it)."""
        return cls(uuid=new_store_id(), features=[FEATURE_DERIVED] if derive else [],
                   chunker=chunker or ChunkerParams(),
                   compression=CompressionParams(derive=derive), created_at=created_at)

    @classmethod
    def decode(cls, data: bytes) -> StoreConfig:
        """Parse config.json; refuse unknown formats, versions and required features, then
        check the fields, then the checksum (or, in a config without one, that it holds exactly
        the fields of its version).

        Raises:
            FormatError: not a cas store config, or one this build cannot read.
            SchemaError: a cas store config with malformed or missing fields.
            VerifyError: the config does not match its checksum (edited or damaged).
        """
        raw = _raw(data)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise FormatError("not a cas store config (format field missing or wrong)")
        version = raw.get("version")
        if type(version) is not int or version < 1:
            raise SchemaError(f"store config: version {version!r} is not a format version")
        if version not in SUPPORTED_VERSIONS:
            raise FormatError(
                f"store format version {version!r} is not supported by this cas "
                f"(supports {sorted(SUPPORTED_VERSIONS)}); upgrade cas"
            )
        features = raw.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise SchemaError("store config: features must be a list of strings")
        unknown = sorted(f for f in features if f not in KNOWN_FEATURES)
        if unknown:
            raise FormatError(f"store requires features this cas does not know: "
                              f"{', '.join(unknown)}; upgrade cas")
        try:
            cfg = msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"store config: {exc}") from None
        cfg.chunker.validate()
        if cfg.hash != "blake3-256":
            raise FormatError(f"store hash {cfg.hash!r} is not supported")
        if cfg.compression.codec != "zstd":
            raise FormatError(f"store compression {cfg.compression.codec!r} is not supported")
        if cfg.version >= 3:
            try:
                uuid_mod.UUID(cfg.uuid)
            except ValueError:
                raise SchemaError(f"store config: uuid {cfg.uuid!r} is not a UUID") from None
        if CHECKSUM in raw:
            _check_seal(raw)
        else:
            _check_unsealed(raw, cfg.version)
        return cfg


def seal(doc: dict[str, object]) -> bytes:
    """``doc`` (a config's fields) as the bytes of a sealed config.json: indented JSON with
    ``checksum`` last."""
    doc = {k: v for k, v in doc.items() if k != CHECKSUM}
    doc[CHECKSUM] = checksum(doc)
    return msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"


def _check_seal(raw: dict[str, object]) -> None:
    expected = raw[CHECKSUM]
    try:
        actual = checksum(raw)
    except SchemaError as exc:
        raise SchemaError(f"store config: {exc.message}") from None
    if expected != actual:
        raise VerifyError(
            "config.json does not match its checksum: it was edited or damaged. Restore it "
            "from a backup or undo the edit (a store's format parameters never change); if "
            "the file is right as it is, delete its \"checksum\" line and run 'cas upgrade' "
            "to seal it again",
            expected=str(expected), actual=actual)


def _check_unsealed(raw: dict[str, object], version: int) -> None:
    """A config without a checksum was written before the checksum existed, when every
    writer wrote exactly the fields of its version: one missing or one unknown is a
    misspelled or damaged key, not a default to assume or an optional field to carry."""
    compression = raw.get("compression")
    expected = _ALWAYS_V3 if version >= 3 else _ALWAYS
    expected_compression = _COMPRESSION_ALWAYS_V3 if version >= 3 else _COMPRESSION_ALWAYS
    missing = [k for k in expected if k not in raw]
    unknown = [k for k in raw if k not in expected]
    if isinstance(compression, dict):
        missing += [f"compression.{k}" for k in expected_compression if k not in compression]
        # version 1 and 2 configs may say "derive" (2 added it; 1 ignores it)
        unknown += [f"compression.{k}" for k in compression
                    if k not in _COMPRESSION_ALWAYS_V3]
    if missing or unknown:
        what = "; ".join(part for part in (
            f"{', '.join(map(repr, missing))} missing" if missing else "",
            f"unknown {', '.join(map(repr, unknown))}" if unknown else "") if part)
        raise SchemaError(
            f"store config: {what} (a misspelled key?); a config.json without a checksum must "
            "hold exactly the fields of its version: fix it, then run 'cas upgrade' to seal it")


def _raw(data: bytes) -> object:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise SchemaError(f"store config is not valid JSON: {exc}") from None
    except RecursionError:
        raise SchemaError("store config JSON nests too deeply") from None


def upgraded(data: bytes) -> tuple[bytes, StoreConfig]:
    """The config of an older store brought to the current version, as bytes and record.

    Keys this build does not know are carried over unchanged; the store gets a new UUID; a
    version-2 store that derives gets the ``derived-chunks`` feature; a version-1 store never
    derives. A current config without a checksum is sealed (nothing else changes); a sealed
    one is returned as it is. Raises what :meth:`StoreConfig.decode` raises.
    """
    old = StoreConfig.decode(data)
    raw = _raw(data)
    assert isinstance(raw, dict)
    if old.version == FORMAT_VERSION:
        if CHECKSUM in raw:
            return data, old
    else:
        derive = old.derives
        raw["version"] = FORMAT_VERSION
        raw["uuid"] = new_store_id()
        raw["features"] = [FEATURE_DERIVED] if derive else []
        compression = raw.get("compression") if isinstance(raw.get("compression"), dict) else {}
        raw["compression"] = {**compression, "derive": derive}
    out = seal(raw)
    return out, StoreConfig.decode(out)
