"""The training recipe every baseline starts from, replayed exactly as ``prune train`` runs it.

Invariant: ``fit(recipe, x, y)`` with ``recipe.config.seed == s`` gives the same weights, bit for
bit on one machine, as :func:`prune.train.train` with ``TrainConfig(seed=s)`` on the same ``x, y``
(same initialisation from ``torch.manual_seed(s)``, same batch order from a
``torch.Generator`` seeded with ``s``, same Adam steps). This is what makes "retrain without the
forget set" the gold standard: it is the model the owner would have had if the points had never
been there. The global torch RNG is forked, so calling :func:`fit` leaves the caller's RNG state
untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from prune.data import Dataset
from prune.train import TrainConfig, build_model, model_input

__all__ = ["StepObserver", "TrainRecipe", "fit", "predict_logits", "recipe_for"]


@dataclass(frozen=True, kw_only=True)
class TrainRecipe:
    """A :class:`~prune.train.TrainConfig` plus the shapes needed to build the network.

    ``input_shape`` is the model input without the batch axis: ``(d,)`` for the MLP (flat
    features, as in ``train.npz``), ``(c, h, w)`` for the CNN."""

    config: TrainConfig
    input_shape: tuple[int, ...]
    classes: int

    def build(self) -> nn.Module:
        """A freshly initialised network (uses the global torch RNG; :func:`fit` forks it)."""
        return build_model(
            self.config.arch,
            input_shape=self.input_shape,
            classes=self.classes,
            hidden=self.config.hidden,
        )


def recipe_for(data: Dataset, config: TrainConfig) -> TrainRecipe:
    """The recipe ``prune train`` uses for ``data`` under ``config``."""
    shape = tuple(int(s) for s in model_input(config.arch, data.x_train[:1]).shape[1:])
    return TrainRecipe(config=config, input_shape=shape, classes=data.classes)


class StepObserver(Protocol):
    """Sees every optimiser step of :func:`fit`: the training rows in the batch and the change of
    the flattened parameter vector that the step made (``after - before``)."""

    def observe(self, rows: NDArray[np.int64], delta: torch.Tensor) -> None: ...


def fit(
    recipe: TrainRecipe,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    seed: int | None = None,
    observer: StepObserver | None = None,
) -> nn.Module:
    """Train a fresh network on ``x, y`` with the recipe (``seed`` defaults to the recipe's).

    ``x`` must already have the model's input shape. Returns the model in eval mode."""
    s = recipe.config.seed if seed is None else seed
    cfg = recipe.config
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(s)
        torch.manual_seed(s)
        model = recipe.build()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = nn.CrossEntropyLoss()
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y_t = torch.from_numpy(np.asarray(y, dtype=np.int64))
        model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(x_t), generator=gen)
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                before = _flat(model) if observer is not None else None
                opt.zero_grad()
                loss_fn(model(x_t[idx]), y_t[idx]).backward()
                opt.step()
                if observer is not None and before is not None:
                    observer.observe(idx.numpy().astype(np.int64), _flat(model) - before)
        model.eval()
    return model


def _flat(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return nn.utils.parameters_to_vector(model.parameters()).detach().clone()


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: NDArray[np.float32], *, batch_size: int = 4096
) -> NDArray[np.float32]:
    """Logits of ``model`` (put in eval mode) on ``x``, batched."""
    model.eval()
    parts: Sequence[NDArray[np.float32]] = [
        model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy()
        for i in range(0, len(x), batch_size)
    ]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)
