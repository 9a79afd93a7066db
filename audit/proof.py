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

import io
import os
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from numpy.typing import NDArray

from audit.errors import InputError, VerificationError
from prune.formats import FormatError, Openings

__all__ = [
    "PROOF_FILES",
    "Limits",
    "ProofFileError",
    "load_forget",
    "load_public_key",
    "load_reference",
    "read_bounded",
    "read_npz",
]

MiB = 1 << 20
GiB = 1 << 30

PROOF_FILES = {"model": "model.onnx", "certificate": "certificate.json", "signature": "model.sig"}


class ProofFileError(VerificationError):
    """A file the owner handed over is missing, oversized, truncated or malformed."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Upper bounds on what the verifier reads (documented in docs/VERIFY.md). A file or array
    beyond a bound is refused before it is read or decompressed."""

    model_bytes: int = 512 * MiB
    certificate_bytes: int = 64 * MiB
    signature_bytes: int = 16 * MiB
    forget_bytes: int = 2 * GiB
    reference_bytes: int = 2 * GiB
    receipt_bytes: int = 1 * MiB
    sample_bytes: int = 64 * MiB
    key_bytes: int = 64 * 1024
    max_samples: int = 10_000_000
    max_sample_elements: int = 16 * MiB


def read_bounded(path: Path, limit: int, *, what: str, owner: bool = True) -> bytes:
    """The bytes of the regular file ``path``, refused beyond ``limit`` bytes.

    ``owner``: the file comes from the owner (failures raise :class:`ProofFileError`) or from the
    auditor (:class:`InputError`). Only regular files are read (a FIFO or device would block or
    never end); the read itself is capped as well, in case the file grows while being read."""
    error = ProofFileError if owner else InputError
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what}: {path} does not exist") from None
    except OSError as exc:
        raise error(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what}: {path} is not a regular file")
    if info.st_size > limit:
        raise error(f"{what}: {path} is {info.st_size} bytes, over the {limit}-byte limit")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise error(f"{what}: {path} is over the {limit}-byte limit")
    if not data:
        raise error(f"{what}: {path} is empty")
    return data


def _member_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unknown .npy version {version}")
    if fortran:
        raise ValueError("Fortran-ordered arrays are not accepted")
    return tuple(int(s) for s in shape), dtype


def read_npz(
    data: bytes,
    *,
    what: str,
    kinds: Mapping[str, str],
    limits: Limits,
    max_bytes: int,
    owner: bool = True,
) -> dict[str, NDArray[np.generic]]:
    """Arrays of an ``.npz`` held in memory. ``kinds`` maps every required array name to the
    accepted numpy dtype kinds (e.g. ``"f"``, ``"iu"``). Headers (dtype, shape) are checked
    before any array is decompressed: at most ``limits.max_samples`` rows and ``max_bytes``
    decompressed bytes per array (no zip bombs); object arrays are refused (no pickle); extra or
    duplicate members are refused too (nothing unread rides along)."""
    error = ProofFileError if owner else InputError
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise error(f"{what}: not a readable .npz file ({exc})") from exc
    if len(set(members)) != len(members) or not all(m.endswith(".npy") for m in members):
        raise error(f"{what}: duplicate or non-.npy members in the archive")
    names = {n.removesuffix(".npy"): n for n in members}
    missing = sorted(set(kinds) - set(names))
    if missing:
        raise error(f"{what}: missing array {', '.join(missing)}")
    extra = sorted(set(names) - set(kinds))
    if extra:
        raise error(f"{what}: unexpected array {', '.join(extra)[:80]}")
    out: dict[str, NDArray[np.generic]] = {}
    with archive:
        for key, member in sorted(names.items()):
            try:
                shape, dtype = _member_header(archive, member)
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise error(f"{what}: array {key} has a malformed header ({exc})") from exc
            if dtype.kind not in kinds[key] or dtype.hasobject:
                raise error(f"{what}: array {key} has dtype {dtype}, expected kind {kinds[key]}")
            size = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if size > max_bytes or (shape and shape[0] > limits.max_samples):
                raise error(f"{what}: array {key} with shape {shape} is over the size limits")
            try:
                with archive.open(member) as handle:
                    array = np.lib.format.read_array(handle, allow_pickle=False)
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise error(f"{what}: array {key} is truncated or corrupt ({exc})") from exc
            out[key] = array
    return out


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
