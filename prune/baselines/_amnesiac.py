"""Amnesiac unlearning (Graves, Nagisetty & Ganesh, AAAI 2021).

While training, the owner records the parameter change of every optimiser step together with the
training rows of that step's batch. To unlearn, it subtracts the recorded changes of every step
whose batch held a forgotten row, then (optionally) repairs the damage with a little fine-tuning
on the retained data, as the paper does.

Storage cost (the price of the method): one float32 parameter vector per optimiser step, i.e.
``steps x parameters x 4`` bytes — for a 784-256-256-10 MLP trained 12 epochs on 60,000 points
with batches of 128 that is 5,628 x 269,322 x 4 B = 6.1 GB. Graves et al. only log the steps
that touch data known in advance to be sensitive; deletion requests are not known in advance
here, so every step is logged (:attr:`UpdateLog.nbytes` reports the size). The log can live in
memory or in a folder (a raw float32 file read back through a memory map).

Invariants: steps are undone at most once (an :class:`AmnesiacModel` remembers which); the log is
append-only and never modified by unlearning. There is no guarantee: once steps are removed, the
later steps were computed from parameters that no longer exist, so the result is neither the
retrained model nor provably close to it; with random forget sets most batches touch a forgotten
row (P = 1 - (1 - b/n)^k), and almost every step is undone.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prune.baselines._base import BaselineError, UnlearningMethod, check_forget
from prune.baselines._gradient import FineTune
from prune.baselines._recipe import TrainRecipe, fit

__all__ = ["Amnesiac", "AmnesiacModel", "UpdateLog"]

_DATA = "updates.f32"
_ROWS = "rows.npz"
_META = "log.json"


class UpdateLog:
    """Append-only record of ``(batch rows, parameter delta)`` per optimiser step.

    With ``folder`` the deltas are appended to ``folder/updates.f32`` (float32, one row per
    step); call :meth:`close` after the last step. Without, they stay in memory."""

    def __init__(self, *, n_params: int, folder: Path | None = None) -> None:
        self.n_params = n_params
        self.folder = folder
        self._rows: list[NDArray[np.int64]] = []
        self._memory: list[NDArray[np.float32]] = []
        self._file = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self._file = (folder / _DATA).open("wb")
        self._mapped: NDArray[np.float32] | None = None

    @property
    def steps(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        """Bytes of stored parameter deltas (the method's storage cost; row lists excluded)."""
        return self.steps * self.n_params * 4

    def observe(self, rows: NDArray[np.int64], delta: torch.Tensor) -> None:
        vec = delta.detach().to(torch.float32).numpy()
        if vec.shape != (self.n_params,):
            raise BaselineError(f"update log expects {self.n_params} parameters, got {vec.shape}")
        self._rows.append(np.asarray(rows, dtype=np.int64).copy())
        if self._file is not None:
            self._file.write(np.ascontiguousarray(vec).tobytes())
        else:
            self._memory.append(vec.copy())

    def close(self) -> None:
        """Finish writing (folder-backed logs) and write the row lists next to the data."""
        if self._file is None or self.folder is None:
            return
        self._file.close()
        self._file = None
        lengths = np.array([len(r) for r in self._rows], dtype=np.int64)
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        np.savez(self.folder / _ROWS, rows=rows, lengths=lengths)
        meta = {"version": 1, "n_params": self.n_params, "steps": self.steps}
        (self.folder / _META).write_text(json.dumps(meta, sort_keys=True) + "\n")

    @classmethod
    def open(cls, folder: Path) -> UpdateLog:
        """Re-open a closed folder-backed log (read-only use)."""
        try:
            meta = json.loads((folder / _META).read_text())
            with np.load(folder / _ROWS, allow_pickle=False) as z:
                rows, lengths = np.asarray(z["rows"]), np.asarray(z["lengths"])
        except (OSError, ValueError, KeyError) as exc:
            raise BaselineError(f"cannot read the update log in {folder}: {exc}") from exc
        if meta.get("version") != 1 or int(meta["steps"]) != len(lengths):
            raise BaselineError(f"update log in {folder} has an unknown version or is torn")
        log = cls.__new__(cls)
        log.n_params, log.folder = int(meta["n_params"]), folder
        log._rows = list(np.split(rows, np.cumsum(lengths)[:-1])) if len(lengths) else []
        log._memory, log._file, log._mapped = [], None, None
        expected = log.steps * log.n_params * 4
        if (folder / _DATA).stat().st_size != expected:
            raise BaselineError(f"update log in {folder} is truncated")
        return log

    def steps_touching(self, rows: NDArray[np.int64], n_rows: int) -> NDArray[np.int64]:
        """Indices of the steps whose batch contains at least one of ``rows``."""
        hit = np.zeros(n_rows, dtype=bool)
        hit[rows] = True
        return np.array(
            [s for s, batch in enumerate(self._rows) if hit[batch].any()], dtype=np.int64
        )

    def sum_of(self, steps: NDArray[np.int64], *, chunk: int = 64) -> torch.Tensor:
        """Sum of the deltas of ``steps`` (accumulated in float64, returned as float32)."""
        total = np.zeros(self.n_params, dtype=np.float64)
        if self._file is not None:
            raise BaselineError("close the update log before reading it")
        if self.folder is not None:
            if self._mapped is None:
                self._mapped = np.memmap(
                    self.folder / _DATA,
                    dtype=np.float32,
                    mode="r",
                    shape=(self.steps, self.n_params),
                )
            for i in range(0, len(steps), chunk):
                total += self._mapped[np.sort(steps[i : i + chunk])].sum(axis=0, dtype=np.float64)
        else:
            for s in steps:
                total += self._memory[int(s)]
        return torch.from_numpy(total.astype(np.float32))


class AmnesiacModel(nn.Module):
    """A trained network plus its update log and the steps already undone."""

    def __init__(self, net: nn.Module, log: UpdateLog, undone: frozenset[int] = frozenset()):
        super().__init__()
        self.net = net
        self.log = log
        self.undone = undone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class Amnesiac(UnlearningMethod):
    """Hyperparameters: the repair fine-tune after the subtraction (``repair_epochs`` passes over
    the retained data with Adam at ``repair_lr``; 0 disables it). ``log_dir`` only chooses where
    the log is stored (``None``: in memory)."""

    name: ClassVar[str] = "amnesiac"
    repair_epochs: int = 2
    repair_lr: float = 1e-3
    batch_size: int = 128
    log_dir: Path | None = None

    def prepare(
        self,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        *,
        recipe: TrainRecipe,
        seed: int | None = None,
    ) -> nn.Module:
        """The recipe's standard model, trained while logging every step."""
        n_params = sum(p.numel() for p in recipe.build().parameters())
        log = UpdateLog(n_params=n_params, folder=self.log_dir)
        net = fit(recipe, x_train, y_train, seed=seed, observer=log)
        log.close()
        return AmnesiacModel(net, log)

    def unlearn(
        self,
        model: nn.Module,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        forget_idx: NDArray[np.int64],
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        if not isinstance(model, AmnesiacModel):
            raise BaselineError("amnesiac unlearning needs the model from Amnesiac.prepare")
        forget = check_forget(forget_idx, len(x_train))
        steps = model.log.steps_touching(forget, len(x_train))
        steps = np.array([s for s in steps if int(s) not in model.undone], dtype=np.int64)
        net = copy.deepcopy(model.net)
        with torch.no_grad():
            flat = nn.utils.parameters_to_vector(net.parameters())
            nn.utils.vector_to_parameters(flat - model.log.sum_of(steps), net.parameters())
        if self.repair_epochs > 0:
            repair = FineTune(
                epochs=self.repair_epochs, lr=self.repair_lr, batch_size=self.batch_size
            )
            net = repair.unlearn(net, x_train, y_train, forget, generator=generator)
        return AmnesiacModel(net, model.log, model.undone | {int(s) for s in steps})
