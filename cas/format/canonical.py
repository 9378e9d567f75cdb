"""Canonical JSON and the checksum that seals a JSON record against edits and damage.

``config.json`` and ``settings.json`` carry a ``checksum`` field: the hex BLAKE3-256 of the
canonical encoding of the record without that field. The canonical encoding is RFC 8785 (JSON
Canonicalization Scheme): no whitespace, object members sorted by the UTF-16 code units of
their names, strings with only ``"``, ``\\`` and control characters escaped (``\\b \\f \\n \\r
\\t`` short, others ``\\u00xx``), numbers as ECMAScript writes them, with one difference:
integers are written exactly, in decimal, whatever their size (RFC 8785 would round those
beyond 2**53 through a double; no record here holds one). So any implementation of RFC 8785
reproduces the checksum of any record cas writes, whatever its whitespace and member order.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from decimal import Decimal

import blake3

from cas.errors import SchemaError

if TYPE_CHECKING:
    from cas.storage import Backend

CHECKSUM = "checksum"
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
          "\t": "\\t"}


def canonical_json(value: object) -> bytes:
    """The RFC 8785 encoding of a decoded JSON value (see the module docstring).

    Raises:
        SchemaError: a value JSON cannot hold (a lone surrogate, a non-finite number), or
            nesting too deep to walk.
    """
    out: list[str] = []
    try:
        _write(value, out)
        return "".join(out).encode("utf-8")
    except RecursionError:
        raise SchemaError("JSON nests too deeply") from None
    except UnicodeEncodeError:
        raise SchemaError("JSON holds a string that is not valid Unicode") from None


def checksum(doc: dict[str, object]) -> str:
    """The hex BLAKE3-256 of the canonical encoding of ``doc`` without its ``checksum``
    member. Raises what :func:`canonical_json` raises."""
    return blake3.blake3(canonical_json(
        {k: v for k, v in doc.items() if k != CHECKSUM})).hexdigest()


def _write(value: object, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be"))):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    else:  # pragma: no cover - decoded JSON holds nothing else
        raise TypeError(f"not a JSON value: {type(value).__name__}")


def _string(s: str) -> str:
    parts = ['"']
    for ch in s:
        if ch in _SHORT:
            parts.append(_SHORT[ch])
        elif ch < " ":
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def _number(x: float) -> str:
    """ECMAScript's Number::toString (shortest round-trip digits; RFC 8785, 3.2.2.3)."""
    if not math.isfinite(x):
        raise SchemaError("JSON holds a number that is not finite")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    t = Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, t.digits)).rstrip("0") or "0"
    k = len(digits)
    n = len(t.digits) + int(t.exponent)  # x = 0.d1d2...dk * 10**n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        e = n - 1
        body = digits[0] + ("." + digits[1:] if k > 1 else "") + \
            "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + body


def sealed(magic: bytes, body: bytes) -> bytes:
    """A derived binary file: 8-byte ``magic``, ``body``, then the BLAKE3-256 of ``body``."""
    return magic + body + blake3.blake3(body).digest()


def unsealed(magic: bytes, raw: bytes) -> bytes | None:
    """The body of a :func:`sealed` file, or None if its magic or checksum is wrong."""
    if len(raw) < len(magic) + 32 or raw[: len(magic)] != magic:
        return None
    body = raw[len(magic) : -32]
    return body if blake3.blake3(body).digest() == raw[-32:] else None


def read_sealed_doc(backend: Backend, name: str, schema: str, version: int, hint: str
                    ) -> dict[str, object] | None:
    """The members of the sealed JSON document ``name`` (``schema``, ``version``, members,
    ``checksum``), None if the file is absent. ``hint``: how to change it instead of editing.

    Raises:
        SchemaError: not such a document.
        VerifyError: it does not match its checksum (edited by hand or damaged).
        DiskError | PermError: it cannot be read.
    """
    import msgspec

    from cas.errors import VerifyError, from_os_error

    try:
        raw = backend.read(name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise from_os_error(exc, f"reading {name}") from None
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise SchemaError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema or doc.get("version") != version:
        raise SchemaError(f"{name}: not a version-{version} {schema} document")
    if doc.get(CHECKSUM) != checksum(doc):
        raise VerifyError(f"{name} does not match its checksum: it was edited or damaged; "
                          f"{hint}")
    return doc


def write_sealed_doc(backend: Backend, name: str, schema: str, version: int,
                     members: dict[str, object]) -> None:
    """Replace ``name`` with a sealed JSON document of ``members`` (indented; compare-and-swap
    with any previous value, so readers see the old file or the new one)."""
    import msgspec

    from cas.errors import from_os_error
    from cas.storage import ANY

    doc: dict[str, object] = {"schema": schema, "version": version, **members}
    doc[CHECKSUM] = checksum(doc)
    body = msgspec.json.format(msgspec.json.encode(doc), indent=2) + b"\n"
    try:
        backend.swap(name, ANY, body)
    except OSError as exc:
        raise from_os_error(exc, f"writing {name}") from None
