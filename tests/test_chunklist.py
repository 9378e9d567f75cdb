"""Tests for the lazy accessors of decoded chunk lists (encoding and validation are tested with
the other records in test_manifest.py)."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.format.chunklist import ChunkList


def _list(count: int, seed: int = 0) -> ChunkList:
    rng = random.Random(seed)
    chunks = tuple((os.urandom(31) + bytes([i % 256]), rng.randint(1, 2**32 - 1))
                   for i in range(count))
    return ChunkList(sum(n for _, n in chunks), chunks)


@pytest.mark.parametrize("count", [0, 1, 1023, 1024, 1025, 3000])
def test_decoded_accessors_match_the_chunks(count: int) -> None:
    made = _list(count)
    for data in (made.encode(), bytearray(made.encode()), memoryview(made.encode())):
        got = ChunkList.decode(data)
        assert got == made and hash(got) == hash(made) and len(got) == count
        assert got.size == made.size
        assert got.lengths == tuple(n for _, n in made.chunks)
        assert got.ids() == [oid for oid, _ in made.chunks]
        assert got.ids(count // 3, count // 2) == [oid for oid, _ in made.chunks[count // 3:
                                                                                  count // 2]]
        assert all(got.id_at(i) == made.chunks[i][0] for i in range(0, count, 97))
        assert got.chunks == made.chunks
        assert isinstance(got.id_at(count - 1) if count else b"", bytes)


def test_run_key_tells_equal_runs_across_lists() -> None:
    a = _list(50, seed=1)
    shifted = ChunkList(a.size + 7, ((b"\x07" * 32, 7), *a.chunks))
    b = ChunkList.decode(shifted.encode())
    assert a.run_key(10, 20) == b.run_key(11, 21)
    assert a.run_key(10, 20) != b.run_key(10, 20)
    assert a.run_key(0, 0) == b.run_key(5, 5) == b""
    same_ids_other_length = ChunkList(1, ((a.chunks[0][0], 1),))
    assert a.run_key(0, 1) != same_ids_other_length.run_key(0, 1)


def test_id_at_refuses_an_index_outside_the_list() -> None:
    got = ChunkList.decode(_list(3).encode())
    for i in (-1, 3):
        with pytest.raises(IndexError):
            got.id_at(i)


def test_chunk_lists_are_immutable() -> None:
    got = ChunkList.decode(_list(2).encode())
    with pytest.raises(AttributeError):
        got.size = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del got.size


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(1, 2**32 - 1)),
                max_size=40), st.integers(0, 45), st.integers(0, 45))
def test_decoded_and_made_lists_agree(chunks, start, stop) -> None:  # type: ignore[no-untyped-def]
    made = ChunkList(sum(n for _, n in chunks), tuple(chunks))
    got = ChunkList.decode(made.encode())
    assert got.ids(start, stop) == made.ids(start, stop)
    assert got.run_key(start, stop) == made.run_key(start, stop)
    assert got.lengths == made.lengths and got.chunks == made.chunks
