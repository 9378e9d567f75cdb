"""Tests for the registry manifest (cas.format.manifest), chunk lists and the store config."""

from __future__ import annotations

import json
import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.errors import FormatError, SchemaError
from cas.format import chunklist as cl
from cas.format.chunklist import ChunkList
from cas.format.config import StoreConfig
from cas.format.manifest import (
    FORMATS,
    SCHEMA,
    VERSION,
    FileEntry,
    Manifest,
    Metadata,
    json_schema,
)

H1 = "1" * 64
H2 = "ab" * 32
H3 = "0123456789abcdef" * 4


def entry(path: str, size: int = 10, **kw) -> FileEntry:
    return FileEntry(path=path, size=size, sha256=kw.pop("sha256", H1),
                     blake3=kw.pop("blake3", H2), chunks=kw.pop("chunks", H3), **kw)


def base_doc() -> dict:
    """A valid manifest as a JSON-ready dict."""
    m = Manifest(
        name="org/model",
        seq=1,
        files=[entry("config.json", 5), entry("model.safetensors", 100, executable=False)],
        total_size=105,
        metadata=Metadata(format="safetensors", architecture="Llama", dtypes=["F16"]),
    )
    return json.loads(m.encode())


def decode_doc(doc: dict) -> Manifest:
    return Manifest.decode(json.dumps(doc).encode())


def test_base_doc_is_valid():
    m = decode_doc(base_doc())
    assert m.name == "org/model"
    assert m.schema == SCHEMA == "cas.manifest"
    assert m.version == VERSION == 3
    assert [f.path for f in m.files] == ["config.json", "model.safetensors"]


def test_encode_is_canonical():
    m = decode_doc(base_doc())
    out = m.encode()
    assert out.endswith(b"}\n")
    assert b'\n  "name": "org/model",' in out
    assert Manifest.decode(out).encode() == out
    # metadata omits defaults
    assert json.loads(out)["metadata"] == {
        "format": "safetensors", "architecture": "Llama", "dtypes": ["F16"]
    }
    assert list(json.loads(out)) == [
        "name", "seq", "files", "total_size", "metadata", "schema", "version", "requires"
    ]


# --------------------------------------------------------------------------- round-trip property

hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
_seg_first = "abcXYZ019"
_seg_rest = "abcXYZ019._- "
path_segment = st.builds(
    lambda a, b: a + b, st.sampled_from(_seg_first), st.text(alphabet=_seg_rest, max_size=8)
)
rel_paths = st.lists(path_segment, min_size=1, max_size=3).map("/".join)
model_name = st.lists(
    st.text(alphabet="abcdefXYZ0123456789", min_size=1, max_size=10), min_size=1, max_size=3
).map("/".join)
short_text = st.text(max_size=20)


def _unique_tree(paths: list[str]) -> list[str]:
    """Drop paths that would clash with another (case or file-vs-directory)."""
    keep: list[str] = []
    keys: set[str] = set()
    dirs: set[str] = set()
    for p in paths:
        k = p.casefold()
        parts = k.split("/")
        prefixes = {"/".join(parts[:i]) for i in range(1, len(parts))}
        if k in keys or k in dirs or prefixes & keys:
            continue
        keep.append(p)
        keys.add(k)
        dirs |= prefixes
    return sorted(keep)


@st.composite
def manifests(draw) -> Manifest:
    paths = _unique_tree(draw(st.lists(rel_paths, min_size=0, max_size=6)))
    files = [
        FileEntry(
            path=p,
            size=draw(st.integers(0, 2**40)),
            sha256=draw(hexes),
            blake3=draw(hexes),
            chunks=draw(hexes),
            executable=draw(st.booleans()),
        )
        for p in paths
    ]
    meta = Metadata(
        format=draw(st.sampled_from(FORMATS)),
        architecture=draw(st.none() | short_text),
        parameter_count=draw(st.none() | st.integers(0, 10**12)),
        dtypes=draw(st.lists(st.sampled_from(["F16", "BF16", "F32", "Q4_K"]), max_size=3)),
        quantization=draw(st.none() | short_text),
        parents=draw(st.lists(short_text, max_size=2)),
        metrics=draw(st.dictionaries(short_text, st.floats(allow_nan=False, allow_infinity=False),
                                     max_size=3)),
        license=draw(st.none() | short_text),
        created_at=draw(short_text),
        extra=draw(st.dictionaries(short_text, short_text, max_size=3)),
    )
    return Manifest(
        name=draw(model_name),
        seq=draw(st.integers(1, 10**6)),
        files=files,
        total_size=sum(f.size for f in files),
        metadata=meta,
    )


