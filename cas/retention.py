"""Retention: which versions of a model a training fleet keeps, and removing the rest.

A :class:`Policy` has up to three rules, as restic's ``forget`` does, and a version is kept if
ANY rule keeps it:

- ``keep_last`` N: the N newest live versions (by sequence number, i.e. order of ``add``);
- ``keep_within`` seconds: every version created less than that long before ``now``. A
  version's creation time is its manifest's ``metadata.created_at``, else the time of the
  commit that added it; a time in the future (clock skew) counts as recent and keeps;
- ``keep_best``: per :class:`BestRule`, the ``count`` versions with the highest (``max``) or
  lowest (``min``) value of one metric, ties going to the newer version. A version without
  that metric is never among the best (it is neither best nor worst: the rule says nothing).

Whatever the rules say, these are never removed (the protection table of ``docs/format.md``):
tagged versions, pinned versions (a pin for any store: the registry entry is shared by all),
and each model's latest live version. A version whose manifest cannot be read is kept and
named in a warning. Nothing else is ever touched: retention removes registry entries only, by
ordinary ``rm`` commits (one per model, message ``retain: <rules>``), which ``log`` shows and
``restore`` undoes within the restore window; ``gc`` later returns the space.

:func:`plan` decides without writing. :func:`apply` takes the store write lock and decides
again for each model inside it: a version is removed only if both decisions remove it, so a
version tagged, pinned or added meanwhile is kept.

A policy can be stored for model name patterns (:mod:`cas.retention_rules`); :func:`plan`
with ``policy=None`` and :func:`apply_stored` use those rules.
"""

from __future__ import annotations

import fnmatch
import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from cas.clock import iso_utc
from cas.commits import check_message, resolve_identity
from cas.errors import ArgsError, CasError, CasWarning, SchemaError
from cas.settings import MAX_DURATION, format_duration, parse_duration

if TYPE_CHECKING:
    from cas.registry import ModelState, Registry
    from cas.store import Store

#: Most versions one rule may count (a typo guard; no model has more).
MAX_COUNT = 1_000_000_000

Count = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
Seconds = Annotated[int, msgspec.Meta(ge=1, le=MAX_DURATION)]
#: One line: a metric name goes into commit subjects.
Metric = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]


class BestRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Keep the ``count`` versions with the best value of ``metric``."""

    metric: Metric
    #: ``max``: higher is better (accuracy); ``min``: lower is better (loss).
    order: Literal["max", "min"] = "max"
    count: Count = 1

    def text(self) -> str:
        """``loss:min``, ``acc:max:3``: the form ``--keep-best`` takes."""
        return f"{self.metric}:{self.order}" + (f":{self.count}" if self.count != 1 else "")


class Policy(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """What to keep; a version is kept if any rule keeps it. Unknown fields are refused, not
    ignored: a rule this build does not know could keep what it would remove."""

    keep_last: Count | None = None
    keep_within: Seconds | None = None
    keep_best: list[BestRule] = []

    def empty(self) -> bool:
        return self.keep_last is None and self.keep_within is None and not self.keep_best

    def text(self) -> str:
        """``keep-last 3, keep-within 7d, keep-best loss:min``, as the command line says it."""
        parts = []
        if self.keep_last is not None:
            parts.append(f"keep-last {self.keep_last}")
        if self.keep_within is not None:
            parts.append(f"keep-within {format_duration(self.keep_within)}")
        parts += [f"keep-best {b.text()}" for b in self.keep_best]
        return ", ".join(parts) or "no rules"


def parse_best(text: str) -> BestRule:
    """``METRIC[:max|min][:COUNT]`` -> a :class:`BestRule` (order ``max``, count 1 unless
    given). The metric name may itself hold ``:``; the suffixes are read from the right.

    Raises:
        ArgsError: an empty metric, a count below 1.
    """
    parts = str(text).split(":")
    count = 1
    order = "max"
    if len(parts) > 1 and parts[-1].isdigit():
        count = int(parts.pop())
    if len(parts) > 1 and parts[-1] in ("max", "min"):
        order = parts.pop()
    metric = ":".join(parts)
    if not metric:
        raise ArgsError(f"--keep-best {text!r}: name a metric, e.g. eval/loss:min or acc:max:3")
    try:
        return msgspec.convert({"metric": metric, "order": order, "count": count}, BestRule)
    except msgspec.ValidationError as exc:
        raise ArgsError(f"--keep-best {text!r}: {exc}") from None


def make_policy(keep_last: int | None = None, keep_within: str | None = None,
                keep_best: list[str] | tuple[str, ...] = ()) -> Policy:
    """A policy from command-line values (``keep_within`` a duration such as ``7d``).

    Raises:
        ArgsError: a count below 1, a duration that is not one or is zero, a bad metric.
    """
    if keep_last is not None and not 1 <= keep_last <= MAX_COUNT:
        raise ArgsError(f"--keep-last {keep_last}: must be at least 1")
    within = None
    if keep_within is not None:
        within = parse_duration(keep_within)
        if within == 0:
            raise ArgsError(f"--keep-within {keep_within!r}: must be longer than 0")
    best = [parse_best(b) for b in keep_best]
    metrics = [b.metric for b in best]
    if len(set(metrics)) != len(metrics):
        raise ArgsError("--keep-best names a metric twice")
    return Policy(keep_last, within, best)


class VersionPlan(msgspec.Struct):
    seq: int
    version: str
    id: str
    #: Creation time (UTC ISO 8601): the manifest's ``created_at`` when a rule needs the
    #: manifest (keep-within, keep-best), else the add commit's time.
    created_at: str
    keep: bool
    #: Why it is kept: ``last``, ``within``, ``best:METRIC``, ``tagged``, ``pinned``,
    #: ``latest``, ``pinned?`` (a pin cannot be read: it may name this version),
    #: ``unreadable`` (its manifest could not be read), ``planned`` (the plan
    #: given to :func:`apply` kept it). Empty for a version that is removed.
    reasons: list[str]


class ModelPlan(msgspec.Struct):
    name: str
    #: The pattern whose policy applies (the command's, or a stored rule's).
    pattern: str
    policy: Policy
    #: Live versions, oldest first.
    versions: list[VersionPlan]
    #: The ``rm`` commit, once applied (empty when nothing was removed).
    commit: str = ""

    def removed(self) -> list[VersionPlan]:
        return [v for v in self.versions if not v.keep]


class RetentionPlan(msgspec.Struct):
    models: list[ModelPlan]
    #: The time rules were measured against (UTC ISO 8601).
    now: str
    #: True if the policy came from the stored rules.
    stored: bool
    #: True once :func:`apply` has committed the removals.
    applied: bool = False
    removed: int = 0
    kept: int = 0
    #: Until when ``cas restore`` can bring removed versions back (set once applied).
    restorable_until: str = ""
    warnings: list[CasWarning] = []


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def plan(store: Store, pattern: str | None, policy: Policy | None,
         now: float | None = None) -> RetentionPlan:
    """Decide, for every model matching ``pattern`` (a name or a glob; None: every model),
    which live versions ``policy`` keeps and why. With ``policy=None`` each model gets the
    first stored rule whose pattern matches it (models no rule matches are left out).
    Writes nothing.

    Raises:
        ArgsError: ``policy`` is empty, or None and no rules are stored.
        NotFoundError: ``pattern`` is a model name (no glob) that is not registered.
        SchemaError | FormatError: the stored rules cannot be read.
    """
    from cas.retention_rules import load_rules

    when = time.time() if now is None else now
    if policy is None:
        rules = load_rules(store.registry).rules
        if not rules:
            raise ArgsError("no retention rule given (--keep-last, --keep-within, "
                            "--keep-best) and no policy stored ('cas retain --set')")
        pairs = [(r.pattern, r.policy) for r in rules]
    elif policy.empty():
        raise ArgsError("no retention rule given (--keep-last, --keep-within, --keep-best)")
    else:
        pairs = [(pattern or "*", policy)]
    return _plan(store, pattern, pairs, when, stored=policy is None)


def _plan(store: Store, pattern: str | None, pairs: list[tuple[str, Policy]], now: float,
          stored: bool) -> RetentionPlan:
    reg = store.registry
    if pattern is not None and not is_glob(pattern):
        reg.state(pattern)  # NotFoundError (with "did you mean") for an unknown name
    warnings: list[CasWarning] = []
    protected = _protected(store)
    if protected.damaged_pins:
        warnings.append(CasWarning(
            code="W_RETAIN_SKIPPED", message="a pin cannot be read (it could name any version), "
            f"so nothing is removed: {'; '.join(protected.damaged_pins)}"))
    models = []
    for name in reg.model_names():
        if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
            continue
        chosen = next(((p, pol) for p, pol in pairs if fnmatch.fnmatchcase(name, p)), None)
        if chosen is None:
            continue
        if name in protected.damaged_tags:
            warnings.append(CasWarning(
                code="W_RETAIN_SKIPPED", message=f"{name}: a tag of it is damaged (it could "
                "name any version), so nothing of it is removed; 'cas verify' names the tag"))
            continue
        try:
            state = reg.state(name)
        except CasError as exc:
            warnings.append(CasWarning(code="W_UNREADABLE_HISTORY",
                                       message=f"{name}: {exc.message}; nothing of it is removed"))
            continue
        mp = _plan_model(reg, state, chosen[0], chosen[1], now, protected, warnings)
        if mp.versions:
            models.append(mp)
    out = RetentionPlan(models, iso_utc(now), stored, warnings=warnings)
    _count(out)
    return out


def _count(p: RetentionPlan) -> None:
    p.removed = sum(len(m.removed()) for m in p.models)
    p.kept = sum(len(m.versions) for m in p.models) - p.removed


class _Protected(msgspec.Struct):
    #: ``(model, add commit)`` of every tagged version.
    tagged: set[tuple[str, str]]
    #: ``(model, version id)`` of every pinned version, whichever store the pin is for.
    pinned: set[tuple[str, str]]
    #: Models with a tag whose target cannot be read.
    damaged_tags: set[str]
    #: Pin refs that cannot be read: any version may be pinned, so nothing is removed.
    damaged_pins: list[str]


def _protected(store: Store) -> _Protected:
    damaged: list[tuple[str, str, SchemaError]] = []
    tags = store.registry.tags(damaged=damaged)
    bad_pins: list[str] = []
    pinned = _pinned(store, bad_pins)
    return _Protected({(m, c) for (m, _t), c in tags.items()}, pinned,
                      {m for m, _t, _e in damaged}, bad_pins)


def _pinned(store: Store, damaged: list[str]) -> set[tuple[str, str]]:
    """Pinned versions: a pin for any store protects the registry entry all stores share.
    Pin refs that cannot be read are described in ``damaged``."""
    try:
        from cas.pins import pinned_versions  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name != "cas.pins":
            raise
        return set()  # a build without pins: nothing is pinned
    return {(model, vid) for model, vid, _here in pinned_versions(store, damaged=damaged)}


def _plan_model(reg: Registry, state: ModelState, pattern: str, policy: Policy, now: float,
                protected: _Protected, warnings: list[CasWarning]) -> ModelPlan:
    from cas.format.manifest import Manifest

    versions = state.live_versions()  # oldest first
    reasons: dict[int, list[str]] = {v.seq: [] for v in versions}
    created: dict[int, float] = {}
    metrics: dict[int, dict[str, float]] = {}
    need_manifest = policy.keep_within is not None or bool(policy.keep_best)
    for v in versions:
        created[v.seq] = float(v.timestamp)
        if not need_manifest:
            continue
        try:
            md = Manifest.decode(reg.blob(state.live[v.seq])).metadata
        except CasError as exc:
            reasons[v.seq].append("unreadable")
            warnings.append(CasWarning(code="W_RETAIN_UNREADABLE",
                                       message=f"{v.ref}: {exc.message}; kept"))
            continue
        created[v.seq] = _created(md.created_at, v.timestamp)
        metrics[v.seq] = md.metrics
    if versions:
        reasons[versions[-1].seq].append("latest")
    if protected.damaged_pins:
        for v in versions:
            reasons[v.seq].append("pinned?")
    for v in versions:
        if (state.name, v.commit) in protected.tagged:
            reasons[v.seq].append("tagged")
        if (state.name, v.id) in protected.pinned:
            reasons[v.seq].append("pinned")
    if policy.keep_last is not None:
        for v in versions[-policy.keep_last:]:
            reasons[v.seq].append("last")
    if policy.keep_within is not None:
        for v in versions:
            # A creation time in the future (clock skew) is "recent": it keeps.
            if now - created[v.seq] <= policy.keep_within:
                reasons[v.seq].append("within")
    for rule in policy.keep_best:
        scored = [(m[rule.metric], seq) for seq, m in metrics.items() if rule.metric in m]
        # best first; among equal values the newer version (higher seq) first
        scored.sort(key=lambda vs: (-vs[0] if rule.order == "max" else vs[0], -vs[1]))
        for _value, seq in scored[:rule.count]:
            reasons[seq].append(f"best:{rule.metric}")
    rows = [VersionPlan(v.seq, v.ref, v.id, iso_utc(created[v.seq]), bool(reasons[v.seq]),
                        reasons[v.seq]) for v in versions]
    return ModelPlan(state.name, pattern, policy, rows)


def _created(created_at: str, fallback: int) -> float:
    """Seconds since the epoch of a manifest's ``created_at``, else ``fallback`` (the add
    commit's time) when it is absent or not an ISO 8601 time with a zone."""
    try:
        dt = datetime.fromisoformat(created_at)
    except ValueError:
        return float(fallback)
    if dt.tzinfo is None:
        return float(fallback)
    return dt.timestamp()


