"""``cas add``: register a file or a directory as a new version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from cas.cli.app import (
    Ctx,
    NonEmptyPath,
    cli,
    parse_metrics,
    parse_pairs,
    parse_provenance,
    pass_ctx,
    progress_for,
    provenance_options,
)
from cas.cli.complete import complete_model, complete_spec
from cas.cli.render import count, human_bytes


@cli.command()
@click.argument("name", shell_complete=complete_model)
@click.argument("path", type=NonEmptyPath(path_type=Path))
@click.option("-m", "--message", default="", help="Describe this version.")
@click.option("--tag", "tags", multiple=True, help="Tag the new version (repeatable).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Free metadata (repeatable).")
@click.option("--metric", multiple=True, metavar="NAME=NUMBER", help="A metric (repeatable).")
@click.option("--role", help="Role of the model, e.g. base, finetune, adapter, draft.")
@click.option("--base-model", help="Model this one was derived from.")
@click.option("--parent", "parents", multiple=True, metavar="NAME[@V]",
              shell_complete=complete_spec,
              help="A registered parent version (lineage; repeatable).")
@click.option("--license", "license_", help="License of the weights.")
@click.option("--source", help="Where the files came from (default: the path).")
@click.option("--rehash", is_flag=True, help="Read every file even if the stat cache knows it.")
@click.option("--force-tag", is_flag=True, help="Move a --tag that names another version.")
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB",
              help="Leave out paths matching GLOB (gitignore syntax; repeatable; "
                   "a .casignore file in PATH is read too).")
@click.option("--author", metavar="'NAME <EMAIL>'",
              help="Who registers (default: $CAS_AUTHOR, the git identity, user@host).")
@provenance_options
@pass_ctx
def add(ctx: Ctx, name: str, path: Path, message: str, tags: tuple[str, ...],
        meta: tuple[str, ...], metric: tuple[str, ...], role: str | None,
        base_model: str | None, parents: tuple[str, ...], license_: str | None,
        source: str | None, rehash: bool, force_tag: bool, excludes: tuple[str, ...],
        author: str | None, **prov: Any) -> None:
    """Register PATH (a file or a directory) as a new version of model NAME.

    Symlinks are followed; .git folders, paths matched by PATH/.casignore (gitignore syntax;
    the file itself is not registered) and by --exclude are left out, and the output says what
    was skipped. Unchanged content makes no new version.

    \b
    Examples:
      cas add org/llama-ft ./checkpoints/run-7 --tag candidate --metric eval_loss=1.92
      cas add org/llama-ft ./out --exclude 'optimizer*.pt' --exclude 'runs/'
    """
    from cas.ingest import AddOptions

    opts = AddOptions(message=message, tags=list(tags), role=role, base_model=base_model,
                      license=license_, parents=list(parents), metrics=parse_metrics(metric),
                      extra=parse_pairs(meta, "--meta"), source=source, rehash=rehash,
                      provenance=parse_provenance(**prov), author=author,
                      force_tag=force_tag, exclude=list(excludes))
    with ctx.open(create=ctx.store_arg is None) as store, progress_for(ctx) as bar:
        r = store.add(name, path, opts, bar)
    ref = f"{r.name}@{r.seq}"
    lines = []
    if r.created:
        lines.append(f"registered {ref} ({r.commit[:12]}): {count(r.files, 'file')}, "
                     f"{human_bytes(r.total_size)}")
        lines.append(f"  {count(r.new_chunks, 'new chunk')} "
                     f"({human_bytes(r.new_stored_bytes)} stored), "
                     f"{r.reused_chunks} already stored, "
                     f"{count(r.stat_cache_hits, 'file')} unchanged since the last add")
    else:
        lines.append(f"unchanged: {ref} already holds this content; no new version")
    if r.tags:
        lines.append(f"  tagged {', '.join(r.tags)}")
    if r.skipped:
        lines.append("  skipped " + "; ".join(_skipped(s.reason, s.count, s.paths)
                                              for s in r.skipped))
    for p in r.stale_cache:
        lines.append(f"  note: {p} changed without a new mtime; the stat cache was refreshed")
    ctx.out.result(r, lines)


_REASONS = {"excluded": "by --exclude", "ignored": "by .casignore", ".git": ".git",
            ".cas": ".cas", "store": "the store", "dangling": "dangling symlinks"}


def _skipped(reason: str, count: int, paths: list[str]) -> str:
    shown = ", ".join(paths) + (", ..." if count > len(paths) else "")
    return f"{count} {_REASONS.get(reason, reason)} ({shown})"
