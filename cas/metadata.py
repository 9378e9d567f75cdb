"""Model metadata from weight-file headers: format, architecture, parameters, dtypes, quantization.

:func:`detect_format` names the format of one file; :func:`describe` summarises a model made of
several files (a directory snapshot or one single file).

Invariants:

* Streaming: only headers are read. A safetensors file costs 8 bytes plus its JSON header; a GGUF
  file costs its key/value section and tensor-info table, read through a buffered file object.
  Tensor data is never read, and large GGUF arrays (tokenizer vocabularies) are skipped element by
  element, never kept in memory.
* Bounded: a safetensors header over 100 MiB, a GGUF with more than 1e6 tensors or key/value
  pairs, a GGUF string over 64 MiB, or any count that cannot fit in the rest of the file is
  malformed. ``config.json`` is read only when it is under 1 MiB.
* Total: :func:`describe`, :func:`detect_format` and the per-file helpers never raise on bad
  or unreadable input. Malformed headers leave the affected fields ``None`` (or empty) and are
  reported by :func:`describe` (file and reason); they never abort the whole description.
* Checked: a header is believed only if it is consistent with the file. A safetensors header
  must give each tensor exactly ``product(shape) x dtype size`` bytes, and its tensors must tile
  the data section (no overlap, no hole, nothing past the end), as the safetensors library
  requires. A GGUF tensor's data (``product(dims)`` elements, in whole blocks for quantized
  types) must start at a multiple of the alignment, lie inside the file and overlap no other
  tensor. For a dtype or ggml type this module does not know, only "at least one bit per
  element" can be checked against the bytes available to the tensor.
* Quiet: nothing is printed and the process is never exited.
* Layouts: :func:`safetensors_layout` and :func:`gguf_layout` read a header through a
  byte-range reader (a stored file, not a path) with the same checks, and say where each
  tensor lies; they raise :class:`HeaderError` for a malformed header and let the reader's own
  errors through.
* Deterministic: the result depends only on the bytes of the files and their relative paths.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib
import stat as stat_mod
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final

__all__ = ["GgufLayout", "HeaderError", "ReadAt", "SafetensorsLayout", "Tensor", "describe",
           "detect_format", "format_of", "gguf_layout", "safetensors_layout"]

MAX_SAFETENSORS_HEADER: Final = 100 * 1024 * 1024
MAX_GGUF_COUNT: Final = 1_000_000
MAX_GGUF_STRING: Final = 64 * 1024 * 1024
MAX_GGUF_DIMS: Final = 8
MAX_GGUF_ARRAY_DEPTH: Final = 8
MAX_CONFIG_BYTES: Final = 1024 * 1024

# Weight formats in tie-break priority order (first wins when byte totals are equal).
WEIGHT_FORMATS: Final = ("safetensors", "gguf", "pytorch", "onnx")
_PYTORCH_SUFFIXES: Final = frozenset({".bin", ".pt", ".pth", ".ckpt"})

#: Opening a FIFO for reading would wait for a writer; a regular file ignores the flag.
_O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")

GGML_TYPES: Final[dict[int, str]] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip

#: Bytes of each ggml type: ``(elements per block, bytes per block)`` (gguf-py's
#: GGML_QUANT_SIZES). A quantized tensor's first dimension is a whole number of blocks.
GGML_BLOCKS: Final[dict[int, tuple[int, int]]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18),
    21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4),
    27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66),
    39: (32, 17),
}  # fmt: skip

#: Bits per element of each safetensors dtype (the safetensors library's list).
SAFETENSORS_BITS: Final[dict[str, int]] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
    "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64,
    "U64": 64,
}  # fmt: skip

GGUF_FILE_TYPES: Final[dict[int, str]] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip

# GGUF value type id -> struct for scalars (type 8 is string, 9 is array).
_GGUF_SCALARS: Final[dict[int, struct.Struct]] = {
    0: struct.Struct("<B"), 1: struct.Struct("<b"), 2: struct.Struct("<H"), 3: struct.Struct("<h"),
    4: struct.Struct("<I"), 5: struct.Struct("<i"), 6: struct.Struct("<f"), 7: struct.Struct("<?"),
    10: struct.Struct("<Q"), 11: struct.Struct("<q"), 12: struct.Struct("<d"),
}  # fmt: skip
_GGUF_INT_TYPES: Final = frozenset({0, 1, 2, 3, 4, 5, 10, 11})
#: Element sizes of the float dtypes whose bytes are worth grouping (see cas.bytegroup).
_FLOAT_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_GGUF_DEFAULT_ALIGNMENT: Final = 32
#: ggml types whose bytes are worth grouping: F32, F16, BF16, F64 (quantized blocks are not).
_GGUF_FLOAT_SIZES: Final[dict[int, int]] = {0: 4, 1: 2, 30: 2, 28: 8}
_GGUF_STRING: Final = 8
_GGUF_ARRAY: Final = 9
_GGUF_MIN_STRING: Final = 8  # u64 length of an empty string
_GGUF_MIN_ARRAY: Final = 12  # u32 element type + u64 count
_GGUF_MIN_KV: Final = 8 + 4 + 1  # empty key, type, smallest value
_GGUF_MIN_TENSOR: Final = 8 + 4 + 4 + 8  # empty name, n_dims, type, offset
_GGUF_SKIP_BY_READ: Final = 64 * 1024  # skip shorter spans by reading (stays in the buffer)


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor of a safetensors or GGUF file (for GGUF, ``dtype`` is the ggml type name and
    ``shape`` the dimensions as stored)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class _Malformed(Exception):
    """A header is truncated, inconsistent or exceeds a bound."""


class HeaderError(ValueError):
    """A weight file's header is malformed, inconsistent with the file or over a bound; the
    message says why (as :func:`describe` reports it)."""


#: ``read_at(offset, n)``: the ``n`` bytes of a file at ``offset`` (fewer only at its end).
ReadAt = Callable[[int, int], bytes]


# Everything a hostile header can provoke while parsing; all of it means "malformed".
_PARSE_ERRORS: Final = (
    _Malformed, OSError, ValueError, OverflowError, struct.error, RecursionError, MemoryError,
)


@dataclass
class _Header:
    """What one weight file's header says."""

    parameter_count: int = 0
    dtypes: set[str] = field(default_factory=set)
    architecture: str | None = None
    quantization: str | None = None
    #: Absolute ``(start, end, element size)`` of float tensors (see float_ranges).
    float_ranges: list[tuple[int, int, int]] = field(default_factory=list)
    #: Every tensor (name, dtype, shape, absolute byte range).
    tensors: list[Tensor] = field(default_factory=list)
    #: safetensors: the ``__metadata__`` object ({} without one); GGUF: each key's absolute
    #: byte range (its value type and value).
    metadata: dict[str, Any] = field(default_factory=dict)


