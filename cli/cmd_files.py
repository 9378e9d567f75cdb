"""Commands that write a version's files out: checkout."""

from __future__ import annotations

from pathlib import Path

import click
from cas.cli.app import Ctx, cli, pass_ctx, progress_for
from cas.cli.complete import complete_spec
from cas.cli.render import human_bytes


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Overwrite files that exist in DEST.")
@click.option("--cached", is_flag=True,
              help="Write through the page cache, leaving the files in memory for a program "
                   "that loads them next (slower; default: direct writes).")
@pass_ctx
def checkout(ctx: Ctx, spec: str, dest: Path, force: bool, cached: bool) -> None:
    """Write the files of NAME[@V] under DEST, byte-identical and SHA-256 verified."""
    with ctx.open() as store, progress_for(ctx) as bar:
        r = store.checkout(spec, dest, force=force, progress=bar, cached=cached)
    ctx.out.result(r, f"checked out {r.name}@{r.seq} to {r.dest}: {r.files} files, "
                      f"{human_bytes(r.bytes_written)}, SHA-256 verified")
