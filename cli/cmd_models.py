"""Commands about registered models and versions: ls, show, log, tag, rm."""

from __future__ import annotations

from typing import Any

import click
from cas.cli.app import Ctx, cli, pass_ctx
from cas.cli.render import human_bytes


@cli.command("ls")
@click.argument("pattern", required=False)
@click.option("--format", "format_", help="Only models of this format.")
@click.option("--role", help="Only models with this role.")
@click.option("--tag", help="Only models that have this tag.")
@pass_ctx
def ls_cmd(ctx: Ctx, pattern: str | None, format_: str | None, role: str | None,
           tag: str | None) -> None:
    """List models; PATTERN is a glob on names such as 'meta-llama/*'."""
    with ctx.open() as store:
        rows = store.ls(pattern, format=format_, role=role, tag=tag)
    lines = [f"{'NAME':<48} {'LATEST':>6} {'VERS':>4} {'SIZE':>10}  {'FORMAT':<11} TAGS"]
    for r in rows:
        if r.error:
            lines.append(f"{r.name:<48} {'@' + str(r.latest):>6} {r.versions:>4}  "
                         f"unreadable manifest: {r.error}")
            continue
        lines.append(f"{r.name:<48} {'@' + str(r.latest):>6} {r.versions:>4} "
                     f"{human_bytes(r.size):>10}  {r.format:<11} {','.join(r.tags)}")
    ctx.out.result({"models": rows}, lines if rows else "no models")


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@pass_ctx
def show(ctx: Ctx, spec: str) -> None:
    """Show one version: its metadata and files."""
    with ctx.open() as store:
        d = store.show(spec)
    m = d.manifest
    md = m.metadata
    lines = [f"{d.name}@{d.seq}  commit {d.commit}",
             f"  registered  {d.registered_at} by {d.author}",
             f"  message     {d.message}"]
    if d.tags:
        lines.append(f"  tags        {', '.join(d.tags)}")
    fields: list[tuple[str, Any]] = [
        ("format", md.format), ("architecture", md.architecture),
        ("parameters", f"{md.parameter_count:,}" if md.parameter_count else None),
        ("dtypes", ", ".join(md.dtypes) or None), ("quantization", md.quantization),
        ("role", md.role), ("base model", md.base_model),
        ("parents", ", ".join(md.parents) or None), ("license", md.license),
        ("source", md.source), ("created", f"{md.created_at} on {md.created_on}"),
    ]
    for label, value in fields:
        if value:
            lines.append(f"  {label:<11} {value}")
    for k, v in md.metrics.items():
        lines.append(f"  metric      {k} = {v:g}")
    for k, v in md.extra.items():
        lines.append(f"  meta        {k} = {v}")
    lines.append(f"  files       {len(m.files)}, {human_bytes(m.total_size)}")
    for f in m.files:
        lines.append(f"    {human_bytes(f.size):>10}  {f.sha256[:16]}  {f.path}"
                     + ("  (x)" if f.executable else ""))
    ctx.out.result(d, lines)


@cli.command()
@click.argument("name")
@pass_ctx
def log(ctx: Ctx, name: str) -> None:
    """History of model NAME, newest first."""
    with ctx.open() as store:
        rows = store.log(name)
    lines = []
    for r in rows:
        tags = f"  [{', '.join(r.tags)}]" if r.tags else ""
        lines.append(f"{r.commit[:12]}  {r.at}  {r.action:<3} @{r.seq:<4} {r.author}  "
                     f"{r.message}{tags}")
    ctx.out.result({"name": name, "history": rows}, lines)


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.argument("tag_name", metavar="TAG")
@click.option("-f", "--force", is_flag=True, help="Move the tag if it exists.")
@click.option("-d", "--delete", is_flag=True, help="Delete the tag instead.")
@pass_ctx
def tag(ctx: Ctx, spec: str, tag_name: str, force: bool, delete: bool) -> None:
    """Tag version NAME[@V] as TAG (then NAME@TAG names it)."""
    with ctx.open() as store:
        v = store.tag(spec, tag_name, force=force, delete=delete)
    what = "deleted tag" if delete else "tagged"
    ctx.out.result({"name": v.name, "seq": v.seq, "commit": v.commit, "tag": tag_name,
                    "deleted": delete}, f"{what} {v.name}@{tag_name} ({v.ref})")


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.option("-f", "--force", is_flag=True, help="Remove a version even if it is tagged.")
@pass_ctx
def rm(ctx: Ctx, spec: str, force: bool) -> None:
    """Unregister a version (NAME@V) or a whole model (NAME)."""
    with ctx.open() as store:
        r = store.rm(spec, force=force)
    lines = [f"removed {', '.join(r['removed'])}"]  # type: ignore[arg-type]
    if r["tags_removed"]:
        lines.append(f"  tags removed: {', '.join(r['tags_removed'])}")  # type: ignore[arg-type]
    lines.append("  disk space is returned by garbage collection (cas gc), not by rm")
    ctx.out.result(r, lines)
