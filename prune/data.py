"""Data sets: scikit-learn digits (embedded default), Fashion-MNIST IDX files, user ``.npz``.

Every loader returns float32 features in ``[0, 1]`` and int64 labels, and checks what it reads:
NaN/inf, shape mismatches and label dtype are errors, never silently repaired.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from prune.errors import DataError
from prune.formats import ArrayLimits, NpzError, UnreadableFile, parse_npz, read_regular

__all__ = [
    "FASHION_MNIST_DIR",
    "Dataset",
    "load_dataset",
    "load_idx_folder",
    "load_npz",
    "save_npz",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DatasetName = Literal["digits", "fashion-mnist"]


@dataclass(frozen=True)
class Dataset:
    """A train/test split. ``x`` arrays are float32 ``[N, 1, H, W]``, ``y`` int64 ``[N]``."""

    name: str
    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def load_dataset(name: DatasetName, *, seed: int = 0, data_dir: Path | None = None) -> Dataset:
    """Load a named data set. Digits are split 70/30 (stratified, seeded); Fashion-MNIST uses the
    official 60,000/10,000 split read from ``data_dir`` (default: the Debian package folder)."""
    if name == "digits":
        return _digits(seed)
    if name == "fashion-mnist":
        folder = data_dir or Path(os.environ.get("PRUNE_FASHION_MNIST", FASHION_MNIST_DIR))
        return load_idx_folder(folder, name="fashion-mnist")
    raise DataError(f"unknown data set {name!r} (choose digits or fashion-mnist)")


def _digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return Dataset("digits", x_tr, y_tr, x_te, y_te)


_IDX_NAMES = {
    "x_train": ("train-images-idx3-ubyte",),
    "y_train": ("train-labels-idx1-ubyte",),
    "x_test": ("t10k-images-idx3-ubyte",),
    "y_test": ("t10k-labels-idx1-ubyte",),
}


def load_idx_folder(folder: Path, *, name: str = "idx") -> Dataset:
    """Read the four standard (optionally gzipped) IDX files of an MNIST-style folder."""
    if not folder.is_dir():
        raise DataError(
            f"data folder {folder} not found (install the Debian package dataset-fashion-mnist "
            "or pass a folder of IDX files)"
        )
    arrays: dict[str, NDArray[np.uint8]] = {}
    for key, stems in _IDX_NAMES.items():
        path = _find_idx(folder, stems[0])
        arrays[key] = _read_idx(path)
    x_tr = (arrays["x_train"].astype(np.float32) / 255.0)[:, None]
    x_te = (arrays["x_test"].astype(np.float32) / 255.0)[:, None]
    return Dataset(
        name,
        x_tr,
        arrays["y_train"].astype(np.int64),
        x_te,
        arrays["y_test"].astype(np.int64),
    )


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        path = folder / candidate
        if path.is_file():
            return path
    raise DataError(f"{folder} has no {stem}[.gz]")


def _read_idx(path: Path) -> NDArray[np.uint8]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4:
        raise DataError(f"{path} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} bytes of data")
    return body.reshape(dims)


_NPZ_LIMITS = ArrayLimits(max_bytes=2 << 30, total_bytes=4 << 30)


def load_npz(
    path: Path, *, input_shape: tuple[int, ...] | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Load a user ``.npz`` with ``x`` (float32) and ``y`` (int64); validate it.

    ``input_shape`` (without the batch axis) is checked when given."""
    try:
        arrays = parse_npz(
            read_regular(path, _NPZ_LIMITS.total_bytes),
            kinds={"x": "biufc", "y": "biufc"},  # dtypes are checked below, by name
            limits=_NPZ_LIMITS,
        )
    except (UnreadableFile, NpzError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    x: NDArray[Any] = arrays["x"]
    y: NDArray[Any] = arrays["y"]
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: x must be float32, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must be int64, got {y.dtype}")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x must be [N, ...] and y [N], got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{path} holds no samples")
    x32 = x.astype(np.float32, copy=False)  # the parser's own buffer: no second copy
    if not np.isfinite(x32).all():
        raise DataError(f"{path}: x contains NaN or inf")
    if (y < 0).any():
        raise DataError(f"{path}: labels must be non-negative")
    if input_shape is not None and tuple(x32.shape[1:]) != tuple(input_shape):
        raise DataError(
            f"{path}: samples have shape {tuple(x32.shape[1:])}, the model expects {tuple(input_shape)}"
        )
    return x32, y.astype(np.int64)


def save_npz(path: Path, x: NDArray[np.float32], y: NDArray[np.int64]) -> None:
    """Write ``x``/``y`` as an uncompressed ``.npz`` (atomically: temp file then rename)."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, x=np.ascontiguousarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
    os.replace(tmp, path)
