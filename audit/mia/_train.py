"""The auditor's own training loop for reference (shadow) models and retrained baselines.

Deliberately independent of the owner's code (``prune.train``): Adam on cross-entropy with
seeded initialisation and data order. One call trains one model in the current process with a
bounded number of torch threads, so that many calls can run side by side (joblib workers).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from audit.errors import InputError
from audit.mia._arch import Architecture, module_from_state, state_to_numpy
from audit.mia._signals import LogitsFn

__all__ = [
    "TrainedWeights",
    "TrainingRecipe",
    "resolve_device",
    "retrain",
    "torch_logits_fn",
    "train_model",
]

_GLOBAL_RNG = threading.Lock()


@dataclass(frozen=True)
class TrainingRecipe:
    """Hyper-parameters of the auditor's training. Matching the owner's recipe makes reference
    models more like the target (stronger attacks); the auditor states what it used."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise InputError(f"invalid training recipe {self}")

    def describe(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "optimizer": "adam",
            "loss": "cross-entropy",
        }


@dataclass(frozen=True)
class TrainedWeights:
    """One trained model: its weights as numpy arrays (what crosses process boundaries).
    ``seconds``/``cpu_seconds``/``worker``: how long the task that trained it took inside its
    worker (wall, process CPU) and which process that was (``host:pid``), when it ran as a task
    of :mod:`audit.mia._execution`; facts about the run, never part of the result's identity."""

    index: int
    state: dict[str, NDArray[Any]]
    train_accuracy: float
    device: str = "cpu"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    worker: str = ""


def train_model(
    arch: Architecture,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    recipe: TrainingRecipe,
    seed: int,
    index: int = 0,
    threads: int = 1,
    device: str = "cpu",
) -> TrainedWeights:
    """Train one model of ``arch`` on ``(x, y)``; fully determined by ``seed`` and ``threads``
    on a CPU. ``device``: ``cpu``, ``cuda`` or ``auto`` (CUDA when this process sees a GPU);
    the weights come back as CPU numpy arrays either way."""
    if len(x) == 0:
        raise InputError("cannot train a reference model on an empty set")
    target = resolve_device(device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return _train(arch, x, y, recipe=recipe, seed=seed, index=index, device=target)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    arch: Architecture,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    recipe: TrainingRecipe,
    seed: int,
    index: int,
    device: torch.device,
) -> TrainedWeights:
    gen = torch.Generator().manual_seed(seed)
    # torch's initialisation draws from the process-global RNG: with the threading backend two
    # workers could interleave between manual_seed and build, so the seeded build is serialised
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = arch.build()
    model.to(device)  # initialised on the CPU above: the same weights whatever the device
    # Own writable copies: joblib hands workers read-only memory maps, which torch refuses to wrap.
    xt = torch.from_numpy(np.array(x, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.array(y, dtype=np.int64)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size].to(device)
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    return TrainedWeights(index, state_to_numpy(model), acc, device.type)


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when this process sees a GPU, else the CPU; ``cuda`` without one is an
    error (never a silent CPU run the auditor did not ask for)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("training device cuda requested, but this worker has no CUDA device")
    if device not in ("cpu", "cuda"):
        raise InputError(f"unknown training device {device!r} (choose auto, cpu, cuda)")
    return torch.device(device)


def torch_logits_fn(module: nn.Module, *, batch_size: int = 8192) -> LogitsFn:
    """Wrap a torch module as a :data:`LogitsFn` (eval mode, no gradients, batched)."""

    def logits(x: NDArray[np.float32]) -> NDArray[np.float32]:
        parts = []
        with torch.no_grad():
            for i in range(0, max(len(x), 1), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], np.float32))
                parts.append(module(batch).numpy())
        return np.concatenate(parts).astype(np.float32, copy=False)

    module.eval()
    return logits


def retrain(
    arch: Architecture,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    recipe: TrainingRecipe,
    seed: int,
    threads: int = 1,
) -> nn.Module:
    """A model trained from scratch on ``(x, y)``: the unlearning gold standard when ``x`` is
    the owner's retained data."""
    trained = train_model(arch, x, y, recipe=recipe, seed=seed, threads=threads)
    return module_from_state(arch, trained.state)
