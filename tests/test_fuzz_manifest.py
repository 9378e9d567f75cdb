"""Property-based fuzzing of the manifest parser (``Manifest.decode``).

A manifest arrives as registry blob bytes, which another host or a crafted commit controls.
Whatever the bytes, ``decode`` returns a valid manifest or raises a ``CasError`` with the right
code, never another exception:

- ``E_FORMAT``: the document is a cas manifest of a version newer than this build knows, or
  it requires a feature this build does not know (the reader is too old; not damage);
- ``E_SCHEMA``: everything else that is refused (not JSON, nested too deeply, not an object,
  a field missing or of the wrong type, a malformed version, bad hex, an unsafe path, sizes
  that do not add up, a number outside its range).

A manifest that decodes also re-encodes to bytes that decode to the same manifest, so
``annotate`` can always rewrite what ``decode`` accepted.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.errors import CasError, FormatError, SchemaError
from cas.format.manifest import (
    FORMATS,
    KNOWN_FEATURES,
    SCHEMA,
    SUPPORTED_VERSIONS,
    FileEntry,
    Manifest,
    Metadata,
    Provenance,
)
from conftest import damaged

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
segment = st.builds(lambda a, b: a + b, st.sampled_from("abcXYZ019"),
                    st.text(alphabet="abcXYZ019._-", max_size=8))
model_names = st.lists(segment.filter(lambda s: ".." not in s and not s.endswith((".", ".lock"))),
                       min_size=1, max_size=3).map("/".join)
small_text = st.text(max_size=12)

json_leaves = (st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@st.composite
def manifests(draw) -> Manifest:
    paths: list[str] = []
    keys: set[str] = set()
    for p in draw(st.lists(st.lists(segment, min_size=1, max_size=3).map("/".join),
                           max_size=5)):
        parts = p.casefold().split("/")
        prefixes = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if p.casefold() in keys or prefixes & keys or any(
            k.startswith(p.casefold() + "/") for k in keys
        ):
            continue
        keys.add(p.casefold())
        paths.append(p)
    files = [FileEntry(path=p, size=draw(st.integers(0, 2**64)), sha256=draw(hexes),
                       chunks=draw(hexes), executable=draw(st.booleans()),
                       blake3=draw(st.none() | hexes))
             for p in sorted(paths)]
    meta = Metadata(
        format=draw(st.sampled_from(FORMATS)),
        architecture=draw(st.none() | small_text),
        parameter_count=draw(st.none() | st.integers(0, 10**13)),
        dtypes=draw(st.lists(small_text, max_size=2)),
        parents=draw(st.lists(small_text, max_size=2)),
        metrics=draw(st.dictionaries(small_text, st.floats(allow_nan=False,
                                                           allow_infinity=False), max_size=2)),
        extra=draw(st.dictionaries(small_text, small_text, max_size=2)),
        provenance=Provenance(run_id=draw(st.none() | small_text),
                              seed=draw(st.none() | st.integers(-(2**63), 2**63 - 1))),
    )
    return Manifest(name=draw(model_names), seq=draw(st.integers(1, 2**63 - 1)), files=files,
                    total_size=sum(f.size for f in files), metadata=meta,
                    version=draw(st.sampled_from(sorted(SUPPORTED_VERSIONS - {1}))))


def expected_format_error(doc: Any) -> bool:
    """True when refusing ``doc`` must say E_FORMAT (the reader is too old)."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return False
    version = doc.get("version")
    if type(version) is not int:
        return False
    if version > max(SUPPORTED_VERSIONS):
        return True
    requires = doc.get("requires", [])
    return (version in SUPPORTED_VERSIONS and isinstance(requires, list)
            and all(isinstance(f, str) for f in requires)
            and bool(set(requires) - KNOWN_FEATURES))


def decode_checked(data: bytes, doc: Any = None) -> Manifest | None:
    """Decode ``data``; assert the outcome is a manifest that round-trips or the right error."""
    try:
        m = Manifest.decode(data)
    except FormatError as exc:
        assert exc.code == "E_FORMAT"
        if doc is not None:
            assert expected_format_error(doc), exc
        return None
    except SchemaError as exc:
        assert exc.code == "E_SCHEMA"
        if doc is not None:
            assert not expected_format_error(doc), exc
        return None
    except CasError as exc:  # pragma: no cover - reported with its code
        raise AssertionError(f"{exc.code}: {exc}") from None
    m.validate()
    again = Manifest.decode(m.encode())
    assert again == m
    assert again.encode() == m.encode()
    return m


# --------------------------------------------------------------------------- round trip


@FUZZ
@given(manifests())
def test_round_trip(m: Manifest) -> None:
    data = m.encode()
    back = Manifest.decode(data)
    assert back == m
    assert back.encode() == data
    assert data.endswith(b"}\n") and data.startswith(b'{\n  "name": ')


# --------------------------------------------------------------------------- arbitrary input


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    decode_checked(data)


@FUZZ
@given(json_values)
def test_any_json_value(doc: Any) -> None:
    decode_checked(json.dumps(doc).encode(), doc)


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "seq", "files", "total_size", "metadata",
                                        "schema", "version", "requires", "other"]),
                       json_values, max_size=8),
       st.sampled_from([None, 0, 1, 2, 3, 4, 99, -1, 2**64, "3", 3.0, True]))
