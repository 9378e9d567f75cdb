"""``cas state export`` and ``cas bundle create|verify|import|list-heads``: air-gapped sync."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from cas.cli.app import Ctx, ReportedFailure, cli, pass_ctx, progress_for
from cas.cli.render import count, human_bytes

from cas.errors import ArgsError, error_of_code, from_os_error

if TYPE_CHECKING:
    from cas import bundle as bd


@cli.group("state", invoke_without_command=False)
def state_group() -> None:
    """What this store holds, for a site that cannot be reached over a network.

    \b
    Examples:
      cas state export /media/usb/site-state.json
    """


@state_group.command("export")
@click.argument("file")
@pass_ctx
def state_export(ctx: Ctx, file: str) -> None:
    """Write this store's state (UUID, model tips, versions registered without content) to
    FILE ('-' for stdout), for 'cas bundle create --since FILE' elsewhere.

    \b
    Examples:
      cas state export /media/usb/site-state.json
    """
    from cas import bundle as bd

    with ctx.open() as store:
        data = bd.export_state(store)
    if file == "-":
        sys.stdout.buffer.write(data)
        return
    from cas.fsutil import atomic_write

    atomic_write(Path(file).absolute(), data)
    ctx.out.result({"path": file, "bytes": len(data)},
                   f"wrote {file}: {human_bytes(len(data))}")


@cli.group("bundle", invoke_without_command=False)
def bundle_group() -> None:
    """Models in one file, for sites without a network: create, verify, import.

    \b
    Examples:
      cas bundle create /media/usb/models.cbundle --since /media/usb/site-state.json
      cas bundle import /media/usb/models.cbundle
    """


def _state(path: str) -> bd.SiteState:
    from cas import bundle as bd

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise from_os_error(exc, f"reading {path}") from None
    return bd.read_state(data)


def _lines(r: bd.BundleResult, verb: str) -> list[str]:
    lines = [f"{verb} {r.path}"]
    lines += [f"  {x.status:<11} {x.ref.removeprefix('refs/')}"
              + (f": {x.reason}" if x.reason else "") for x in r.refs]
    lines.append(f"  {count(r.objects, 'object')}, {human_bytes(r.bytes)}; "
                 f"{count(r.registry_objects, 'registry object')}; {r.seconds:.2f} s")
    return lines


def _fail_on_rejected(ctx: Ctx, r: bd.BundleResult, lines: list[str]) -> None:
    rejected = [x for x in r.refs if x.status == "rejected"]
    if not rejected:
        return
    if not (ctx.out.json or ctx.out.quiet):
        for line in lines:
            sys.stdout.write(line + "\n")
    first = rejected[0]
    code = first.reason.split(":", 1)[0]
    message = f"{count(len(rejected), 'ref')} rejected; {first.ref}: {first.reason}"
    raise ReportedFailure(error_of_code(code if code.startswith("E_") else "E_CONFLICT",
                                        message), {"result": r})


@bundle_group.command("create")
@click.argument("file")
@click.argument("names", nargs=-1, metavar="[NAME[@V]]...")
@click.option("--since", "since", metavar="STATE_FILE",
              help="Only what the site that exported STATE_FILE lacks.")
@click.option("--since-site", metavar="UUID",
              help="Only what a site lacks once it imported the last bundle made for it here.")
@pass_ctx
def bundle_create(ctx: Ctx, file: str, names: tuple[str, ...], since: str | None,
                  since_site: str | None) -> None:
    """Write models (default: all) to FILE ('-' for stdout) in one pass: everything, or only
    what a site lacks (--since its state file, or --since-site after a first bundle).

    \b
    Examples:
      cas bundle create /media/usb/models.cbundle --since /media/usb/site-state.json
      cas bundle create - org/bert --since-site 0cfc7f60 > bert.cbundle
    """
    from cas import bundle as bd

    if since and since_site:
        raise ArgsError("give --since or --since-site, not both")
    state = _state(since) if since else None
    with ctx.open() as store, progress_for(ctx) as bar:
        r = bd.create(store, file, list(names), state, since_site, bar)
    lines = _lines(r, "wrote")
    if r.site:
        lines.append(f"  site {r.site}: next time, --since-site {r.site[:8]}")
    if file == "-":
        ctx.out.note("\n".join(lines))
        _fail_on_rejected(ctx, r, [])
        return
    _fail_on_rejected(ctx, r, lines)
    ctx.out.result(r, lines)


@bundle_group.command("import")
@click.argument("file")
@click.option("--force", is_flag=True, help="Move refs that do not fast-forward.")
@pass_ctx
def bundle_import(ctx: Ctx, file: str, force: bool) -> None:
    """Import a bundle: prerequisites checked before anything is written, every object
    verified, packs durable before refs move (fast-forward only unless --force). A re-run
    after an interruption completes it.

    \b
    Examples:
      cas bundle import /media/usb/models.cbundle
    """
    from cas import bundle as bd

    with ctx.open(create=True) as store, progress_for(ctx) as bar:
        r = bd.import_bundle(store, file, force=force, progress=bar)
    lines = _lines(r, "imported")
    _fail_on_rejected(ctx, r, lines)
    ctx.out.result(r, lines)


@bundle_group.command("verify")
@click.argument("file")
@click.option("--no-store", is_flag=True,
              help="Check the file alone, not against the store.")
@pass_ctx
def bundle_verify(ctx: Ctx, file: str, no_store: bool) -> None:
    """Check a bundle: its format, checksum trailer and every object's hash; with the store
    (unless --no-store), also that its prerequisites are here and what import would do.

    \b
    Examples:
      cas bundle verify /media/usb/models.cbundle
      cas bundle verify models.cbundle --no-store --json
    """
    from cas import bundle as bd

    store = None
    path = ctx.store_path
    if not no_store and (path / "config.json").exists():
        store = ctx.open()
    try:
        c = bd.verify_bundle(file, store)
    finally:
        if store is not None:
            store.close()
    lines = [f"{file}: {count(c.objects, 'object')} ({human_bytes(c.bytes)}) and "
             f"{count(c.registry_objects, 'registry object')} verified"]
    if c.unchecked_derived:
        lines.append(f"  {count(c.unchecked_derived, 'derived chunk')} can be checked only "
                     "against the receiving store (their bases are not in the bundle)")
    for w in c.would:
        lines.append(f"  import would: {w.status:<11} {w.ref.removeprefix('refs/')}"
                     + (f": {w.reason}" if w.reason else ""))
    if c.missing:
        if not (ctx.out.json or ctx.out.quiet):
            for line in lines:
                sys.stdout.write(line + "\n")
        raise ReportedFailure(error_of_code("E_NOT_FOUND", f"{file} needs what this store "
                                            f"lacks: {'; '.join(c.missing[:5])}"),
                              {"check": c})
    ctx.out.result(c, lines)


@bundle_group.command("list-heads")
@click.argument("file")
@pass_ctx
def bundle_list_heads(ctx: Ctx, file: str) -> None:
    """The refs a bundle carries, with the values it expects the receiver to hold.

    \b
    Examples:
      cas bundle list-heads /media/usb/models.cbundle
    """
    from cas import bundle as bd

    h = bd.list_heads(file)
    lines = [f"{u.new}  {u.ref}" + (f"  (from {u.old[:12]})" if u.old else "")
             for u in h.refs]
    ctx.out.result(h, lines or "no refs")
