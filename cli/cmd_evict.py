"""``cas get``, ``cas drop``, ``cas copies``, ``cas archive``: content that comes and goes,
never its last copy."""

from __future__ import annotations

import sys

import click
from cas.cli.app import Ctx, ReportedFailure, cli, pass_ctx, progress_for
from cas.cli.render import count, human_bytes

from cas.errors import ArgsError, error_of_code


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.option("--from", "from_", metavar="REMOTE",
              help="Take it from this remote (default: the remotes that hold it, in whereis "
                   "order).")
@pass_ctx
def get(ctx: Ctx, spec: str, from_: str | None) -> None:
    """Bring the content of a version registered here without it (after 'cas drop', a clone
    --no-content or a pull of other versions) from a remote that holds it. Every object is
    verified on arrival; nothing moves if the content is here already.

    \b
    Examples:
      cas get org/bert@3
      cas get org/bert --from nas
    """
    from cas import presence, sync

    with ctx.open() as store:
        version = store.resolve(spec)
        if version.id not in presence.load(store.backend):
            ctx.out.result({"version": version.ref, "status": "present", "objects_sent": 0},
                           [f"{version.ref}: its content is here already"])
            return
        with progress_for(ctx) as bar:
            r = sync.get(store, version, from_, bar)
    ctx.out.result({"version": version.ref, "status": "got", "remote": r.remote or r.url,
                    "objects_sent": r.objects_sent, "bytes_sent": r.bytes_sent},
                   [f"{version.ref}: got {count(r.objects_sent, 'object')} "
                    f"({human_bytes(r.bytes_sent)}) from {r.remote or r.url}"])


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.option("--from", "from_", metavar="REMOTE",
              help="Drop it from this remote instead of here.")
@click.option("--force", is_flag=True,
              help="Ignore numcopies (the known copies); mincopies verified copies are still "
                   "required.")
@click.option("--dry-run", is_flag=True, help="Verify the copies; drop nothing.")
@click.option("--no-gc", is_flag=True, help="Leave the space to the next 'cas gc'.")
@pass_ctx
def drop(ctx: Ctx, spec: str, from_: str | None, force: bool, dry_run: bool,
         no_gc: bool) -> None:
    """Remove a version's content here (or from a remote), keeping its registry entry, only
    if enough other stores hold all of it: numcopies copies known (the location log, and
    those verified now), mincopies of them verified now, each held there so that it cannot
    drop its copy at the same moment (see 'cas copies'). Pinned versions and versions in use
    are refused. The space is reclaimed by a gc right after a drop here.

    \b
    Examples:
      cas drop org/bert@3
      cas drop org/bert@3 --from laptop
    """
    from cas import drop as dr

    with ctx.open() as store:
        r = dr.drop(store, spec, remote=from_, force=force, dry_run=dry_run)
        freed = 0
        if r.dropped and from_ is None and not no_gc:
            from cas.gc import GcOptions, collect
            from cas.settings import parse_duration

            with progress_for(ctx) as bar:
                g = collect(store, GcOptions(repack_threshold=0.0, wait=store.lock_timeout,
                                             grace=float(parse_duration("1h"))), bar)
            freed = g.reclaimed
    verb = "would drop" if dry_run else "dropped"
    lines = [f"{verb} {r.version} from {r.where}: {r.verified} verified, {r.known} known "
             f"copies elsewhere (numcopies {r.numcopies}, mincopies {r.mincopies})"]
    for c in r.copies:
        state = "verified, held" if c.verified else c.note
        lines.append(f"  {c.remote or c.uuid}: {state}")
    if freed:
        lines.append(f"  reclaimed {human_bytes(freed)}")
    ctx.out.result({**_builtins(r), "reclaimed": freed}, lines)


def _builtins(obj: object) -> dict:
    import msgspec

    return msgspec.to_builtins(obj)  # type: ignore[no-any-return]


@cli.command()
@click.option("--numcopies", type=int, help="Copies that must be known elsewhere (default 1).")
@click.option("--mincopies", type=int,
              help="Of those, copies that must be verified live at drop time (default 1).")
@click.option("--trust-source/--no-trust-source", default=None,
              help="Count a pinned Hub revision a version came from as a known copy.")
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who changes it (default: you).")
@pass_ctx
def copies(ctx: Ctx, numcopies: int | None, mincopies: int | None,
           trust_source: bool | None, author: str | None) -> None:
    """Show or set how many copies a drop needs elsewhere. Kept in the registry
    (refs/cas/copies), so the hosts that share it agree; 'git log refs/cas/copies' is the
    history of changes.

    \b
    Examples:
      cas copies
      cas copies --numcopies 2 --mincopies 1
    """
    from cas import copies as cp

    with ctx.open() as store:
        if numcopies is None and mincopies is None and trust_source is None:
            c = cp.load(store.registry)
        else:
            c = cp.set_copies(store, numcopies, mincopies, trust_source, author)
    ctx.out.result(c, [f"numcopies {c.numcopies}, mincopies {c.mincopies}"
                       + (", a pinned Hub source counts as a copy" if c.trust_source else "")])


@cli.command()
@click.option("--to", "to", metavar="REMOTE", required=True,
              help="Where the archived versions go (a configured remote or a URL).")
@click.option("--older-than", metavar="DURATION", required=True,
              help="Versions registered longer ago than this (e.g. 7d, 36h).")
@click.option("--dry-run", is_flag=True, help="List what would be archived; move nothing.")
@pass_ctx
def archive(ctx: Ctx, to: str, older_than: str, dry_run: bool) -> None:
    """Tiering: copy versions registered more than --older-than ago to REMOTE, then drop them
    here (each drop verifies the copy there, as 'cas drop' does). Hot disks keep recent
    checkpoints; the archive keeps them all. Pinned versions stay.

    \b
    Examples:
      cas archive --to cold --older-than 7d --dry-run
      cas archive --to ssh://nas/data/cas --older-than 30d
    """
    from cas import evict
    from cas.settings import parse_duration

    try:
        age = float(parse_duration(older_than))
    except ArgsError as exc:
        raise ArgsError(f"--older-than: {exc.message}") from None
    with ctx.open() as store:
        r = evict.archive(store, to, age, dry_run=dry_run)
    done = [v for v in r.versions if v.status in ("archived", "would archive")]
    lines = [f"{'would archive' if dry_run else 'archived'} to {to}: "
             f"{count(len(done), 'version')}"]
    lines += [f"  {v.version} ({v.age_days:g} days): {v.status}" for v in r.versions]
    failed = [v for v in r.versions if v.status not in ("archived", "would archive")]
    if failed:
        if not (ctx.out.json or ctx.out.quiet):
            for line in lines:
                sys.stdout.write(line + "\n")
        raise ReportedFailure(error_of_code(
            failed[0].status.split(":", 1)[0] if failed[0].status.startswith("E_")
            else "E_CONFLICT", f"{count(len(failed), 'version')} not archived; "
            f"{failed[0].version}: {failed[0].status}"), {"result": r})
    ctx.out.result(r, lines)