def format_of(head: bytes, size: int, name: str) -> str:
    """Name the format of a file from its first 16 bytes (``head``), its size and its name.

    The rules of :func:`detect_format`, for a caller that already holds the first bytes.
    """
    if not head:
        return "other"
    if head.startswith(b"GGUF"):
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{":
        (length,) = _U64.unpack_from(head)
        if 2 <= length <= size - 8:
            return "safetensors"
    suffix = os.path.splitext(name)[1].lower()
    if suffix in _PYTORCH_SUFFIXES and (head.startswith(b"PK\x03\x04") or head[0] == 0x80):
        return "pytorch"
    if suffix in (".safetensors", ".gguf"):
        return suffix[1:]
    if suffix == ".onnx":
        return "onnx"
    return "other"


def detect_format(path: pathlib.Path | str) -> str:
    """Name the format of one file, by magic bytes first, then by extension.

    Args:
        path: the file to inspect. Only its first 16 bytes are read.

    Returns:
        ``"gguf"`` for the ``GGUF`` magic; ``"safetensors"`` for a plausible u64 header length
        followed by ``{``; failing the magic, ``"safetensors"`` or ``"gguf"`` for those
        extensions (so that a damaged weight file is parsed, and reported, rather than taken for
        some other file); ``"pytorch"`` for a ``.bin``/``.pt``/``.pth``/``.ckpt`` file that
        starts as a zip or a pickle; ``"onnx"`` for a ``.onnx`` extension; otherwise
        ``"other"``. Missing, unreadable, non-regular and empty files are ``"other"``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | _O_NONBLOCK)
    except (OSError, ValueError):
        return "other"
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            return "other"
        head = os.read(fd, 16)
    except OSError:
        return "other"
    finally:
        os.close(fd)
    return format_of(head, st.st_size, os.fspath(path))


def describe(root: pathlib.Path, files: list[str],
             formats: Mapping[str, str] | None = None) -> dict[str, object]:
    """Describe the model made of ``files`` under ``root``.

    The model's format is the weight format holding the most bytes (ties broken in the order
    safetensors, gguf, pytorch, onnx), else ``"other"``. Parameter count and dtypes come from the
    headers of the files of that format (safetensors or GGUF only): the parameter count is the
    sum, over every tensor of every such file, of the product of the tensor's shape (a GGUF
    quantized tensor counts its elements, not its blocks or bytes; a tensor stored under two
    names, or in two files, counts twice, since it is stored twice). If any of those headers is
    malformed the parameter count is ``None`` and the dtypes are those of the sound files.

    Args:
        root: directory holding the files, or a single file (then it is the only file and
            ``files`` is ignored).
        files: relative POSIX paths under ``root``. Absolute paths, paths with ``..`` and
            duplicates are ignored. ``config.json`` is read only at the top level.
        formats: the format of some of the files (relative path -> :func:`format_of`), known
            already by a caller that read their first bytes; the others are sniffed.

    Returns:
        A dict with the keys ``format`` (str), ``architecture`` (str | None),
        ``parameter_count`` (int | None), ``dtypes`` (sorted list[str]), ``quantization``
        (str | None) and ``bad_headers``: ``(relative path, reason)`` of every safetensors or
        GGUF file whose header is unreadable, malformed or inconsistent with the file (such a
        file contributes nothing to the other fields).
    """
    root = pathlib.Path(root)
    entries = _entries(root, files)
    config: dict[str, object] | None = None
    by_format: dict[str, list[tuple[int, str, str]]] = {}
    bad: list[tuple[str, str]] = []
    for rel, path in entries:
        if rel == "config.json":
            config = _read_config(path)
        fmt = formats.get(rel) if formats is not None else None
        if fmt is None:
            fmt = detect_format(path)
        if fmt in WEIGHT_FORMATS:
            by_format.setdefault(fmt, []).append((_size(path), rel, path))
    for group in by_format.values():
        group.sort(key=lambda item: (-item[0], item[1]))  # largest first, then by path

    fmt = "other"
    if by_format:
        totals = {f: sum(size for size, _, _ in group) for f, group in by_format.items()}
        fmt = max(totals, key=lambda f: (totals[f], -WEIGHT_FORMATS.index(f)))

    parsed: dict[str, list[_Header]] = {}
    for kind in ("safetensors", "gguf"):
        for _, rel, path in sorted(by_format.get(kind, []), key=lambda item: item[1]):
            header = _parse_checked(kind, path)
            if isinstance(header, str):
                bad.append((rel, header))
            else:
                parsed.setdefault(kind, []).append(header)

    parameter_count: int | None = None
    dtypes: set[str] = set()
    weight_arch: str | None = None
    weight_quant: str | None = None
    if fmt in ("safetensors", "gguf"):
        known = parsed.get(fmt, [])
        for h in known:
            dtypes |= h.dtypes
        if len(known) == len(by_format[fmt]):
            parameter_count = sum(h.parameter_count for h in known)
        weight_arch = next((h.architecture for h in known if h.architecture), None)
        weight_quant = next((h.quantization for h in known if h.quantization), None)

    config_arch, config_quant = _config_fields(config)
    architecture = config_arch or weight_arch
    if architecture is None and fmt != "gguf":
        architecture = next((h.architecture for h in parsed.get("gguf", []) if h.architecture),
                            None)
    quantization = weight_quant if fmt == "gguf" and weight_quant else config_quant
    return {
        "format": fmt,
        "architecture": architecture,
        "parameter_count": parameter_count,
        "dtypes": sorted(dtypes),
        "quantization": quantization,
        "bad_headers": bad,
    }


def _entries(root: pathlib.Path, files: list[str]) -> list[tuple[str, str]]:
    """Pair each usable relative path with its path on disk, in a stable order.

    Args:
        root: directory or single file.
        files: relative POSIX paths.

    Returns:
        ``(normalised relative path, path)`` pairs, deduplicated and sorted.
    """
    try:
        if root.is_file():
            return [(root.name, str(root))]
    except (OSError, ValueError):
        return []
    base = str(root).rstrip("/") + "/"
    seen: dict[str, str] = {}
    for name in files:
        if not isinstance(name, str) or not name:
            continue
        if name.startswith(("/", ".")) or "//" in name or "/." in name or name.endswith("/"):
            parts = name.split("/")
            if name.startswith("/") or ".." in parts:
                continue
            name = "/".join(p for p in parts if p and p != ".")
            if not name:
                continue
        seen.setdefault(name, base + name)
    return sorted(seen.items())


def _size(path: str) -> int:
    """Return the size of ``path`` in bytes, or 0 if it cannot be stat'ed."""
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):
        return 0


