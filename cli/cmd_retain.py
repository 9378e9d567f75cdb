"""``cas retain``: apply a retention policy (keep last N, within a time, best by a metric), or
store one per model pattern for every host and for ``cas gc``."""

from __future__ import annotations

import click
from cas.cli.app import Ctx, cli, pass_ctx
from cas.cli.complete import complete_model
from cas.cli.render import count, format_table, human_time

from cas.errors import ArgsError
from cas.retention import RetentionPlan, make_policy, retain as run_retain
from cas.retention_rules import Rules, clear_rules, load_rules, set_rule, unset_rule


@cli.command()
@click.argument("pattern", metavar="[NAME|GLOB]", required=False, shell_complete=complete_model)
@click.option("--keep-last", type=int, metavar="N", help="Keep the N newest versions.")
@click.option("--keep-within", metavar="DURATION",
              help="Keep versions created within this long before now (7d, 12h, 30m, 2w).")
@click.option("--keep-best", multiple=True, metavar="METRIC[:max|min][:N]",
              help="Keep the N (default 1) versions with the highest (max, the default) or "
                   "lowest (min) value of METRIC (repeatable).")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be removed; write nothing.")
@click.option("--set", "set_", is_flag=True,
              help="Store the rules for NAME|GLOB (default *) instead of applying them.")
@click.option("--unset", is_flag=True, help="Delete the stored rule for NAME|GLOB.")
@click.option("--clear", is_flag=True, help="Delete every stored rule.")
@click.option("--show", is_flag=True, help="List the stored rules.")
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who removes or changes rules.")
@pass_ctx
def retain(ctx: Ctx, pattern: str | None, keep_last: int | None, keep_within: str | None,
           keep_best: tuple[str, ...], dry_run: bool, set_: bool, unset: bool, clear: bool,
           show: bool, author: str | None) -> None:
    """Remove the versions of NAME (or of every model matching GLOB, or of every model) that
    no rule keeps. A version is kept if ANY rule keeps it; tagged and pinned versions and each
    model's latest version are always kept. Versions without the metric are never "best".

    Removals are ordinary 'rm' commits (one per model, shown by 'cas log'); 'cas restore'
    brings them back within the restore window, and garbage collection returns the space
    after it. Without rule flags, the stored rules apply: each model gets the first stored
    rule whose pattern matches it ('cas gc' applies them too).

    \b
    Examples:
      cas retain 'org/run-*' --keep-last 3 --keep-best eval/loss:min --dry-run
      cas retain --set 'org/*' --keep-within 7d --keep-best acc:max:2
    """
    modes = [m for m, on in (("--set", set_), ("--unset", unset), ("--clear", clear),
                             ("--show", show)) if on]
    if len(modes) > 1:
        raise ArgsError(f"{' and '.join(modes)} cannot be combined")
    has_rules = keep_last is not None or keep_within is not None or bool(keep_best)
    if modes and dry_run:
        raise ArgsError(f"--dry-run applies to removals, not to {modes[0]}")
    if modes and modes[0] != "--set" and has_rules:
        raise ArgsError(f"{modes[0]} takes no --keep-* rule")
    if (clear or show) and pattern is not None:
        raise ArgsError(f"{modes[0]} takes no NAME|GLOB")
    if unset and pattern is None:
        raise ArgsError("--unset needs the NAME|GLOB of the rule to delete")
    policy = make_policy(keep_last, keep_within, keep_best) if has_rules else None
    with ctx.open() as store:
        if show:
            _rules_result(ctx, load_rules(store.registry), "")
        elif set_:
            if policy is None:
                raise ArgsError("--set needs a rule (--keep-last, --keep-within, --keep-best)")
            r = set_rule(store, pattern or "*", policy, author)
            _rules_result(ctx, r, f"stored rule for {pattern or '*'}" if r.changed
                          else f"the rule for {pattern or '*'} is already stored; nothing to do")
        elif unset:
            assert pattern is not None
            _rules_result(ctx, unset_rule(store, pattern, author), f"deleted rule for {pattern}")
        elif clear:
            r = clear_rules(store, author)
            _rules_result(ctx, r, "deleted every stored rule" if r.changed
                          else "no rules stored; nothing to do")
        else:
            plan = run_retain(store, pattern, policy, dry_run=dry_run, author=author)
            ctx.out.result(plan, _plan_text(plan))


def _rules_result(ctx: Ctx, r: Rules, headline: str) -> None:
    lines = [headline] if headline else []
    if r.rules:
        lines += format_table(["#", "PATTERN", "POLICY"],
                              [[str(i), rule.pattern, rule.policy.text()]
                               for i, rule in enumerate(r.rules, 1)], right=frozenset({0}))
    elif not headline:
        lines.append("no retention rules stored ('cas retain --set' stores one)")
    ctx.out.result({"rules": r.rules, "commit": r.commit, "changed": r.changed}, lines)


def _plan_text(plan: RetentionPlan) -> list[str]:
    if not plan.models:
        return ["no versions to consider" + (" (no stored rule matches a model)"
                                             if plan.stored else "")]
    rows = []
    for m in plan.models:
        for v in m.versions:
            action = "keep" if v.keep else ("would remove" if not plan.applied else "removed")
            rows.append([m.name, f"@{v.seq}", human_time(v.created_at), action,
                         ", ".join(v.reasons)])
    lines = format_table(["MODEL", "VERSION", "CREATED", "ACTION", "WHY"], rows)
    touched = sum(1 for m in plan.models if m.removed())
    what = f"{count(plan.removed, 'version')} of {count(touched, 'model')}"
    if not plan.applied:
        lines.append(f"dry run: would remove {what}, keep {plan.kept}; nothing was written")
    elif plan.removed:
        lines.append(f"removed {what}, kept {plan.kept}; 'cas restore NAME' brings a model's "
                     f"removal back until {human_time(plan.restorable_until)}")
    else:
        lines.append(f"nothing to remove; kept {plan.kept}")
    return lines
