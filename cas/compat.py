"""Will this model run here? The host (RAM, GPU memory, free disk, CPU features) against a
version (size, dtypes, format), and the free-disk check done before a checkout writes.

Everything is read without loading weights: the model's dtypes, format and parameter count
come from its manifest metadata (detected from safetensors and GGUF headers at ``add``), or,
for a version registered without them, from the headers of its stored files. The host is
read from ``/proc/meminfo``, ``/proc/cpuinfo`` (flags), ``shutil.disk_usage`` and, when it is
on ``PATH``, ``nvidia-smi``. Each check that fails is a warning with a stable code; nothing
here refuses anything (except :func:`require_disk_for_files`, for checkout).

Estimates (documented, deliberately simple): loading needs the weight files' bytes plus
20 % (activations, KV cache at a modest context, runtime); a GPU "fits" when one device has
that much free memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from cas.errors import CasWarning

if TYPE_CHECKING:
    from cas.format.manifest import FileEntry, Manifest
    from cas.store import Store

#: Memory needed to run a model, as a factor of its weight bytes.
OVERHEAD = 1.2
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt", ".onnx")
#: CPU features that matter for a format/dtype on x86 (llama.cpp, PyTorch CPU kernels).
_X86_WANTED = {"gguf": ("avx2", "fma", "f16c"), "F16": ("f16c",),
               "BF16": ("avx512_bf16",)}
_ARM_WANTED = {"gguf": ("asimd",), "F16": ("fphp",), "BF16": ("bf16",)}


class Gpu(msgspec.Struct, frozen=True):
    name: str
    memory_total: int
    memory_free: int


class Host(msgspec.Struct):
    ram_total: int | None
    ram_available: int | None
    gpus: list[Gpu]
    #: False when nvidia-smi is not on PATH (no NVIDIA GPU visible).
    nvidia_smi: bool
    disk_path: str
    disk_free: int
    cpu_flags: list[str]
    machine: str


class Check(msgspec.Struct, frozen=True):
    check: str
    ok: bool
    need: int | str | None
    have: int | str | None
    message: str


class CompatReport(msgspec.Struct):
    name: str
    seq: int
    format: str
    dtypes: list[str]
    quantization: str | None
    parameter_count: int | None
    total_size: int
    weight_bytes: int
    memory_needed: int
    host: Host
    checks: list[Check]
    #: RAM (or a GPU) and disk suffice.
    runs: bool
    warnings: list[CasWarning] = []


def _meminfo(path: Path) -> tuple[int | None, int | None]:
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                values[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    except OSError:
        return None, None
    return values.get("MemTotal"), values.get("MemAvailable", values.get("MemFree"))


def _cpu_flags(path: Path) -> list[str]:
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return sorted(set(rest.split()))
    except OSError:
        pass
    return []


def _gpus() -> tuple[list[Gpu], bool]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], False
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return [], True
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            gpus.append(Gpu(parts[0], int(parts[1]) << 20, int(parts[2]) << 20))
    return gpus, True


def probe_host(disk_path: Path, proc: Path = Path("/proc")) -> Host:
    """What this host offers (see the module docstring)."""
    total, available = _meminfo(proc / "meminfo")
    gpus, smi = _gpus()
    probe = disk_path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = 0
    return Host(total, available, gpus, smi, str(probe), free, _cpu_flags(proc / "cpuinfo"),
                os.uname().machine)


def _weight_files(manifest: Manifest) -> list[FileEntry]:
    return [f for f in manifest.files if f.path.lower().endswith(_WEIGHT_SUFFIXES)]


def _dtypes(store: Store, manifest: Manifest) -> list[str]:
    """The manifest's dtypes, else read from the stored weight headers."""
    if manifest.metadata.dtypes:
        return list(manifest.metadata.dtypes)
    from cas.ids import parse_hex
    from cas.metadata import HeaderError, gguf_layout, safetensors_layout

    found: set[str] = set()
    for f in _weight_files(manifest):
        kind = "gguf" if f.path.lower().endswith(".gguf") else \
            "safetensors" if f.path.lower().endswith(".safetensors") else None
        if kind is None:
            continue
        clist = parse_hex(f.chunks, what="chunk list id")

        def read_at(offset: int, n: int, f: FileEntry = f, clist: bytes = clist) -> bytes:
            n = max(0, min(n, f.size - offset))
            return store.packs.ranges.read(clist, offset, n)[0] if n else b""

        try:
            layout = (gguf_layout if kind == "gguf" else safetensors_layout)(read_at, f.size)
        except HeaderError:
            continue
        found.update(t.dtype for t in layout.tensors)
    return sorted(found)


