"""Commands about pins: pin, unpin, pins (see :mod:`cas.pins`)."""

from __future__ import annotations

import click
from cas.cli.app import Ctx, cli, pass_ctx
from cas.cli.complete import complete_model, complete_spec
from cas.cli.render import format_table, human_time, short_id


def _where(scopes: list[str], here: str | None) -> str:
    """``everywhere``, ``for this store`` or ``for store <uuid>`` (joined)."""
    from cas.pins import scope_text

    return ", ".join(("" if s == "all" else "for ") + scope_text(s, here) for s in scopes)


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.option("--everywhere", is_flag=True,
              help="Pin for every store that shares this registry, not only this one.")
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who pins.")
@pass_ctx
def pin(ctx: Ctx, spec: str, everywhere: bool, author: str | None) -> None:
    """Pin version NAME[@V] (default: the latest) so that this store keeps it: garbage
    collection, eviction and retention leave it alone, and 'cas rm' needs --force. The pin
    is a ref in the registry (refs/pins/...), not a commit of the model; --everywhere makes
    it apply to every store the registry is synced to. Pinning twice changes nothing.

    \b
    Examples:
      cas pin org/model@prod
      cas pin org/model@3 --everywhere
    """
    from cas.pins import pin as pin_version
    from cas.pins import this_scope

    with ctx.open() as store:
        r = pin_version(store, spec, everywhere=everywhere, author=author)
        here = this_scope(store)
    text = (f"pinned {r.name}@{r.seq} ({short_id(r.id)}) {_where(r.scopes, here)}"
            if r.changed else f"{r.name}@{r.seq} is pinned already; nothing to do")
    ctx.out.result(r, text)


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.option("--everywhere", is_flag=True,
              help="Delete the pin for every store (without it: the pin for this store).")
@pass_ctx
def unpin(ctx: Ctx, spec: str, everywhere: bool) -> None:
    """Delete the pin of version NAME[@V] (default: the latest) for this store, or with
    --everywhere the pin for every store. A removed version can be unpinned too.

    \b
    Examples:
      cas unpin org/model@prod
      cas unpin org/model@3 --everywhere
    """
    from cas.pins import this_scope
    from cas.pins import unpin as unpin_version

    with ctx.open() as store:
        r = unpin_version(store, spec, everywhere=everywhere)
        here = this_scope(store)
    ctx.out.result(r, f"unpinned {r.name}@{r.seq} ({short_id(r.id)}) {_where(r.scopes, here)}")


@cli.command()
@click.argument("pattern", required=False, shell_complete=complete_model)
@pass_ctx
def pins(ctx: Ctx, pattern: str | None) -> None:
    """List pins (of models matching the glob PATTERN): the version, its state here (live,
    removed, unknown: not in this registry), the store it applies to, who pinned it and when.

    \b
    Examples:
      cas pins
      cas pins 'org/*' --json
    """
    from cas.pins import list_pins, scope_text, this_scope

    with ctx.open() as store:
        listing = list_pins(store, pattern)
        here = this_scope(store)
    rows = [[f"{p.model}@{p.seq}" if p.seq is not None else p.model, short_id(p.id), p.state,
             scope_text(p.scope, here) + ("" if p.applies_here else " (not here)"),
             human_time(p.created_at) if p.created_at else "-",
             (p.by or "-").split(" <", 1)[0]] for p in listing.pins]
    lines = format_table(["VERSION", "ID", "STATE", "FOR", "PINNED", "BY"], rows)
    ctx.out.result(listing, lines if rows else "no pins")
