"""Golden vectors and invariants of the FastCDC chunker (cas.chunking).

WHY THESE NUMBERS ARE HARD-CODED: chunk boundaries are part of the store format. Two hosts dedupe
against each other only if they cut the same bytes at the same places. If any vector below
changes (a pyfastcdc upgrade, a parameter default, a seed, normalization, ...), chunks written by
older builds stop matching the new ones: dedupe across hosts and against existing stores silently
breaks. Such a change is a store FORMAT VERSION BUMP, never a test update alone.
The vectors were computed once with pyfastcdc 0.3.1 and DEFAULT_PARAMS.
"""

from __future__ import annotations

import io

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.chunking import ALGORITHM, DEFAULT_PARAMS, Chunker, ChunkerParams
from cas.errors import SchemaError

MiB = 1 << 20


def random_input() -> bytes:
    """4 MiB of deterministic high-entropy bytes."""
    return blake3.blake3(b"cas golden vector").digest(length=4 * MiB)


def low_entropy_input() -> bytes:
    """2 MiB of a repeating 64-byte record whose counter changes every 64 records."""
    out = bytearray()
    i = 0
    while len(out) < 2 * MiB:
        out += b"cas-low-entropy-pattern:" + (i // 64).to_bytes(4, "little") + b"\x00" * 36
        i += 1
    return bytes(out[: 2 * MiB])


# --- golden vectors: DO NOT EDIT without a store format version bump (see module docstring) ---

GOLDEN_RANDOM_BOUNDARIES = [
    (0, 68262), (68262, 69125), (137387, 78114), (215501, 137428), (352929, 54277),
    (407206, 63840), (471046, 46968), (518014, 66233), (584247, 85164), (669411, 44386),
    (713797, 30395), (744192, 78643), (822835, 94252), (917087, 22702), (939789, 74645),
    (1014434, 74156), (1088590, 27724), (1116314, 77891), (1194205, 69454), (1263659, 109925),
    (1373584, 75700), (1449284, 35012), (1484296, 180202), (1664498, 99364), (1763862, 21786),
    (1785648, 53202), (1838850, 65918), (1904768, 22123), (1926891, 18203), (1945094, 105742),
    (2050836, 78236), (2129072, 142054), (2271126, 56188), (2327314, 79244), (2406558, 122424),
    (2528982, 85972), (2614954, 65785), (2680739, 95679), (2776418, 19613), (2796031, 88860),
    (2884891, 31315), (2916206, 91347), (3007553, 71361), (3078914, 39496), (3118410, 58052),
    (3176462, 18645), (3195107, 69183), (3264290, 64312), (3328602, 72485), (3401087, 182773),
    (3583860, 67941), (3651801, 28752), (3680553, 41759), (3722312, 74943), (3797255, 127339),
    (3924594, 76106), (4000700, 40040), (4040740, 64358), (4105098, 89206),
]
GOLDEN_RANDOM_COUNT = 59
GOLDEN_RANDOM_FIRST3 = [
    "afc39d7adf0433f088b40627eb077105ecfff5d2facd930e08e1b9c510ea24f5",
    "9f91ab217ea3254259671d181956b28820bee99aed35a44cb7dcc30640d96417",
    "91b62a53d4fa6ab40ddfcd64b93e0bb102e304fdb21e4e2230367d7b17f2862b",
]
GOLDEN_RANDOM_ALL_IDS = "e69ec1fb5c2f0e11791deeb7a426fffe6fc3c2660155ae882bce016ca41bdc1f"

GOLDEN_LOW_COUNT = 9
GOLDEN_LOW_LENGTHS = [262144] * 7 + [151587, 110557]
GOLDEN_LOW_FIRST3 = [
    "476cfb7a2524bc8b4d782fcff0ec66d99a86add1f630a9c038322bbffa1c5018",
    "9604af5bc563400d75354aa59cf8e61acb29cba5facf3977f1c3908f16794d57",
    "4a6f6c783c757681b99ee94cc01ebc2d207c3e5227dea1a468f744b3cf3ea3ff",
]
GOLDEN_LOW_ALL_IDS = "400d805f945f7650c18750cb4034dd16dd5625fd53f60078086d14d5f82ebb0a"


@pytest.fixture(scope="module")
def random_data() -> bytes:
    return random_input()


@pytest.fixture(scope="module")
def low_data() -> bytes:
    return low_entropy_input()


def chunk_ids(data: bytes, bounds: list[tuple[int, int]]) -> list[bytes]:
    return [blake3.blake3(data[o : o + n]).digest() for o, n in bounds]


def test_inputs_are_what_the_vectors_were_computed_from(random_data, low_data):
    assert len(random_data) == 4 * MiB
    assert len(low_data) == 2 * MiB
    assert blake3.blake3(random_data[:32]).hexdigest() == blake3.blake3(
        blake3.blake3(b"cas golden vector").digest(length=32)
    ).hexdigest()


def test_default_params_are_the_format_literals():
    assert DEFAULT_PARAMS == ChunkerParams(
        algorithm="fastcdc-2020",
        avg_size=65536,
        min_size=16384,
        max_size=262144,
        normalization=1,
        seed=0,
    )
    assert (DEFAULT_PARAMS.avg_size, DEFAULT_PARAMS.min_size, DEFAULT_PARAMS.max_size) == (
        65536,
        16384,
        262144,
    )
    assert DEFAULT_PARAMS.normalization == 1
    assert DEFAULT_PARAMS.seed == 0
    assert DEFAULT_PARAMS.algorithm == ALGORITHM == "fastcdc-2020"
    assert Chunker().params == DEFAULT_PARAMS


def test_golden_random_boundaries(random_data):
    bounds = list(Chunker(DEFAULT_PARAMS).cut_bytes(random_data))
    assert len(bounds) == GOLDEN_RANDOM_COUNT
    assert bounds == GOLDEN_RANDOM_BOUNDARIES
    ids = chunk_ids(random_data, bounds)
    assert [i.hex() for i in ids[:3]] == GOLDEN_RANDOM_FIRST3
    assert blake3.blake3(b"".join(ids)).hexdigest() == GOLDEN_RANDOM_ALL_IDS


def test_golden_low_entropy_boundaries(low_data):
    bounds = list(Chunker(DEFAULT_PARAMS).cut_bytes(low_data))
    assert len(bounds) == GOLDEN_LOW_COUNT
    assert [n for _, n in bounds] == GOLDEN_LOW_LENGTHS
    ids = chunk_ids(low_data, bounds)
    assert [i.hex() for i in ids[:3]] == GOLDEN_LOW_FIRST3
    assert blake3.blake3(b"".join(ids)).hexdigest() == GOLDEN_LOW_ALL_IDS


def test_boundaries_are_contiguous_and_cover_input(random_data, low_data):
    for data in (random_data, low_data):
        bounds = list(Chunker().cut_bytes(data))
        pos = 0
        for off, n in bounds:
            assert off == pos
            pos += n
        assert pos == len(data)


@pytest.mark.parametrize("which", ["random", "low"])
def test_cut_stream_matches_cut_bytes(which, random_data, low_data):
    data = random_data if which == "random" else low_data
    chunker = Chunker()
    bounds = list(chunker.cut_bytes(data))
    # The memoryviews are only valid until the next chunk: hash each one immediately.
    streamed = [(len(mv), blake3.blake3(mv).digest())
                for mv in chunker.cut_stream(io.BytesIO(data))]
    assert [n for n, _ in streamed] == [n for _, n in bounds]
    assert [h for _, h in streamed] == chunk_ids(data, bounds)


class _ShortReads(io.RawIOBase):
    """A stream that never returns more than 999 bytes per read (like a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), 999, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def test_cut_stream_with_short_reads_gives_same_boundaries(random_data):
    chunker = Chunker()
    got = [blake3.blake3(mv).digest() for mv in chunker.cut_stream(_ShortReads(random_data))]
    assert got == chunk_ids(random_data, GOLDEN_RANDOM_BOUNDARIES)


def test_chunker_is_reusable(random_data):
    chunker = Chunker()
    first = list(chunker.cut_bytes(random_data))
    list(chunker.cut_stream(io.BytesIO(b"other data" * 10000)))
    assert list(chunker.cut_bytes(random_data)) == first


def test_min_and_max_sizes_respected(random_data, low_data):
    p = DEFAULT_PARAMS
    for data in (random_data, low_data):
        lengths = [n for _, n in Chunker().cut_bytes(data)]
        assert all(n <= p.max_size for n in lengths)
        assert all(n >= p.min_size for n in lengths[:-1])
        assert 0 < lengths[-1] <= p.max_size
    # high-entropy input must actually be cut by content, not at max_size
    lengths = [n for _, n in Chunker().cut_bytes(random_data)]
    assert max(lengths) < p.max_size


def test_small_and_empty_inputs():
    chunker = Chunker()
    assert list(chunker.cut_bytes(b"")) == []
    assert list(chunker.cut_stream(io.BytesIO(b""))) == []
    assert list(chunker.cut_bytes(b"x" * 100)) == [(0, 100)]
    assert [bytes(m) for m in chunker.cut_stream(io.BytesIO(b"x" * 100))] == [b"x" * 100]


def test_one_byte_edit_moves_few_boundaries(random_data):
    """Content-defined: an edit early on must not shift every later boundary."""
    edited = bytearray(random_data)
    edited[1000] ^= 0xFF
    a = chunk_ids(random_data, list(Chunker().cut_bytes(random_data)))
    b = chunk_ids(bytes(edited), list(Chunker().cut_bytes(bytes(edited))))
    assert len(set(a) & set(b)) >= len(a) - 2


SMALL = ChunkerParams(avg_size=256, min_size=64, max_size=1024)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=8192))
def test_small_params_invariants(data):
    chunker = Chunker(SMALL)
    bounds = list(chunker.cut_bytes(data))
    assert sum(n for _, n in bounds) == len(data)
    assert all(SMALL.min_size <= n <= SMALL.max_size for _, n in bounds[:-1])
    assert all(0 < n <= SMALL.max_size for _, n in bounds)
    streamed = [bytes(mv) for mv in chunker.cut_stream(io.BytesIO(data))]
    assert streamed == [data[o : o + n] for o, n in bounds]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithm": "fastcdc-2016"},
        {"algorithm": ""},
        {"avg_size": 255, "min_size": 64},
        {"avg_size": 4194305, "max_size": 16777216},
        {"min_size": 63},
        {"min_size": 65537},  # larger than avg_size
        {"min_size": 1048577, "avg_size": 2097152, "max_size": 4194304},
        {"max_size": 1023, "avg_size": 512, "min_size": 64},
        {"max_size": 32768},  # smaller than avg_size
        {"max_size": 16777217},
        {"normalization": 4},
        {"normalization": -1},
    ],
)
def test_bad_params_refused(kwargs):
    params = ChunkerParams(**kwargs)
    with pytest.raises(SchemaError) as info:
        params.validate()
    assert info.value.code == "E_SCHEMA"
    with pytest.raises(SchemaError):
        Chunker(params)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"avg_size": 256, "min_size": 64, "max_size": 1024},
        {"avg_size": 4194304, "min_size": 1048576, "max_size": 16777216},
        {"normalization": 0},
        {"normalization": 3},
        {"seed": 7},
    ],
)
def test_edge_params_accepted(kwargs):
    params = ChunkerParams(**kwargs)
    params.validate()
    assert Chunker(params).params == params


def test_seed_changes_boundaries(random_data):
    seeded = list(Chunker(ChunkerParams(seed=1)).cut_bytes(random_data))
    assert seeded != GOLDEN_RANDOM_BOUNDARIES


@settings(max_examples=25, deadline=None)
@given(block=st.integers(min_value=1, max_value=2_000_000), seed=st.integers(0, 3))
def test_cut_blocks_equals_cutting_the_whole_input(block, seed):
    """Reading in blocks of any size never moves a boundary (block_size is raised to at least
    2 x max_size internally; small values exercise the carry-over on every block)."""
    data = blake3.blake3(bytes([seed])).digest(length=1_500_000)
    chunker = Chunker(DEFAULT_PARAMS)
    whole = [(o, n) for o, n in chunker.cut_bytes(data)]
    got = []
    pos = 0
    for region, chunks in chunker.cut_blocks(io.BytesIO(data), block_size=block):
        assert bytes(region) == b"".join(bytes(c) for c in chunks)
        for c in chunks:
            got.append((pos, len(c)))
            pos += len(c)
    assert got == whole
