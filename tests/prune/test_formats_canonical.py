"""Canonical JSON round trips and rejections; decimal strings; hex."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prune.formats import (
    MalformedError,
    canonical_json,
    decimal_string,
    parse_canonical_json,
    parse_decimal_string,
    parse_hex,
    sha256_hex,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(alphabet=st.characters(exclude_categories=("Cs",)))
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(deadline=None)
@given(json_values)
def test_round_trip(value: Any) -> None:
    data = canonical_json(value)
    assert parse_canonical_json(data) == value
    assert canonical_json(parse_canonical_json(data)) == data


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.integers(0, 9), min_size=2, max_size=6))
def test_key_order_does_not_matter(doc: dict[str, int]) -> None:
    reversed_doc = dict(reversed(list(doc.items())))
    assert canonical_json(doc) == canonical_json(reversed_doc)


@settings(deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_decimal_string_round_trip(x: float) -> None:
    assert parse_decimal_string(decimal_string(x), field="x") == x


def test_exact_bytes() -> None:
    assert canonical_json({"b": [1, "é"], "a": None, "c": True}) == (
        b'{"a":null,"b":[1,"\xc3\xa9"],"c":true}'
    )


@pytest.mark.parametrize(
    "value",
    [1.5, {"a": 0.0}, [float("nan")], 2**53 + 1, {1: "x"}, b"bytes", {"a": object()}],
)
def test_unencodable_values_are_rejected(value: Any) -> None:
    with pytest.raises(MalformedError):
        canonical_json(value)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1.0}',  # float
        b'{"a":1,"a":2}',  # duplicate key
        b'{"b":1,"a":2}',  # unsorted
        b'{"a": 1}',  # whitespace
        b'{"a":"\\u00e9"}',  # escaped where canonical form is raw UTF-8
        b'{"a":NaN}',
        b'{"a":1e3}',
        b"\xff",
        b'{"a":1',
        b"9007199254740993",  # 2^53 + 1
    ],
)
def test_non_canonical_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_canonical_json(data)


@pytest.mark.parametrize("text", ["0.10", "1e-3", "nan", "inf", "+1.0", 1, "1"])
def test_non_canonical_decimal_strings_are_rejected(text: Any) -> None:
    with pytest.raises(MalformedError):
        parse_decimal_string(text, field="margin")


def test_hex_and_digest() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert parse_hex("00ff", field="h", length=2) == b"\x00\xff"
    for bad in ["00FF", "0", "zz", 5]:
        with pytest.raises(MalformedError):
            parse_hex(bad, field="h")
    with pytest.raises(MalformedError, match="expected 3 bytes"):
        parse_hex("00ff", field="h", length=3)


def test_parser_agrees_with_json_module_on_meaning() -> None:
    doc = {"z": [1, {"y": None}], "a": "\n\t\u2028"}
    assert parse_canonical_json(canonical_json(doc)) == json.loads(canonical_json(doc))
