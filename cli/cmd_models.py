"""Commands about registered models and versions: ls, show, log, tag, annotate, rm, restore."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sys
from typing import Any

import click
from cas.cli.app import (
    Ctx,
    ReportedFailure,
    cli,
    parse_metrics,
    parse_pairs,
    parse_provenance,
    pass_ctx,
    provenance_options,
)
from cas.cli.complete import complete_model, complete_spec
from cas.cli.render import format_table, human_bytes, human_time, short_id

from cas.errors import ArgsError, error_of_code
from cas.store import Store


def _tags_text(tags: dict[str, int]) -> str:
    return ", ".join(f"{t}=@{seq}" for t, seq in sorted(tags.items(), key=lambda kv: kv[1]))


def _scope_text(scope: str, here: str | None = None) -> str:
    """A pin's scope for people: ``everywhere``, ``this store`` or ``store <uuid prefix>``."""
    if scope == "all":
        return "everywhere"
    return "this store" if scope == here else f"store {scope[:8]}"


def _who(author: str) -> str:
    """The name part of ``Name <email>``, for tables (JSON keeps the whole identity)."""
    return author.split(" <", 1)[0]


@cli.command("ls")
@click.argument("pattern", required=False, shell_complete=complete_model)
@click.option("--format", "format_",
              type=click.Choice(["safetensors", "gguf", "pytorch", "onnx", "other"],
                                case_sensitive=False),
              help="Only models whose latest version has this format.")
@click.option("--role", help="Only models whose latest version has this role.")
@click.option("--tag", help="Only models that have this tag (with --long: only its version).")
@click.option("--sort", "sort", type=click.Choice(["name", "date", "size", "versions"]),
              default="name", show_default=True,
              help="Order of models (date, size and versions: newest or largest first).")
@click.option("-l", "--long", "long_", is_flag=True,
              help="One line per version, with its own tags and message.")
@click.option("--names-only", is_flag=True, help="Print model names only, one per line.")
@click.option("--removed", is_flag=True,
              help="List removed versions and until when 'cas restore' can bring them back.")
@pass_ctx
def ls_cmd(ctx: Ctx, pattern: str | None, format_: str | None, role: str | None,
           tag: str | None, sort: str, long_: bool, names_only: bool, removed: bool) -> None:
    """List models; PATTERN is a glob on names such as 'meta-llama/*'. REMOTE: (a remote's
    name or URL, then ':') lists that store's catalog instead, fetched now, without its
    content: 'cas ls origin:' or 'cas ls origin:org/*'.

    \b
    Examples:
      cas ls 'sentence-transformers/*' --sort date
      cas ls origin: --long --tag prod
    """
    if removed and (long_ or names_only or format_ or role or tag or sort != "name"):
        raise ArgsError("--removed lists removed versions: it takes only PATTERN")
    if long_ and names_only:
        raise ArgsError("--long and --names-only cannot be combined")
    if format_:
        format_ = format_.lower()
    if removed:
        with ctx.open() as local, remote_catalog(local, pattern) as (store, pattern):
            listing = store.removed(pattern)
        gone = listing.removed
        rows = [[f"{r.name}@{r.seq}", human_time(r.removed_at), _who(r.removed_by),
                 "expired" if r.expired else human_time(r.restorable_until),
                 ", ".join(r.tags)] for r in gone]
        lines = format_table(["VERSION", "REMOVED", "BY", "RESTORABLE UNTIL", "TAGS"], rows)
        ctx.out.result(listing, lines if gone else "no removed versions")
        return
    with ctx.open() as local, remote_catalog(local, pattern) as (store, pattern):
        models = store.ls(pattern, format=format_, role=role, tag=tag, sort=sort)
        versions = store.ls_versions(models) if long_ else []
    if tag:
        versions = [v for v in versions if tag in v.tags]
    if names_only:
        ctx.out.result({"models": [m.name for m in models]}, [m.name for m in models])
        return
    if long_:
        rows = [[f"{v.name}@{v.seq}", short_id(v.id), human_time(v.registered_at),
                 human_bytes(v.size) + ("" if v.present else " (elsewhere)"), v.format,
                 ", ".join(v.tags), f"error: {v.error}" if v.error else v.message]
                for v in versions]
        lines = format_table(["VERSION", "ID", "REGISTERED", "SIZE", "FORMAT", "TAGS",
                              "MESSAGE"], rows, right=frozenset({3}))
        _fail_after_listing(ctx, [(f"{v.name}@{v.seq}", v.error_code, v.error)
                                  for v in versions], {"models": models, "versions": versions},
                            lines)
        ctx.out.result({"models": models, "versions": versions},
                       lines if versions else "no models")
        return
    rows = []
    for r in models:
        if r.error:
            rows.append([r.name, f"@{r.latest}", str(r.versions), "-", "-", "-",
                         f"error: {r.error}"])
            continue
        rows.append([r.name, f"@{r.latest}", str(r.versions), human_bytes(r.size), r.format,
                     human_time(r.updated_at), _tags_text(r.tags)])
    lines = format_table(["NAME", "LATEST", "VERS", "SIZE", "FORMAT", "UPDATED", "TAGS"], rows,
                         right=frozenset({1, 2, 3}))
    _fail_after_listing(ctx, [(m.name, m.error_code, m.error) for m in models],
                        {"models": models}, lines)
    ctx.out.result({"models": models}, lines if models else "no models")