@settings(max_examples=40, deadline=None)
@given(manifests())
def test_manifest_round_trip(m):
    data = m.encode()
    back = Manifest.decode(data)
    assert back == m
    assert back.encode() == data
    assert back.same_content(m)


def test_same_content_ignores_metadata_but_not_bytes():
    a = decode_doc(base_doc())
    doc = base_doc()
    doc["seq"] = 7
    doc["metadata"] = {"format": "other"}
    assert a.same_content(decode_doc(doc))
    doc["files"][0]["sha256"] = "f" * 64
    assert not a.same_content(decode_doc(doc))
    doc = base_doc()
    doc["files"][1]["executable"] = True
    assert not a.same_content(decode_doc(doc))


def test_whole_file_blake3_is_optional():
    """Manifests of cas 0.1 (version 1) carry a whole-file BLAKE3; version 2 leaves it out."""
    doc = base_doc()
    for f in doc["files"]:
        f.pop("blake3")
    m = decode_doc(doc)
    assert all(f.blake3 is None for f in m.files)
    assert Manifest.decode(m.encode()) == m
    assert m.same_content(decode_doc(base_doc()))  # the same bytes, with or without it
    old = base_doc()
    old["version"] = 1
    assert decode_doc(old).version == 1  # version 1, with the hash: still read
    for f in doc["files"]:
        f["blake3"] = None
    doc["version"] = 1
    _refuse(doc, "version 1")  # version 1 without it is malformed


def test_empty_file_list_is_valid():
    doc = base_doc()
    doc["files"] = []
    doc["total_size"] = 0
    assert decode_doc(doc).files == []


# --------------------------------------------------------------------------- refusals


def _refuse(doc, match: str | None = None) -> SchemaError:
    with pytest.raises(SchemaError, match=match) as info:
        decode_doc(doc)
    assert info.value.code == "E_SCHEMA"
    return info.value


@pytest.mark.parametrize("version", [0, -1, None, "1", "4", True, 1.0, 1.5])
def test_malformed_version_refused(version):
    doc = base_doc()
    doc["version"] = version
    _refuse(doc)


@pytest.mark.parametrize("version", [4, 99])
def test_newer_version_refused_as_format(version):
    """A manifest of a later version is not damage: the reader is too old (E_FORMAT)."""
    doc = base_doc()
    doc["version"] = version
    with pytest.raises(FormatError, match="upgrade cas") as info:
        decode_doc(doc)
    assert info.value.code == "E_FORMAT"


def test_unknown_required_feature_refused():
    doc = base_doc()
    doc["requires"] = ["tensor-parity"]
    with pytest.raises(FormatError, match="tensor-parity") as info:
        decode_doc(doc)
    assert info.value.code == "E_FORMAT"


def test_missing_version_refused():
    doc = base_doc()
    del doc["version"]
    _refuse(doc, "version")


@pytest.mark.parametrize("schema", ["cas.manifest2", "", None, "CAS.MANIFEST", 1])
def test_wrong_schema_refused(schema):
    doc = base_doc()
    doc["schema"] = schema
    _refuse(doc, "schema")


def test_missing_schema_refused():
    doc = base_doc()
    del doc["schema"]
    _refuse(doc, "schema")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b"null", b"\"x\"", b"{", b"\xff\xfe"])
def test_not_a_manifest_refused(raw):
    with pytest.raises(SchemaError):
        Manifest.decode(raw)


@pytest.mark.parametrize("where", ["top", "file", "metadata", "provenance"])
def test_unknown_optional_field_accepted(where):
    """A newer host's optional fields never make this build refuse a manifest."""
    doc = base_doc()
    doc["metadata"]["provenance"] = {"run_id": "r1"}
    target = {"top": doc, "file": doc["files"][0], "metadata": doc["metadata"],
              "provenance": doc["metadata"]["provenance"]}[where]
    target["surprise"] = {"nested": [1, 2]}
    m = decode_doc(doc)
    assert m.name == "org/model" and m.metadata.provenance.run_id == "r1"


