"""Property-based fuzzing of object id parsing (``cas.ids.parse_hex``, ``is_hex``).

``parse_hex`` is the one place where text becomes an id. From a stored record (a manifest) only
64 lowercase hex characters are accepted and anything else is ``E_SCHEMA``; from a user, upper
case is accepted too and anything else is ``E_ARGS``. Nothing else may come out, whatever the
text (or a value that is not text at all, from a crafted JSON document).
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.errors import ArgsError, SchemaError
from cas.ids import HEX_LEN, ID_LEN, blake3_id, is_hex, parse_hex

FUZZ = settings(max_examples=300, deadline=None)

hex_lower = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
hex_any_case = st.text(alphabet=string.hexdigits, min_size=64, max_size=64)
near_hex = st.one_of(
    st.text(max_size=70),
    hex_lower.map(lambda h: h[:-1]),
    hex_lower.map(lambda h: h + "a"),
    st.builds(lambda h, i, c: h[:i] + c + h[i + 1:], hex_lower, st.integers(0, 63),
              st.characters()),
    hex_any_case,
)
not_text = st.one_of(st.none(), st.integers(), st.binary(max_size=64), st.lists(st.integers()),
                     st.floats(), st.booleans())


@FUZZ
@given(st.binary(min_size=32, max_size=32))
def test_round_trip(oid: bytes) -> None:
    text = oid.hex()
    assert is_hex(text)
    assert parse_hex(text) == oid
    assert parse_hex(text.upper(), user_input=True) == oid


@FUZZ
@given(near_hex | not_text, st.booleans())
def test_any_value(value, user_input: bool) -> None:
    err = ArgsError if user_input else SchemaError
    try:
        oid = parse_hex(value, user_input=user_input)
    except err as exc:
        assert exc.code == ("E_ARGS" if user_input else "E_SCHEMA")
        assert isinstance(exc, ArgsError if user_input else SchemaError)
        return
    assert isinstance(value, str) and len(oid) == ID_LEN and len(value) == HEX_LEN
    assert oid.hex() == (value.lower() if user_input else value)
    assert value.isascii()


@FUZZ
@given(st.text(max_size=70))
def test_is_hex_matches_the_definition(text: str) -> None:
    assert is_hex(text) == (len(text) == 64 and all(c in "0123456789abcdef" for c in text))


def test_blake3_id_is_32_bytes() -> None:
    assert blake3_id(b"") == bytes.fromhex(
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")