def _fail_after_listing(ctx: Ctx, rows: list[tuple[str, str | None, str | None]],
                        doc: dict[str, object], lines: list[str]) -> None:
    """One bad model never hides the others, but the exit code must say something is wrong:
    print the whole listing, then fail with the first unreadable row's error."""
    bad = [(what, code, message) for what, code, message in rows if message]
    if not bad:
        return
    if not ctx.out.json:
        for line in lines:
            sys.stdout.write(line + "\n")
    what, code, message = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise ReportedFailure(error_of_code(code or "E_SCHEMA", f"{what}: {message}{more}"), doc)


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@pass_ctx
def show(ctx: Ctx, spec: str) -> None:
    """Show one version: its metadata (annotations merged) and files. REMOTE:NAME[@V]
    shows a version of a remote's catalog (fetched now, no content).

    \b
    Examples:
      cas show org/model@prod
      cas show origin:org/model --json
    """
    with ctx.open() as local, remote_catalog(local, spec) as (store, spec):
        d = store.show(spec)
        store_uuid = store.uuid
    m = d.manifest
    md = m.metadata
    lines = [f"{d.name}@{d.seq}  id {d.id}",
             _row("commit", d.commit),
             _row("registered", f"{human_time(d.registered_at)} by {d.author}"),
             _row("message", d.message)]
    if d.annotated_at:
        lines.append(_row("annotated",
                          f"{human_time(d.annotated_at)} (see cas log {d.name}@{d.seq})"))
    if d.tags:
        lines.append(_row("tags", ", ".join(d.tags)))
    if not d.present:
        lines.append(_row("content", "not in this store ('cas checkout' or 'cas pull REMOTE "
                                     f"{d.name}@{d.seq}' brings it)"))
    if d.pins:
        lines.append(_row("pinned", ", ".join(_scope_text(p, store_uuid) for p in d.pins)))
    prov = md.provenance
    fields: list[tuple[str, Any]] = [
        ("format", md.format), ("architecture", md.architecture),
        ("parameters", f"{md.parameter_count:,}" if md.parameter_count else None),
        ("dtypes", ", ".join(md.dtypes) or None), ("quantization", md.quantization),
        ("role", md.role), ("base model", md.base_model),
        ("parents", ", ".join(d.parents) or None), ("license", md.license),
        ("source", md.source), ("created", f"{md.created_at} on {md.created_on}"),
        ("run", prov.run_id), ("datasets", ", ".join(prov.datasets) or None),
        ("code rev", prov.code_revision),
        ("seed", str(prov.seed) if prov.seed is not None else None),
    ]
    for label, value in fields:
        if value:
            lines.append(_row(label, value))
    for k, v in md.metrics.items():
        lines.append(_row("metric", f"{k} = {v:g}"))
    for k, v in prov.environment.items():
        lines.append(_row("env", f"{k} = {v}"))
    for k, v in md.extra.items():
        lines.append(_row("meta", f"{k} = {v}"))
    lines.append(_row("files", f"{len(m.files)}, {human_bytes(m.total_size)}"))
    for f in m.files:
        lines.append(f"    {human_bytes(f.size):>10}  {f.sha256[:16]}  {f.path}"
                     + ("  (x)" if f.executable else ""))
    ctx.out.result(d, lines)