def apply(store: Store, plan: RetentionPlan, author: str | None = None, *,
          locked: bool = False) -> RetentionPlan:
    """Remove the versions ``plan`` removes: one ``rm`` commit per model, under the store
    write lock (``locked``: the caller holds it already). Each model is decided again inside
    the lock, with the plan's time, and a version is removed only if both decisions remove it.
    Returns the plan as carried out (``applied``; each model's ``commit``; versions the second
    decision kept marked kept).

    Raises:
        ArgsError: ``author`` is not an identity.
        CasError: a registry write failed; models committed before it stay removed.
    """
    from contextlib import nullcontext

    identity = resolve_identity(author)
    when = datetime.fromisoformat(plan.now).timestamp()
    window = store.settings.restore_window_seconds()
    warnings = list(plan.warnings)
    with nullcontext() if locked else store.writing():
        reg = store.registry
        protected = _protected(store)
        for mp in plan.models:
            if not mp.removed():
                continue
            if mp.name in protected.damaged_tags:
                _keep_all(mp, "tagged")  # a damaged tag may name any of them
                continue
            fresh = _plan_model(reg, reg.state(mp.name), mp.pattern, mp.policy, when,
                                protected, warnings)
            again = {v.seq: v for v in fresh.versions}
            rows = []
            for v in mp.versions:
                now_v = again.get(v.seq)
                if now_v is None:
                    continue  # removed meanwhile by someone else
                if v.keep and not now_v.keep:  # e.g. a newer version pushed it out of keep-last
                    now_v = msgspec.structs.replace(now_v, keep=True, reasons=["planned"])
                rows.append(now_v)
            mp.versions = rows
            gone = {v.seq for v in mp.removed()}
            if not gone:
                continue
            message = check_message(commit_subject(f"retain: {mp.policy.text()}"))
            targets = [ver for ver in reg.versions(mp.name) if ver.seq in gone]
            mp.commit = reg.remove_versions(mp.name, targets, [], message, identity)
    plan.applied = True
    plan.warnings = list(dict.fromkeys(warnings))  # deciding twice may warn twice
    plan.restorable_until = iso_utc(time.time() + window)
    _count(plan)
    return plan


