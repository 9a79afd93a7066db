from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from prune.data import load_dataset, load_idx_folder, load_npz, save_npz
from prune.errors import DataError


def _write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def _idx_folder(tmp_path: Path, *, gz: bool) -> Path:
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (6, 4, 4)), gz=gz)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6) % 3, gz=gz)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 4, 4)), gz=gz)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3), gz=gz)
    return tmp_path


def test_digits_split_is_seeded_and_normalised() -> None:
    a = load_dataset("digits", seed=1)
    b = load_dataset("digits", seed=1)
    assert np.array_equal(a.x_train, b.x_train)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.shape[1:] == (1, 8, 8)
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    assert len(a.x_train) + len(a.x_test) == 1797
    assert a.classes == 10


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_round_trip(tmp_path: Path, gz: bool) -> None:
    data = load_idx_folder(_idx_folder(tmp_path, gz=gz))
    assert data.x_train.shape == (6, 1, 4, 4)
    assert data.y_test.tolist() == [0, 1, 2]
    assert data.x_train.max() <= 1.0


def test_idx_truncated_is_rejected(tmp_path: Path) -> None:
    folder = _idx_folder(tmp_path, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_idx_folder(folder)


def test_missing_folder_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_idx_folder(tmp_path / "nope")


@pytest.mark.fashion
def test_fashion_mnist_from_debian_package() -> None:
    from prune.data import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    data = load_dataset("fashion-mnist")
    assert data.x_train.shape == (60000, 1, 28, 28)
    assert data.x_test.shape == (10000, 1, 28, 28)


def test_npz_round_trip_and_validation(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    y = np.arange(5, dtype=np.int64)
    save_npz(tmp_path / "d.npz", x, y)
    x2, y2 = load_npz(tmp_path / "d.npz", input_shape=(3,))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    with pytest.raises(DataError, match="expects"):
        load_npz(tmp_path / "d.npz", input_shape=(4,))


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.array([[np.nan, 1.0]], np.float32), np.array([0]), "NaN or inf"),
        (np.array([[np.inf, 1.0]], np.float32), np.array([0]), "NaN or inf"),
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), "no samples"),
        (np.zeros((2, 2), np.float32), np.zeros(3, np.int64), "must be"),
        (np.zeros((2, 2), np.float32), np.array([0.5, 1.0]), "int64"),
    ],
)
def test_npz_bad_content(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "bad.npz", x=x, y=y)
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_npz_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(tmp_path / "junk.npz")
