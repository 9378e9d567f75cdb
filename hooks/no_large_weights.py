"""``cas-no-large-weights``: refuse model weight files committed to git directly.

A pre-commit hook that gets the staged files as arguments. A file is refused when its
extension is a weight format's and it is at least ``--max-size`` (default 1 MiB), or whatever
its extension when it is at least ``--max-any-size`` (default 50 MiB). Each refused file gets
one line naming the ``cas add`` command that stores it instead. Options (in ``args:`` of the
hook's entry in .pre-commit-config.yaml):

  --max-size SIZE        weight files from this size (bytes, or 500k, 10MB, 2MiB, 1G)
  --max-any-size SIZE    any file from this size (0: no limit)
  --extensions LIST      comma-separated extensions that replace the default list
  --also LIST            extensions added to the list
  --allow PATH           a path that may be committed (repeatable)
"""

from __future__ import annotations

import argparse
import os
import re
import sys

WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".ggml",
                     ".onnx", ".h5", ".keras", ".tflite", ".pb", ".msgpack", ".npz", ".npy",
                     ".pkl", ".joblib", ".mlmodel", ".params", ".caffemodel", ".model")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\Z", re.I)


def parse_size(text: str) -> int:
    """``1048576``, ``500k``, ``10MB``, ``2MiB``, ``1G`` -> bytes (powers of 1024)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1048576, 10MB, 2GiB)")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _extensions(text: str) -> list[str]:
    return [e if e.startswith(".") else f".{e}" for e in
            (x.strip().lower() for x in text.split(",")) if e]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cas-no-large-weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*")
    p.add_argument("--max-size", type=parse_size, default=parse_size("1MiB"))
    p.add_argument("--max-any-size", type=parse_size, default=parse_size("50MiB"))
    p.add_argument("--extensions", type=_extensions, default=list(WEIGHT_EXTENSIONS))
    p.add_argument("--also", type=_extensions, default=[])
    p.add_argument("--allow", action="append", default=[])
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    exts = tuple(args.extensions + args.also)
    allowed = {os.path.normpath(a) for a in args.allow}
    bad = 0
    for path in args.files:
        if os.path.normpath(path) in allowed:
            continue
        try:
            size = os.stat(path).st_size
        except OSError:
            continue  # deleted by this commit
        ext = os.path.splitext(path)[1].lower()
        weight = ext in exts and size >= args.max_size
        huge = args.max_any_size > 0 and size >= args.max_any_size
        if not (weight or huge):
            continue
        bad += 1
        what = f"weight file ({ext})" if weight else "file"
        folder = os.path.dirname(path) or "."
        sys.stdout.write(
            f"{path}: {_human(size)} {what} committed to git: store it with "
            f"`cas add NAME {folder}` and `cas lock NAME --path {folder}`, then "
            f"`git rm --cached {path}`\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
