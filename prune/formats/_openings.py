"""``forget.npz``: the commitment openings an auditor receives (docs/FORMATS.md).

Arrays: ``x`` float32 ``[N, ...]`` (the model's input shape), ``y`` int64 ``[N]``, ``salt`` uint8
``[N, S]`` with ``S >= 16``, ``leaf_index`` int64 ``[N]`` (distinct, ascending). Read with
``allow_pickle=False`` and exact keys: the file comes from the party being audited."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from prune.formats._sample import MIN_SALT_BYTES, leaf_hashes
from prune.formats.errors import FormatError, MalformedError

__all__ = ["OPENING_KEYS", "Openings"]

OPENING_KEYS = ("x", "y", "salt", "leaf_index")
_DTYPES = {"x": np.float32, "y": np.int64, "salt": np.uint8, "leaf_index": np.int64}


@dataclass(frozen=True, eq=False)
class Openings:
    """The openings of committed leaves. Invariant (enforced by the constructor): the four
    arrays have the documented dtypes and the same length ``N >= 1``; ``leaf_index`` is strictly
    increasing and non-negative. Round trip: ``Openings.from_bytes(o.to_bytes())`` has equal
    arrays."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    salt: NDArray[np.uint8]
    leaf_index: NDArray[np.int64]

    def __post_init__(self) -> None:
        for name, dtype in _DTYPES.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.dtype != dtype:
                got = getattr(array, "dtype", type(array).__name__)
                raise MalformedError(
                    f"forget.npz: {name} has dtype {got}, expected {np.dtype(dtype)}"
                )
        n = self.x.shape[0] if self.x.ndim else 0
        if n == 0:
            raise MalformedError("forget.npz: no samples; an empty forget set proves nothing")
        if self.y.shape != (n,) or self.leaf_index.shape != (n,):
            raise MalformedError(f"forget.npz: y and leaf_index must have shape ({n},)")
        if self.salt.ndim != 2 or self.salt.shape[0] != n or self.salt.shape[1] < MIN_SALT_BYTES:
            raise MalformedError(f"forget.npz: salt must have shape ({n}, >= {MIN_SALT_BYTES})")
        if self.leaf_index[0] < 0 or np.any(np.diff(self.leaf_index) <= 0):
            raise MalformedError("forget.npz: leaf_index must be non-negative and increasing")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def leaf_hashes(self) -> list[bytes]:
        """The leaf hashes these openings commit to, in row order."""
        return leaf_hashes(self.x, self.y, self.salt)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, x=self.x, y=self.y, salt=self.salt, leaf_index=self.leaf_index)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Openings:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                keys = set(archive.files)
                if keys != set(OPENING_KEYS):
                    raise MalformedError(
                        f"forget.npz: expected arrays {', '.join(OPENING_KEYS)}, "
                        f"found {', '.join(sorted(keys))[:80]}"
                    )
                arrays = {key: archive[key] for key in OPENING_KEYS}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise MalformedError(
                f"forget.npz: not a readable .npz ({exc.__class__.__name__})"
            ) from exc
        return cls(**arrays)

    @classmethod
    def load(cls, path: Path) -> Openings:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise FormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
        return cls.from_bytes(data)
