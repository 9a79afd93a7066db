"""Reading what the owner hands over, bounded: every file is read with a size cap, every array is
checked for dtype and shape *before* it is decompressed, and nothing is ever unpickled.

Threat assumption: the proof folder and ``forget.npz`` come from a possibly dishonest owner, so a
file that is missing, oversized, truncated or malformed is evidence against the proof
(:class:`ProofFileError`, a :class:`~audit.errors.VerificationError`: exit 1). The auditor's own
inputs (public key, reference data, paths given on the command line that do not exist) raise
:class:`~audit.errors.InputError` (exit 2). A proof can therefore never turn a failed verdict into
an "input error" by being broken.

Invariant: a successful read returns exactly the bytes that were on disk, read once; every later
check works on those in-memory bytes (no time-of-check/time-of-use gap on the proof folder)."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from numpy.typing import NDArray

from audit.errors import InputError, VerificationError
from prune.formats import (
    ArrayLimits,
    FormatError,
    NpzError,
    Openings,
    UnreadableFile,
    parse_npy,
    parse_npz,
    read_regular,
)

__all__ = [
    "PROOF_FILES",
    "Limits",
    "ProofFileError",
    "check_input_file",
    "load_forget",
    "load_public_key",
    "load_reference",
    "read_bounded",
    "read_npy",
    "read_npz",
]

MiB = 1 << 20
GiB = 1 << 30

_MAX_NPY_HEADER = 64 * 1024

_MAX_LABEL = 1 << 16  # far above any classifier's class count; -1 or 10**12 is not a label

PROOF_FILES = {"model": "model.onnx", "certificate": "certificate.json", "signature": "model.sig"}


class ProofFileError(VerificationError):
    """A file the owner handed over is missing, oversized, truncated or malformed."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Upper bounds on what the verifier reads (documented in docs/VERIFY.md). A file or array
    beyond a bound is refused before it is read or decompressed."""

    model_bytes: int = 512 * MiB
    certificate_bytes: int = 32 * MiB
    signature_bytes: int = 16 * MiB
    forget_bytes: int = 768 * MiB
    reference_bytes: int = 768 * MiB
    receipt_bytes: int = 1 * MiB
    sample_bytes: int = 64 * MiB
    key_bytes: int = 64 * 1024
    max_samples: int = 10_000_000
    max_sample_elements: int = 16 * MiB
    npz_total_bytes: int = 768 * MiB


def read_bounded(path: Path, limit: int, *, what: str, owner: bool = True) -> bytes:
    """The bytes of the regular file ``path``, refused beyond ``limit`` bytes
    (:func:`prune.formats.read_regular`: no symbolic links, FIFOs or devices, no blocking).

    ``owner``: the file comes from the owner (failures raise :class:`ProofFileError`) or from the
    auditor (:class:`InputError`)."""
    error = ProofFileError if owner else InputError
    try:
        return read_regular(path, limit)
    except UnreadableFile as exc:
        raise error(f"{what}: {exc}") from None


def check_input_file(path: Path, *, what: str) -> None:
    """Refuse (:class:`InputError`, exit 2) an auditor-named path that is not a regular file,
    with the reason (missing, a folder, a FIFO or device, a symbolic link)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            info = os.stat(path)
        except OSError:
            raise InputError(f"{what} {path} is a dangling symbolic link") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {path} is not a regular file (a FIFO, socket or device)")


def read_npy(
    data: bytes, *, what: str, kinds: str, limits: Limits, max_bytes: int, owner: bool = True
) -> NDArray[np.generic]:
    """A bare ``.npy`` held in memory, read as strictly as an ``.npz`` member."""
    error = ProofFileError if owner else InputError
    try:
        return parse_npy(data, kinds=kinds, limits=_array_limits(limits, max_bytes))
    except NpzError as exc:
        raise error(f"{what}: {exc}") from None


