"""Canonical sample encoding: dtype, shape and byte order are fixed; salts matter."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from prune.formats import MalformedError, canonical_sample, leaf_hash, leaf_hashes


def test_exact_encoding() -> None:
    x = np.array([[1.0, -2.0]], dtype=np.float32)
    expected = (
        b"PRUNE-SAMPLE-v1\nfloat32\n1,2\n"
        + b"\x00\x00\x80\x3f"
        + b"\x00\x00\x00\xc0"
        + (7).to_bytes(8, "little", signed=True)
    )
    assert canonical_sample(x, 7) == expected
    salt = bytes(range(16))
    assert leaf_hash(x, 7, salt) == hashlib.sha256(b"\x00" + expected + salt).digest()


def test_byte_order_and_layout_do_not_change_the_encoding() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    big_endian = x.astype(">f4")
    fortran = np.asfortranarray(x)
    as_float64 = x.astype(np.float64)
    for variant in (big_endian, fortran, as_float64):
        assert canonical_sample(variant, 1) == canonical_sample(x, 1)


def test_shape_and_label_are_bound() -> None:
    x = np.arange(6, dtype=np.float32)
    assert canonical_sample(x, 1) != canonical_sample(x.reshape(2, 3), 1)
    assert canonical_sample(x, 1) != canonical_sample(x, 2)


def test_lossy_or_bad_inputs_are_rejected() -> None:
    with pytest.raises(MalformedError, match="float32"):
        canonical_sample(np.array([0.1], dtype=np.float64), 0)
    with pytest.raises(MalformedError, match="dtype"):
        canonical_sample(np.array(["a"]), 0)
    with pytest.raises(MalformedError, match="int64"):
        canonical_sample(np.zeros(1, np.float32), 2**63)
    with pytest.raises(MalformedError, match="at least 16"):
        leaf_hash(np.zeros(1, np.float32), 0, b"\x00" * 15)


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3))),
    salt_len=st.integers(16, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_batch_equals_one_by_one(x: np.ndarray, salt_len: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=x.shape[0])
    salts = rng.integers(0, 256, size=(x.shape[0], salt_len), dtype=np.uint8)
    assert leaf_hashes(x, y, salts) == [
        leaf_hash(x[i], int(y[i]), salts[i].tobytes()) for i in range(x.shape[0])
    ]


def test_one_bit_of_salt_changes_the_leaf() -> None:
    x = np.ones(4, np.float32)
    salt = bytearray(16)
    base = leaf_hash(x, 3, bytes(salt))
    for bit in range(128):
        changed = bytearray(salt)
        changed[bit // 8] ^= 1 << (bit % 8)
        assert leaf_hash(x, 3, bytes(changed)) != base


def test_batch_shape_mismatch_is_rejected() -> None:
    with pytest.raises(MalformedError):
        leaf_hashes(
            np.zeros((2, 3), np.float32), np.zeros(3, np.int64), np.zeros((2, 16), np.uint8)
        )
    with pytest.raises(MalformedError):
        leaf_hashes(
            np.zeros((2, 3), np.float32), np.zeros(2, np.int64), np.zeros((1, 16), np.uint8)
        )
    with pytest.raises(MalformedError):
        leaf_hashes(np.zeros((2, 3), np.float32), np.zeros(2, np.int64), np.zeros((2, 8), np.uint8))