@pytest.mark.parametrize("field", ["name", "seq", "files", "total_size"])
def test_missing_required_field_refused(field):
    doc = base_doc()
    del doc[field]
    _refuse(doc)


@pytest.mark.parametrize(
    "field, value",
    [("seq", "1"), ("seq", 1.5), ("files", {}), ("total_size", "105"),
     ("name", 5), ("metadata", [])],
)
def test_wrong_types_refused(field, value):
    doc = base_doc()
    doc[field] = value
    _refuse(doc)


def test_unsorted_files_refused():
    doc = base_doc()
    doc["files"].reverse()
    _refuse(doc, "sorted")


def test_sort_order_is_codepoint_order():
    doc = base_doc()
    doc["files"] = [
        {"path": "B", "size": 1, "sha256": H1, "blake3": H2, "chunks": H3},
        {"path": "a", "size": 1, "sha256": H1, "blake3": H2, "chunks": H3},
    ]
    doc["total_size"] = 2
    assert [f.path for f in decode_doc(doc).files] == ["B", "a"]


def test_duplicate_paths_refused():
    doc = base_doc()
    doc["files"][1]["path"] = "config.json"
    _refuse(doc, "twice")


def test_case_insensitive_duplicates_refused():
    doc = base_doc()
    doc["files"][0]["path"] = "Model.safetensors"
    _refuse(doc, "case")


def test_file_and_directory_clash_refused():
    doc = base_doc()
    doc["files"][0]["path"] = "model.safetensors"
    doc["files"][1]["path"] = "model.safetensors/x"
    _refuse(doc, "both a file and a directory")


@pytest.mark.parametrize("field", ["sha256", "blake3", "chunks"])
@pytest.mark.parametrize(
    "value",
    ["1" * 63, "1" * 65, "", "A" * 64, "g" * 64, " " + "1" * 63, "1" * 63 + "\n", "０" * 64],
)
def test_bad_hashes_refused(field, value):
    doc = base_doc()
    doc["files"][0][field] = value
    _refuse(doc)


@pytest.mark.parametrize("total", [0, 104, 106, -105])
def test_total_size_mismatch_refused(total):
    doc = base_doc()
    doc["total_size"] = total
    _refuse(doc, "total_size")


def test_negative_size_refused():
    doc = base_doc()
    doc["files"][0]["size"] = -5
    doc["total_size"] = 95
    _refuse(doc, "negative")


@pytest.mark.parametrize("seq", [0, -1])
def test_bad_seq_refused(seq):
    doc = base_doc()
    doc["seq"] = seq
    _refuse(doc, "sequence")


@pytest.mark.parametrize("name", ["../x", "a//b", "", "a b", ".x", "a.lock"])
def test_bad_model_name_refused(name):
    doc = base_doc()
    doc["name"] = name
    _refuse(doc)


def test_unknown_format_refused():
    doc = base_doc()
    doc["metadata"]["format"] = "tensorflow"
    _refuse(doc, "format")


@pytest.mark.parametrize(
    "path",
    ["../x", "/x", "C:\\x", "C:x", "\\\\host\\share", "a\x00b", ".git/config", "a/./b",
     "a/../b", "", "a//b", "a/", ".GIT/HEAD", "x/.git/config", "a\\b"],
)
def test_unsafe_paths_refused(path):
    doc = base_doc()
    doc["files"] = [{"path": path, "size": 1, "sha256": H1, "blake3": H2, "chunks": H3}]
    doc["total_size"] = 1
    _refuse(doc)


def test_direct_validate_also_refuses():
    m = Manifest(name="a", seq=1, files=[entry("../x", 1)], total_size=1)
    with pytest.raises(SchemaError):
        m.validate()
    with pytest.raises(SchemaError):
        Manifest.decode(m.encode())


# --------------------------------------------------------------------------- json schema