def _array_limits(limits: Limits, max_bytes: int) -> ArrayLimits:
    return ArrayLimits(
        max_bytes=max_bytes, total_bytes=limits.npz_total_bytes, max_rows=limits.max_samples
    )


def read_npz(
    data: bytes,
    *,
    what: str,
    kinds: Mapping[str, str],
    limits: Limits,
    max_bytes: int,
    owner: bool = True,
) -> dict[str, NDArray[np.generic]]:
    """Arrays of an ``.npz`` held in memory, parsed strictly (:func:`prune.formats.parse_npz`:
    sizes budgeted before decompression, CRCs checked, no trailing data, no pickles, exactly the
    arrays of ``kinds``)."""
    error = ProofFileError if owner else InputError
    try:
        return parse_npz(data, kinds=kinds, limits=_array_limits(limits, max_bytes))
    except NpzError as exc:
        raise error(f"{what}: {exc}") from None


def _check_samples(
    x: NDArray[np.generic], what: str, limits: Limits, error: type[Exception]
) -> None:
    if x.ndim < 2 or x.shape[0] < 1:
        raise error(f"{what}: x must be [N, ...] with N >= 1, got shape {x.shape}")
    per_sample = int(np.prod(x.shape[1:], dtype=np.float64))
    if per_sample > limits.max_sample_elements:
        raise error(f"{what}: samples of shape {x.shape[1:]} are over the size limits")
    if not np.isfinite(x).all():
        raise error(f"{what}: x contains NaN or infinity")


def load_forget(path: Path, *, limits: Limits) -> Openings:
    """Read and validate ``forget.npz`` (docs/FORMATS.md): ``x`` float32 ``[N, ...]``, ``y``
    int64 ``[N]``, ``salt`` uint8 ``[N, S >= 16]``, ``leaf_index`` int64 ``[N]`` strictly
    increasing, ``N >= 1``; exact dtypes, nothing else in the archive."""
    data = read_bounded(path, limits.forget_bytes, what="forget set")
    arrays = read_npz(
        data,
        what="forget set",
        kinds={"x": "f", "y": "i", "salt": "u", "leaf_index": "i"},
        limits=limits,
        max_bytes=limits.forget_bytes,
    )
    _check_samples(arrays["x"], "forget set", limits, ProofFileError)
    try:
        return Openings(
            x=cast("NDArray[np.float32]", arrays["x"]),  # Openings checks every dtype
            y=cast("NDArray[np.int64]", arrays["y"]),
            salt=cast("NDArray[np.uint8]", arrays["salt"]),
            leaf_index=cast("NDArray[np.int64]", arrays["leaf_index"]),
        )
    except FormatError as exc:
        raise ProofFileError(f"forget set: {exc}") from exc


def load_reference(path: Path, *, limits: Limits) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The auditor's reference data (``x`` float, ``y`` integer, ``N >= 1``); problems are input
    errors (exit 2), since this file is the auditor's own."""
    data = read_bounded(path, limits.reference_bytes, what="reference data", owner=False)
    arrays = read_npz(
        data,
        what="reference data",
        kinds={"x": "f", "y": "iu"},
        limits=limits,
        max_bytes=limits.reference_bytes,
        owner=False,
    )
    x, y = arrays["x"], arrays["y"]
    _check_samples(x, "reference data", limits, InputError)
    if y.shape != (x.shape[0],):
        raise InputError(f"reference data: y has shape {y.shape}, expected [{x.shape[0]}]")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= _MAX_LABEL):
        raise InputError(
            f"reference data: labels must be class indices in 0..{_MAX_LABEL - 1}, "
            f"found {int(y.min())}..{int(y.max())}"
        )
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)


def load_public_key(path: Path, *, limits: Limits) -> ec.EllipticCurvePublicKey:
    """The owner's public key (PEM SubjectPublicKeyInfo, ECDSA P-256), given by the auditor."""
    data = read_bounded(path, limits.key_bytes, what="public key", owner=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InputError(f"public key: {path} is not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InputError(f"public key: {path} is not an ECDSA P-256 key")
    return key
