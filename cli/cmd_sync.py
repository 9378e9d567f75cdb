"""``cas push``, ``fetch``, ``pull`` and ``clone``: models between stores."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from cas.cli.app import Ctx, NonEmptyPath, ReportedFailure, cli, pass_ctx, progress_for
from cas.cli.render import count, human_bytes

from cas import remotes as rem
from cas.errors import ArgsError, ConflictError, error_of_code
from cas.store import Store

if TYPE_CHECKING:
    from cas import sync


def default_remote(store: Store, spec: str | None) -> str:
    """``spec``, else ``origin`` if configured, else the only configured remote.

    Raises:
        ArgsError: no remote given and none (or several, without ``origin``) configured.
    """
    configured = rem.load(store.backend)
    name = rem.default_name(configured, spec)
    if name is not None:
        return name
    names = sorted(configured)
    raise ArgsError("name a remote: " + ("none is configured ('cas remote add NAME URL')"
                                         if not names else f"configured: {', '.join(names)}"))


def _report(ctx: Ctx, r: sync.SyncResult, verb: str, extra: list[str] | None = None) -> None:
    where = f"{r.remote} ({r.url})" if r.remote else r.url
    lines = [f"{verb} {where}"]
    for ref in r.refs:
        label = ref.ref.removeprefix("refs/")
        reason = f": {ref.reason}" if ref.reason else ""
        lines.append(f"  {ref.status:<11} {label}{reason}")
    moved = (f"{count(r.objects_sent, 'object')}, {human_bytes(r.bytes_sent)} in "
             f"{count(r.packs, 'pack')}; {r.objects_skipped} already there; "
             f"{count(r.registry_objects, 'registry object')}; {r.seconds:.2f} s")
    lines.append("  " + moved)
    lines += extra or []
    rejected = r.rejected
    if rejected:
        if not (ctx.out.json or ctx.out.quiet):
            for w in r.warnings:
                sys.stderr.write(f"cas: warning: {w.message} [{w.code}]\n")
            for line in lines:
                sys.stdout.write(line + "\n")
        first = rejected[0]
        # A refusal for bad bytes or a malformed history keeps its own code (E_VERIFY...);
        # one for history that moved is E_CONFLICT.
        code = first.reason.split(":", 1)[0]
        message = f"{count(len(rejected), 'ref')} rejected; {first.ref}: {first.reason}"
        error = (error_of_code(code, message) if code.startswith("E_") and code != "E_CONFLICT"
                 else ConflictError(message))
        raise ReportedFailure(error, {"result": r})
    ctx.out.result(r, lines)


@cli.command()
@click.argument("remote", required=False)
@click.argument("names", nargs=-1, metavar="[NAME[@V]]...")
@click.option("--force", is_flag=True,
              help="Move refs that do not fast-forward and replace differing tags and pins.")
@pass_ctx
def push(ctx: Ctx, remote: str | None, names: tuple[str, ...], force: bool) -> None:
    """Send models (default: every model), with their tags and pins, to REMOTE; NAME@V
    sends the model's registry entries and the content of version V only.

    Only the objects REMOTE lacks move (a fine-tune of a model it holds sends little), in
    transfer packs it verifies before they become visible; then its refs move by
    compare-and-swap, fast-forward only unless --force. A folder where no store exists
    becomes one, with this store's chunker parameters.

    \b
    Examples:
      cas push usb
      cas push /media/usb/cas org/bert
      cas push origin org/bert --json
    """
    from cas import sync

    with ctx.open() as store, progress_for(ctx) as bar:
        r = sync.push(store, default_remote(store, remote), list(names), force=force,
                      progress=bar)
    _report(ctx, r, "pushed to")


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.option("--verify", "verify_", is_flag=True,
              help="Ask each configured remote whether it holds the content (network).")
@pass_ctx
def whereis(ctx: Ctx, spec: str, verify_: bool) -> None:
    """Which stores hold the content of NAME's versions (or of NAME@V): UUID, the remotes
    that reach it here, description, and when it last recorded what it holds.

    Read from the location log that syncs carry (a store learns of stores it never
    contacted); no network unless --verify.

    \b
    Examples:
      cas whereis org/bert@prod
      cas whereis org/bert --verify --json
    """
    from cas.cli.render import human_time, short_id
    from cas.locations import whereis as find

    with ctx.open() as store:
        r = find(store, spec, verify_)
    lines = []
    for w in r.versions:
        lines.append(f"{w.version} ({short_id(w.id)}): "
                     f"{count(len(w.stores), 'store') if w.stores else 'no store known'}")
        for h in w.stores:
            who = "here" if h.here else (", ".join(h.remotes) or "-")
            checked = {True: "  verified", False: "  NOT there", None: ""}[h.verified]
            seen = human_time(h.updated_at) if h.updated_at else "-"
            lines.append(f"  {h.uuid}  {who:<12} {h.description or '-':<20} seen {seen}"
                         f"{checked}")
    ctx.out.result(r, lines)


@cli.command()
@click.argument("remote", required=False)
@pass_ctx
def fetch(ctx: Ctx, remote: str | None) -> None:
    """Record what REMOTE holds (its models, tags and pins, as remote-tracking refs with
    their registry objects); no content moves.

    \b
    Examples:
      cas fetch origin
    """
    from cas import sync

    with ctx.open() as store:
        r = sync.fetch(store, default_remote(store, remote))
    _report(ctx, r, "fetched from")


@cli.command()
@click.argument("remote", required=False)
@click.argument("names", nargs=-1, metavar="[NAME[@V]]...")
@click.option("--rebase", is_flag=True,
              help="When both stores added versions to a model, renumber this store's after "
                   "the remote's (ids kept; old and new numbers printed and recorded).")
@click.option("--force", is_flag=True,
              help="With --rebase: renumber also versions that already left this store.")
@pass_ctx
def pull(ctx: Ctx, remote: str | None, names: tuple[str, ...], rebase: bool,
         force: bool) -> None:
    """Fetch, then bring models (default: every model REMOTE has) here: the content of
    their versions this store lacks (only the objects it lacks, verified), then their refs,
    fast-forward only. NAME@V brings version V's content only (the others are registered,
    with their content elsewhere).

    A model both stores changed: this store's annotations, tags, removals (anything that
    adds no version) are replayed on the remote's history. If both added versions, the
    model is refused and left as it is, unless --rebase: this store's new versions are then
    renumbered after the remote's, keeping their ids (never those already pushed
    elsewhere, without --force).

    \b
    Examples:
      cas pull origin
      cas pull train-03 org/bert --rebase
    """
    from cas import sync

    with ctx.open() as store, progress_for(ctx) as bar:
        if force and not rebase:
            raise ArgsError("--force goes with --rebase")
        r = sync.pull(store, default_remote(store, remote), list(names), progress=bar,
                      rebase=rebase, force=force)
    _report(ctx, r, "pulled from")


@cli.command()
@click.argument("url")
@click.argument("path", required=False, type=NonEmptyPath(path_type=Path))
@click.option("--description", metavar="TEXT", help="Description of the new store.")
@click.option("--no-content", is_flag=True,
              help="The registry only: every version's content stays on the remote until a "
                   "checkout or 'cas pull origin NAME@V' brings it.")
@pass_ctx
def clone(ctx: Ctx, url: str, path: Path | None, description: str | None,
          no_content: bool) -> None:
    """Make a new store at PATH (default: the --store path) from the store at URL: the
    same chunker parameters, URL as remote 'origin', every model pulled.

    \b
    Examples:
      cas clone /media/usb/cas ./store
      cas clone --no-content ssh://ml@train-03/data/cas ./catalog
      cas --store ~/cas clone ssh://ml@train-03/data/cas
    """
    from cas import sync

    target = path or ctx.store_path
    with progress_for(ctx) as bar:
        store, r = sync.clone(url, target, bar, description, content=not no_content)
    store.close()
    _report(ctx, r, f"cloned into {target} from", [])


@cli.command()
@click.argument("path", required=False)
@click.option("--stdio", is_flag=True, help="Speak the sync protocol on stdin and stdout "
                                            "(what an ssh remote runs).")
@click.option("--http", "http_addr", metavar="HOST:PORT",
              help="Serve HTTP on HOST:PORT (bearer tokens from 'cas token').")
@click.option("--tls-cert", metavar="FILE", help="Serve HTTPS with this certificate chain.")
@click.option("--tls-key", metavar="FILE", help="The private key of --tls-cert.")
@click.option("--read-only", is_flag=True, help="Refuse every write.")
@click.option("--append-only", is_flag=True,
              help="Refuse forced ref updates: history is only ever added to (backups).")
@click.option("--restrict-to", metavar="DIR", multiple=True,
              help="Serve only stores under DIR (repeatable); for a forced command in "
                   "authorized_keys, where PATH comes from SSH_ORIGINAL_COMMAND.")
@click.option("--raw-storage", is_flag=True,
              help="Also answer the storage verbs (read, write, swap, delete of raw bytes "
                   "under PATH) for cas.storage.remote: unchecked bytes, trusted clients only.")
def serve(path: str | None, stdio: bool, http_addr: str | None, tls_cert: str | None,
          tls_key: str | None, read_only: bool, append_only: bool,
          restrict_to: tuple[str, ...], raw_storage: bool) -> None:
    """Offer the store at PATH to other hosts' push, pull, fetch and clone.

    --stdio is what an ssh remote runs on the far side; to confine a key to stores under
    one folder, give it a forced command in authorized_keys:
    command="cas serve --stdio --restrict-to /data/cas",restrict ssh-ed25519 AAAA...
    --http serves a fleet: every request needs a bearer token made with
    'cas --store PATH token add' (read or write), and is refused without one.

    \b
    Examples:
      cas serve --http 0.0.0.0:8750 /data/cas
      cas serve --stdio --restrict-to /data/cas
    """
    from cas.serve import resolve_path, serve_stdio

    if stdio == bool(http_addr):
        raise ArgsError("give one of --stdio and --http HOST:PORT")
    if (tls_cert is None) != (tls_key is None) or (tls_cert and not http_addr):
        raise ArgsError("--tls-cert and --tls-key go together, with --http")
    if stdio:
        serve_stdio(path, restrict_to, read_only=read_only, append_only=append_only,
                    raw_storage=raw_storage)
        from cas.cli.prestart import exit_after_serving

        exit_after_serving()
        return
    from cas.http import make_server

    target = resolve_path(path, restrict_to)
    Store.open(target).close()  # refuse a path that is not a store before listening
    server = make_server(http_addr, target, read_only=read_only,  # type: ignore[arg-type]
                         append_only=append_only, tls_cert=tls_cert, tls_key=tls_key,
                         raw_storage=raw_storage)
    host, port = server.server_address[:2]
    scheme = "https" if tls_cert else "http"
    sys.stderr.write(f"cas: serving {target} on {scheme}://{host}:{port}/\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@cli.group("token", invoke_without_command=False)
def token_group() -> None:
    """Bearer tokens that 'cas serve --http' accepts for this store (deny by default).

    \b
    Examples:
      cas --store /data/cas token add fleet-readers
      cas --store /data/cas token add ci --write
    """


@token_group.command("add")
@click.argument("name")
@click.option("--write", is_flag=True, help="May push (default: read only).")
@pass_ctx
def token_add(ctx: Ctx, name: str, write: bool) -> None:
    """Make token NAME and print it (once: only its hash is kept).

    \b
    Examples:
      cas token add fleet-readers
    """
    from cas import tokens

    with ctx.open() as store, store.writing():
        token = tokens.add(store.path, name, "write" if write else "read")
    ctx.out.result({"name": name, "access": "write" if write else "read", "token": token},
                   token)


@token_group.command("list")
@pass_ctx
def token_list(ctx: Ctx) -> None:
    """The tokens this store accepts (names and access, never the tokens).

    \b
    Examples:
      cas token list --json
    """
    from cas import tokens

    with ctx.open() as store:
        found = tokens.list_tokens(store.path)
    ctx.out.result({"tokens": [{"name": t.name, "access": t.access,
                                "created_at": t.created_at} for t in found]},
                   [f"{t.name}\t{t.access}\t{t.created_at}" for t in found])


@token_group.command("remove")
@click.argument("name")
@pass_ctx
def token_remove(ctx: Ctx, name: str) -> None:
    """Stop accepting token NAME (a running server refuses it from its next request on).

    \b
    Examples:
      cas token remove ci
    """
    from cas import tokens

    with ctx.open() as store, store.writing():
        tokens.remove(store.path, name)
    ctx.out.result({"name": name, "removed": True}, f"removed token {name}")