def test_json_schema():
    schema = json_schema()
    assert isinstance(schema, dict)
    json.dumps(schema)  # serialisable
    defs = schema["$defs"]
    root = defs[schema["$ref"].rsplit("/", 1)[-1]]
    assert set(root["properties"]) == {
        "name", "seq", "files", "total_size", "metadata", "schema", "version", "requires",
        "id"
    }
    assert set(root["required"]) == {"name", "seq", "files", "total_size"}
    # later versions may add optional fields: readers carry them
    assert root.get("additionalProperties") is not False
    assert set(defs["Provenance"]["properties"]) == {
        "run_id", "datasets", "code_revision", "seed", "environment"}
    file_props = defs["FileEntry"]["properties"]
    assert set(file_props) == {"path", "size", "sha256", "blake3", "chunks", "executable", "bases"}
    assert set(defs["FileEntry"]["required"]) == {"path", "size", "sha256", "chunks"}
    assert "format" in defs["Metadata"]["properties"]


# --------------------------------------------------------------------------- chunk lists

chunk_lists = st.lists(
    st.tuples(st.binary(min_size=32, max_size=32), st.integers(1, 2**32 - 1)), max_size=30
).map(lambda cs: ChunkList(sum(n for _, n in cs), tuple(cs)))


@settings(max_examples=50, deadline=None)
@given(chunk_lists)
def test_chunk_list_round_trip(lst):
    data = lst.encode()
    assert len(data) == cl.HEADER_SIZE + cl.ITEM_SIZE * len(lst.chunks)
    assert ChunkList.decode(data) == lst
    assert ChunkList.decode(memoryview(data).tobytes()) == lst


@settings(max_examples=40, deadline=None)
@given(chunk_lists, st.data())
def test_chunk_list_any_truncation_refused(lst, data):
    enc = lst.encode()
    cut = data.draw(st.integers(0, len(enc) - 1))
    with pytest.raises(SchemaError):
        ChunkList.decode(enc[:cut])
    with pytest.raises(SchemaError):
        ChunkList.decode(enc + b"\x00")


def test_chunk_list_empty_file():
    assert ChunkList.decode(ChunkList(0, ()).encode()) == ChunkList(0, ())


def test_chunk_list_lengths_not_summing_to_size_refused():
    good = ChunkList(30, ((b"\x01" * 32, 10), (b"\x02" * 32, 20)))
    for size in (29, 31, 0):
        with pytest.raises(SchemaError, match="sum"):
            ChunkList.decode(ChunkList(size, good.chunks).encode())


def test_chunk_list_zero_length_chunk_refused():
    with pytest.raises(SchemaError, match="empty chunk"):
        ChunkList.decode(ChunkList(10, ((b"\x01" * 32, 10), (b"\x02" * 32, 0))).encode())


def test_chunk_list_bad_header_refused():
    enc = ChunkList(10, ((b"\x01" * 32, 10),)).encode()
    with pytest.raises(SchemaError, match="magic"):
        ChunkList.decode(b"CASLIST\x01" + enc[8:])
    with pytest.raises(SchemaError, match="version"):
        ChunkList.decode(enc[:8] + struct.pack("<I", 2) + enc[12:])
    with pytest.raises(SchemaError, match="truncated"):
        ChunkList.decode(enc[:31])
    # a count that claims more items than the bytes hold
    with pytest.raises(SchemaError, match="do not hold"):
        ChunkList.decode(enc[:16] + struct.pack("<Q", 2) + enc[24:])
    with pytest.raises(SchemaError, match="do not hold"):
        ChunkList.decode(enc[:16] + struct.pack("<Q", 2**63) + enc[24:])


# --------------------------------------------------------------------------- store config


def config_doc() -> dict:
    return json.loads(StoreConfig.create(derive=True, created_at="2024-01-01T00:00:00Z").encode())


def test_store_config_round_trip():
    cfg = StoreConfig.create(derive=False, created_at="2024-01-01T00:00:00Z")
    assert StoreConfig.decode(cfg.encode()) == cfg
    doc = config_doc()
    assert doc["format"] == "cas-store" and doc["version"] == 3
    assert doc["chunker"]["avg_size"] == 65536
    assert doc["features"] == ["derived-chunks"] and len(doc["uuid"]) == 36


def test_store_config_of_version_3_needs_a_uuid():
    doc = config_doc()
    doc["uuid"] = "not-a-uuid"
    with pytest.raises(SchemaError, match="uuid"):
        StoreConfig.decode(json.dumps(doc).encode())


@pytest.mark.parametrize("version", [4, 99])
def test_store_config_newer_version_refused(version):
    doc = config_doc()
    doc["version"] = version
    with pytest.raises(FormatError, match="upgrade cas") as info:
        StoreConfig.decode(json.dumps(doc).encode())
    assert info.value.code == "E_FORMAT"
    assert info.value.exit_code == 11


