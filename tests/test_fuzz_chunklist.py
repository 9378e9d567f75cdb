"""Property-based fuzzing of the chunk list parser (``ChunkList.decode``).

A chunk list is read from a pack after its bytes were checked against its id, so what reaches
the parser is either what a writer encoded or a crafted object that hashes to the id a manifest
names. Every refusal is ``E_SCHEMA`` (a malformed record: magic, version, reserved field, a
length that does not hold the count, an empty chunk, lengths that do not sum to the size);
nothing else may come out. A list that decodes is consistent (lengths sum to the size, no empty
chunk) and re-encodes to the same bytes, so its id is stable.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas.errors import SchemaError
from cas.format import chunklist as cl
from cas.format.chunklist import ChunkList
from conftest import damaged

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

chunks_st = st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(1, 2**32 - 1)),
                     max_size=20)


def decode_checked(data: bytes) -> ChunkList | None:
    try:
        clist = ChunkList.decode(data)
    except SchemaError as exc:
        assert exc.code == "E_SCHEMA"
        return None
    assert sum(clist.lengths) == clist.size
    assert 0 not in clist.lengths
    assert len(clist) == len(clist.chunks) == len(clist.ids())
    assert clist.encode() == bytes(data)
    assert ChunkList(clist.size, clist.chunks) == clist
    return clist


@FUZZ
@given(chunks_st)
def test_round_trip(chunks) -> None:
    made = ChunkList(sum(n for _, n in chunks), tuple(chunks))
    data = made.encode()
    assert len(data) == 32 + 36 * len(chunks)
    assert data[:8] == b"CASLIST\x00"
    assert struct.unpack_from("<IIQQ", data, 8) == (1, 0, len(chunks), made.size)
    back = ChunkList.decode(data)
    assert back == made and back.chunks == tuple(chunks)
    assert ChunkList.decode(memoryview(data)) == made


@FUZZ
@given(st.binary(max_size=200)
       | st.builds(lambda rest: cl.MAGIC + rest, st.binary(min_size=24, max_size=200)))
def test_any_bytes(data: bytes) -> None:
    decode_checked(data)


@FUZZ
@given(chunks_st, st.data())
def test_flipped_cut_or_extended(chunks, data) -> None:
    valid = ChunkList(sum(n for _, n in chunks), tuple(chunks)).encode()
    how, bad = data.draw(damaged(valid))
    got = decode_checked(bad)
    if how != "flip":
        assert got is None  # any change of length breaks the count
    elif got is not None:
        # Only a flip inside a chunk id leaves a consistent list (the id check in the pack
        # refuses such an object before it reaches this parser).
        pos = next(i for i, (x, y) in enumerate(zip(valid, bad)) if x != y)
        assert pos >= cl.HEADER_SIZE and (pos - cl.HEADER_SIZE) % cl.ITEM_SIZE < 32


@FUZZ
@given(chunks_st, st.data())
def test_structured_header_fields(chunks, data) -> None:
    valid = bytearray(ChunkList(sum(n for _, n in chunks), tuple(chunks)).encode())
    field, fmt_char, off = data.draw(st.sampled_from([
        ("version", "I", 8), ("reserved", "I", 12), ("count", "Q", 16), ("size", "Q", 24),
    ]))
    value = data.draw(st.integers(0, 2**32 - 1 if fmt_char == "I" else 2**64 - 1))
    old = struct.unpack_from("<" + fmt_char, valid, off)[0]
    struct.pack_into("<" + fmt_char, valid, off, value)
    got = decode_checked(bytes(valid))
    assert (got is not None) == (value == old)


@FUZZ
@given(st.lists(st.integers(0, 2**32 - 1), max_size=10), st.integers(0, 2**64 - 1))
def test_lengths_and_size_must_agree(lengths, size) -> None:
    data = struct.pack("<8sIIQQ", cl.MAGIC, 1, 0, len(lengths), size) + b"".join(
        struct.pack("<32sI", bytes([i]) * 32, n) for i, n in enumerate(lengths))
    got = decode_checked(data)
    assert (got is not None) == (sum(lengths) == size and 0 not in lengths)
