"""The strict array reader both sides use: every byte of an .npz accounted for, sizes checked
before anything is allocated, nothing unpickled."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from prune.formats import ArrayLimits, NpzError, UnreadableFile, parse_npy, parse_npz, read_regular

LIMITS = ArrayLimits(max_bytes=1 << 20, total_bytes=2 << 20)
KINDS = {"x": "f", "y": "iu"}


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _honest() -> bytes:
    return _npz(x=np.arange(12, dtype=np.float32).reshape(3, 4), y=np.arange(3))


def test_honest_archive_round_trips() -> None:
    out = parse_npz(_honest(), kinds=KINDS, limits=LIMITS)
    np.testing.assert_array_equal(out["x"], np.arange(12, dtype=np.float32).reshape(3, 4))
    assert out["x"].flags.writeable


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d + b"tail", "trailing data"),
        (lambda d: b"junk" + d, "does not start"),
        (lambda d: d[: len(d) // 2], "trailing data|readable"),
    ],
)
def test_bytes_around_the_archive_are_refused(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NpzError, match=match):
        parse_npz(mutate(_honest()), kinds=KINDS, limits=LIMITS)


def test_crc_mismatch_is_refused() -> None:
    data = bytearray(_honest())
    archive = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = archive.getinfo("x.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + info.compress_size - 1] ^= 0xFF  # the last data byte of a stored member
    with pytest.raises(NpzError, match="CRC"):
        parse_npz(bytes(data), kinds=KINDS, limits=LIMITS)


def test_trailing_data_inside_a_member_and_declared_sizes() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        member = io.BytesIO()
        np.save(member, np.zeros(4, np.float32))
        archive.writestr("x.npy", member.getvalue() + b"\0\0\0\0")
        member = io.BytesIO()
        np.save(member, np.zeros(4, np.int64))
        archive.writestr("y.npy", member.getvalue())
    with pytest.raises(NpzError, match="trailing data"):
        parse_npz(buffer.getvalue(), kinds=KINDS, limits=LIMITS)
    with pytest.raises(NpzError, match="size limits"):
        parse_npz(_honest(), kinds=KINDS, limits=ArrayLimits(max_bytes=1, total_bytes=1))


def test_pickles_extra_members_and_wrong_kinds_are_refused() -> None:
    with pytest.raises(NpzError, match="dtype"):
        parse_npz(_npz(x=np.array([{}], dtype=object), y=np.arange(1)), kinds=KINDS, limits=LIMITS)
    with pytest.raises(NpzError, match="unexpected array"):
        parse_npz(
            _npz(x=np.zeros(1, np.float32), y=np.arange(1), z=np.arange(1)),
            kinds=KINDS,
            limits=LIMITS,
        )
    with pytest.raises(NpzError, match="dtype"):
        parse_npz(_npz(x=np.zeros(1, np.int64), y=np.arange(1)), kinds=KINDS, limits=LIMITS)


def test_bare_npy_with_a_huge_header_is_refused_before_allocating() -> None:
    member = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (3 << 30,)}
    np.lib.format.write_array_header_1_0(member, header)  # type: ignore[no-untyped-call]
    with pytest.raises(NpzError, match="size limits"):
        parse_npy(member.getvalue(), kinds="f", limits=LIMITS)


def test_read_regular_refuses_links_fifos_devices_and_oversize(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert read_regular(tmp_path / "f", 3) == b"abc"
    (tmp_path / "link").symlink_to(tmp_path / "f")
    os.mkfifo(tmp_path / "fifo")
    for path, match in (
        (tmp_path / "link", "symbolic link"),
        (tmp_path / "fifo", "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path, "folder"),
        (tmp_path / "missing", "does not exist"),
    ):
        with pytest.raises(UnreadableFile, match=match):
            read_regular(path, 1 << 20)
    with pytest.raises(UnreadableFile, match="limit"):
        read_regular(tmp_path / "f", 2)
