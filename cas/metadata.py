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
* Total: neither public function raises on bad or unreadable input. Malformed headers leave the
  affected fields ``None`` (or empty); they never abort the whole description.
* Quiet: nothing is printed and the process is never exited.
* Deterministic: the result depends only on the bytes of the files and their relative paths.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Final

__all__ = ["describe", "detect_format"]

MAX_SAFETENSORS_HEADER: Final = 100 * 1024 * 1024
MAX_GGUF_COUNT: Final = 1_000_000
MAX_GGUF_STRING: Final = 64 * 1024 * 1024
MAX_GGUF_DIMS: Final = 8
MAX_GGUF_ARRAY_DEPTH: Final = 8
MAX_CONFIG_BYTES: Final = 1024 * 1024

# Weight formats in tie-break priority order (first wins when byte totals are equal).
WEIGHT_FORMATS: Final = ("safetensors", "gguf", "pytorch", "onnx")
_PYTORCH_SUFFIXES: Final = frozenset({".bin", ".pt", ".pth", ".ckpt"})

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")

GGML_TYPES: Final[dict[int, str]] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
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
    """One tensor of a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


class _Malformed(Exception):
    """A header is truncated, inconsistent or exceeds a bound."""


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
    #: Every tensor, safetensors only (name, dtype, shape, absolute byte range).
    tensors: list[Tensor] = field(default_factory=list)


def detect_format(path: pathlib.Path) -> str:
    """Name the format of one file, by magic bytes first, then by extension.

    Args:
        path: the file to inspect. Only its first 16 bytes are read.

    Returns:
        ``"gguf"`` for the ``GGUF`` magic; ``"safetensors"`` for a plausible u64 header length
        followed by ``{`` (or, failing the magic, a ``.safetensors`` extension); ``"pytorch"`` for
        a ``.bin``/``.pt``/``.pth``/``.ckpt`` file that starts as a zip or a pickle; ``"onnx"``
        for a ``.onnx`` extension; otherwise ``"other"``. Missing, unreadable, non-regular and
        empty files are ``"other"``.
    """
    path = pathlib.Path(path)
    try:
        if not path.is_file():
            return "other"
        with path.open("rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except (OSError, ValueError):
        return "other"
    if not head:
        return "other"
    if head.startswith(b"GGUF"):
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{":
        (length,) = _U64.unpack_from(head)
        if 2 <= length <= size - 8:
            return "safetensors"
    suffix = path.suffix.lower()
    if suffix in _PYTORCH_SUFFIXES and (head.startswith(b"PK\x03\x04") or head[0] == 0x80):
        return "pytorch"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix == ".onnx":
        return "onnx"
    return "other"


def describe(root: pathlib.Path, files: list[str]) -> dict[str, object]:
    """Describe the model made of ``files`` under ``root``.

    The model's format is the weight format holding the most bytes (ties broken in the order
    safetensors, gguf, pytorch, onnx), else ``"other"``. Parameter count and dtypes come from the
    headers of the files of that format (safetensors or GGUF only); if any of those headers is
    malformed the parameter count is ``None`` and the dtypes are those of the readable files.

    Args:
        root: directory holding the files, or a single file (then it is the only file and
            ``files`` is ignored).
        files: relative POSIX paths under ``root``. Absolute paths, paths with ``..`` and
            duplicates are ignored. ``config.json`` is read only at the top level.

    Returns:
        A dict with exactly the keys ``format`` (str), ``architecture`` (str | None),
        ``parameter_count`` (int | None), ``dtypes`` (sorted list[str]) and ``quantization``
        (str | None).
    """
    root = pathlib.Path(root)
    entries = _entries(root, files)
    config: dict[str, object] | None = None
    by_format: dict[str, list[tuple[int, str, pathlib.Path]]] = {}
    for rel, path in entries:
        if rel == "config.json":
            config = _read_config(path)
        fmt = detect_format(path)
        if fmt in WEIGHT_FORMATS:
            by_format.setdefault(fmt, []).append((_size(path), rel, path))
    for group in by_format.values():
        group.sort(key=lambda item: (-item[0], item[1]))  # largest first, then by path

    fmt = "other"
    if by_format:
        totals = {f: sum(size for size, _, _ in group) for f, group in by_format.items()}
        fmt = max(totals, key=lambda f: (totals[f], -WEIGHT_FORMATS.index(f)))

    parameter_count: int | None = None
    dtypes: set[str] = set()
    weight_arch: str | None = None
    weight_quant: str | None = None
    if fmt in ("safetensors", "gguf"):
        headers = [_parse(fmt, path) for _, _, path in by_format[fmt]]
        known = [h for h in headers if h is not None]
        for h in known:
            dtypes |= h.dtypes
        if len(known) == len(headers):
            parameter_count = sum(h.parameter_count for h in known)
        weight_arch = next((h.architecture for h in known if h.architecture), None)
        weight_quant = next((h.quantization for h in known if h.quantization), None)

    config_arch, config_quant = _config_fields(config)
    architecture = config_arch or weight_arch
    if architecture is None and fmt != "gguf":
        for _, _, path in by_format.get("gguf", []):
            header = _parse("gguf", path)
            if header is not None and header.architecture:
                architecture = header.architecture
                break
    quantization = weight_quant if fmt == "gguf" and weight_quant else config_quant
    return {
        "format": fmt,
        "architecture": architecture,
        "parameter_count": parameter_count,
        "dtypes": sorted(dtypes),
        "quantization": quantization,
    }


def _entries(root: pathlib.Path, files: list[str]) -> list[tuple[str, pathlib.Path]]:
    """Pair each usable relative path with its absolute path, in a stable order.

    Args:
        root: directory or single file.
        files: relative POSIX paths.

    Returns:
        ``(normalised relative path, path)`` pairs, deduplicated and sorted.
    """
    try:
        if root.is_file():
            return [(root.name, root)]
    except (OSError, ValueError):
        return []
    seen: dict[str, pathlib.Path] = {}
    for name in files:
        if not isinstance(name, str) or not name:
            continue
        rel = pathlib.PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            continue
        seen.setdefault(rel.as_posix(), root.joinpath(*rel.parts))
    return sorted(seen.items())


def _size(path: pathlib.Path) -> int:
    """Return the size of ``path`` in bytes, or 0 if it cannot be stat'ed."""
    try:
        return path.stat().st_size
    except (OSError, ValueError):
        return 0


