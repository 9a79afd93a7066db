"""One call from data to a result document: build the attacks, train the reference models the
chosen attacks need, play the game.

:func:`membership_audit` is the classic game (``audit mia``); :func:`unlearning_audit` is U-MIA:
the forget set against held-out non-members for the original, the patched and a retrained model
(given, or retrained here by the auditor from the retained data with the declared
architecture). A retrained model is the gold standard: for it the forget set *is* a set of
non-members, so its numbers show what "forgotten" looks like on this data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np

from audit.errors import InputError
from audit.mia._arch import Architecture
from audit.mia._base import Attack
from audit.mia._game import GameResult, LabelledData, run_game
from audit.mia._lira import Variance, Variant
from audit.mia._reference import ReferenceSet, train_reference_models
from audit.mia._registry import ATTACKS, make_attack
from audit.mia._signals import LogitsFn
from audit.mia._train import TrainingRecipe, retrain, torch_logits_fn

__all__ = ["MiaConfig", "build_attacks", "membership_audit", "unlearning_audit"]


@dataclass(frozen=True)
class MiaConfig:
    """Everything the auditor chooses. Seeds the reference models (``seed``), the attacks that
    draw samples, and the bootstrap."""

    attacks: tuple[str, ...] = tuple(ATTACKS)
    reference_models: int = 8
    recipe: TrainingRecipe = field(default_factory=TrainingRecipe)
    lira_variant: Variant = "offline"
    lira_variance: Variance = "fixed"
    rmia_offline_a: float | Literal["auto"] = "auto"
    rmia_gamma: float = 1.0
    seed: int = 0
    bootstrap: int = 1000
    model_bootstrap: int = 20
    fprs: tuple[float, ...] = (0.01, 0.001)
    jobs: int = 1
    backend: str = "local"
    address: str | None = None
    device: str = "auto"
    train_size: int | None = None
    per_class: bool = False
    sample_scores: bool = False

    def __post_init__(self) -> None:
        if not self.attacks:
            raise InputError("choose at least one attack")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise InputError(f"unknown attack {unknown[0]!r} (choose {', '.join(ATTACKS)})")
        if self.reference_models < 1:
            raise InputError("at least one reference model is needed")
        if not 0 <= self.model_bootstrap <= self.bootstrap:
            raise InputError("model_bootstrap must lie in [0, bootstrap]")
        if self.train_size is not None and self.train_size < 1:
            raise InputError("train_size must be positive")


_PARAMS: dict[str, Callable[[MiaConfig], dict[str, Any]]] = {
    "lira": lambda c: {"variant": c.lira_variant, "variance": c.lira_variance},
    "rmia": lambda c: {"offline_a": c.rmia_offline_a, "gamma": c.rmia_gamma, "seed": c.seed},
    "shadow": lambda c: {"seed": c.seed},
}
_PER_CLASS = frozenset({"loss", "confidence", "entropy"})


def build_attacks(config: MiaConfig) -> list[Attack]:
    """The configured attacks, unfitted, in the configured order."""
    out = []
    for name in config.attacks:
        params = _PARAMS[name](config) if name in _PARAMS else {}
        if config.per_class and name in _PER_CLASS:
            params["per_class"] = True
        out.append(make_attack(name, **params))
    return out


def _reference_set(
    attacks: list[Attack],
    reference: LabelledData,
    candidates: tuple[LabelledData, LabelledData],
    *,
    architecture: Architecture,
    config: MiaConfig,
    progress: bool,
) -> ReferenceSet | None:
    if not any(a.uses_reference_models for a in attacks):
        return None
    online = "lira" in config.attacks and config.lira_variant == "online"
    pool = None
    if online:
        pool = (
            np.concatenate([candidates[0].x, candidates[1].x]),
            np.concatenate([candidates[0].y, candidates[1].y]),
        )
    train_size = config.train_size if config.train_size is not None else len(reference.y) // 2
    key = None
    if pool is None:  # offline: the models depend on the reference data and settings only
        digest = hashlib.sha256(np.ascontiguousarray(reference.x).tobytes())
        digest.update(np.ascontiguousarray(reference.y).tobytes())
        key = (
            digest.hexdigest(),
            repr(architecture),
            repr(config.recipe),
            config.seed,
            config.reference_models,
            train_size,
            config.device,
            config.backend,  # the same weights on every backend, but a request for a cluster
            config.address,  # runs there (its failures are reported, not masked by a cache)
        )
        if key in _TRAINED:
            return _TRAINED[key]
    trained = train_reference_models(
        reference.x,
        reference.y,
        architecture=architecture,
        count=config.reference_models,
        recipe=config.recipe,
        seed=config.seed,
        candidates=pool,
        train_size=train_size,
        jobs=config.jobs,
        backend=config.backend,
        address=config.address,
        device=config.device,
        progress=progress,
    )
    if key is not None:
        while len(_TRAINED) >= _TRAINED_ENTRIES:
            _TRAINED.pop(next(iter(_TRAINED)))
        _TRAINED[key] = trained
    return trained


_TRAINED: dict[tuple[object, ...], ReferenceSet] = {}
_TRAINED_ENTRIES = 2
"""Offline reference sets already trained in this process, by everything they depend on
(training is deterministic for a seed, bit for bit on CPUs, whatever the backend): an auditor
checking several proofs against the same reference data trains its models once."""


def membership_audit(
    models: Mapping[str, LogitsFn],
    members: LabelledData,
    non_members: LabelledData,
    reference: LabelledData,
    *,
    architecture: Architecture,
    config: MiaConfig,
    progress: bool = False,
    now: datetime | None = None,
) -> GameResult:
    """Training members vs held-out non-members, for each model in ``models``."""
    attacks = build_attacks(config)
    refs = _reference_set(
        attacks,
        reference,
        (members, non_members),
        architecture=architecture,
        config=config,
        progress=progress,
    )
    return run_game(
        models,
        members,
        non_members,
        attacks=attacks,
        reference=refs,
        game="members-vs-non-members",
        seed=config.seed,
        bootstrap=config.bootstrap,
        model_bootstrap=config.model_bootstrap,
        fprs=config.fprs,
        sample_scores=config.sample_scores,
        now=now,
    )


def unlearning_audit(
    *,
    original: LogitsFn | None,
    patched: LogitsFn,
    forget: LabelledData,
    non_members: LabelledData,
    reference: LabelledData,
    architecture: Architecture,
    config: MiaConfig,
    retrained: LogitsFn | None = None,
    retained: LabelledData | None = None,
    progress: bool = False,
    now: datetime | None = None,
) -> GameResult:
    """U-MIA: the forget set vs non-members for original, patched and retrained models.

    When ``retrained`` is not given but ``retained`` (the owner's training data minus the
    forget set) is, the auditor trains the retrained model itself with ``architecture`` and
    ``config.recipe``, seeded by ``config.seed``."""
    models: dict[str, LogitsFn] = {}
    if original is not None:
        models["original"] = original
    models["patched"] = patched
    if retrained is None and retained is not None:
        module = retrain(
            architecture, retained.x, retained.y, recipe=config.recipe, seed=config.seed
        )
        retrained = torch_logits_fn(module)
    if retrained is not None:
        models["retrained"] = retrained
    attacks = build_attacks(config)
    refs = _reference_set(
        attacks,
        reference,
        (forget, non_members),
        architecture=architecture,
        config=config,
        progress=progress,
    )
    return run_game(
        models,
        forget,
        non_members,
        attacks=attacks,
        reference=refs,
        game="forget-vs-non-members",
        seed=config.seed,
        bootstrap=config.bootstrap,
        model_bootstrap=config.model_bootstrap,
        fprs=config.fprs,
        sample_scores=config.sample_scores,
        now=now,
    )
