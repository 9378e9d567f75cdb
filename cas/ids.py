"""Object ids: BLAKE3-256 digests of content, and their hex spelling.

An id is always 32 raw bytes inside the store and 64 lowercase hex characters at every boundary
(manifests, CLI, JSON). :func:`parse_hex` is the one place where user or manifest text becomes an
id, so a wrong length or a stray character is refused in one way everywhere.
"""

from __future__ import annotations

import blake3

from cas.errors import ArgsError, SchemaError

ID_LEN = 32
HEX_LEN = 2 * ID_LEN
_HEX = frozenset("0123456789abcdef")


def blake3_id(data: bytes | bytearray | memoryview) -> bytes:
    """Return the 32-byte BLAKE3 digest of ``data``."""
    return blake3.blake3(data).digest()


def is_hex(text: str, length: int = HEX_LEN) -> bool:
    """True if ``text`` is exactly ``length`` lowercase hex characters."""
    return len(text) == length and set(text) <= _HEX


def parse_hex(text: str, *, what: str = "object id", user_input: bool = False) -> bytes:
    """Parse a full-length hex id.

    Args:
        text: 64 hex characters (upper case is accepted from users, never from manifests).
        what: what the id names, for the error message.
        user_input: if True errors are ``E_ARGS`` (the user typed it), else ``E_SCHEMA``
            (a stored record carried it).

    Raises:
        ArgsError | SchemaError: wrong length or a non-hex character.
    """
    err = ArgsError if user_input else SchemaError
    if not isinstance(text, str):
        raise err(f"{what} must be a hex string, got {type(text).__name__}")
    candidate = text.lower() if user_input else text
    if not is_hex(candidate):
        raise err(f"{what} must be {HEX_LEN} lowercase hex characters, got {text[:80]!r}")
    return bytes.fromhex(candidate)

