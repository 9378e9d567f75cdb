"""Commands about the store as a whole: init, verify, du."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from cas.cli.app import Ctx, ReportedFailure, cli, pass_ctx, progress_for
from cas.cli.render import human_bytes

from cas.errors import ArgsError, VerifyError
from cas.store import Store


@cli.command()
@click.argument("path", required=False)
@click.option("--no-derive", is_flag=True,
              help="Never store a tensor as its difference from the previous version: "
                   "more space for fine-tunes and dtype conversions, faster restores of them.")
@pass_ctx
def init(ctx: Ctx, path: str | None, no_derive: bool) -> None:
    """Create a store at PATH (default: --store, $CAS_HOME or the XDG data directory)."""
    target = Path(path) if path else ctx.store_path
    store = Store.init(target, derive=not no_derive)
    ctx.out.result({"store": str(store.path), "format_version": store.config.version,
                    "chunker": store.config.chunker,
                    "derive": store.config.derives},
                   f"initialized cas store at {store.path}")


@cli.command()
@click.argument("spec", metavar="[NAME[@V]]", required=False)
@click.option("--all", "all_", is_flag=True, help="Verify every object and every version.")
@click.option("--repair", is_flag=True,
              help="With --all: rebuild missing or damaged pack indexes from their packs.")
@pass_ctx
def verify(ctx: Ctx, spec: str | None, all_: bool, repair: bool) -> None:
    """Verify one version, or with --all the whole store; name every bad chunk."""
    if bool(spec) == all_:
        raise ArgsError("give either NAME[@V] or --all")
    with ctx.open() as store, progress_for(ctx) as bar:
        report = store.verify(spec, bar, repair=repair)
    for pack_id in report.repaired_indexes:
        ctx.out.note(f"rebuilt the index of pack {pack_id}")
    if not report.ok:
        if not ctx.out.json:
            for b in report.bad_objects:
                sys.stderr.write(f"bad chunk {b.id} in pack {b.pack}: {b.reason}\n")
            for bv in report.broken_versions:
                sys.stderr.write(f"broken version {bv.version}: {', '.join(bv.files) or '-'}\n")
                for r in bv.reasons:
                    sys.stderr.write(f"    {r}\n")
            for p in report.problems:
                sys.stderr.write(f"problem: {p}\n")
        raise ReportedFailure(VerifyError(report.summary()), {"report": report})
    ctx.out.result(report, report.summary())


@cli.command()
@click.argument("name", required=False)
@pass_ctx
def du(ctx: Ctx, name: str | None) -> None:
    """Disk usage of the store or of model NAME: logical, stored, unique and shared bytes."""
    with ctx.open() as store:
        u = store.du(name)
    lines = [(f"{u.scope}: logical {human_bytes(u.logical)}, stored {human_bytes(u.stored)} "
             f"(unique {human_bytes(u.unique)}, shared {human_bytes(u.shared)}), "
             f"dedupe {u.dedupe_ratio:.2f}x")]
    for v in u.versions:
        lines.append(f"  {v.version:<40} logical {human_bytes(v.logical):>10}  "
                     f"stored, new to this model {human_bytes(v.new_stored):>10}")
    if name is None:
        lines.append(f"  pack files on disk: {human_bytes(u.pack_bytes)}")
    ctx.out.result(u, lines)
