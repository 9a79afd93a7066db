"""Canonical sample encoding and salted leaf hashes of the forget-set commitment.

Threat assumption: forget samples are often public (a photo, a row of a known data set), so an
unsalted hash would let anyone test "was this person's sample deleted?". Each leaf therefore mixes
in a secret salt of at least 16 random bytes that only the data subject (receipt) and the auditor
(forget.npz) receive. The encoding fixes dtype (float32), shape and byte order (little-endian,
C order) so that the same sample always hashes the same on every platform."""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import ArrayLike, NDArray

from prune.formats.errors import MalformedError

__all__ = [
    "LEAF_PREFIX",
    "MIN_SALT_BYTES",
    "NODE_PREFIX",
    "SAMPLE_ENCODING",
    "canonical_sample",
    "leaf_hash",
    "leaf_hashes",
]

SAMPLE_ENCODING = "PRUNE-SAMPLE-v1"
MIN_SALT_BYTES = 16
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
_LABEL_MIN = -(2**63)
_LABEL_MAX = 2**63 - 1


def _header(shape: tuple[int, ...]) -> bytes:
    dims = ",".join(str(int(d)) for d in shape)
    return f"{SAMPLE_ENCODING}\nfloat32\n{dims}\n".encode("ascii")


def _as_float32(x: ArrayLike) -> NDArray[np.float32]:
    array = np.asarray(x)
    if array.dtype.kind not in "fiu":
        raise MalformedError(f"canonical sample: x has dtype {array.dtype}, expected real numbers")
    converted = np.ascontiguousarray(array, dtype="<f4")
    # from a wider type the conversion must be exact (no silent rounding of committed data)
    wider = array.dtype.itemsize > 2 and array.dtype != np.float32
    if wider and not np.array_equal(
        converted.astype(array.dtype), array, equal_nan=array.dtype.kind == "f"
    ):
        raise MalformedError("canonical sample: x is not exactly representable in float32")
    return converted


def _label_bytes(y: int | np.integer) -> bytes:
    label = int(y)
    if not _LABEL_MIN <= label <= _LABEL_MAX:
        raise MalformedError(f"canonical sample: label {label} does not fit in int64")
    return label.to_bytes(8, "little", signed=True)


def canonical_sample(x: ArrayLike, y: int | np.integer) -> bytes:
    """``PRUNE-SAMPLE-v1\\n float32\\n <shape>\\n`` + little-endian C-order float32 bytes of ``x``
    + 8-byte little-endian signed ``y``. Raises if ``x`` would lose precision as float32."""
    array = _as_float32(x)
    return _header(array.shape) + array.tobytes(order="C") + _label_bytes(y)


def _check_salt(salt: bytes) -> None:
    if len(salt) < MIN_SALT_BYTES:
        raise MalformedError(f"salt has {len(salt)} bytes; at least {MIN_SALT_BYTES} are required")


def leaf_hash(x: ArrayLike, y: int | np.integer, salt: bytes) -> bytes:
    """``SHA-256(0x00 || canonical_sample(x, y) || salt)`` (32 bytes)."""
    _check_salt(bytes(salt))
    return hashlib.sha256(LEAF_PREFIX + canonical_sample(x, y) + bytes(salt)).digest()


def leaf_hashes(x: ArrayLike, y: ArrayLike, salts: ArrayLike) -> list[bytes]:
    """Leaf hashes of a batch: ``x`` is ``[N, ...]``, ``y`` is ``[N]``, ``salts`` is ``[N, S]``
    uint8. Equal to ``[leaf_hash(x[i], y[i], salts[i]) for i in range(N)]``, with the shared
    header and the conversions done once."""
    samples = _as_float32(x)
    labels = np.asarray(y)
    salt_rows = np.ascontiguousarray(np.asarray(salts, dtype=np.uint8))
    count = samples.shape[0] if samples.ndim else 0
    if samples.ndim < 1 or labels.shape != (count,) or salt_rows.ndim != 2:
        raise MalformedError(
            f"leaf batch: x {samples.shape}, y {labels.shape}, salts {salt_rows.shape} do not line up"
        )
    if salt_rows.shape[0] != count:
        raise MalformedError(f"leaf batch: {salt_rows.shape[0]} salts for {count} samples")
    if labels.dtype.kind not in "iu":
        raise MalformedError(f"leaf batch: labels have dtype {labels.dtype}, expected integers")
    if labels.dtype.kind == "u" and count and int(labels.max()) > _LABEL_MAX:
        raise MalformedError("leaf batch: a label does not fit in int64")
    _check_salt(bytes(salt_rows.shape[1]))
    head = LEAF_PREFIX + _header(samples.shape[1:])
    label_rows = labels.astype("<i8").tobytes()
    salt_bytes = salt_rows.tobytes()
    width = salt_rows.shape[1]
    out: list[bytes] = []
    sha256 = hashlib.sha256
    for i in range(count):
        digest = sha256(head)
        digest.update(samples[i].tobytes())
        digest.update(label_rows[8 * i : 8 * i + 8])
        digest.update(salt_bytes[width * i : width * (i + 1)])
        out.append(digest.digest())
    return out
