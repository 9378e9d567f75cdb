"""Stored retention rules: one policy per model-name pattern, kept in the registry so every
host that shares it sees the same rules.

The ref ``refs/cas/retention`` points at a commit whose tree holds one file,
``retention.json`` (specified in ``docs/format.md``, Registry): a list of ``{pattern,
policy}`` rules in order, and the first rule whose glob matches a model name applies to it.
Every change (``--set``, ``--unset``, ``--clear``) is one commit on that ref, whose parent is
the previous tip, so ``git log refs/cas/retention`` is the audit trail. Writers hold the store
write lock and move the ref with compare-and-swap.

Fields this build does not know at the top level of the document are carried through
rewrites; inside a rule they are refused (``E_FORMAT``), because a rule this build cannot
read could keep versions it would remove.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from cas.commits import check_message, resolve_identity
from cas.errors import ArgsError, FormatError, NotFoundError, SchemaError
from cas.format.canonical import canonical_json
from cas.names import MAX_NAME_LEN, validate_model_name
from cas.retention import Policy, commit_subject, is_glob

if TYPE_CHECKING:
    from cas.registry import Registry
    from cas.store import Store

REF = b"refs/cas/retention"
FILE = b"retention.json"
SCHEMA = "cas.retention"
VERSION = 1


class Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    #: A model name or an ``fnmatch`` glob (``*`` also matches ``/``).
    pattern: str
    policy: Policy


class Rules(msgspec.Struct):
    rules: list[Rule]
    #: The commit ``refs/cas/retention`` points at (empty: no rules were ever stored).
    commit: str = ""
    #: True if the command changed the stored rules.
    changed: bool = False
    #: Top-level fields of the document this build does not know (carried when rewritten).
    extra: dict[str, Any] = {}


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` if it can select models: a model name, or a glob of one line.

    Raises:
        ArgsError: empty, too long, control characters, or a plain name that is invalid.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ArgsError("pattern is empty")
    if len(pattern) > MAX_NAME_LEN or any(ord(c) < 32 or c == "\x7f" for c in pattern):
        raise ArgsError(f"pattern {pattern!r}: one line of at most {MAX_NAME_LEN} characters")
    if not is_glob(pattern):
        validate_model_name(pattern)
    return pattern


def load_rules(reg: Registry) -> Rules:
    """The stored rules (an empty list when none are stored).

    Raises:
        SchemaError: the ref's commit, tree or file is missing, damaged or malformed.
        FormatError: a newer document version, or a rule with fields this build lacks.
    """
    found = reg.read_ref_file(REF, FILE)
    if found is None:
        return Rules([])
    tip, data = found
    if data is None:
        raise SchemaError(f"{REF.decode()}: commit {tip.decode()[:12]} has no "
                          f"{FILE.decode()}; {_FIX}")
    rules, extra = decode(data)
    return Rules(rules, tip.decode(), extra=extra)


_FIX = "'cas retain --clear' stores an empty rule list"


def decode(data: bytes) -> tuple[list[Rule], dict[str, Any]]:
    """``(rules, unknown top-level fields)`` of a ``retention.json``.

    Raises:
        SchemaError | FormatError: as :func:`load_rules`.
    """
    where = f"{REF.decode()}:{FILE.decode()}"
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SchemaError(f"{where} is not valid JSON ({exc}); {_FIX}") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise SchemaError(f"{where} is not a {SCHEMA} document; {_FIX}")
    version = raw.get("version")
    if type(version) is not int or version < 1:
        raise SchemaError(f"{where}: malformed version {version!r}; {_FIX}")
    if version > VERSION:
        raise FormatError(f"{where} is version {version}, newer than this cas reads "
                          f"({VERSION}); upgrade cas")
    if not isinstance(raw.get("rules"), list):
        raise SchemaError(f"{where}: 'rules' is not a list; {_FIX}")
    rules = []
    for i, item in enumerate(raw["rules"]):
        try:
            rule = msgspec.convert(item, Rule)
            validate_pattern(rule.pattern)
        except msgspec.ValidationError as exc:
            if "unknown field" in str(exc):
                raise FormatError(f"{where}: rule {i + 1} has a field this cas does not know "
                                  f"({exc}); upgrade cas") from None
            raise SchemaError(f"{where}: rule {i + 1}: {exc}; {_FIX}") from None
        except ArgsError as exc:
            raise SchemaError(f"{where}: rule {i + 1}: {exc.message}; {_FIX}") from None
        if rule.policy.empty():
            raise SchemaError(f"{where}: rule {i + 1} keeps nothing by any rule; {_FIX}")
        rules.append(rule)
    extra = {k: v for k, v in raw.items() if k not in ("schema", "version", "rules")}
    return rules, extra


def encode(rules: list[Rule], extra: dict[str, Any] | None = None) -> bytes:
    """``retention.json``: the RFC 8785 canonical encoding and a newline."""
    doc = {**(extra or {}), "schema": SCHEMA, "version": VERSION,
           "rules": msgspec.to_builtins(rules)}
    return canonical_json(doc) + b"\n"


def set_rule(store: Store, pattern: str, policy: Policy, author: str | None = None) -> Rules:
    """Store ``policy`` for ``pattern``: it replaces the rule with the same pattern where it
    stands, else it is appended (so it applies only to models no earlier rule matches).

    Raises:
        ArgsError: a bad pattern, an empty policy, a bad author.
        SchemaError | FormatError: the stored rules cannot be read.
        ConflictError: the ref moved meanwhile (a writer outside the lock).
    """
    validate_pattern(pattern)
    if policy.empty():
        raise ArgsError("--set needs a rule (--keep-last, --keep-within, --keep-best)")
    new = Rule(pattern, policy)

    def change(rules: list[Rule]) -> list[Rule] | None:
        if new in rules:
            return None
        at = next((i for i, r in enumerate(rules) if r.pattern == pattern), None)
        if at is None:
            return [*rules, new]
        return [*rules[:at], new, *rules[at + 1:]]

    return _update(store, author, change, f"retain --set {pattern}: {policy.text()}")


def unset_rule(store: Store, pattern: str, author: str | None = None) -> Rules:
    """Delete the stored rule for exactly ``pattern``.

    Raises:
        NotFoundError: no rule has that pattern.
        (others as :func:`set_rule`)
    """
    validate_pattern(pattern)

    def change(rules: list[Rule]) -> list[Rule] | None:
        if not any(r.pattern == pattern for r in rules):
            raise NotFoundError(f"no retention rule for {pattern!r} ('cas retain --show' lists "
                                "them)")
        return [r for r in rules if r.pattern != pattern]

    return _update(store, author, change, f"retain --unset {pattern}")


def clear_rules(store: Store, author: str | None = None) -> Rules:
    """Store an empty rule list, whatever the stored document holds (also a damaged or newer
    one, which no other command rewrites). Nothing is committed when no rule is stored."""
    identity = resolve_identity(author)
    with store.writing():
        reg = store.registry
        try:
            current = load_rules(reg)
            if not current.rules:
                return current
            tip: bytes | None = current.commit.encode()
        except (SchemaError, FormatError):
            tip = _raw_tip(reg)
        commit = reg.commit_ref_file(REF, tip, FILE, encode([]), "retain --clear", identity)
    return Rules([], commit.decode(), changed=True)


def _raw_tip(reg: Registry) -> bytes | None:
    try:
        return reg.repo.refs[REF]
    except KeyError:
        return None


def _update(store: Store, author: str | None, change: Any, subject: str) -> Rules:
    identity = resolve_identity(author)
    subject = check_message(commit_subject(subject))
    with store.writing():
        reg = store.registry
        current = load_rules(reg)
        rules = change(current.rules)
        if rules is None:
            return current
        tip = current.commit.encode() or None
        commit = reg.commit_ref_file(REF, tip, FILE, encode(rules, current.extra), subject,
                                     identity)
    return Rules(rules, commit.decode(), changed=True, extra=current.extra)
