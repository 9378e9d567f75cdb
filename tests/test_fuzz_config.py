"""Property-based tests of the config, settings and stat cache parsers: whatever the bytes,
only a CasError with the right code comes out (the stat cache: a discarded cache and a reason),
and no damage to a sealed file is ever read as a different record."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.errors import CasError
from cas.format.canonical import canonical_json
from cas.format.config import StoreConfig
from cas.ids import blake3_id, is_hex
from cas.settings import Settings
from cas.settings import encode as encode_settings
from cas.statcache import _HEADER, MAGIC, VERSION, _Entry, decode, encode
from conftest import damaged

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
CONFIG_CODES = {"E_SCHEMA", "E_FORMAT", "E_VERIFY"}
SETTINGS_CODES = {"E_SCHEMA", "E_VERIFY"}

GOOD_CONFIG = StoreConfig.create(derive=True, created_at="2024-01-01T00:00:00+00:00").encode()
GOOD_SETTINGS = encode_settings({"description": "box 3", "restore_window": "30d"})
SETTINGS_PATH = Path("/store/settings.json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8)


def _config_outcome(data: bytes) -> StoreConfig | None:
    """The decoded config, or None after an error with one of the config's codes."""
    try:
        return StoreConfig.decode(data)
    except CasError as exc:
        assert exc.code in CONFIG_CODES, exc
        return None


def _settings_outcome(data: bytes) -> dict | None:
    try:
        return Settings.parse(SETTINGS_PATH, data).values
    except CasError as exc:
        assert exc.code in SETTINGS_CODES, exc
        assert str(SETTINGS_PATH) in exc.message
        return None


def _same_canonical(a: bytes, b: bytes) -> bool:
    """True if two configs hold the same fields (a checksum deleted whole is allowed: the
    file then reads as one written before checksums, which must hold exactly its fields)."""
    try:
        da, db = json.loads(a), json.loads(b)
        da.pop("checksum", None)
        db.pop("checksum", None)
        return canonical_json(da) == canonical_json(db)
    except (ValueError, AttributeError, CasError, RecursionError):
        return False


# -- config.json ---------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=400))
def test_config_arbitrary_bytes(data):
    _config_outcome(data)


@FAST
@given(st.data())
def test_config_byte_flipped_or_truncated_is_refused_or_unchanged(data):
    _how, raw = data.draw(damaged(GOOD_CONFIG, ("flip", "cut")))
    cfg = _config_outcome(raw)
    if cfg is not None:  # only a change of layout (whitespace) may still be read
        assert _same_canonical(raw, GOOD_CONFIG)
        assert cfg == StoreConfig.decode(GOOD_CONFIG)


def _mutations(doc: dict) -> st.SearchStrategy:
    """(path to a member, what to do): replace its value, rename it, delete it, or add one."""
    paths = [(k,) for k in doc] + [(k, j) for k, v in doc.items() if isinstance(v, dict)
                                   for j in v]
    return st.tuples(st.sampled_from(paths),
                     st.sampled_from(["value", "rename", "delete", "add"]),
                     json_values, st.text(min_size=1, max_size=10))


@FAST
@given(st.data())
def test_config_structured_mutation_never_reads_as_another_config(data):
    doc = json.loads(GOOD_CONFIG)
    path, op, value, name = data.draw(_mutations(doc))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "value":
        parent[key] = value
    elif op == "rename" and name not in parent:
        parent[name] = parent.pop(key)
    elif op == "delete":
        del parent[key]
    elif op == "add" and name not in parent:
        parent[name] = value
    mutated = json.dumps(doc).encode()
    if _config_outcome(mutated) is not None:
        assert _same_canonical(mutated, GOOD_CONFIG)


# -- settings.json ---------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=300))
def test_settings_arbitrary_bytes(data):
    _settings_outcome(data)


@FAST
@given(st.dictionaries(st.sampled_from(["description", "restore_window", "x"]) | st.text(
    max_size=5), json_values, max_size=4))
def test_settings_any_json_object(values):
    for data in (json.dumps(values).encode(), encode_settings(values)):
        _settings_outcome(data)


@FAST
@given(st.data())
def test_settings_byte_flipped_or_truncated_is_refused_or_unchanged(data):
    _how, raw = data.draw(damaged(GOOD_SETTINGS, ("flip", "cut")))
    values = _settings_outcome(raw)
    if values is not None:
        assert values == {"description": "box 3", "restore_window": "30d"}


# -- stat cache ------------------------------------------------------------------------------

hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)


def _entry(size: int, k: int, sha: str, chunks: str, executable: bool) -> _Entry:
    return msgspec.convert([[size, k, k, 0o100644, k], [size, sha, chunks, executable]],
                           type=_Entry)


entries = st.dictionaries(st.text(min_size=1, max_size=12).map(lambda s: "/" + s),
                          st.builds(_entry, st.integers(0, 2**40), st.integers(0, 2**40), hex64,
                                    hex64, st.booleans()), max_size=4)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8) | st.floats(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=10)
GOOD_CACHE = encode("u", {"/a": msgspec.convert(
    [[5, 1, 2, 0o100644, 3], [5, "a" * 64, "b" * 64, False]], type=_Entry)},
    {"c" * 40: "d" * 64})


def _valid(entries_out: dict, contents_out: dict) -> None:
    for path, e in entries_out.items():
        assert path.startswith("/") and e.digest.size == e.key.size >= 0
        assert is_hex(e.digest.sha256) and is_hex(e.digest.chunks)
    for commit, fp in contents_out.items():
        assert is_hex(commit, 40) and is_hex(fp)


@FAST
@given(st.binary(max_size=300))
def test_stat_cache_arbitrary_bytes(data):
    out, contents, damage = decode(data, "u")
    assert not out and not contents
    assert damage is not None or data[:8] != MAGIC


@FAST
@given(st.data())
def test_stat_cache_byte_flipped_or_truncated_is_discarded_with_a_reason(data):
    _how, raw = data.draw(damaged(GOOD_CACHE, ("flip", "cut")))
    out, contents, damage = decode(raw, "u")
    assert not out and not contents and damage is not None


@FAST
@given(entries, st.dictionaries(st.text(max_size=41), st.text(max_size=65), max_size=3),
       st.text(max_size=3))
def test_stat_cache_sealed_body_keeps_only_valid_entries(good, contents, store):
    out, kept, _ = decode(encode(store, good, contents), store)
    _valid(out, kept)
    assert out == good  # every valid entry survives


@FAST
@given(msgpack_values | st.fixed_dictionaries({"store": st.just(""), "entries": msgpack_values},
                                              optional={"contents": msgpack_values}))
def test_stat_cache_sealed_arbitrary_body(body):
    raw = _HEADER.pack(MAGIC, VERSION, 0) + msgspec.msgpack.encode(body)
    out, contents, damage = decode(raw + blake3_id(raw), "")
    _valid(out, contents)
    if not isinstance(body, dict):
        assert damage is not None and not out