def _row(label: str, value: object) -> str:
    return f"  {label:<12} {value}"


_EVENT = {"add": "added", "annotate": "annotated", "rm": "removed", "restore": "restored",
          "tag": "tagged", "untag": "untagged"}


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@pass_ctx
def log(ctx: Ctx, spec: str) -> None:
    """History of model NAME, or of one version NAME@V, newest first: added, annotated,
    tagged, removed, restored. Removed models keep their history.

    \b
    Examples:
      cas log org/model
      cas log org/model@3 --json
    """
    with ctx.open() as local, remote_catalog(local, spec) as (store, spec):
        rows = store.log(spec)
    table = []
    for r in rows:
        what = ", ".join(f"@{s}" for s in r.versions) or f"@{r.seq}"
        extra = ""
        if r.tags and r.action in ("rm", "restore"):
            extra = f"  (tags: {', '.join(r.tags)})"
        if r.pins and r.action in ("rm", "restore"):
            extra += f"  (pins: {', '.join(_scope_text(p) for p in r.pins)})"
        ids = ", ".join(short_id(i) for i in r.ids[:1]) + (", ..." if len(r.ids) > 1 else "")
        table.append([r.commit[:12], human_time(r.at), _EVENT.get(r.action, r.action), what,
                      ids, _who(r.author), r.message + extra])
    name = spec.partition("@")[0]
    ctx.out.result({"name": name, "history": rows},
                   format_table(["COMMIT", "WHEN", "EVENT", "VERSION", "ID", "BY", "MESSAGE"],
                                table)
                   if rows else "no history")


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.argument("tag_name", metavar="TAG")
@click.option("-f", "--force", is_flag=True, help="Move the tag if it exists.")
@click.option("-d", "--delete", is_flag=True, help="Delete the tag instead.")
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who tags.")
@pass_ctx
def tag(ctx: Ctx, spec: str, tag_name: str, force: bool, delete: bool,
        author: str | None) -> None:
    """Tag version NAME[@V] as TAG (then NAME@TAG names it).

    \b
    Examples:
      cas tag org/model@3 prod --force
      cas tag org/model candidate --delete
    """
    with ctx.open() as store:
        r = store.tag(spec, tag_name, force=force, delete=delete, author=author)
    named = f"{r.name}@{r.seq}" if r.seq else "an unreadable version"
    if delete:
        text = f"deleted tag {r.name}@{r.tag} (it named {named})"
    elif r.changed:
        text = f"tagged {named} as {r.name}@{r.tag}"
    else:
        text = f"{r.name}@{r.tag} already names {named}; nothing to do"
    ctx.out.result(r, text)


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.option("-m", "--message", default="", help="Why (recorded in the history).")
@click.option("--metric", multiple=True, metavar="NAME=NUMBER",
              help="Set a metric (repeatable).")
@click.option("--unset-metric", multiple=True, metavar="NAME", help="Remove a metric.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Set free metadata.")
@click.option("--unset-meta", multiple=True, metavar="KEY", help="Remove a --meta key.")
@click.option("--license", "license_", help="License of the weights.")
@click.option("--role", help="Role of the model, e.g. base, finetune, adapter, draft.")
@click.option("--base-model", help="Model this one was derived from.")
@click.option("--parent", "parents", multiple=True, metavar="NAME[@V]",
              shell_complete=complete_spec,
              help="Add a registered parent version (lineage; repeatable).")
