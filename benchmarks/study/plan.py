"""What the study runs: cells ``(dataset, arch, setting, method variant, seed)`` and named configs.

A cell is a value; its :meth:`Cell.key` (a hash of its canonical JSON plus
:data:`HARNESS_VERSION`) names its result file, which is what makes runs resumable: a cell whose
result exists is skipped. Bump :data:`HARNESS_VERSION` when a change to the harness changes what
a cell measures, so old results are not mixed with new ones.

Settings follow the issue: random forgetting of 100, 200, 300, 500 points (the paper's sizes) and
of 1 % of the training set, and one whole class (class 5, the class of the paper's Fashion-MNIST
class-level result).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BASELINES",
    "CALIBRATED_VARIANTS",
    "CONFIGS",
    "FORGET_CLASS",
    "HARNESS_VERSION",
    "PRUNE_VARIANTS",
    "SETTINGS",
    "Cell",
    "Variant",
    "cells_for",
]

HARNESS_VERSION = 2
FORGET_CLASS = 5
SETTINGS = ("random-100", "random-200", "random-300", "random-500", "random-1pct", "class-5")


@dataclass(frozen=True, kw_only=True)
class Variant:
    """A method with hyperparameter overrides; ``label`` is how tables name it."""

    label: str
    method: str
    params: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True, kw_only=True)
class Cell:
    dataset: str
    arch: str
    setting: str
    variant: Variant
    seed: int = 0
    mia: bool = True
    extra: tuple[tuple[str, Any], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["variant"]["params"] = {k: v for k, v in self.variant.params}
        doc["extra"] = {k: v for k, v in self.extra}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Cell:
        v = doc["variant"]
        return cls(
            dataset=str(doc["dataset"]),
            arch=str(doc["arch"]),
            setting=str(doc["setting"]),
            variant=Variant(
                label=str(v["label"]),
                method=str(v["method"]),
                params=tuple(sorted(v["params"].items())),
            ),
            seed=int(doc["seed"]),
            mia=bool(doc["mia"]),
            extra=tuple(sorted(doc["extra"].items())),
        )

    def key(self) -> str:
        text = json.dumps(
            {"harness": HARNESS_VERSION, **self.to_json()}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def name(self) -> str:
        return f"{self.dataset}/{self.arch}/{self.setting}/{self.variant.label}/s{self.seed}"


BASELINES: tuple[Variant, ...] = (
    Variant(label="original", method="original"),
    Variant(label="retrain", method="retrain"),
    Variant(label="finetune", method="finetune"),
    Variant(label="neggrad", method="neggrad"),
    Variant(label="neggrad+", method="neggrad+"),
    Variant(label="random-labels", method="random-labels"),
    Variant(label="amnesiac", method="amnesiac"),
    Variant(label="sisa", method="sisa"),
)

# PRUNE variants: the engine's defaults (lagrangian solver, activation gate, runner-up target,
# one patch per distinct region) and one change at a time.
PRUNE_VARIANTS: tuple[Variant, ...] = (
    Variant(label="prune", method="prune"),
    Variant(label="prune[solver=scale-shift]", method="prune", params=(("solver", "scale-shift"),)),
    Variant(label="prune[gate=dense]", method="prune", params=(("gate", "dense"),)),
    Variant(label="prune[target=random]", method="prune", params=(("target_policy", "random"),)),
    Variant(label="prune[strategy=clustered]", method="prune", params=(("strategy", "clustered"),)),
    Variant(label="prune[solver=reassure]", method="prune", params=(("solver", "reassure"),)),
)
# Issue 13: calibrated targets, from ``prune prepare`` (cross-fitted) or without it
# (class-conditional statistics of the held-out set).
CALIBRATED_VARIANTS: tuple[Variant, ...] = (
    Variant(
        label="prune[target=calibrated]",
        method="prune",
        params=(("prepared", True), ("target_policy", "calibrated")),
    ),
    Variant(
        label="prune[target=calibrated,no-prepare]",
        method="prune",
        params=(("target_policy", "calibrated"),),
    ),
)
# Variants whose cost grows fastest with the forget set only run where it is small:
# REASSURE solves one large LP per region (the paper's anchor: 100 points in 2,117 s on MNIST);
# scale-shift solves two LPs per spec row per region; the dense gate stores a [d, P*H] matrix
# (for Fashion-MNIST about 1.6 MB per patch, so 1 GB at 600 patches).
_SMALL = ("random-100", "random-1pct")


def _variant(label: str) -> Variant:
    return next(v for v in PRUNE_VARIANTS if v.label == label)


def _grid(
    dataset: str,
    arch: str,
    settings: tuple[str, ...],
    variants: tuple[Variant, ...],
    seeds: tuple[int, ...] = (0,),
) -> list[Cell]:
    return [
        Cell(dataset=dataset, arch=arch, setting=s, variant=v, seed=seed)
        for seed in seeds
        for s in settings
        for v in variants
    ]


def _quick() -> list[Cell]:
    return _grid(
        "digits", "mlp", ("random-100", "random-1pct", "class-5"), (*BASELINES, PRUNE_VARIANTS[0])
    )


def _digits(seeds: tuple[int, ...]) -> list[Cell]:
    cheap = (*BASELINES, *PRUNE_VARIANTS[:-1])
    return _grid("digits", "mlp", SETTINGS, cheap, seeds) + _grid(
        "digits", "mlp", _SMALL, (_variant("prune[solver=reassure]"),), seeds
    )


def _fashion_mlp(*, everything: bool) -> list[Cell]:
    base = (*BASELINES, PRUNE_VARIANTS[0])
    scalable = (_variant("prune[target=random]"), _variant("prune[strategy=clustered]"))
    costly = (_variant("prune[solver=scale-shift]"), _variant("prune[gate=dense]"))
    first = ("random-1pct", "class-5", "random-100", "random-500")
    cells = _grid("fashion-mnist", "mlp", first, base + scalable)
    cells += _grid("fashion-mnist", "mlp", ("random-100",), costly)
    cells += _grid("fashion-mnist", "mlp", ("random-200", "random-300"), base)
    if everything:
        cells += _grid("fashion-mnist", "mlp", ("random-200", "random-300"), scalable)
        cells += _grid(
            "fashion-mnist", "mlp", ("random-100",), (_variant("prune[solver=reassure]"),)
        )
    return cells


# One Fashion-MNIST CNN training takes about 7 min on 2 idle cores; the default config skips the
# methods that need extra trainings per setting (retrain row, SISA, Amnesiac). The retrained
# reference is still trained, and its time stands in for "retrain" in the speed column.
_CNN_CHEAP = tuple(
    v for v in (*BASELINES, PRUNE_VARIANTS[0]) if v.method not in ("retrain", "sisa", "amnesiac")
)


def _default() -> list[Cell]:
    return (
        _digits((0,))
        + _fashion_mlp(everything=False)
        + _grid("fashion-mnist", "cnn", ("random-1pct", "class-5"), _CNN_CHEAP)
    )


def _full() -> list[Cell]:
    base = (*BASELINES, PRUNE_VARIANTS[0])
    return (
        _digits((0, 1, 2))
        + _fashion_mlp(everything=True)
        + _grid("fashion-mnist", "cnn", SETTINGS, base)
    )


def _calibrated() -> list[Cell]:
    """Issue 13: retrain vs runner-up vs calibrated, seed 0 on every model first, then seeds."""
    settings = ("random-100", "random-500", "random-1pct")
    rows = (BASELINES[0], BASELINES[1], PRUNE_VARIANTS[0], *CALIBRATED_VARIANTS)
    return (
        _grid("digits", "mlp", settings, rows, (0,))
        + _grid("fashion-mnist", "mlp", settings, rows, (0,))
        + _grid("digits", "mlp", settings, rows, (1, 2))
        + _grid("fashion-mnist", "mlp", settings, rows, (1, 2))
        + _grid("fashion-mnist", "cnn", settings, rows, (0,))
        + _grid("fashion-mnist", "cnn", settings, rows, (1, 2))
    )


CONFIGS: Mapping[str, Callable[[], list[Cell]]] = {
    "quick": _quick,
    "default": _default,
    "full": _full,
    "calibrated": _calibrated,
}


def cells_for(config: str) -> list[Cell]:
    """The cells of a named config, in run order (artifacts are shared by neighbours)."""
    if config not in CONFIGS:
        raise KeyError(config)
    return CONFIGS[config]()