#: Headers parsed in this process, keyed by what identifies the file's content (an add reads
#: each weight file's header for grouping, for derivation and to describe the model).
_PARSED: dict[tuple[str, str, int, int, int, int], _Header | None] = {}


def _parse(fmt: str, path: pathlib.Path) -> _Header | None:
    """Parse one weight file's header, or return ``None`` if it is malformed or unreadable.

    A header already parsed for the same path, size, mtime, ctime and inode is not read again.

    Args:
        fmt: ``"safetensors"`` or ``"gguf"``.
        path: the weight file.

    Returns:
        The parsed header, or ``None``.
    """
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            key = (fmt, str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            if key in _PARSED:
                return _PARSED[key]
            if fmt == "safetensors":
                header: _Header | None = _read_safetensors(f, st.st_size)
            else:
                header = _read_gguf(f, st.st_size)
    except _PARSE_ERRORS:
        return None
    if len(_PARSED) >= 256:
        _PARSED.clear()
    _PARSED[key] = header
    return header


def _is_uint(value: object) -> bool:
    """Return whether ``value`` is a JSON non-negative integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_safetensors(f: BinaryIO, size: int) -> _Header:
    """Read a safetensors header from the start of ``f``.

    Args:
        f: binary file positioned at 0.
        size: total file size in bytes.

    Returns:
        Parameter count and dtypes of all tensors.

    Raises:
        _Malformed: the header is truncated, too large, not JSON, or inconsistent.
    """
    raw = f.read(8)
    if len(raw) != 8:
        raise _Malformed("short safetensors length prefix")
    (length,) = _U64.unpack(raw)
    if length < 2 or length > MAX_SAFETENSORS_HEADER or length > size - 8:
        raise _Malformed("bad safetensors header length")
    blob = f.read(length)
    if len(blob) != length:
        raise _Malformed("truncated safetensors header")
    header = json.loads(blob)  # ValueError / RecursionError are caught by the caller
    if not isinstance(header, dict):
        raise _Malformed("safetensors header is not an object")
    data_len = size - 8 - length
    out = _Header()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _Malformed("tensor entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or not dtype:
            raise _Malformed("bad dtype")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise _Malformed("bad shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_uint, offsets))):
            raise _Malformed("bad data_offsets")
        if not offsets[0] <= offsets[1] <= data_len:
            raise _Malformed("data_offsets outside the file")
        out.parameter_count += math.prod(shape)
        out.dtypes.add(dtype)
        elem = _FLOAT_SIZES.get(dtype)
        if elem:
            out.float_ranges.append((8 + length + offsets[0], 8 + length + offsets[1], elem))
        out.tensors.append(Tensor(name, dtype, tuple(shape), 8 + length + offsets[0],
                                  8 + length + offsets[1]))
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
        Parameter count, ggml dtypes, architecture and quantization name.

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
    floats: list[tuple[int, int, int]] = []
    for _ in range(tensor_count):
        r.skip_string()
        n_dims = r.u32()
        if n_dims > MAX_GGUF_DIMS:
            raise _Malformed("too many tensor dimensions")
        dims = struct.unpack(f"<{n_dims}Q", r.read(8 * n_dims))
        ggml_type = r.u32()
        offset = r.u64()
        count = math.prod(dims)
        out.parameter_count += count
        out.dtypes.add(GGML_TYPES.get(ggml_type, f"GGML_TYPE_{ggml_type}"))
        elem = _GGUF_FLOAT_SIZES.get(ggml_type)
        if elem:
            floats.append((offset, offset + count * elem, elem))
    # Tensor data starts at the first multiple of the alignment after the tensor infos.
    data_start = -(-r.pos // alignment) * alignment
    out.float_ranges = [(data_start + a, data_start + b, e) for a, b, e in floats
                        if data_start + b <= size]
    return out


def _read_config(path: pathlib.Path) -> dict[str, object] | None:
    """Read ``config.json`` if it is a JSON object under :data:`MAX_CONFIG_BYTES`, else ``None``."""
    try:
        with path.open("rb") as f:
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
