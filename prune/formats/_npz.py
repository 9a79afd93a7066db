"""Strict ``.npy`` / ``.npz`` parsing of bytes held in memory, shared by every command that reads
arrays (the owner's ``--train``/``--test`` and the auditor's forget set, reference data and
samples).

Nothing is unpickled; sizes are checked before anything is allocated or decompressed; every byte
of the archive is accounted for (nothing around the zip, no trailing data in a member, CRCs
checked); an array is streamed straight into its own buffer (peak memory: the array once)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO

import numpy as np
from numpy.typing import NDArray

__all__ = ["ArrayLimits", "NpzError", "parse_npy", "parse_npz"]

MiB = 1 << 20
_MAX_NPY_HEADER = 64 * 1024


class NpzError(ValueError):
    """Bytes that are not a strict, bounded ``.npy`` / ``.npz`` of the expected arrays."""


@dataclass(frozen=True, kw_only=True)
class ArrayLimits:
    """``max_bytes``: one array's decompressed size; ``total_bytes``: all members of one archive
    (declared sizes, checked before decompression); ``max_rows``: the first dimension."""

    max_bytes: int
    total_bytes: int
    max_rows: int = 10_000_000


def _read_npy_stream(
    handle: IO[bytes], *, key: str, kinds: str, limits: ArrayLimits
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
            raise NpzError(f"unknown .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile) as exc:
        raise NpzError(f"array {key} has a malformed header ({str(exc)[:80]})") from None
    if fortran:
        raise NpzError(f"array {key}: Fortran-ordered arrays are not accepted")
    if dtype.hasobject or dtype.kind not in kinds or dtype.fields is not None:
        raise NpzError(f"array {key} has dtype {dtype}, expected kind {kinds}")
    shape = tuple(int(s) for s in shape)
    size = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if size > limits.max_bytes or (shape and shape[0] > limits.max_rows):
        raise NpzError(f"array {key} with shape {shape} is over the size limits")
    array = np.empty(shape, dtype=dtype)
    view = memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
    filled = 0
    try:
        while filled < len(view):
            got = handle.readinto(view[filled:])  # type: ignore[attr-defined]
            if not got:
                raise NpzError(f"array {key} is truncated")
            filled += got
        if handle.read(1):
            raise NpzError(f"array {key} has trailing data after its declared size")
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError) as exc:
        raise NpzError(f"array {key} is truncated or corrupt ({str(exc)[:80]})") from None
    return array


def _strict_zip(data: bytes) -> None:
    """A zip file with nothing before its first member, nothing after its central directory and
    no archive comment (bytes nobody reads are refused, not carried along)."""
    if not data.startswith(b"PK\x03\x04"):
        raise NpzError("it does not start with a zip member")
    end = data.rfind(b"PK\x05\x06")
    if end < 0 or len(data) - end != 22:
        raise NpzError("trailing data or a comment after the zip directory")


def parse_npy(data: bytes, *, kinds: str, limits: ArrayLimits) -> NDArray[np.generic]:
    """A bare ``.npy`` held in memory, read as strictly as an ``.npz`` member."""
    return _read_npy_stream(io.BytesIO(data), key="x", kinds=kinds, limits=limits)


def parse_npz(
    data: bytes, *, kinds: Mapping[str, str], limits: ArrayLimits
) -> dict[str, NDArray[np.generic]]:
    """Arrays of an ``.npz`` held in memory (:class:`NpzError` otherwise). ``kinds`` maps every
    required array name to the accepted numpy dtype kinds (e.g. ``"f"``, ``"iu"``).

    Strict zip: nothing around the archive, no encryption, stored or deflated members only, each
    member's declared size under ``limits.max_bytes`` and their sum under
    ``limits.total_bytes`` *before* any member is decompressed (no zip bombs); every member is
    read to its end, so its CRC is checked; each ``.npy`` is parsed strictly. Extra or duplicate
    members are refused (nothing unread rides along)."""
    try:
        _strict_zip(data)
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise NpzError(f"not a readable .npz file ({str(exc)[:80]})") from None
    members = [i.filename for i in infos]
    if len(set(members)) != len(members) or not all(m.endswith(".npy") for m in members):
        raise NpzError("duplicate or non-.npy members in the archive")
    names = {n.removesuffix(".npy"): n for n in members}
    missing = sorted(set(kinds) - set(names))
    if missing:
        raise NpzError(f"missing array {', '.join(missing)}")
    extra = sorted(set(names) - set(kinds))
    if extra:
        raise NpzError(f"unexpected array {', '.join(extra)[:80]}")
    total = 0
    for info in infos:
        if info.flag_bits & 0x1 or info.compress_type not in (
            zipfile.ZIP_STORED,
            zipfile.ZIP_DEFLATED,
        ):
            raise NpzError(f"member {info.filename[:40]} is encrypted or oddly compressed")
        total += info.file_size
        if info.file_size > limits.max_bytes + _MAX_NPY_HEADER or total > limits.total_bytes:
            raise NpzError("the archive's arrays are over the size limits")
    out: dict[str, NDArray[np.generic]] = {}
    with archive:
        for key, member in sorted(names.items()):
            try:
                with archive.open(member) as handle:
                    out[key] = _read_npy_stream(handle, key=key, kinds=kinds[key], limits=limits)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                raise NpzError(f"array {key} is truncated or corrupt ({str(exc)[:80]})") from None
    return out