@click.option("--source", help="Where the files came from.")
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who annotates.")
@provenance_options
@pass_ctx
def annotate(ctx: Ctx, spec: str, message: str, metric: tuple[str, ...],
             unset_metric: tuple[str, ...], meta: tuple[str, ...], unset_meta: tuple[str, ...],
             license_: str | None, role: str | None, base_model: str | None,
             parents: tuple[str, ...], source: str | None, author: str | None,
             **prov: Any) -> None:
    """Record metadata on an existing version (metrics computed after training, a license,
    provenance) as a new registry commit; files and version number are unchanged.

    \b
    Examples:
      cas annotate org/model@3 --metric eval/accuracy=0.912 --metric eval/loss=0.31
      cas annotate org/model --license apache-2.0 --run-id wandb:abc123 --seed 7
    """
    from cas.annotate import Annotation

    ann = Annotation(message=message, metrics=parse_metrics(metric),
                     unset_metrics=list(unset_metric), extra=parse_pairs(meta, "--meta"),
                     unset_extra=list(unset_meta), license=license_, role=role,
                     base_model=base_model, source=source, parents=list(parents),
                     provenance=parse_provenance(**prov), author=author)
    with ctx.open() as store:
        r = store.annotate(spec, ann)
    text = (f"annotated {r.name}@{r.seq} ({r.commit[:12]}): "
            f"{', '.join(r.changed) or 'a note in the history, metadata unchanged'}"
            if r.commit else f"{r.name}@{r.seq} unchanged: it already has this metadata")
    ctx.out.result(r, text)


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.option("-f", "--force", is_flag=True,
              help="Remove tagged and pinned versions too (their tags and pins are deleted "
                   "and recorded).")
@click.option("-m", "--message", default="", help="Why (recorded in the history).")
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who removes.")
@pass_ctx
def rm(ctx: Ctx, spec: str, force: bool, message: str, author: str | None) -> None:
    """Remove a version (NAME@V) or every version of a model (NAME).

    Tagged and pinned versions are kept unless --force. Removed versions can be brought back with
    'cas restore' for the store's restore window (default 14 days); 'cas log' keeps showing
    them. Disk space returns with garbage collection after the window.

    \b
    Examples:
      cas rm org/model@2
      cas rm org/model --force -m "superseded by org/model-v2"
    """
    with ctx.open() as store:
        r = store.rm(spec, force=force, message=message, author=author)
    lines = [f"removed {', '.join(r.removed)}"]
    if r.tags_removed:
        lines.append(f"  tags removed: {', '.join(r.tags_removed)}")
    if r.pins_removed:
        lines.append(f"  pins removed: {', '.join(r.pins_removed)}")
    lines.append(f"  'cas restore {spec}' brings it back until {human_time(r.restorable_until)};"
                 " after that, garbage collection returns its disk space")
    ctx.out.result(r, lines)


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who restores.")
@pass_ctx
def restore(ctx: Ctx, spec: str, author: str | None) -> None:
    """Bring back removed versions with the tags their removal deleted: NAME@V one version,
    NAME everything the model's latest removal took out. See 'cas ls --removed'.

    \b
    Examples:
      cas restore org/model@2
      cas restore org/model
    """
    with ctx.open() as store:
        r = store.restore(spec, author=author)
    lines = [f"restored {', '.join(r.restored)}"]
    if r.tags_restored:
        lines.append(f"  tags restored: {', '.join(r.tags_restored)}")
    if r.tags_taken:
        lines.append(f"  not restored (now naming other versions): {', '.join(r.tags_taken)}")
    if r.pins_restored:
        lines.append(f"  pins restored: {', '.join(r.pins_restored)}")
    ctx.out.result(r, lines)


@contextmanager
def remote_catalog(store: Store, text: str | None) -> Iterator[tuple[Store, str | None]]:
    """``(store, text)``, or for ``REMOTE:REST`` a view of REMOTE's catalog (fetched now)
    and REST (see :mod:`cas.refview`)."""
    from cas import refview

    split = refview.split_spec(store, text) if text else None
    if split is None:
        yield store, text
        return
    from cas import sync

    remote, rest = split
    view, _result, done = sync.catalog(store, remote)
    try:
        yield view, rest or None
    finally:
        done()