def test_any_object_that_claims_the_schema(doc: dict[str, Any], version: Any) -> None:
    doc["schema"] = SCHEMA
    if version is not None:
        doc["version"] = version
    decode_checked(json.dumps(doc).encode(), doc)


# ------------------------------------------------------------------------ mutated valid manifests


def locations(node: Any, here: tuple = ()) -> list[tuple]:
    """Every path (keys and indexes) to a value inside a JSON document, the root included."""
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(locations(v, (*here, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.extend(locations(v, (*here, i)))
    return out


def replace_at(doc: Any, where: tuple, value: Any) -> Any:
    if not where:
        return value
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    parent[where[-1]] = value
    return doc


def delete_at(doc: Any, where: tuple) -> Any:
    if not where:
        return doc
    parent = doc
    for k in where[:-1]:
        parent = parent[k]
    del parent[where[-1]]
    return doc


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


bad_hexes = st.one_of(
    hexes.map(str.upper), hexes.map(lambda h: h[:-1]), hexes.map(lambda h: h + "0"),
    hexes.map(lambda h: "g" + h[1:]), hexes.map(lambda h: h[:10] + "\u0660" + h[11:]),
    st.just(""), st.just(0),
).filter(lambda v: not (isinstance(v, str) and len(v) == 64 and set(v) <= set("0123456789abcdef")))
bad_paths = st.sampled_from([
    "", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "C:\\x", "C:x", "\\\\host\\s",
    "a\\b", "a\x00b", "a\nb", ".git/config", "a/.GIT/hooks", ".cas/x", "x" * 5000, "\ud800",
])
huge_numbers = st.sampled_from([2**64, 2**64 - 1, 2**63, -(2**63) - 1, 10**30, -1, -(10**30),
                                1e308, -1e308, 0.5])


@FUZZ
@given(manifests(), st.data())
def test_mutated_manifest(m: Manifest, data) -> None:
    doc = json.loads(m.encode())
    where = data.draw(st.sampled_from(locations(doc)))
    how = data.draw(st.sampled_from(["delete", "wrong type", "deep", "huge", "bad hex",
                                     "bad path", "bad name"]))
    if how == "delete":
        doc = delete_at(doc, where)
    elif how == "wrong type":
        doc = replace_at(doc, where, data.draw(json_values))
    elif how == "deep":
        doc = replace_at(doc, where, nested(data.draw(st.integers(100, 5000)), 1))
    elif how == "huge":
        doc = replace_at(doc, where, data.draw(huge_numbers))
    elif how == "bad hex" and doc["files"]:
        f = data.draw(st.sampled_from(doc["files"]))
        f[data.draw(st.sampled_from(["sha256", "chunks", "blake3"]))] = data.draw(bad_hexes)
    elif how == "bad path" and doc["files"]:
        data.draw(st.sampled_from(doc["files"]))["path"] = data.draw(bad_paths)
    elif how == "bad name":
        doc["name"] = data.draw(st.sampled_from(["", "a/../b", "a//b", "-a", "a.lock", "a.",
                                                 "é", "a" * 300, None, 7]))
    try:
        text = json.dumps(doc)
    except (RecursionError, ValueError):
        return
    m2 = decode_checked(text.encode(), doc)
    if how in ("bad hex", "bad path", "bad name") and (doc["files"] or how == "bad name"):
        assert m2 is None


@FUZZ
@given(manifests(), st.data())
def test_manifest_bytes_flipped_cut_or_extended(m: Manifest, data) -> None:
    valid = m.encode()
    _how, bad = data.draw(damaged(valid))
    decode_checked(bad)


def test_nesting_a_thousand_levels_anywhere_is_schema_error() -> None:
    m = Manifest(name="org/m", seq=1, files=[], total_size=0)
    doc = json.loads(m.encode())
    deep = "[" * 1000 + "]" * 1000
    for where in ('"extra_field": ', '"metadata": {"x": ', '"files": [{"path": '):
        text = json.dumps(doc)[:-1] + ", " + where + deep + ("}" if "{" in where else "") \
            + ("}]" if "files" in where else "") + "}"
        try:
            Manifest.decode(text.encode())
        except SchemaError as exc:
            assert exc.code == "E_SCHEMA"
        else:  # pragma: no cover
            raise AssertionError(f"accepted {where}")


def test_non_finite_metric_is_refused_so_every_manifest_reads_back() -> None:
    """JSON has no infinity: such a metric would encode as null and not read back."""
    m = Manifest(name="org/m", seq=1, files=[], total_size=0,
                 metadata=Metadata(metrics={"loss": float("inf")}))
    try:
        m.validate()
    except SchemaError as exc:
        assert "loss" in exc.message
    else:  # pragma: no cover
        raise AssertionError("accepted an infinite metric")


def test_invalid_name_is_schema_error_with_the_reason() -> None:
    doc = json.loads(Manifest(name="org/m", seq=1, files=[], total_size=0).encode())
    doc["name"] = "a/../b"
    try:
        Manifest.decode(json.dumps(doc).encode())
    except SchemaError as exc:
        assert exc.code == "E_SCHEMA" and "'..'" in exc.message
    else:  # pragma: no cover
        raise AssertionError("accepted a name with '..'")
