"""The membership game and its versioned result document.

A game scores two labelled sets against one or more models with the same fitted attacks: the
classic game (training members vs held-out non-members, e.g. for the original model) or the
unlearning game U-MIA (the forget set vs held-out non-members, for the original, the patched and
a retrained model). The document (``type`` :data:`DOCUMENT_TYPE`, ``version`` 1) holds every
metric with its interval, the ROC points, accuracies as fractions, the reference models' facts,
seeds and library versions.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from audit.errors import InputError
from audit.mia._base import Attack
from audit.mia._metrics import AttackMetrics, evaluate
from audit.mia._reference import ReferenceSet, row_keys
from audit.mia._signals import LogitsFn, as_logits

__all__ = [
    "DOCUMENT_TYPE",
    "AttackResult",
    "GameResult",
    "LabelledData",
    "ModelResult",
    "run_game",
]

DOCUMENT_TYPE = "https://prune-audit.dev/mia/v1"
Game = Literal["members-vs-non-members", "forget-vs-non-members"]


@dataclass(frozen=True, eq=False)
class LabelledData:
    """Samples ``x`` (the model's input shape) with int64 labels ``y``."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.y) == 0:
            raise InputError(
                f"a data set needs matching, non-empty x and y ({len(self.x)}, {len(self.y)})"
            )


@dataclass(frozen=True)
class AttackResult:
    """One attack on one model. ``scores`` holds the per-sample scores (members, then
    non-members, in input order) when the game was asked to keep them."""

    attack: str
    params: Mapping[str, Any]
    metrics: AttackMetrics
    scores: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"params": dict(self.params), **self.metrics.to_dict()}
        if self.scores is not None:
            out["scores"] = {"members": list(self.scores[0]), "non_members": list(self.scores[1])}
        return out


@dataclass(frozen=True)
class ModelResult:
    """One model's accuracies (fractions) and every attack's metrics."""

    label: str
    accuracy_members: float
    accuracy_non_members: float
    attacks: tuple[AttackResult, ...]

    def attack(self, name: str) -> AttackMetrics:
        for result in self.attacks:
            if result.attack == name:
                return result.metrics
        raise InputError(f"attack {name!r} was not run on {self.label}")