@pytest.mark.parametrize("version", [0, None, "1", "3", -1, True, 3.0])
def test_store_config_malformed_version_refused(version):
    doc = config_doc()
    doc["version"] = version
    with pytest.raises(SchemaError):
        StoreConfig.decode(json.dumps(doc).encode())


@pytest.mark.parametrize("features", [[["x"]], "derived-chunks", [1], {"a": 1}])
def test_store_config_malformed_features_refused(features):
    doc = config_doc()
    doc["features"] = features
    with pytest.raises(SchemaError, match="features"):
        StoreConfig.decode(json.dumps(doc).encode())


@pytest.mark.parametrize("requires", [[["x"]], "x", [1]])
def test_manifest_malformed_requires_refused(requires):
    doc = base_doc()
    doc["requires"] = requires
    _refuse(doc, "requires")


def test_store_config_missing_version_refused():
    doc = config_doc()
    del doc["version"]
    with pytest.raises(SchemaError):
        StoreConfig.decode(json.dumps(doc).encode())


@pytest.mark.parametrize("fmt", ["git", None, ""])
def test_store_config_wrong_format_refused(fmt):
    doc = config_doc()
    doc["format"] = fmt
    with pytest.raises(FormatError):
        StoreConfig.decode(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "path, value, err",
    [
        (("hash",), "sha256", FormatError),
        (("compression", "codec"), "lz4", FormatError),
        (("chunker", "algorithm"), "rabin", SchemaError),
        (("chunker", "min_size"), 10, SchemaError),
        (("chunker", "bogus"), 1, SchemaError),
        (("pack_target_bytes",), "big", SchemaError),
    ],
)
def test_store_config_bad_fields_refused(path, value, err):
    doc = config_doc()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(err):
        StoreConfig.decode(json.dumps(doc).encode())


@pytest.mark.parametrize("raw", [b"", b"{", b"not json"])
def test_store_config_not_json_refused(raw):
    with pytest.raises(SchemaError):
        StoreConfig.decode(raw)


def test_store_config_decodes_into_struct_types():
    cfg = StoreConfig.decode(json.dumps(config_doc()).encode())
    assert isinstance(cfg.chunker, msgspec.Struct)
    assert cfg.chunker.min_size == 16384


# --------------------------------------------------------------------------- old manifests


def test_verify_checks_the_whole_file_blake3_of_older_manifests(tmp_path):
    """Manifests written by cas 0.1 carry a whole-file BLAKE3; verify still checks it."""
    import blake3
    import msgspec

    from cas import Store

    src = tmp_path / "src"
    src.mkdir()
    data = bytes(range(256)) * 1000
    (src / "w.bin").write_bytes(data)
    store = Store.init(tmp_path / "store")
    store.add("m", src)
    latest = store.resolve("m")
    manifest = store.manifest(latest)
    assert manifest.files[0].blake3 is None  # new manifests leave it out

    def register(whole: str) -> None:
        f = msgspec.structs.replace(manifest.files[0], blake3=whole)
        old = msgspec.structs.replace(manifest, files=[f], seq=store.registry.next_seq("m"),
                                      version=1)
        with store.writing():
            store.registry.add_version("m", old.seq, old.encode(), "as written by cas 0.1")

    register(blake3.blake3(data).hexdigest())
    assert store.verify("m").ok
    register("0" * 64)
    report = store.verify("m")
    assert not report.ok
    assert not report.bad_objects  # every chunk is fine: only the recorded hash disagrees
    assert any("whole-file hash" in why for b in report.broken_versions for why in b.reasons)
    store.close()


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_json_is_a_schema_error(depth):
    """Unknown optional fields are accepted, so their nesting must not crash the reader."""
    deep = "[" * depth + "]" * depth
    doc = ('{"schema":"cas.manifest","version":3,"name":"a","seq":1,"files":[],'
           f'"total_size":0,"surprise":{deep}}}').encode()
    with pytest.raises(SchemaError, match="nests too deeply"):
        Manifest.decode(doc)
    cfg = json.dumps(config_doc())[:-1] + f', "surprise": {deep}}}'
    with pytest.raises(SchemaError, match="nests too deeply"):
        StoreConfig.decode(cfg.encode())
