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

import errno
import io
import os
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

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
    """The bytes of the regular file ``path``, refused beyond ``limit`` bytes.

    ``owner``: the file comes from the owner (failures raise :class:`ProofFileError`) or from the
    auditor (:class:`InputError`). The file is opened without following a final symbolic link
    and without blocking, and only a regular file is read (a FIFO, a device or ``/dev/zero``
    would block or never end; a symlink in a proof folder could point at the auditor's own
    files); the read itself is capped as well, in case the file grows while being read."""
    error = ProofFileError if owner else InputError
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what}: {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(f"{what}: {path} is a symbolic link; only regular files are read") from None
        raise error(f"{what}: cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what}: {path} is not a regular file")
        if info.st_size > limit:
            raise error(f"{what}: {path} is {info.st_size} bytes, over the {limit}-byte limit")
        parts: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"{what}: cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(parts)
    if len(data) > limit:
        raise error(f"{what}: {path} is over the {limit}-byte limit")
    if not data:
        raise error(f"{what}: {path} is empty")
    return data


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


def _read_npy_stream(
    handle: IO[bytes], *, key: str, kinds: str, max_bytes: int, limits: Limits
) -> NDArray[np.generic]:
    """One ``.npy`` from ``handle``, strictly: a known header version, C order, a dtype of the
    accepted kinds with no objects, a size under the limits *before* anything is allocated, and
    exactly as many data bytes as the header declares (no truncation, no trailing data; reading
    to the end also makes a zip member check its CRC). The array is read straight into its own
    buffer (peak memory: the array once)."""
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                handle, max_header_size=_MAX_NPY_HEADER
            )
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                handle, max_header_size=_MAX_NPY_HEADER
            )
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"array {key} has a malformed header ({str(exc)[:80]})") from None
    if fortran:
        raise ValueError(f"array {key}: Fortran-ordered arrays are not accepted")
    if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None:
        raise ValueError(f"array {key} has dtype {dtype}, expected kind {kinds}")
    shape = tuple(int(s) for s in shape)
    size = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if size > max_bytes or (shape and shape[0] > limits.max_samples):
        raise ValueError(f"array {key} with shape {shape} is over the size limits")
    array = np.empty(shape, dtype=dtype)
    view = memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    filled = 0
    try:
        while filled < len(view):
            got = handle.readinto(view[filled:])  # type: ignore[attr-defined]
            if not got:
                raise ValueError(f"array {key} is truncated")
            filled += got
        if handle.read(1):
            raise ValueError(f"array {key} has trailing data after its declared size")
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise ValueError(f"array {key} is truncated or corrupt ({str(exc)[:80]})") from None
    return array


def read_npy(
    data: bytes, *, what: str, kinds: str, limits: Limits, max_bytes: int, owner: bool = True
) -> NDArray[np.generic]:
    """A bare ``.npy`` held in memory, read as strictly as an ``.npz`` member."""
    error = ProofFileError if owner else InputError
    try:
        return _read_npy_stream(
            io.BytesIO(data), key="x", kinds=kinds, max_bytes=max_bytes, limits=limits
        )
    except ValueError as exc:
        raise error(f"{what}: {exc}") from None


def _strict_zip(data: bytes) -> None:
    """A zip file with nothing before its first member, nothing after its central directory and
    no archive comment (bytes nobody reads are refused, not carried along)."""
    if not data.startswith(b"PK\x03\x04"):
        raise ValueError("it does not start with a zip member")
    end = data.rfind(b"PK\x05\x06")
    if end < 0 or len(data) - end != 22:
        raise ValueError("trailing data or a comment after the zip directory")


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
    accepted numpy dtype kinds (e.g. ``"f"``, ``"iu"``).

    Strict zip: nothing around the archive, no encryption, stored or deflated members only, each
    member's declared size under ``max_bytes`` and their sum under ``limits.npz_total_bytes``
    *before* any member is decompressed (no zip bombs); every member is read to its end, so
    its CRC is checked; each ``.npy`` is parsed strictly (:func:`_read_npy_stream`: no pickles, no
    trailing data). Extra or duplicate members are refused (nothing unread rides along)."""
    error = ProofFileError if owner else InputError
    try:
        _strict_zip(data)
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise error(f"{what}: not a readable .npz file ({str(exc)[:80]})") from None
    members = [i.filename for i in infos]
    if len(set(members)) != len(members) or not all(m.endswith(".npy") for m in members):
        raise error(f"{what}: duplicate or non-.npy members in the archive")
    names = {n.removesuffix(".npy"): n for n in members}
    missing = sorted(set(kinds) - set(names))
    if missing:
        raise error(f"{what}: missing array {', '.join(missing)}")
    extra = sorted(set(names) - set(kinds))
    if extra:
        raise error(f"{what}: unexpected array {', '.join(extra)[:80]}")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1 or info.compress_type not in (
            zipfile.ZIP_STORED,
            zipfile.ZIP_DEFLATED,
        ):
            raise error(f"{what}: member {info.filename[:40]} is encrypted or oddly compressed")
        total += info.file_size
        if info.file_size > max_bytes + _MAX_NPY_HEADER or total > limits.npz_total_bytes:
            raise error(f"{what}: the archive's arrays are over the size limits")
    out: dict[str, NDArray[np.generic]] = {}
    with archive:
        for key, member in sorted(names.items()):
            try:
                with archive.open(member) as handle:
                    out[key] = _read_npy_stream(
                        handle, key=key, kinds=kinds[key], max_bytes=max_bytes, limits=limits
                    )
            except ValueError as exc:
                raise error(f"{what}: {exc}") from None
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                raise error(
                    f"{what}: array {key} is truncated or corrupt ({str(exc)[:80]})"
                ) from None
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
