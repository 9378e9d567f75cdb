"""``cas remote``: name the stores this one syncs with."""

from __future__ import annotations

import click
from cas.cli.app import Ctx, cli, pass_ctx

from cas import remotes as rem


@cli.group("remote", invoke_without_command=False)
def remote_group() -> None:
    """Name other stores (a folder, ssh, http) to push to and pull from.

    Wherever a command takes a REMOTE, a configured name or a URL works.

    \b
    Examples:
      cas remote add usb /media/usb/cas
      cas remote add train-03 ssh://ml@train-03/data/cas
      cas remote list
    """


@remote_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--cas-command", metavar="CMD", default="",
              help="The cas command on the far side of an ssh remote (default: cas).")
@pass_ctx
def remote_add(ctx: Ctx, name: str, url: str, cas_command: str) -> None:
    """Configure remote NAME at URL: a folder path, ssh://[user@]host[:port]/path,
    [user@]host:path, or http(s)://host[:port]/.

    \b
    Examples:
      cas remote add usb /media/usb/cas
      cas remote add fleet https://cas.internal:8443/
    """
    with ctx.open() as store, store.writing():
        remote = rem.add(store.backend, name, url, cas_command)
    kind = rem.parse_url(remote.url).kind
    ctx.out.result({"name": name, "url": remote.url, "kind": kind,
                    "cas_command": remote.cas_command},
                   f"remote {name}: {remote.url} ({kind})")


@remote_group.command("remove")
@click.argument("name")
@pass_ctx
def remote_remove(ctx: Ctx, name: str) -> None:
    """Forget remote NAME (nothing on the remote changes).

    \b
    Examples:
      cas remote remove usb
    """
    with ctx.open() as store, store.writing():
        gone = rem.remove(store.backend, name)
    ctx.out.result({"name": name, "url": gone.url}, f"removed remote {name} ({gone.url})")


@remote_group.command("list")
@pass_ctx
def remote_list(ctx: Ctx) -> None:
    """List the configured remotes with their URLs.

    \b
    Examples:
      cas remote list --json
    """
    with ctx.open() as store:
        remotes = rem.load(store.backend)
    rows = [{"name": n, "url": r.url, "kind": rem.parse_url(r.url).kind,
             "cas_command": r.cas_command} for n, r in sorted(remotes.items())]
    width = max((len(r["name"]) for r in rows), default=0)
    ctx.out.result({"remotes": rows},
                   [f"{r['name']:<{width}}  {r['url']}  ({r['kind']})" for r in rows])


@remote_group.command("show")
@click.argument("name")
@pass_ctx
def remote_show(ctx: Ctx, name: str) -> None:
    """Show remote NAME (or how a URL given instead would be reached).

    \b
    Examples:
      cas remote show usb
    """
    with ctx.open() as store:
        named, parsed, remote = rem.resolve(store.backend, name)
    doc = {"name": named, "url": parsed.url, "kind": parsed.kind, "host": parsed.host,
           "user": parsed.user, "port": parsed.port, "path": parsed.path,
           "cas_command": remote.cas_command}
    lines = [f"{k:<12} {v}" for k, v in doc.items() if v not in ("", None)]
    ctx.out.result(doc, lines)


@remote_group.command("token")
@click.argument("name")
@click.option("--forget", is_flag=True, help="Forget the token kept for NAME.")
@pass_ctx
def remote_token(ctx: Ctx, name: str, forget: bool) -> None:
    """Keep the bearer token for http remote NAME, read from stdin (so it never shows in a
    process listing or shell history); stored with mode 0600. CAS_TOKEN overrides it.

    \b
    Examples:
      cas remote token fleet < fleet.token
    """
    import sys

    from cas import tokens

    with ctx.open() as store, store.writing():
        rem.resolve(store.backend, name)
        if name not in rem.load(store.backend):
            from cas.errors import NotFoundError

            raise NotFoundError(f"no remote {name!r}")
        token = None if forget else sys.stdin.readline()
        tokens.set_credential(store.path, name, token)
    ctx.out.result({"name": name, "token_kept": not forget},
                   f"{'forgot' if forget else 'kept'} the token for remote {name}")
