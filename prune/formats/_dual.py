"""The region certificate file ``certificate.dual`` (format ``prune/dual/v1``): a bare array of
little-endian float32 dual multipliers, ``rows x hidden``, no header (the shape and the SHA-256
are in the signed predicate, :class:`prune.formats.DualCertificate`). No pickle, no parser: the
reader checks the digest and the exact length before it looks at a byte."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.formats._canonical import sha256_hex
from prune.formats._statement import DualCertificate
from prune.formats.errors import ProofCheckError

__all__ = ["dual_bytes", "read_duals"]

_DTYPE = np.dtype("<f4")


def dual_bytes(multipliers: NDArray[np.floating[Any]]) -> bytes:
    """The file's bytes for ``multipliers [rows, hidden]`` (stored as float32)."""
    array = np.asarray(multipliers)
    if array.ndim != 2:
        raise ValueError("dual multipliers must be a [rows, hidden] array")
    return np.ascontiguousarray(array, dtype=_DTYPE).tobytes()


def read_duals(data: bytes, descriptor: DualCertificate) -> NDArray[np.float64]:
    """The multipliers ``[rows, hidden]`` as float64 (exact: every float32 is a float64).
    Raises :class:`ProofCheckError` on a digest or length mismatch or a non-finite entry."""
    if sha256_hex(data) != descriptor.sha256:
        raise ProofCheckError(f"{descriptor.path}: SHA-256 differs from the certificate's")
    expected = descriptor.rows * descriptor.hidden * _DTYPE.itemsize
    if len(data) != expected:
        raise ProofCheckError(
            f"{descriptor.path}: {len(data)} bytes, the certificate declares {expected}"
        )
    array = np.frombuffer(data, dtype=_DTYPE).reshape(descriptor.rows, descriptor.hidden)
    if not np.isfinite(array).all():
        raise ProofCheckError(f"{descriptor.path}: non-finite multiplier")
    return array.astype(np.float64)