def commit_subject(text: str, limit: int = 900) -> str:
    """``text`` cut to fit a commit subject (many long metric names could exceed it)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _keep_all(mp: ModelPlan, reason: str) -> None:
    for v in mp.versions:
        if not v.keep:
            v.keep = True
            v.reasons = [reason]


def retain(store: Store, pattern: str | None, policy: Policy | None, *,
           now: float | None = None, dry_run: bool = False,
           author: str | None = None) -> RetentionPlan:
    """:func:`plan`, then unless ``dry_run`` :func:`apply`. Raises what they raise."""
    resolve_identity(author)  # a bad --author fails before anything is decided
    p = plan(store, pattern, policy, now)
    return p if dry_run else apply(store, p, author)


def apply_stored(store: Store, now: float | None = None, dry_run: bool = False, *,
                 locked: bool = False) -> RetentionPlan:
    """Apply the stored rules to every model (for ``cas gc``): an empty plan when no rules
    are stored. ``locked``: the caller holds the store write lock already.

    Raises:
        SchemaError | FormatError: the stored rules cannot be read.
        CasError: a registry write failed.
    """
    from cas.retention_rules import load_rules

    when = time.time() if now is None else now
    rules = load_rules(store.registry).rules
    if not rules:
        return RetentionPlan([], iso_utc(when), stored=True)
    p = _plan(store, None, [(r.pattern, r.policy) for r in rules], when, stored=True)
    return p if dry_run else apply(store, p, locked=locked)
