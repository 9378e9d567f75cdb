"""The store config: format version and the parameters that are part of the format.

``config.json`` at the top of a store is written once by ``init``. A store whose format name or
version this build does not know is refused with ``E_FORMAT`` before anything else is read.

Version 2 added derived chunks (pack codec 3, see :mod:`cas.derive`): a version-2 store may hold
them, so readers that only know version 1 must refuse it. Version-1 stores are still read and
written, and never get derived chunks.
"""

from __future__ import annotations

import msgspec

from cas.chunking import ChunkerParams
from cas.errors import FormatError, SchemaError

FORMAT_NAME = "cas-store"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = frozenset({1, 2})


class CompressionParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    codec: str = "zstd"
    level: int = 1
    #: Store fine-tuned and dtype-converted tensors as residuals against their base version
    #: (codec 3, see cas.derive). Only in format version 2; ``init`` sets it.
    derive: bool = False


class StoreConfig(msgspec.Struct, frozen=True):
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    hash: str = "blake3-256"
    chunker: ChunkerParams = ChunkerParams()
    compression: CompressionParams = CompressionParams()
    #: Pack files are closed once they reach this many bytes.
    pack_target_bytes: int = 256 * 1024 * 1024
    created_at: str = ""

    @property
    def derives(self) -> bool:
        """True if writers may store derived chunks: a version-1 store never holds one."""
        return self.version >= 2 and self.compression.derive

    def encode(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2) + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> StoreConfig:
        """Parse config.json; refuse unknown formats and versions."""
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise SchemaError(f"store config is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise FormatError("not a cas store config (format field missing or wrong)")
        if raw.get("version") not in SUPPORTED_VERSIONS:
            raise FormatError(
                f"store format version {raw.get('version')!r} is not supported by this cas "
                f"(supports {sorted(SUPPORTED_VERSIONS)}); upgrade cas"
            )
        try:
            cfg = msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise SchemaError(f"store config: {exc}") from None
        cfg.chunker.validate()
        if cfg.hash != "blake3-256":
            raise FormatError(f"store hash {cfg.hash!r} is not supported")
        if cfg.compression.codec != "zstd":
            raise FormatError(f"store compression {cfg.compression.codec!r} is not supported")
        return cfg
