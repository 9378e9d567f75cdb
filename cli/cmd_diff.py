"""The ``diff`` command: files and tensors that differ between two versions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from cas.cli.app import Ctx, cli, pass_ctx
from cas.cli.complete import complete_spec
from cas.cli.render import human_bytes

if TYPE_CHECKING:  # imported when a diff runs: numpy and the header parsers cost start-up
    from cas.diff import DiffResult, TensorChange, WeightDiff

#: Exit code of ``diff --exit-code`` when the versions differ (as ``git diff --exit-code``).
DIFFER_EXIT_CODE = 1
_STATUS = {"added": "A", "removed": "D", "modified": "M", "renamed": "R"}
_TENSOR_MARK = {"added": "+", "removed": "-"}


def _shape(shape: list[int] | None) -> str:
    return "[" + ", ".join(map(str, shape or [])) + "]"


def _tensor_detail(c: TensorChange) -> str:
    if c.change == "added":
        return f"{c.dtype_b} {_shape(c.shape_b)}"
    if c.change == "removed":
        return f"{c.dtype_a} {_shape(c.shape_a)}"
    if c.change == "dtype":
        shape = "" if c.shape_a == c.shape_b else f", shape {_shape(c.shape_a)} -> " \
                                                   f"{_shape(c.shape_b)}"
        return f"dtype {c.dtype_a} -> {c.dtype_b}{shape}"
    if c.change == "shape":
        return f"{c.dtype_a} shape {_shape(c.shape_a)} -> {_shape(c.shape_b)}"
    pct = 100 * (c.fraction or 0.0)
    return (f"{c.dtype_b} {_shape(c.shape_b)}  value: {pct:.2f}% of "
            f"{human_bytes(c.nbytes or 0)} differ")


def _weight_lines(w: WeightDiff) -> list[str]:
    lines = [f"{w.path} ({w.format}): {w.tensors_a} -> {w.tensors_b} tensors"]
    width = max((len(c.name) for c in w.changes), default=0)
    for c in w.changes:
        lines.append(f"  {_TENSOR_MARK.get(c.change, '~')} {c.name:<{width}}  {_tensor_detail(c)}")
    if w.metadata_changed:
        lines.append(f"  metadata changed: {', '.join(w.metadata_changed)}")
    lines.append(f"  {w.unchanged} unchanged, {w.added} added, {w.removed} removed, "
                 f"{w.changed} changed ({w.changed_value} in value)")
    return lines


def render(r: DiffResult) -> list[str]:
    """The human form of a diff: files, then each weight file's tensors, then the counts."""
    lines = [f"diff {r.a} {r.b}"]
    if r.identical:
        lines.append(f"no differences ({r.files_unchanged} files)")
        return lines
    width = max(len(f.old_path + " -> " + f.path if f.old_path else f.path) for f in r.files)
    for f in r.files:
        name = f"{f.old_path} -> {f.path}" if f.old_path else f.path
        if f.status == "modified" and f.executable:
            size = f"mode {'+x' if f.executable[1] else '-x'}"
        elif f.status == "modified":
            size = f"{human_bytes(f.size_a or 0)} -> {human_bytes(f.size_b or 0)}"
        else:
            size = human_bytes((f.size_b if f.size_b is not None else f.size_a) or 0)
        lines.append(f"{_STATUS[f.status]} {name:<{width}}  {size}")
    for w in r.weights:
        lines.append("")
        lines.extend(_weight_lines(w))
    counts = {s: sum(1 for f in r.files if f.status == s) for s in _STATUS}
    tensors = [sum(getattr(w, k) for w in r.weights)
               for k in ("unchanged", "added", "removed", "changed", "changed_value")]
    lines.append("")
    lines.append(f"files: {counts['modified']} modified, {counts['added']} added, "
                 f"{counts['removed']} removed, {counts['renamed']} renamed, "
                 f"{r.files_unchanged} unchanged")
    if r.weights:
        lines.append(f"tensors: {tensors[3]} changed ({tensors[4]} in value), {tensors[1]} "
                     f"added, {tensors[2]} removed, {tensors[0]} unchanged")
    return lines


@cli.command()
@click.argument("a", metavar="A", shell_complete=complete_spec)
@click.argument("b", metavar="B", shell_complete=complete_spec)
@click.option("--exit-code", is_flag=True,
              help=f"Exit with {DIFFER_EXIT_CODE} if the versions differ, 0 if not "
                   "(default: 0 either way).")
@pass_ctx
def diff(ctx: Ctx, a: str, b: str, exit_code: bool) -> None:
    """Show what changed from version A to version B (each NAME[@V], also of two different
    models): files added, removed, modified and renamed; for safetensors and GGUF files, the
    tensors added, removed, or changed in dtype, shape or value (with the fraction of bytes that
    differ). Unchanged tensors are counted, not listed; a tensor that only moved inside its
    file is unchanged. Only chunks whose ids differ between the versions are read.

    The exit code is 0 whether or not the versions differ, unless --exit-code is given.

    \b
    Examples:
      cas diff org/model@1 org/model@2
      cas diff org/model@prod org/model-ft --json --exit-code
    """
    with ctx.open() as store:
        r = store.diff(a, b)
    ctx.out.result(r, render(r))
    if exit_code and not r.identical:
        raise SystemExit(DIFFER_EXIT_CODE)