#: Headers parsed in this process, keyed by what identifies the file's content (an add reads
#: each weight file's header for grouping, for derivation and to describe the model). A
#: malformed header is kept as the reason it was refused.
_PARSED: dict[tuple[str, str, int, int, int, int], _Header | str] = {}


def _parse_checked(fmt: str, path: pathlib.Path | str) -> _Header | str:
    """Parse one weight file's header; return it, or why it cannot be believed.

    A header already parsed for the same path, size, mtime, ctime and inode is not read again.

    Args:
        fmt: ``"safetensors"`` or ``"gguf"``.
        path: the weight file.

    Returns:
        The parsed header, or a one-line reason (malformed, inconsistent or unreadable).
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (fmt, str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            if key in _PARSED:
                return _PARSED[key]
            try:
                if fmt == "safetensors":
                    header: _Header | str = _read_safetensors(f, st.st_size)
                else:
                    header = _read_gguf(f, st.st_size)
            except _PARSE_ERRORS as exc:
                header = _reason(exc)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if len(_PARSED) >= 256:
        _PARSED.clear()
    _PARSED[key] = header
    return header


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Malformed):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "header is not UTF-8"
    if isinstance(exc, ValueError):
        return "header is not valid JSON"
    if isinstance(exc, RecursionError):
        return "header nests too deeply"
    if isinstance(exc, OSError):
        return f"unreadable: {exc.strerror or exc}"
    return f"malformed header ({type(exc).__name__})"


def _parse(fmt: str, path: pathlib.Path | str) -> _Header | None:
    """The parsed header of one weight file, or ``None`` if it cannot be believed."""
    header = _parse_checked(fmt, path)
    return None if isinstance(header, str) else header


def _is_uint(value: object) -> bool:
    """Return whether ``value`` is a JSON non-negative integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_safetensors(f: BinaryIO, size: int) -> _Header:
    """Read a safetensors header from the start of ``f`` and check it against the file.

    Args:
        f: binary file positioned at 0.
        size: total file size in bytes.

    Returns:
        Parameter count, dtypes and every tensor.

    Raises:
        _Malformed: the header is truncated, too large, not JSON, or inconsistent: a tensor's
            byte count is not ``product(shape) x dtype size``, or the tensors do not tile the
            data section exactly (overlap, hole, or past the end of the file).
    """
    raw = f.read(8)
    if len(raw) != 8:
        raise _Malformed("short safetensors length prefix")
    (length,) = _U64.unpack(raw)
    if length < 2 or length > MAX_SAFETENSORS_HEADER or length > size - 8:
        raise _Malformed(f"header length {length} does not fit the file")
    blob = f.read(length)
    if len(blob) != length:
        raise _Malformed("truncated header")
    header = json.loads(blob)  # ValueError / RecursionError are caught by the caller
    if not isinstance(header, dict):
        raise _Malformed("header is not a JSON object")
    data_len = size - 8 - length
    out = _Header()
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _Malformed(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or not dtype:
            raise _Malformed(f"tensor {name!r}: bad dtype")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise _Malformed(f"tensor {name!r}: bad shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_uint, offsets))):
            raise _Malformed(f"tensor {name!r}: bad data_offsets")
        begin, end = offsets
        if not begin <= end <= data_len:
            raise _Malformed(f"tensor {name!r}: data_offsets [{begin}, {end}] outside the "
                             f"{data_len} data bytes of the file")
        count = math.prod(shape)
        bits = SAFETENSORS_BITS.get(dtype)
        if bits is not None and count * bits != 8 * (end - begin):
            raise _Malformed(f"tensor {name!r}: shape {shape} of {dtype} needs "
                             f"{count * bits / 8:g} bytes, data_offsets give {end - begin}")
        if bits is None and count > 8 * (end - begin):
            raise _Malformed(f"tensor {name!r}: shape {shape} has more elements than the "
                             f"{end - begin} bytes given to it have bits")
        spans.append((begin, end, name))
        out.parameter_count += count
        out.dtypes.add(dtype)
        elem = _FLOAT_SIZES.get(dtype)
        if elem:
            out.float_ranges.append((8 + length + begin, 8 + length + end, elem))
        out.tensors.append(Tensor(name, dtype, tuple(shape), 8 + length + begin,
                                  8 + length + end))
    spans.sort()
    covered = 0
    for begin, end, name in spans:
        if begin != covered:
            how = "overlapping the tensor before" if begin < covered else "leaving a hole"
            raise _Malformed(f"tensor {name!r}: data starts at {begin}, {how} "
                             f"(expected {covered})")
        covered = end
    if covered != data_len:
        raise _Malformed(f"tensors cover {covered} of the {data_len} data bytes")
    meta = header.get("__metadata__")
    if isinstance(meta, dict):
        out.metadata = meta
    return out


class _GgufReader:
    """Bounds-checked little-endian reads over a buffered file, tracking the position."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._size = size
        self.pos = 0

    @property
    def remaining(self) -> int:
        """Bytes left between the current position and the end of the file."""
        return self._size - self.pos

    def read(self, n: int) -> bytes:
        """Read exactly ``n`` bytes or raise :class:`_Malformed`."""
        if n > self.remaining:
            raise _Malformed("read past end of file")
        data = self._f.read(n)
        if len(data) != n:
            raise _Malformed("short read")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        """Advance ``n`` bytes without keeping them; fail if that passes the end of the file."""
        if n > self.remaining:
            raise _Malformed("skip past end of file")
        if n <= _GGUF_SKIP_BY_READ:
            self.read(n)
        else:
            self._f.seek(n, os.SEEK_CUR)
            self.pos += n

    def u32(self) -> int:
        """Read a little-endian u32."""
        return int(_U32.unpack(self.read(4))[0])

    def u64(self) -> int:
        """Read a little-endian u64."""
        return int(_U64.unpack(self.read(8))[0])

    def string_length(self) -> int:
        """Read a GGUF string length and check it against the bounds."""
        n = self.u64()
        if n > MAX_GGUF_STRING or n > self.remaining:
            raise _Malformed("bad string length")
        return n

    def string(self) -> bytes:
        """Read a GGUF string (u64 length + bytes)."""
        return self.read(self.string_length())

    def skip_string(self) -> None:
        """Skip a GGUF string."""
        self.skip(self.string_length())

    def skip_value(self, vtype: int, depth: int = 0) -> None:
        """Skip one value of GGUF type ``vtype``, arrays included, keeping nothing.

        Args:
            vtype: GGUF value type id.
            depth: array nesting depth so far.

        Raises:
            _Malformed: unknown type, excessive nesting, or a count that cannot fit in the file.
        """
        scalar = _GGUF_SCALARS.get(vtype)
        if scalar is not None:
            self.skip(scalar.size)
        elif vtype == _GGUF_STRING:
            self.skip_string()
        elif vtype == _GGUF_ARRAY:
            if depth >= MAX_GGUF_ARRAY_DEPTH:
                raise _Malformed("arrays nested too deeply")
            etype, count = self.u32(), self.u64()
            element = _GGUF_SCALARS.get(etype)
            if element is not None:
                self.skip(count * element.size)
            elif etype == _GGUF_STRING:
                if count * _GGUF_MIN_STRING > self.remaining:
                    raise _Malformed("string array larger than the file")
                for _ in range(count):
                    self.skip_string()
            elif etype == _GGUF_ARRAY:
                if count * _GGUF_MIN_ARRAY > self.remaining:
                    raise _Malformed("nested array larger than the file")
                for _ in range(count):
                    self.skip_value(_GGUF_ARRAY, depth + 1)
            else:
                raise _Malformed(f"unknown array element type {etype}")
        else:
            raise _Malformed(f"unknown value type {vtype}")


def _read_gguf(f: BinaryIO, size: int) -> _Header:
    """Read a GGUF (v2 or v3) header from the start of ``f``.

    Only ``general.architecture`` and ``general.file_type`` are kept; every other value is
    skipped. Tensor infos give the parameter count and ggml type names.

    Args:
        f: buffered binary file positioned at 0.
        size: total file size in bytes.

    Returns:
        Parameter count, ggml dtypes, architecture, quantization name, every tensor (a type
        of unknown size runs to the next tensor's data or the end of the file) and the byte
        range of every key's value.

    Raises:
        _Malformed: bad magic or version, a count over the bounds, or a truncated header.
    """
    r = _GgufReader(f, size)
    if r.read(4) != b"GGUF":
        raise _Malformed("bad GGUF magic")
    if r.u32() not in (2, 3):
        raise _Malformed("unsupported GGUF version")
    tensor_count, kv_count = r.u64(), r.u64()
    if tensor_count > MAX_GGUF_COUNT or kv_count > MAX_GGUF_COUNT:
        raise _Malformed("absurd GGUF counts")
    if kv_count * _GGUF_MIN_KV + tensor_count * _GGUF_MIN_TENSOR > r.remaining:
        raise _Malformed("GGUF counts exceed the file")
    out = _Header()
    alignment = _GGUF_DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key = r.string()
        value_start = r.pos
        vtype = r.u32()
        if key == b"general.architecture" and vtype == _GGUF_STRING:
            out.architecture = r.string().decode("utf-8", errors="replace") or None
        elif key == b"general.file_type" and vtype in _GGUF_INT_TYPES:
            scalar = _GGUF_SCALARS[vtype]
            out.quantization = GGUF_FILE_TYPES.get(int(scalar.unpack(r.read(scalar.size))[0]))
        elif key == b"general.alignment" and vtype in _GGUF_INT_TYPES:
            scalar = _GGUF_SCALARS[vtype]
            alignment = int(scalar.unpack(r.read(scalar.size))[0]) or _GGUF_DEFAULT_ALIGNMENT
        else:
            r.skip_value(vtype)
        out.metadata[key.decode("utf-8", errors="replace")] = (value_start, r.pos)
    if alignment & (alignment - 1) or alignment > 1 << 20:
        raise _Malformed(f"alignment {alignment} is not a power of two up to 1 MiB")
    # (offset, byte length or None for a type of unknown size, elements, name, ggml type, dims)
    infos: list[tuple[int, int | None, int, str, int, tuple[int, ...]]] = []
    for _ in range(tensor_count):
        name = r.string().decode("utf-8", errors="replace")
        n_dims = r.u32()
        if n_dims > MAX_GGUF_DIMS:
            raise _Malformed(f"tensor {name!r}: {n_dims} dimensions")
        dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims))
        ggml_type = r.u32()
        offset = r.u64()
        count = math.prod(dims)
        nbytes = None
        block = GGML_BLOCKS.get(ggml_type)
        if block is not None:
            if n_dims and dims[0] % block[0]:
                raise _Malformed(f"tensor {name!r}: first dimension {dims[0]} is not a whole "
                                 f"number of {GGML_TYPES[ggml_type]} blocks of {block[0]}")
            nbytes = count // block[0] * block[1]
        if offset % alignment:
            raise _Malformed(f"tensor {name!r}: offset {offset} is not a multiple of the "
                             f"alignment {alignment}")
        infos.append((offset, nbytes, count, name, ggml_type, dims))
        out.parameter_count += count
        out.dtypes.add(GGML_TYPES.get(ggml_type, f"GGML_TYPE_{ggml_type}"))
    # Tensor data starts at the first multiple of the alignment after the tensor infos.
    data_start = -(-r.pos // alignment) * alignment
    data_len = size - data_start
    infos.sort(key=lambda info: info[0])  # stable: a tensor of unknown size has nbytes None
    for i, (offset, nbytes, count, name, ggml_type, dims) in enumerate(infos):
        # A type of unknown size may use up to the next tensor, at one bit per element at least.
        room = (infos[i + 1][0] if i + 1 < len(infos) else data_len) - offset
        need = nbytes if nbytes is not None else -(-count // 8)
        if need > room:
            where = "the end of the file" if i + 1 == len(infos) else "the next tensor's data"
            raise _Malformed(f"tensor {name!r}: {need} bytes at offset {offset} run past {where}")
        out.tensors.append(Tensor(
            name, GGML_TYPES.get(ggml_type, f"GGML_TYPE_{ggml_type}"), dims,
            data_start + offset, data_start + offset + (nbytes if nbytes is not None else room)))
        elem = _GGUF_FLOAT_SIZES.get(ggml_type)
        if elem:
            out.float_ranges.append((data_start + offset, data_start + offset + count * elem,
                                     elem))
    return out


def _read_config(path: pathlib.Path | str) -> dict[str, object] | None:
    """Read ``config.json`` if it is a JSON object under :data:`MAX_CONFIG_BYTES`, else ``None``."""
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_CONFIG_BYTES)
        if len(blob) >= MAX_CONFIG_BYTES:
            return None
        config = json.loads(blob)
    except (OSError, ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def _config_fields(config: dict[str, object] | None) -> tuple[str | None, str | None]:
    """Extract architecture and quantization from a parsed ``config.json``.

    Args:
        config: the parsed config, or ``None``.

    Returns:
        ``(architecture, quantization)``: ``architectures[0]`` else ``model_type``; and
        ``quantization_config.quant_method`` with ``-{bits}bit`` appended when ``bits`` is an int.
    """
    if config is None:
        return None, None
    architecture: str | None = None
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str) and archs[0]:
        architecture = archs[0]
    else:
        model_type = config.get("model_type")
        if isinstance(model_type, str) and model_type:
            architecture = model_type
    quantization: str | None = None
    qconfig = config.get("quantization_config")
    if isinstance(qconfig, dict):
        method = qconfig.get("quant_method")
        if isinstance(method, str) and method:
            bits = qconfig.get("bits")
            quantization = f"{method}-{bits}bit" if _is_uint(bits) else method
    return architecture, quantization


def float_ranges(path: pathlib.Path) -> list[tuple[int, int, int]]:
    """Absolute byte ranges ``(start, end, element size)`` of the float tensors of a
    safetensors or GGUF file.

    Reads only the header. Returns an empty list for any other format or a malformed header
    (grouping is an optimisation: without ranges chunks are simply compressed whole).
    """
    kind = detect_format(path)
    if kind not in ("safetensors", "gguf"):
        return []
    header = _parse(kind, path)
    return header.float_ranges if header is not None else []


def safetensors_tensors(f: BinaryIO, size: int) -> list[Tensor]:
    """The tensors of the safetensors file read by ``f`` (positioned at 0), or an empty list if
    its header is malformed (predicting tensors is an optimisation)."""
    try:
        return _read_safetensors(f, size).tensors
    except _PARSE_ERRORS:
        return []


def tensors(path: pathlib.Path) -> list[Tensor]:
    """The tensors of a safetensors file (an empty list for any other file or a malformed
    header); the header is the one :func:`float_ranges` and :func:`describe` read."""
    header = _parse("safetensors", path) if detect_format(path) == "safetensors" else None
    return header.tensors if header is not None else []


@dataclass(frozen=True, slots=True)
class SafetensorsLayout:
    """Where the tensors of a safetensors file lie, and its ``__metadata__``."""

    tensors: list[Tensor]
    #: The header's ``__metadata__`` object ({} without one).
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GgufLayout:
    """Where the tensors and the key/value pairs of a GGUF file lie."""

    #: In data order. A tensor of a ggml type this module does not know runs to the next
    #: tensor's data (or the end of the file).
    tensors: list[Tensor]
    #: key -> absolute byte range of its value type and value.
    kv_ranges: dict[str, tuple[int, int]]


class _ReadFailed(Exception):
    """Carries an error of the caller's reader through the parser (which takes its own
    errors for a malformed header)."""


class _RangeFile(io.RawIOBase):
    """A file read through a :data:`ReadAt`, as a seekable raw stream."""

    def __init__(self, read_at: ReadAt, size: int) -> None:
        self._read_at, self._size, self._pos = read_at, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = max(0, min(len(buf), self._size - self._pos))
        if n == 0:
            return 0
        try:
            data = self._read_at(self._pos, n)
        except BaseException as exc:
            raise _ReadFailed() from exc
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _read_layout(kind: str, read_at: ReadAt, size: int) -> _Header:
    f = io.BufferedReader(_RangeFile(read_at, size), 1 << 16)
    try:
        if kind == "safetensors":
            return _read_safetensors(f, size)  # type: ignore[arg-type]
        return _read_gguf(f, size)  # type: ignore[arg-type]
    except _ReadFailed as exc:
        raise exc.__cause__ from None  # type: ignore[misc]
    except _PARSE_ERRORS as exc:
        raise HeaderError(_reason(exc)) from None


def safetensors_layout(read_at: ReadAt, size: int) -> SafetensorsLayout:
    """The tensors and ``__metadata__`` of the ``size``-byte safetensors file that ``read_at``
    reads (only its header is read), with the checks of :func:`describe`.

    Raises:
        HeaderError: the header is malformed or inconsistent with the file. A header with no
            tensors (``{}``) is not an error: its layout has an empty tensor list.
        Exception: whatever ``read_at`` raises, unchanged.
    """
    header = _read_layout("safetensors", read_at, size)
    return SafetensorsLayout(header.tensors, header.metadata)


def gguf_layout(read_at: ReadAt, size: int) -> GgufLayout:
    """The tensors and key/value byte ranges of the ``size``-byte GGUF (v2 or v3) file that
    ``read_at`` reads (only its header is read; large arrays are skipped, not kept), with the
    checks of :func:`describe`.

    Raises:
        HeaderError: bad magic or version, a count over the bounds, a truncated header, or a
            tensor that does not fit its place in the file.
        Exception: whatever ``read_at`` raises, unchanged.
    """
    header = _read_layout("gguf", read_at, size)
    return GgufLayout(header.tensors, header.metadata)
