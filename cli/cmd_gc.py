"""``cas gc``: delete what no version needs."""

from __future__ import annotations

import click
import msgspec
from cas.cli.app import Ctx, ReportedFailure, cli, pass_ctx, progress_for
from cas.cli.render import human_bytes

from cas.errors import ArgsError
from cas.gc import DEFAULT_GRACE, DEFAULT_REPACK_THRESHOLD, GcOptions, collect
from cas.settings import parse_duration


def _duration(value: str | None, flag: str) -> float | None:
    if value is None:
        return None
    try:
        return float(parse_duration(value))
    except ArgsError as exc:
        raise ArgsError(f"{flag}: {exc.message}") from None


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; change nothing.")
@click.option("--grace", metavar="DURATION",
              help=f"Never delete or rewrite packs younger than this (default {DEFAULT_GRACE}).")
@click.option("--expire-removed", metavar="DURATION",
              help="Keep removed versions' data only if removed less than this ago "
                   "(default: the restore_window setting).")
@click.option("--now", "now_", is_flag=True,
              help="Grace 0 and removed versions expire at once: reclaim everything "
                   "unreachable now (a full disk; tests).")
@click.option("--repack-threshold", type=click.FloatRange(0.0, 1.0), metavar="FRACTION",
              default=DEFAULT_REPACK_THRESHOLD, show_default=True,
              help="Rewrite a pack whose dead share of bytes is above this.")
@click.option("--quota", metavar="SIZE",
              help="Keep the store folder under SIZE (bytes, or 20G, 1.5TiB, 800MB): drop the "
                   "content of the least recently used versions that have copies elsewhere "
                   "first (default: the quota setting).")
@pass_ctx
def gc(ctx: Ctx, dry_run: bool, grace: str | None, expire_removed: str | None, now_: bool,
       repack_threshold: float, quota: str | None) -> None:
    """Delete packs that hold nothing a version needs, and rewrite mostly-dead ones.

    Live: every live, tagged or pinned version and every version removed within the restore
    window, with everything they need (derived chunks' bases included). Safe while adds
    run, on this host or others sharing the store: see docs/format.md, "Garbage
    collection". Nothing is deleted if any of it cannot be read (run 'cas verify --all').
    Retention rules stored with 'cas retain --set' are applied first.

    With a quota (--quota, or 'cas config set quota 200G'), versions are dropped first,
    least recently used first (checkout, cat, get and arrival count as uses), each only if
    numcopies/mincopies copies exist elsewhere ('cas copies'), never a version pinned for this
    store or in use; then every pack holding a dead byte is rewritten. Exits E_DISK, naming
    what it could not drop and why, if the store is still over the quota.

    \b
    Examples:
      cas gc --dry-run
      cas gc --now
      cas gc --quota 200G --dry-run
    """
    g = _duration(grace, "--grace")
    e = _duration(expire_removed, "--expire-removed")
    if now_:
        if grace is not None or expire_removed is not None:
            raise ArgsError("--now sets --grace and --expire-removed to 0: give one or the "
                            "others")
        g = e = 0.0
    options = GcOptions(dry_run=dry_run, grace=g, expire_removed=e,
                        repack_threshold=repack_threshold)
    with ctx.open() as store:
        limit = _quota(store, quota)
        if limit is not None:
            _gc_quota(ctx, store, limit, options)
            return
        with progress_for(ctx) as bar:
            options = msgspec.structs.replace(options, wait=store.lock_timeout)
            r = collect(store, options, bar)
    verb = "would reclaim" if r.dry_run else "reclaimed"
    roots = ", ".join(f"{n} {why}" for why, n in sorted(r.roots.items())) or "none"
    lines = [
        f"{verb} {human_bytes(r.reclaimed)} of {human_bytes(r.bytes_before)} in packs "
        f"(live {human_bytes(r.live_bytes)}, dead {human_bytes(r.dead_bytes)})",
        f"  versions kept: {roots}",
    ]
    if r.dry_run:
        acts: dict[str, int] = {}
        for p in r.packs:
            acts[p.action] = acts.get(p.action, 0) + 1
        lines.append("  packs: " + ", ".join(f"{n} {a}" for a, n in sorted(acts.items())))
    else:
        lines.append(f"  packs: {r.packs_deleted} deleted ({r.packs_repacked} of them "
                     f"repacked into {r.packs_written}), {r.packs_after} now")
        if r.registry_objects_pruned:
            lines.append(f"  registry objects pruned: {r.registry_objects_pruned}")
    if r.retention_removed:
        lines.append(f"  retention rules {'would remove' if r.dry_run else 'removed'} "
                     f"{r.retention_removed} versions (restorable for the restore window)")
    if r.dead_kept:
        lines.append(f"  dead bytes left in packs kept (young or below the repack "
                     f"threshold): {human_bytes(r.dead_kept)}")
    ctx.out.result(r, lines)


def _quota(store, flag: str | None) -> int | None:  # type: ignore[no-untyped-def]
    from cas.settings import parse_size, quota_bytes

    if flag is not None:
        try:
            return parse_size(flag)
        except ArgsError as exc:
            raise ArgsError(f"--quota: {exc.message}") from None
    return quota_bytes(store.settings.get("quota"))


def _gc_quota(ctx: Ctx, store, quota: int, options: GcOptions) -> None:  # type: ignore[no-untyped-def]
    from cas import evict
    from cas.errors import error_of_code
    from cas.gc import DEFAULT_GRACE

    grace = options.grace if options.grace is not None else float(
        parse_duration(DEFAULT_GRACE))
    with progress_for(ctx) as bar:
        if options.dry_run:
            p = evict.plan(store, quota, grace=grace, progress=bar)
            result: object = p
            over = max(0, p.size - p.predicted - quota)
        else:
            r = evict.run(store, quota, grace=grace, wait=store.lock_timeout, progress=bar)
            p, result, over = r.plan, r, r.over_by
    lines = [f"store {human_bytes(p.size)}, quota {human_bytes(quota)}; gc alone frees "
             f"{human_bytes(p.garbage)}"]
    for c in p.drops:
        lines.append(f"  {'would drop' if options.dry_run else 'drop'} {c.version}: frees "
                     f"{human_bytes(c.frees)}")
    for c in p.skipped:
        lines.append(f"  kept {c.version}: {c.skip}")
    if options.dry_run:
        lines.append(f"would free {human_bytes(p.predicted)} ({p.predicted} bytes)")
    else:
        for c in r.refused:
            lines.append(f"  refused {c.version}: {c.skip}")
        lines.append(f"freed {human_bytes(r.freed)} ({r.freed} bytes; predicted "
                     f"{p.predicted}); store now {human_bytes(r.size_after)}")
    if over:
        if not (ctx.out.json or ctx.out.quiet):
            for line in lines:
                click.echo(line)
        why = [f"{c.version}: {c.skip}" for c in
               [*p.skipped, *([] if options.dry_run else r.refused)]]
        raise ReportedFailure(error_of_code("E_DISK", (
            f"{'would stay' if options.dry_run else 'still'} {over} bytes over the quota"
            + (f"; not dropped: {'; '.join(why[:5])}" if why else ""))), {"result": result})
    ctx.out.result(result, lines)