def check_version(store: Store, spec: str, dest: Path | None = None,
                  proc: Path = Path("/proc")) -> CompatReport:
    """Compare version ``spec`` with this host; ``dest`` is where it would be written
    (default: the current folder) for the disk check."""
    version = store.resolve(spec)
    manifest = store.manifest(version)
    host = probe_host(dest or Path.cwd(), proc)
    weights = sum(f.size for f in _weight_files(manifest)) or manifest.total_size
    need = int(weights * OVERHEAD)
    dtypes = _dtypes(store, manifest)
    fmt = manifest.metadata.format
    checks: list[Check] = []
    warnings: list[CasWarning] = []

    def add(check: str, ok: bool, need_v: int | str | None, have: int | str | None,
            message: str, code: str) -> None:
        checks.append(Check(check, ok, need_v, have, message))
        if not ok:
            warnings.append(CasWarning(code, message))

    ram = host.ram_available
    ram_ok = ram is None or ram >= need
    add("ram", ram_ok, need, ram,
        f"needs about {_gib(need)} of memory, {_gib(ram)} is available" if ram is not None
        else "available memory unknown", "W_COMPAT_RAM")
    best = max((g.memory_free for g in host.gpus), default=None)
    gpu_ok = best is not None and best >= need
    if host.gpus:
        add("gpu", gpu_ok, need, best,
            f"needs about {_gib(need)} of GPU memory, the freest GPU has {_gib(best)}",
            "W_COMPAT_GPU")
    else:
        checks.append(Check("gpu", False, need, None,
                            "no GPU found (nvidia-smi " +
                            ("lists none)" if host.nvidia_smi else "is not on PATH)")))
    disk_ok = host.disk_free >= manifest.total_size
    add("disk", disk_ok, manifest.total_size, host.disk_free,
        f"writing it needs {_gib(manifest.total_size)} free at {host.disk_path}, "
        f"{_gib(host.disk_free)} is free", "W_COMPAT_DISK")
    table = _ARM_WANTED if host.machine in ("aarch64", "arm64") else _X86_WANTED
    wanted: list[str] = []
    for key in [fmt, *dtypes]:
        wanted.extend(w for w in table.get(key, ()) if w not in wanted)
    if host.cpu_flags:
        lacking = [w for w in wanted if w not in host.cpu_flags]
        add("cpu", not lacking, " ".join(wanted) or None, " ".join(
            w for w in wanted if w in host.cpu_flags) or None,
            f"the CPU lacks {', '.join(lacking)}: {fmt} {'/'.join(dtypes)} inference on the "
            "CPU will be slow" if lacking else
            f"the CPU has {', '.join(wanted) or 'what the format needs'}", "W_COMPAT_CPU")
    runs = (ram_ok or gpu_ok) and disk_ok
    return CompatReport(version.name, version.seq, fmt, dtypes, manifest.metadata.quantization,
                        manifest.metadata.parameter_count, manifest.total_size, weights, need,
                        host, checks, runs, warnings)


def _gib(n: int | None) -> str:
    if n is None:
        return "an unknown amount"
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.1f} MiB"


def require_disk_for_files(dest: Path, files: Sequence[FileEntry], what: str) -> None:
    """``E_DISK`` before anything is written unless ``dest``'s filesystem can take
    ``files``: their bytes less those of same-named files there now (which the write
    replaces), and at least the largest file (written beside its old copy, then renamed).

    Raises:
        DiskError: not enough free space (nothing was written).
    """
    from cas.hub import require_free

    need = biggest = 0
    for f in files:
        biggest = max(biggest, f.size)
        try:
            st = os.lstat(dest / f.path)
            old = st.st_size if not os.path.islink(dest / f.path) else 0
        except (OSError, ValueError):
            old = 0
        need += max(0, f.size - old)
    require_free([(dest, max(need, biggest))], what)
