"""Shared, seeded fixtures for the membership-inference tests: the digits data split into
disjoint members / non-members / reference data, and a deliberately overfit ReLU MLP target
trained with the auditor's own recipe (so its shadows are like it)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.datasets import load_digits

from audit.mia import (
    Architecture,
    LabelledData,
    LogitsFn,
    TrainingRecipe,
    torch_logits_fn,
)
from audit.mia._arch import module_from_state
from audit.mia._train import train_model

__all__ = ["OVERFIT_RECIPE", "Split", "digits_split", "export_onnx", "overfit_target"]

OVERFIT_RECIPE = TrainingRecipe(epochs=100, batch_size=32)
ARCH = Architecture("mlp", (256,), (64,), 10)


def export_onnx(module: torch.nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    """The model as ONNX (TorchScript exporter: plain Gemm/Relu/Conv nodes), dynamic batch."""
    torch.onnx.export(
        module.eval(),
        (torch.zeros((1, *shape)),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


@dataclass(frozen=True, eq=False)
class Split:
    members: LabelledData
    non_members: LabelledData
    reference: LabelledData


@cache
def _digits() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def digits_split(seed: int, *, members: int = 200, non_members: int = 600) -> Split:
    """Disjoint random sets; the reference data is twice the member count, so reference models
    trained on halves of it see as much data as the target."""
    x, y = _digits()
    p = np.random.default_rng(seed).permutation(len(x))
    a, b, c = p[:members], p[members : members + non_members], p[members + non_members :]
    c = c[: 2 * members]
    return Split(LabelledData(x[a], y[a]), LabelledData(x[b], y[b]), LabelledData(x[c], y[c]))


@cache
def overfit_target(seed: int) -> tuple[Split, LogitsFn]:
    """A 64-256-10 MLP trained 100 epochs on 200 digits: 100% train accuracy, ~93% test."""
    split = digits_split(seed)
    trained = train_model(ARCH, split.members.x, split.members.y, recipe=OVERFIT_RECIPE, seed=seed)
    return split, torch_logits_fn(module_from_state(ARCH, trained.state))


def test_the_target_is_overfit() -> None:
    split, target = overfit_target(3)
    train_acc = (target(split.members.x).argmax(1) == split.members.y).mean()
    test_acc = (target(split.non_members.x).argmax(1) == split.non_members.y).mean()
    assert train_acc == 1.0
    assert test_acc < 0.97
