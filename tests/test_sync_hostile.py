"""The receiving side of sync against a hostile sender: anything that arrives is refused
unless it verifies, with a one-line error and a stable code, and nothing of a refused
transfer becomes visible.

Transfer packs are built by hand (header, entries made with ``encode_entry_header``,
trailer) or cut from a real stream (``transfer.stream(store, transfer.plan(store, ids))``)
and then damaged; they go to ``transfer.receive`` or ``LocalPeer.receive``. Registry objects
and ref updates go to ``registry_transfer.store_objects`` and ``LocalPeer.update_refs``;
frames to ``cas.rpc.Framed`` and ``cas.rpc.serve``. After every refusal the receiving store
has no new pack, index or ref, holds no temp file, and verifies clean.
"""

from __future__ import annotations

import io
import random
import struct
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import pytest
import xxhash
from dulwich.objects import Blob, Commit, Tag, Tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from cas import registry_transfer as rt
from cas import transfer
from cas.compression import CODEC_DERIVED, CODEC_RAW, CODEC_ZSTD
from cas.errors import CasError, NetError, VerifyError
from cas.format import pack as fmt
from cas.format.chunklist import ChunkList
from cas.format.manifest import Manifest
from cas.ids import blake3_id
from cas.ingest import AddOptions
from cas.packs import MAX_CHUNK_BYTES
from cas.peer import LocalPeer, RefUpdate
from cas.rpc import MAX_FRAME, Framed, RemotePeer, serve
from cas.store import Store
from conftest import damage_chunk, damaged, run_json

# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """The sending store: ``org/m`` v1 (F32 tensors, a text file, random bytes) and v2 (the
    tensors as F16: derived chunks), tagged ``prod``; ``org/tiny`` (one small file);
    ``org/other``."""
    top = tmp_path_factory.mktemp("hostile")
    store = Store.init(top / "src")
    rng = np.random.default_rng(3)
    w = {f"layer.{i}.weight": (rng.standard_normal((256, 256)) * 0.02).astype(np.float32)
         for i in range(2)}
    v1 = top / "v1"
    v1.mkdir()
    save_file(w, str(v1 / "model.safetensors"))
    (v1 / "notes.txt").write_bytes(b"the same line, again and again\n" * 200)
    (v1 / "blob.bin").write_bytes(random.Random(3).randbytes(3000))
    store.add("org/m", v1)
    v2 = top / "v2"
    v2.mkdir()
    save_file({k: v.astype(np.float16) for k, v in w.items()}, str(v2 / "model.safetensors"))
    store.add("org/m", v2, AddOptions(tags=["prod"]))
    tiny = top / "tiny"
    tiny.mkdir()
    (tiny / "t.txt").write_bytes(b"tiny model, tiny file\n" * 40)
    store.add("org/tiny", tiny)
    other = top / "other"
    other.mkdir()
    (other / "o.bin").write_bytes(random.Random(4).randbytes(500))
    store.add("org/other", other)
    return store


@pytest.fixture
def dst(tmp_path: Path) -> Store:
    """A fresh receiving store."""
    store = Store.init(tmp_path / "dst")
    yield store
    store.close()


def blobs_of(store: Store, model: str) -> dict[int, str]:
    head = store.registry.head(model)
    assert head is not None
    return {seq: b.decode() for seq, b in store.registry.commit_versions(head.decode()).items()}


def closure(store: Store, model: str, seqs: list[int] | None = None) -> list[bytes]:
    blobs = blobs_of(store, model)
    return LocalPeer(store).closure([b for s, b in blobs.items() if seqs is None or s in seqs])


def real_stream(store: Store, ids: list[bytes], target: int | None = None) -> bytes:
    return b"".join(bytes(p) for p in transfer.stream(store, transfer.plan(store, ids), target))


def header(oid: bytes, kind: int, codec: int, raw_len: int, stored_len: int,
           reserved: int = 0) -> bytes:
    """An entry header, with a valid check over whatever fields it is given."""
    head = struct.pack("<32sBBHII", oid, kind, codec, reserved, raw_len, stored_len)
    return head + struct.pack("<I", xxhash.xxh32_intdigest(head))


def pack(entries: list[tuple[bytes, bytes]], count: int | None = None,
         pack_id: bytes | None = None) -> bytes:
    """A transfer pack of ``(entry header, stored bytes)``; the trailer counts and names the
    entries unless told otherwise."""
    h = fmt.PackIdHasher()
    for head, _ in entries:
        h.add(head[:32])
    body = b"".join(head + data for head, data in entries)
    return (fmt.pack_header() + body
            + fmt.pack_trailer(len(entries) if count is None else count,
                               h.digest() if pack_id is None else pack_id))


def raw_entry(data: bytes, oid: bytes | None = None, kind: int = fmt.KIND_CHUNK
              ) -> tuple[bytes, bytes]:
    return header(oid or blake3_id(data), kind, CODEC_RAW, len(data), len(data)), data


def visible(store: Store) -> tuple[list[str], dict[bytes, bytes], list[str]]:
    """What readers can see (pack files and indexes, refs) and the temps left behind."""
    packs = sorted(p.name for p in store.packs_dir.iterdir())
    refs = store.registry.refs_under(b"refs/")
    temps = sorted(str(p) for p in store.path.rglob("*.tmp"))
    return packs, refs, temps


def refused(store: Store, data: bytes, codes: tuple[str, ...] = ("E_VERIFY",),
            match: str = "") -> CasError:
    """``data`` is refused with one of ``codes`` and a one-line message, and nothing of it
    becomes visible."""
    before = visible(store)
    with pytest.raises(CasError) as info:
        transfer.receive(store, io.BytesIO(data))
    err = info.value
    assert err.code in codes, err
    assert "\n" not in err.message and err.message
    assert match in err.message, err.message
    assert visible(store) == before
    return err


def sound(store: Store) -> None:
    report = store.verify()
    assert report.ok, report


def reads_back(store: Store, source: Store, ids: list[bytes]) -> None:
    for oid in ids:
        assert store.read_object(oid) == source.read_object(oid)


# -- the baseline: a real stream is accepted ------------------------------------------------------


def test_a_real_stream_arrives_whole_and_a_second_copy_adds_nothing(src: Store, dst: Store
                                                                    ) -> None:
    ids = closure(src, "org/m")
    data = real_stream(src, ids)
    stats = transfer.receive(dst, io.BytesIO(data))
    assert stats.objects == len(ids) and stats.packs == 2  # two generations: derived chunks
    reads_back(dst, src, ids)
    packs = visible(dst)[0]
    again = transfer.receive(dst, io.BytesIO(data))
    assert again.already == len(ids)
    assert visible(dst)[0] == packs
    sound(dst)


def test_an_empty_stream_is_nothing_and_an_empty_pack_writes_nothing(dst: Store) -> None:
    before = visible(dst)
    assert transfer.receive(dst, io.BytesIO(b"")).objects == 0
    stats = transfer.receive(dst, io.BytesIO(pack([])))
    assert (stats.objects, stats.packs) == (0, 1)
    assert visible(dst) == before
    sound(dst)


# -- bytes that lie ------------------------------------------------------------------------------


def test_bytes_that_do_not_hash_to_their_id_are_refused_and_nothing_is_stored(
        src: Store, dst: Store) -> None:
    claimed = blake3_id(b"what the sender claims")
    err = refused(dst, pack([raw_entry(b"what it sends", claimed)]), match="hashes to")
    assert err.object_id == claimed.hex()
    assert not dst.has_object(claimed)
    # A lie after honest entries: the honest ones of that pack do not become visible either.
    honest = raw_entry(b"an honest chunk")
    refused(dst, pack([honest, raw_entry(b"x" * 100, claimed)]))
    assert not dst.has_object(blake3_id(b"an honest chunk"))
    # A real stream where one entry's bytes are swapped for another's (headers re-made).
    ids = closure(src, "org/tiny")
    locs = transfer.plan(src, ids)[0]
    entries = [(header(loc.entry.oid, loc.entry.kind, loc.entry.codec, loc.entry.raw_len,
                       loc.entry.stored_len), bytes(loc.pack.read_stored(loc.entry)))
               for loc in locs]
    h0, (h1, d1) = entries[0][0], entries[1]
    swapped = [(header(h0[:32], h1[32], h1[33], *struct.unpack_from("<II", h1, 36)), d1),
               (h1, d1)]
    refused(dst, pack(swapped), match="hashes to")
    sound(dst)


def test_a_chunk_list_that_hashes_right_but_does_not_parse_is_refused(dst: Store) -> None:
    garbage = b"CASLIST\x00" + b"\xff" * 40
    refused(dst, pack([raw_entry(garbage, kind=fmt.KIND_CHUNK_LIST)]),
            match="chunk list that does not parse")
    # A well-formed list whose lengths do not sum to its size.
    good = ChunkList(10, ((blake3_id(b"a" * 10), 10),)).encode()
    lying = good[:24] + struct.pack("<Q", 11) + good[32:]
    refused(dst, pack([raw_entry(lying, kind=fmt.KIND_CHUNK_LIST)]), match="sum to")
    sound(dst)


def test_a_zstd_frame_that_declares_more_than_its_record_is_refused(dst: Store) -> None:
    import zstandard

    data = b"\0" * 5000
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(data)
    head = header(blake3_id(data[:100]), fmt.KIND_CHUNK, CODEC_ZSTD, 100, len(frame))
    refused(dst, pack([(head, frame)]), match="declares 5000")


# -- short streams -------------------------------------------------------------------------------


def _boundaries(data: bytes) -> list[int]:
    """Every section boundary of a one-pack stream: after the header, each entry header
    and its data, inside the trailer."""
    cuts = [1, fmt.PACK_HEADER_SIZE - 1, fmt.PACK_HEADER_SIZE]
    at = fmt.PACK_HEADER_SIZE
    while data[at:at + 8] != fmt.PACK_END_MAGIC:
        entry = fmt.decode_entry_header(data[at:at + fmt.ENTRY_HEADER_SIZE], at, "test")
        cuts += [at + 1, at + fmt.ENTRY_HEADER_SIZE - 1, at + fmt.ENTRY_HEADER_SIZE,
                 at + fmt.ENTRY_HEADER_SIZE + 1]
        at += fmt.ENTRY_HEADER_SIZE + entry.stored_len
        cuts += [at - 1, at]
    cuts += [at + 1, at + 8, at + 16, len(data) - 1]
    return sorted(set(c for c in cuts if 0 < c < len(data)))


def test_a_stream_cut_anywhere_is_refused_and_leaves_nothing(src: Store, dst: Store) -> None:
    ids = closure(src, "org/m", [1])
    data = real_stream(src, ids)
    assert len(transfer.plan(src, ids)) == 1  # one pack: every cut is inside it
    rng = random.Random(11)
    cuts = _boundaries(data) + rng.sample(range(1, len(data)), 40)
    for cut in cuts:
        err = refused(dst, data[:cut], match="truncated")
        assert err.code == "E_VERIFY"
    sound(dst)
    transfer.receive(dst, io.BytesIO(data))
    reads_back(dst, src, ids)


def test_a_cut_between_packs_keeps_the_complete_packs(src: Store, dst: Store) -> None:
    ids = closure(src, "org/m", [1])
    data = real_stream(src, ids, target=1)  # one object per pack
    first = data.index(fmt.PACK_END_MAGIC) + fmt.PACK_TRAILER_SIZE
    with pytest.raises(VerifyError, match="truncated"):
        transfer.receive(dst, io.BytesIO(data[:first + 30]))
    held = [oid for oid in ids if dst.has_object(oid)]
    assert len(held) == 1  # the first pack, complete and verified, stays
    sound(dst)
    stats = transfer.receive(dst, io.BytesIO(data))
    assert stats.already == 1 and stats.objects == len(ids)
    reads_back(dst, src, ids)


# -- flipped bytes -------------------------------------------------------------------------------


def _flip_everywhere(src: Store, dst: Store, data: bytes, ids: list[bytes]) -> None:
    """Flip each byte of ``data`` in turn: refused with E_VERIFY or E_SCHEMA, leaving nothing,
    unless the byte is one no reader looks at (the pack header's reserved field), and then
    what arrives is exactly what was sent."""
    reserved = range(12, 16)
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x5A
        before = visible(dst)
        try:
            transfer.receive(dst, io.BytesIO(bytes(bad)))
        except CasError as err:
            assert err.code in ("E_VERIFY", "E_SCHEMA"), (i, err)
            assert "\n" not in err.message
            assert visible(dst) == before, i
            continue
        assert i in reserved, f"a flip at byte {i} was accepted"
        reads_back(dst, src, ids)


def test_a_flipped_byte_anywhere_in_a_small_stream_is_refused(src: Store, dst: Store) -> None:
    ids = closure(src, "org/tiny")
    data = real_stream(src, ids)
    _flip_everywhere(src, dst, data, ids)
    sound(dst)


def test_a_flipped_byte_in_a_derived_chunk_is_refused(src: Store, dst: Store) -> None:
    ids = closure(src, "org/m", [2])
    generations = transfer.plan(src, ids)
    transfer.receive(dst, io.BytesIO(b"".join(
        bytes(p) for p in transfer.stream(src, generations[:1]))))
    derived = [loc for loc in generations[1] if loc.entry.codec == CODEC_DERIVED][:1]
    assert derived
    data = b"".join(bytes(p) for p in transfer.stream(src, [derived]))
    _flip_everywhere(src, dst, data, [derived[0].entry.oid])
    sound(dst)


@pytest.fixture(scope="module")
def v1_stream(src: Store) -> tuple[list[bytes], bytes]:
    ids = closure(src, "org/m", [1])
    return ids, real_stream(src, ids, target=40_000)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_streams_never_store_what_was_not_sent(src: Store, v1_stream: tuple,
                                                       tmp_path: Path,
                                                       data: st.DataObject) -> None:
    ids, valid = v1_stream
    how, bad = data.draw(damaged(valid))
    store = Store.init(tempfile.mkdtemp(dir=tmp_path))
    try:
        transfer.receive(store, io.BytesIO(bad))
    except CasError as err:
        assert err.code in ("E_VERIFY", "E_SCHEMA"), (how, err)
        assert "\n" not in err.message
    for p in store.packs.packs.values():
        for e in p.entries():
            assert e.oid in ids
            assert store.read_object(e.oid) == src.read_object(e.oid)
    store.close()


# -- trailers, lengths, kinds --------------------------------------------------------------------


def test_a_trailer_with_a_wrong_count_or_pack_id_is_refused(dst: Store) -> None:
    entries = [raw_entry(b"first chunk"), raw_entry(b"second chunk")]
    refused(dst, pack(entries, count=3), match="counts 3 entries, 2 came")
    refused(dst, pack(entries, count=1), match="counts 1 entries")
    refused(dst, pack(entries, count=0))
    refused(dst, pack(entries, pack_id=blake3_id(b"another pack")), match="names pack")
    # The trailer of the same ids in another order names another pack.
    h = fmt.PackIdHasher()
    h.add(entries[1][0][:32])
    h.add(entries[0][0][:32])
    refused(dst, pack(entries, pack_id=h.digest()), match="names pack")
    sound(dst)


def test_a_derived_chunk_whose_base_the_receiver_lacks_is_refused(src: Store, dst: Store
                                                                  ) -> None:
    ids = closure(src, "org/m", [2])
    generations = transfer.plan(src, ids)
    assert len(generations) == 2
    later = b"".join(bytes(p) for p in transfer.stream(src, generations[1:]))
    refused(dst, later, match="derived chunk whose base is not here")
    # Bases and derived chunks in one pack: the bases are not here until the pack is.
    merged = b"".join(bytes(p) for p in transfer.stream(src, [generations[0] + generations[1]]))
    refused(dst, merged, match="derived chunk whose base is not here")
    # The base chunk list alone is not enough: its chunks are read too.
    lists = [loc for loc in generations[0] if loc.entry.kind == fmt.KIND_CHUNK_LIST]
    transfer.receive(dst, io.BytesIO(b"".join(bytes(p) for p in transfer.stream(src, [lists]))))
    refused(dst, later, match="derived chunk whose base is not here")
    sound(dst)
    transfer.receive(dst, io.BytesIO(real_stream(src, ids)))
    reads_back(dst, src, ids)


@pytest.mark.parametrize("kind,raw_len,stored_len,what", [
    (fmt.KIND_CHUNK, MAX_CHUNK_BYTES + 1, 10, "more than such an object can hold"),
    (fmt.KIND_CHUNK, (1 << 32) - 1, (1 << 32) - 1, "more than such an object can hold"),
    (fmt.KIND_CHUNK_LIST, transfer.MAX_LIST_BYTES + 1, 10, "more than such an object can hold"),
    (fmt.KIND_CHUNK, 1000, 200_000, "stores 200000 bytes for 1000"),
    (fmt.KIND_CHUNK, 0, 70_000, "stores 70000 bytes for 0"),
])
def test_claimed_lengths_beyond_limits_are_refused_before_reading(
        dst: Store, kind: int, raw_len: int, stored_len: int, what: str) -> None:
    oid = blake3_id(b"claimed")
    # The stream holds no data for the claim: refusal comes from the header alone.
    data = fmt.pack_header() + header(oid, kind, CODEC_RAW, raw_len, stored_len)
    err = refused(dst, data, match=what)
    assert err.object_id == oid.hex()


def test_a_transfer_pack_past_the_limit_is_refused(dst: Store,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [raw_entry(bytes([i]) * 100) for i in range(3)]
    monkeypatch.setattr(transfer, "MAX_TRANSFER_PACK_BYTES", len(pack(entries[:2])))
    refused(dst, pack(entries), match="grows past")
    transfer.receive(dst, io.BytesIO(pack(entries[:2]) + pack(entries[2:])))
    assert all(dst.has_object(head[:32]) for head, _ in entries)


@pytest.mark.parametrize("kind,codec,reserved,what", [
    (3, CODEC_RAW, 0, "unknown kind 3"),
    (0, CODEC_RAW, 0, "unknown kind 0"),
    (fmt.KIND_CHUNK, 9, 0, "unknown codec 9"),
    (fmt.KIND_CHUNK, 255, 0, "unknown codec 255"),
    (fmt.KIND_CHUNK, CODEC_RAW, 1, "non-zero reserved field"),
])
def test_an_unknown_kind_codec_or_reserved_value_is_refused(
        dst: Store, kind: int, codec: int, reserved: int, what: str) -> None:
    data = b"x" * 10
    refused(dst, pack([(header(blake3_id(data), kind, codec, 10, 10, reserved), data)]),
            match=what)


def test_pack_headers_of_another_magic_or_version_are_refused(dst: Store) -> None:
    body = pack([raw_entry(b"chunk")])[fmt.PACK_HEADER_SIZE:]
    refused(dst, b"NOTAPACK" + struct.pack("<II", 1, 0) + body, match="bad magic")
    refused(dst, fmt.PACK_MAGIC + struct.pack("<II", 2, 0) + body, codes=("E_SCHEMA",),
            match="unknown pack version 2")
    # Garbage after a complete pack: the pack stays (verified), the rest is refused.
    good = pack([raw_entry(b"chunk")])
    with pytest.raises(VerifyError, match="truncated header"):
        transfer.receive(dst, io.BytesIO(good + b"CASPA"))
    assert dst.has_object(blake3_id(b"chunk"))
    sound(dst)


def test_a_refused_stream_through_the_peer_leaves_a_store_the_cli_calls_sound(
        src: Store, dst: Store) -> None:
    ids = closure(src, "org/m", [1])
    bad = bytearray(real_stream(src, ids))
    bad[len(bad) // 2] ^= 1
    peer = LocalPeer(dst)
    with peer.session("test"):
        with pytest.raises(VerifyError):
            peer.receive(iter([bytes(bad[:1000]), memoryview(bytes(bad[1000:]))]))
    code, doc = run_json(dst.path, "verify", "--all")
    assert code == 0 and doc["ok"], doc
    assert not any(dst.has_object(oid) for oid in ids)


# -- the registry half ---------------------------------------------------------------------------


def _objects(store: Store) -> set[str]:
    return {str(p.relative_to(store.path)) for p in (store.path / "registry" / "objects")
            .rglob("*") if p.is_file()}


@pytest.mark.parametrize("objects,what", [
    ([(5, b"")], "unknown type 5"),
    ([(0, b"x")], "unknown type 0"),
    ([(3, b"fine blob"), (Commit.type_num, b"garbage")], "does not parse as a commit"),
    ([(Commit.type_num, b"tree zzzz\n\nmessage")], "does not parse as a commit"),
    ([(Tree.type_num, b"100644 a\x00short")], "does not parse as a tree"),
    ([(Tree.type_num, b"999999 a\x00" + b"\x01" * 20)], "does not parse as a tree"),
    ([(Tag.type_num, b"object nothex\ntype commit\ntag t\n\nm")], "does not parse as a tag"),
])
def test_garbage_registry_objects_are_refused_and_none_is_written(
        dst: Store, objects: list[tuple[int, bytes]], what: str) -> None:
    before = _objects(dst)
    with pytest.raises(VerifyError, match=what) as info:
        LocalPeer(dst).put_registry_objects(objects)
    assert "\n" not in info.value.message
    assert _objects(dst) == before  # all or nothing: the good blob before it is not stored


def test_too_many_or_too_large_registry_objects_are_refused(
        dst: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _objects(dst)
    monkeypatch.setattr(rt, "MAX_OBJECTS", 2)
    with pytest.raises(VerifyError, match="more than 2"):
        rt.store_objects(dst.registry, [(3, b"a"), (3, b"b"), (3, b"c")])
    monkeypatch.setattr(rt, "MAX_OBJECT_BYTES", 100)
    with pytest.raises(VerifyError, match="larger than 100"):
        rt.store_objects(dst.registry, [(3, b"a" * 101)])
    assert _objects(dst) == before


def _send_registry(src: Store, dst: Store, tips: list[bytes]) -> None:
    objs = rt.missing_objects(src.registry, tips, [])
    LocalPeer(dst).put_registry_objects(objs)


def _send_content(src: Store, dst: Store, model: str) -> None:
    transfer.receive(dst, io.BytesIO(real_stream(src, closure(src, model))))


def _update(dst: Store, ref: str, old: str | None, new: str, force: bool = False
            ) -> tuple[str, str]:
    (r,) = LocalPeer(dst).update_refs([RefUpdate(ref, old, new)], force)
    return r.status, r.reason


def _commit(dst_reg_objects: list, tree: bytes, parents: list[bytes], msg: bytes = b"m"
            ) -> Commit:
    c = Commit()
    c.tree = tree
    c.parents = parents
    c.author = c.committer = b"x <x@example.com>"
    c.author_time = c.commit_time = 1_700_000_000
    c.author_timezone = c.commit_timezone = 0
    c.message = msg
    dst_reg_objects.append((c.type_num, c.as_raw_string()))
    return c


def test_a_commit_whose_parent_or_tree_was_never_sent_moves_no_ref(src: Store, dst: Store
                                                                  ) -> None:
    empty = Tree()
    objs: list = [(empty.type_num, empty.as_raw_string())]
    orphan = _commit(objs, empty.id, [b"1" * 40])
    treeless = _commit(objs, b"2" * 40, [])
    LocalPeer(dst).put_registry_objects(objs)
    for c in (orphan, treeless):
        status, reason = _update(dst, "refs/models/org/x", None, c.id.decode())
        assert status == "rejected" and reason.startswith("E_VERIFY"), reason
        assert "missing" in reason
    # A real model's commit with its registry objects but the receiver lacking its tree's
    # manifest blob: the objects are sent, all but one.
    tip = src.registry.head("org/tiny")
    objs = rt.missing_objects(src.registry, [tip], [])
    kept = [(t, raw) for t, raw in objs if t != Blob.type_num]
    LocalPeer(dst).put_registry_objects(kept)
    status, reason = _update(dst, "refs/models/org/tiny", None, tip.decode())
    assert status == "rejected" and "missing" in reason, reason
    assert dst.registry.refs_under(b"refs/") == {}
    sound(dst)


@pytest.mark.parametrize("ref", [
    "refs/models/../x", "refs/models/a//b", "/etc/passwd", "refs/heads/x", "refs/models/",
    "refs/models/org/m.lock", "refs/tags/org/m@../../x", "refs/tags/org/m", "HEAD",
    "refs/pins/../org/m@0123456789abcdef0123456789abcdef", "refs/remotes/o/models/org/m",
    "refs/models/org/m\x00x", "../refs/models/org/m",
])
def test_refs_with_invalid_names_are_refused(src: Store, dst: Store, ref: str) -> None:
    tip = src.registry.head("org/tiny")
    _send_registry(src, dst, [tip])
    _send_content(src, dst, "org/tiny")
    files = sorted(p for p in dst.path.rglob("*"))
    status, reason = _update(dst, ref, None, tip.decode())
    assert status == "rejected" and reason.startswith("E_SCHEMA"), reason
    assert dst.registry.refs_under(b"refs/") == {}
    assert sorted(p for p in dst.path.rglob("*")) == files


@pytest.mark.parametrize("new", ["", "zz" * 20, "../../etc/passwd", "0" * 40, "a" * 39])
def test_ref_values_that_are_not_object_ids_are_refused(dst: Store, new: str) -> None:
    status, reason = _update(dst, "refs/models/org/m", None, new)
    assert status == "rejected" and reason[:7] in ("E_VERIF", "E_SCHEM"), reason
    assert dst.registry.refs_under(b"refs/") == {}


def test_a_model_ref_to_a_version_whose_chunks_are_not_here_is_refused(src: Store, dst: Store
                                                                      ) -> None:
    tip = src.registry.head("org/m")
    _send_registry(src, dst, [tip])
    status, reason = _update(dst, "refs/models/org/m", None, tip.decode())
    assert status == "rejected" and reason.startswith("E_VERIFY"), reason
    # All but the derived chunks: still refused.
    ids = closure(src, "org/m")
    first = transfer.plan(src, ids)[0]
    transfer.receive(dst, io.BytesIO(b"".join(bytes(p) for p in transfer.stream(src, [first]))))
    status, reason = _update(dst, "refs/models/org/m", None, tip.decode())
    assert status == "rejected" and "are not here" in reason, reason
    assert dst.registry.head("org/m") is None
    sound(dst)
    _send_content(src, dst, "org/m")
    assert _update(dst, "refs/models/org/m", None, tip.decode())[0] == "ok"
    sound(dst)


def _evil_version(src: Store, tmp_path: Path, model: str, seq: int, manifest: bytes) -> bytes:
    """A commit of ``model`` whose only version ``seq`` is ``manifest``, made in another
    store's registry (as a hostile sender could)."""
    evil = Store.init(tmp_path / "evil")
    v = evil.registry.add_version(model, seq, manifest, "crafted")
    evil.close()
    return v.commit.encode()


@pytest.mark.parametrize("change", [{"name": "org/other"}, {"seq": 2}])
def test_a_manifest_that_names_another_model_or_number_is_refused(
        src: Store, dst: Store, tmp_path: Path, change: dict) -> None:
    blob = blobs_of(src, "org/m")[1]
    m = Manifest.decode(src.registry.blob(blob.encode()))
    crafted = msgspec.structs.replace(m, **change).encode()
    commit = _evil_version(src, tmp_path, "org/m", 1, crafted)
    evil = Store.open(tmp_path / "evil")
    objs = rt.missing_objects(evil.registry, [commit], [])
    evil.close()
    LocalPeer(dst).put_registry_objects(objs)
    _send_content(src, dst, "org/m")
    status, reason = _update(dst, "refs/models/org/m", None, commit.decode())
    assert status == "rejected" and reason.startswith("E_VERIFY"), reason
    assert "its manifest says" in reason
    assert dst.registry.head("org/m") is None


def test_a_stale_or_older_ref_is_a_conflict(src: Store, dst: Store) -> None:
    history = [h.commit.encode() for h in src.registry.history("org/m")]
    tip, older = history[0], history[-1]
    _send_registry(src, dst, [tip])
    _send_content(src, dst, "org/m")
    assert _update(dst, "refs/models/org/m", None, older.decode())[0] == "ok"
    # The sender saw nothing there (stale old): refused, whatever it sends.
    status, reason = _update(dst, "refs/models/org/m", None, tip.decode())
    assert status == "rejected" and reason.startswith("E_CONFLICT"), reason
    status, reason = _update(dst, "refs/models/org/m", "3" * 40, tip.decode())
    assert status == "rejected" and reason.startswith("E_CONFLICT"), reason
    assert dst.registry.head("org/m") == older
    assert _update(dst, "refs/models/org/m", older.decode(), tip.decode())[0] == "ok"
    # An older tip is not a fast-forward.
    status, reason = _update(dst, "refs/models/org/m", tip.decode(), older.decode())
    assert status == "rejected" and reason.startswith("E_CONFLICT"), reason
    assert "fast-forward" in reason
    assert dst.registry.head("org/m") == tip
    sound(dst)


def test_a_tag_pointing_outside_its_models_history_is_refused(src: Store, dst: Store) -> None:
    for model in ("org/m", "org/other"):
        _send_registry(src, dst, [src.registry.head(model)])
        _send_content(src, dst, model)
        assert _update(dst, f"refs/models/{model}", None,
                       src.registry.head(model).decode())[0] == "ok"
    prod = src.registry.refs_under(b"refs/tags/")[b"refs/tags/org/m@prod"]
    _send_registry(src, dst, [prod])
    # The real tag, under another model's name.
    status, reason = _update(dst, "refs/tags/org/other@prod", None, prod.decode())
    assert status == "rejected" and "outside model org/other's history" in reason, reason
    # A crafted tag of org/other's commit named as org/m's.
    t = Tag()
    t.tagger = b"x <x@example.com>"
    t.tag_time, t.tag_timezone = 1_700_000_000, 0
    t.name = b"org/m@evil"
    t.object = (Commit, src.registry.head("org/other"))
    t.message = b"evil\n"
    LocalPeer(dst).put_registry_objects([(t.type_num, t.as_raw_string())])
    status, reason = _update(dst, "refs/tags/org/m@evil", None, t.id.decode())
    assert status == "rejected" and reason.startswith("E_VERIFY"), reason
    # A tag ref naming a commit rather than a tag object.
    status, reason = _update(dst, "refs/tags/org/m@bare", None,
                             src.registry.head("org/m").decode())
    assert status == "rejected" and reason.startswith("E_VERIFY"), reason
    assert not dst.registry.refs_under(b"refs/tags/")
    assert _update(dst, "refs/tags/org/m@prod", None, prod.decode())[0] == "ok"
    sound(dst)


def test_refused_updates_do_not_stop_the_good_ones(src: Store, dst: Store) -> None:
    tip = src.registry.head("org/tiny")
    _send_registry(src, dst, [tip])
    _send_content(src, dst, "org/tiny")
    results = LocalPeer(dst).update_refs([RefUpdate("refs/models/../evil", None, tip.decode()),
                                          RefUpdate("refs/models/org/tiny", None, tip.decode())])
    assert {r.ref: r.status for r in results} == {"refs/models/../evil": "rejected",
                                                 "refs/models/org/tiny": "ok"}


# -- a hostile directory remote through the CLI ----------------------------------------------


def test_pull_from_a_remote_serving_damaged_bytes_fails_cleanly(src: Store, tmp_path: Path
                                                                ) -> None:
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(src.path, remote)
    damage_chunk(remote, "org/m@1", "blob.bin")
    local = tmp_path / "local"
    assert run_json(local, "init")[0] == 0
    code, doc = run_json(local, "pull", str(remote), "org/m")
    assert code != 0 and doc["error"]["code"] == "E_VERIFY", doc
    assert "\n" not in doc["error"]["message"]
    code, doc = run_json(local, "verify", "--all")
    assert code == 0 and doc["ok"], doc
    code, doc = run_json(local, "ls")
    assert code == 0 and not doc["models"], doc
    # The other model, sound on the remote, still pulls.
    code, doc = run_json(local, "pull", str(remote), "org/tiny")
    assert code == 0, doc


def _remote_with_a_bad_ref(src: Store, tmp_path: Path, value: str) -> tuple[Path, Path]:
    import shutil

    remote = tmp_path / "remote"
    shutil.copytree(src.path, remote)
    (remote / "registry" / "refs" / "models" / "org" / "m").write_text(value + "\n")
    local = tmp_path / "local"
    assert run_json(local, "init")[0] == 0
    return remote, local


@pytest.mark.parametrize("value", ["zzzz", "../../etc/passwd" + "0" * 24, "1" * 40])
def test_pull_from_a_remote_whose_ref_is_not_an_object_fails_cleanly(
        src: Store, tmp_path: Path, value: str) -> None:
    remote, local = _remote_with_a_bad_ref(src, tmp_path, value)
    code, doc = run_json(local, "pull", str(remote))
    assert code != 0 and doc["error"]["code"] in ("E_VERIFY", "E_SCHEMA"), doc
    assert "\n" not in doc["error"]["message"]
    code, doc = run_json(local, "verify", "--all")
    assert code == 0 and doc["ok"], doc


def test_a_damaged_model_on_the_remote_does_not_block_pulling_another(
        src: Store, tmp_path: Path) -> None:
    remote, local = _remote_with_a_bad_ref(src, tmp_path, "1" * 40)
    code, doc = run_json(local, "pull", str(remote), "org/tiny")
    assert code == 0, doc


# -- frames --------------------------------------------------------------------------------------


def _framed(data: bytes) -> Framed:
    return Framed(io.BytesIO(data), io.BytesIO(), "peer")


def _frame(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">cI", kind, len(payload)) + payload


@pytest.mark.parametrize("data,err,what", [
    (_frame(b"X", b"hi"), VerifyError, "unknown frame type"),
    (b"M" + struct.pack(">I", MAX_FRAME + 1), VerifyError, "larger than"),
    (b"M" + struct.pack(">I", 0xFFFFFFFF), VerifyError, "larger than"),
    (b"M" + struct.pack(">I", 10) + b"abc", NetError, "in the middle of a frame"),
    (b"M\x00", NetError, "in the middle of a frame"),
    (b"", NetError, "connection closed"),
    (_frame(b"M", msgspec.msgpack.encode([1, 2])), VerifyError, "not a map"),
    (_frame(b"M", msgspec.msgpack.encode("op")), VerifyError, "not a map"),
    (_frame(b"M", b"\xc1"), VerifyError, "undecodable"),
    (_frame(b"M", b"\x92\x01"), VerifyError, "undecodable"),
    (_frame(b"D", b"data"), VerifyError, "expected a message"),
])
def test_malformed_frames_are_refused(data: bytes, err: type, what: str) -> None:
    with pytest.raises(err, match=what) as info:
        _framed(data).read_message()
    assert "\n" not in info.value.message


def test_a_deeply_nested_message_is_refused() -> None:
    payload = b"\x91" * 100_000 + b"\xc0"  # a list in a list in a list ...
    with pytest.raises(VerifyError):
        _framed(_frame(b"M", payload)).read_message()


def test_a_stream_interrupted_by_a_message_or_cut_is_refused() -> None:
    with pytest.raises(VerifyError, match="expected stream data"):
        list(_framed(_frame(b"D", b"a") + _frame(b"M", b"\x80")).read_stream())
    with pytest.raises(NetError):
        list(_framed(_frame(b"D", b"a")).read_stream())


def _answers(*docs: object) -> bytes:
    return b"".join(_frame(b"M", msgspec.msgpack.encode(d)) for d in docs)


@pytest.mark.parametrize("call,answer,what", [
    (lambda p: p.missing([b"a" * 32]), {"ok": True, "result": b"b" * 32}, "not asked about"),
    (lambda p: p.missing([b"a" * 32]), {"ok": True, "result": b"b" * 31}, "multiple of 32"),
    (lambda p: p.closure(["x"]), {"ok": True, "result": 5}, "malformed answer"),
    (lambda p: p.closure(["x"]), {"ok": True, "result": b"abc"}, "multiple of 32"),
    (lambda p: p.refs(), {"ok": True, "result": {"a": 1}}, "malformed answer"),
    (lambda p: p.refs(), {"ok": False, "code": 5}, "malformed error answer"),
    (lambda p: p.hello(), {"ok": True, "result": {"uuid": 1}}, "malformed hello"),
    (lambda p: p.update_refs([]), {"ok": True, "result": [{"ref": 1}]}, "malformed answer"),
])
def test_a_server_answering_nonsense_is_refused(call, answer: dict, what: str) -> None:  # type: ignore[no-untyped-def]
    peer = RemotePeer(_framed(_answers(answer)), "server")
    with pytest.raises(VerifyError, match=what):
        call(peer)


def test_a_server_survives_hostile_requests_and_refuses_a_bad_stream(src: Store, dst: Store
                                                                    ) -> None:
    ids = closure(src, "org/tiny")
    good = real_stream(src, ids)
    bad = bytearray(good)
    bad[-60] ^= 1
    requests = (_answers({"op": "refs", "args": 5}, {"op": "nonsense", "args": {}},
                         {"op": "missing", "args": {"ids": b"abc"}},
                         {"op": "registry_objects",
                          "args": {"wants": ["../x"], "haves": ["", "zz"]}},
                         {"op": "update_refs", "args": {"updates": [
                             {"ref": "refs/models/org/tiny", "old": None, "new": "a" * 20}]}},
                         {"op": "session_begin", "args": {}},
                         {"op": "receive", "args": {}})
                + _frame(b"D", bytes(bad)) + _frame(b"E", b"")
                + _answers({"op": "receive", "args": {}}) + _frame(b"D", good)
                + _frame(b"E", b"") + _answers({"op": "session_end", "args": {}},
                                              {"op": "bye", "args": {}}))
    out = io.BytesIO()
    serve(LocalPeer(dst), Framed(io.BytesIO(requests), out, "client"))
    answers = [msgspec.msgpack.decode(kind_payload) for kind_payload in _split(out.getvalue())]
    assert [a.get("code") for a in answers] == [
        "E_SCHEMA", "E_ARGS", "E_VERIFY", "E_VERIFY", None, None, "E_VERIFY", None, None]
    assert all("\n" not in a.get("message", "") for a in answers)
    assert answers[4]["result"][0]["status"] == "rejected"
    assert answers[7]["result"]["objects"] == len(ids)
    reads_back(dst, src, ids)
    sound(dst)


def _split(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        kind, n = struct.unpack_from(">cI", data, at)
        assert kind == b"M"
        out.append(data[at + 5:at + 5 + n])
        at += 5 + n
    return out

