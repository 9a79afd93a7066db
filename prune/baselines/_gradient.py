"""Approximate unlearning by a few more optimiser steps on the trained model.

* :class:`FineTune` — a few epochs on the retained data only ("catastrophic forgetting" of the
  forget set; Warnecke et al. and most surveys use it as the cheapest baseline).
* :class:`NegGrad` — gradient *ascent* on the forget set. :class:`NegGradPlus` (Kurmanji et al.,
  NeurIPS 2023) mixes in descent on retained data: loss ``beta * CE(retain) - (1 - beta) *
  CE(forget)``; ``beta = 0`` is plain NegGrad.
* :class:`RandomLabels` — fine-tune on the forget points relabelled with uniformly random *wrong*
  classes, each forget batch paired with an equally large retained batch (Graves et al. 2021,
  "relabelling"; Golatkar et al. use it as a baseline).

None of these gives a guarantee of any kind: how much is forgotten depends on the step count and
learning rate, which are fixed here (not tuned per setting) and stated in the dataclass fields.
All use Adam like the training recipe; batches are drawn with the caller's generator; the model
passed in is deep-copied, never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from prune.baselines._base import UnlearningMethod, check_forget, retain_indices

__all__ = ["FineTune", "NegGrad", "NegGradPlus", "RandomLabels"]


def _epoch_batches(
    rows: NDArray[np.int64], batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """One pass over ``rows`` in a random order, in batches."""
    order = torch.from_numpy(rows)[torch.randperm(len(rows), generator=generator)]
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def _sample(rows: NDArray[np.int64], k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` rows drawn uniformly with replacement."""
    pick = torch.randint(0, len(rows), (k,), generator=generator)
    return torch.from_numpy(rows)[pick]


def _tensors(x: NDArray[np.float32], y: NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.asarray(y, dtype=np.int64)),
    )


def _step(
    opt: torch.optim.Optimizer, model: nn.Module, loss: torch.Tensor, clip_norm: float | None
) -> None:
    opt.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    if clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()


def _start(
    model: nn.Module,
    x_train: NDArray[np.float32],
    y_train: NDArray[np.int64],
    forget_idx: NDArray[np.int64],
    *,
    lr: float,
) -> tuple[
    NDArray[np.int64], NDArray[np.int64], torch.Tensor, torch.Tensor, nn.Module, torch.optim.Adam
]:
    """What every gradient method starts from: checked forget and retained indices, the data as
    tensors, a training copy of ``model`` (the original is never touched) and its Adam."""
    forget = check_forget(forget_idx, len(x_train))
    keep = retain_indices(forget, len(x_train))
    x, y = _tensors(x_train, y_train)
    out = copy.deepcopy(model).train()
    return forget, keep, x, y, out, torch.optim.Adam(out.parameters(), lr=lr)


@dataclass(frozen=True, kw_only=True)
class FineTune(UnlearningMethod):
    """``epochs`` passes over the retained data with Adam at ``lr``, batches of ``batch_size``."""

    name: ClassVar[str] = "finetune"
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 128

    def unlearn(
        self,
        model: nn.Module,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        forget_idx: NDArray[np.int64],
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        _forget, keep, x, y, out, opt = _start(model, x_train, y_train, forget_idx, lr=self.lr)
        for _ in range(self.epochs):
            for idx in _epoch_batches(keep, self.batch_size, generator):
                _step(opt, out, F.cross_entropy(out(x[idx]), y[idx]), None)
        return out.eval()


@dataclass(frozen=True, kw_only=True)
class NegGrad(UnlearningMethod):
    """``epochs`` passes over the forget set, minimising
    ``beta * CE(retained batch) - (1 - beta) * CE(forget batch)`` with Adam at ``lr``; the
    gradient norm is clipped to ``clip_norm`` because the ascent term is unbounded.
    The retained batch (same size as the forget batch) is only drawn when ``beta > 0``."""

    name: ClassVar[str] = "neggrad"
    epochs: int = 5
    lr: float = 3e-4
    batch_size: int = 64
    beta: float = 0.0
    clip_norm: float | None = 5.0

    def unlearn(
        self,
        model: nn.Module,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        forget_idx: NDArray[np.int64],
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        forget, keep, x, y, out, opt = _start(model, x_train, y_train, forget_idx, lr=self.lr)
        for _ in range(self.epochs):
            for idx in _epoch_batches(forget, self.batch_size, generator):
                loss = -(1.0 - self.beta) * F.cross_entropy(out(x[idx]), y[idx])
                if self.beta > 0.0:
                    r = _sample(keep, len(idx), generator)
                    loss = loss + self.beta * F.cross_entropy(out(x[r]), y[r])
                _step(opt, out, loss, self.clip_norm)
        return out.eval()


@dataclass(frozen=True, kw_only=True)
class NegGradPlus(NegGrad):
    """NegGrad+ : :class:`NegGrad` with descent on retained data (``beta`` weight)."""

    name: ClassVar[str] = "neggrad+"
    epochs: int = 5
    lr: float = 1e-3
    beta: float = 0.8


@dataclass(frozen=True, kw_only=True)
class RandomLabels(UnlearningMethod):
    """``epochs`` passes over the forget set; each step minimises
    ``CE(forget batch, random wrong labels) + CE(retained batch of the same size)`` with Adam
    at ``lr``. Wrong labels are ``(y + U{1..C-1}) mod C``, fresh every epoch."""

    name: ClassVar[str] = "random-labels"
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64

    def unlearn(
        self,
        model: nn.Module,
        x_train: NDArray[np.float32],
        y_train: NDArray[np.int64],
        forget_idx: NDArray[np.int64],
        *,
        generator: torch.Generator,
    ) -> nn.Module:
        forget, keep, x, y, out, opt = _start(model, x_train, y_train, forget_idx, lr=self.lr)
        with torch.no_grad():
            classes = int(out(x[:1]).shape[1])
        for _ in range(self.epochs):
            for idx in _epoch_batches(forget, self.batch_size, generator):
                shift = torch.randint(1, classes, (len(idx),), generator=generator)
                wrong = (y[idx] + shift) % classes
                r = _sample(keep, len(idx), generator)
                loss = F.cross_entropy(out(x[idx]), wrong) + F.cross_entropy(out(x[r]), y[r])
                _step(opt, out, loss, None)
        return out.eval()