@dataclass(frozen=True)
class GameResult:
    game: Game
    members: int
    non_members: int
    models: tuple[ModelResult, ...]
    reference: Mapping[str, Any] | None
    seed: int
    bootstrap: int
    fprs: tuple[float, ...]
    created: str | None
    model_bootstrap: int = 0

    def model(self, label: str) -> ModelResult:
        for result in self.models:
            if result.label == label:
                return result
        raise InputError(f"no model labelled {label!r} in this result")

    def to_json(self) -> dict[str, Any]:
        """The versioned document (``json.dumps``-ready; floats are plain JSON numbers)."""
        doc: dict[str, Any] = {
            "version": 1,
            "type": DOCUMENT_TYPE,
            "game": self.game,
            "members": self.members,
            "non_members": self.non_members,
            "fprs": list(self.fprs),
            "bootstrap": self.bootstrap,
            "model_bootstrap": self.model_bootstrap,
            "seed": self.seed,
            "reference_models": self.reference,
            "versions": library_versions(),
            "models": {
                m.label: {
                    "accuracy_members": m.accuracy_members,
                    "accuracy_non_members": m.accuracy_non_members,
                    "attacks": {a.attack: a.to_dict() for a in m.attacks},
                }
                for m in self.models
            },
        }
        if self.created is not None:
            doc["created"] = self.created
        return doc


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("prune-audit", "numpy", "scipy", "scikit-learn", "torch", "onnxruntime"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def run_game(
    models: Mapping[str, LogitsFn],
    members: LabelledData,
    non_members: LabelledData,
    *,
    attacks: Sequence[Attack],
    reference: ReferenceSet | None,
    game: Game = "members-vs-non-members",
    seed: int = 0,
    bootstrap: int = 1000,
    fprs: Sequence[float] = (0.01, 0.001),
    roc_points: int = 1000,
    model_bootstrap: int = 0,
    sample_scores: bool = False,
    now: datetime | None = None,
) -> GameResult:
    """Fit every attack once on ``reference``, score both sets against every model, measure.
    ``roc_points`` caps the ROC points kept per curve (see :func:`evaluate`).

    ``model_bootstrap`` (``R``): each reference-model attack is also refitted on ``R`` bootstrap
    draws of the reference models (seeded from ``seed``), and its intervals are the two-level
    bootstrap over those draws and the candidates (:func:`evaluate`). ``sample_scores`` keeps
    every sample's score in the result (a data subject's own record can then be examined).

    The bootstrap of each (model, attack) pair draws from its own generator, seeded from
    ``seed`` and the pair's position, so results do not depend on which attacks ran before."""
    if not models:
        raise InputError("the game needs at least one model")
    if not attacks:
        raise InputError("the game needs at least one attack")
    _check_disjoint(members, non_members)
    for attack in attacks:
        attack.fit(reference=reference)
    if model_bootstrap < 0 or (model_bootstrap > 0 and model_bootstrap > bootstrap):
        raise InputError("model_bootstrap must lie in [0, bootstrap]")
    draws = _model_draws(reference, model_bootstrap, seed)
    replicas = [
        [a.resampled(rows) for rows in draws] if a.uses_reference_models else [] for a in attacks
    ]
    seeds = np.random.SeedSequence(seed).spawn(len(models) * len(attacks))
    results = []
    for i, (label, model) in enumerate(models.items()):
        lm = as_logits(model, members.x, members.y)
        ln = as_logits(model, non_members.x, non_members.y)
        per_attack = []
        cm, cn = _Cached(model, members.x, lm), _Cached(model, non_members.x, ln)
        for j, attack in enumerate(attacks):
            pos = attack.score(cm, members.x, members.y)
            neg = attack.score(cn, non_members.x, non_members.y)
            reps = [
                (r.score(cm, members.x, members.y), r.score(cn, non_members.x, non_members.y))
                for r in replicas[j]
            ]
            metrics = evaluate(
                pos,
                neg,
                fprs=fprs,
                bootstrap=bootstrap,
                rng=np.random.default_rng(seeds[i * len(attacks) + j]),
                roc_points=roc_points,
                replicates=reps,
            )
            kept = (tuple(map(float, pos)), tuple(map(float, neg))) if sample_scores else None
            per_attack.append(AttackResult(attack.name, attack.params(), metrics, kept))
        results.append(
            ModelResult(
                label,
                float((lm.argmax(1) == members.y).mean()),
                float((ln.argmax(1) == non_members.y).mean()),
                tuple(per_attack),
            )
        )
    return GameResult(
        game=game,
        members=len(members.y),
        non_members=len(non_members.y),
        models=tuple(results),
        reference=reference.describe() if reference is not None else None,
        seed=seed,
        bootstrap=bootstrap,
        fprs=tuple(fprs),
        created=now.isoformat() if now is not None else None,
        model_bootstrap=len(draws),
    )


def _model_draws(reference: ReferenceSet | None, count: int, seed: int) -> list[NDArray[np.intp]]:
    """``count`` bootstrap draws (with repetition) of the reference models' indices."""
    if reference is None or count == 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    return [rng.integers(0, reference.count, reference.count) for _ in range(count)]


class _Cached:
    """A logits function that answers the already-computed query from memory (each model is
    run once per set, however many attacks read it) and forwards any other query."""

    def __init__(self, model: LogitsFn, x: NDArray[np.float32], logits: NDArray[Any]) -> None:
        self._model, self._x, self._logits = model, x, logits

    def __call__(self, x: NDArray[np.float32]) -> NDArray[Any]:
        if x is self._x:
            return self._logits
        return self._model(x)


def _check_disjoint(a: LabelledData, b: LabelledData) -> None:
    if set(row_keys(a.x)) & set(row_keys(b.x)):
        raise InputError("the member and non-member sets share samples; they must be disjoint")
