"""The auditor's reference models, trained in parallel, and who was IN which model.

Threat assumption: the auditor's reference data is drawn from the same distribution as the
target's training data and is *disjoint* from it and from every candidate being scored (members,
non-members, forget set). Reference models are therefore OUT for every candidate, which is what
offline attacks need. For online attacks the candidates are handed to the auditor, so each
reference model also trains on a random half of them (IN) — see :func:`train_reference_models`.

Membership is balanced as in Carlini et al.'s LiRA code: with ``K >= 2`` models, every example
(reference or candidate) is IN for exactly ``K // 2`` models; with ``K = 1`` it is IN with
probability 1/2. Scoring a sample that is in the reference data is refused, since every reference
model's view of it is then contaminated.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from torch import nn

from audit.errors import InputError
from audit.mia._arch import Architecture, module_from_state
from audit.mia._execution import BACKENDS, TrainingJob, make_backend, reference_tasks
from audit.mia._signals import as_logits
from audit.mia._train import TrainedWeights, TrainingRecipe, torch_logits_fn

__all__ = [
    "BACKENDS",
    "ReferenceSet",
    "balanced_membership",
    "cap_training_sets",
    "reference_job",
    "reference_set",
    "row_keys",
    "train_reference_models",
]


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """Trained reference models with the data they were drawn from.

    Invariants: ``in_reference`` is ``[K, len(x)]``; ``in_candidates`` is
    ``[K, len(candidates_x)]`` (zero columns for an offline set); ``models`` has ``K`` entries,
    model ``k`` trained on exactly ``x[in_reference[k]]`` plus
    ``candidates_x[in_candidates[k]]``."""

    architecture: Architecture
    recipe: TrainingRecipe
    seed: int
    x: NDArray[np.float32]
    y: NDArray[np.int64]
    in_reference: NDArray[np.bool_]
    candidates_x: NDArray[np.float32]
    candidates_y: NDArray[np.int64]
    in_candidates: NDArray[np.bool_]
    models: tuple[nn.Module, ...]
    train_accuracy: tuple[float, ...]
    backend: str
    parent: ReferenceSet | None = None
    rows: tuple[int, ...] = ()
    _keys: dict[bytes, tuple[str, int]] = field(default_factory=dict, repr=False)
    _cache: dict[bytes, NDArray[np.float64]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        k = len(self.models)
        if k == 0:
            raise InputError("a reference set needs at least one model")
        if self.in_reference.shape != (k, len(self.x)):
            raise InputError("reference membership does not match the reference data")
        if self.in_candidates.shape != (k, len(self.candidates_x)):
            raise InputError("candidate membership does not match the candidates")
        for i, key in enumerate(row_keys(self.x, self.y)):
            self._keys[key] = ("reference", i)
        for i, key in enumerate(row_keys(self.candidates_x, self.candidates_y)):
            self._keys.setdefault(key, ("candidate", i))

    @property
    def count(self) -> int:
        return len(self.models)

    @property
    def online(self) -> bool:
        """Whether the models were also trained on (halves of) the candidates."""
        return len(self.candidates_x) > 0

    def logits(self, x: NDArray[np.float32], y: NDArray[np.int64]) -> NDArray[np.float64]:
        """Every reference model's logits on ``x``: ``[K, N, C]`` float64. Queried in fixed-size
        chunks (bit-for-bit independent of the other rows of ``x``) and remembered for the last
        few ``x``, so model-bootstrap replicates do not run the models again."""
        if self.parent is not None:
            return self.parent.logits(x, y)[list(self.rows)]
        arr = np.ascontiguousarray(x, dtype=np.float32)
        key = hashlib.blake2b(
            repr(arr.shape).encode() + arr.tobytes() + np.asarray(y, "<i8").tobytes(),
            digest_size=16,
        ).digest()
        if key not in self._cache:
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = np.stack([as_logits(torch_logits_fn(m), x, y) for m in self.models])
        return self._cache[key]

    def resample(self, rows: NDArray[np.intp]) -> ReferenceSet:
        """The set of models ``rows`` (with repetition: a bootstrap draw over reference models),
        sharing this set's data and logits. ``parent`` is this set."""
        if len(rows) == 0 or rows.min() < 0 or rows.max() >= self.count:
            raise InputError("a resample needs model indices within the reference set")
        base = self.parent if self.parent is not None else self
        picked = [self.rows[r] for r in rows] if self.parent is not None else list(rows)
        return ReferenceSet(
            architecture=self.architecture,
            recipe=self.recipe,
            seed=self.seed,
            x=self.x,
            y=self.y,
            in_reference=base.in_reference[picked],
            candidates_x=self.candidates_x,
            candidates_y=self.candidates_y,
            in_candidates=base.in_candidates[picked],
            models=tuple(base.models[r] for r in picked),
            train_accuracy=tuple(base.train_accuracy[r] for r in picked),
            backend=self.backend,
            parent=base,
            rows=tuple(int(r) for r in picked),
        )

    def membership(self, x: NDArray[np.float32], y: NDArray[np.int64]) -> NDArray[np.bool_]:
        """``[K, N]``: True where reference model ``k`` trained on sample ``n``.

        Samples found among the candidates take their recorded membership; unknown samples are
        OUT everywhere. A sample that is part of the reference data raises: the auditor's
        reference data must be disjoint from what it scores."""
        out = np.zeros((self.count, len(x)), dtype=bool)
        for n, key in enumerate(row_keys(x, y)):
            where = self._keys.get(key)
            if where is None:
                continue
            kind, i = where
            if kind == "reference":
                raise InputError(
                    "a scored sample is also in the reference data; the reference data must be "
                    "disjoint from the members, non-members and forget set"
                )
            out[:, n] = self.in_candidates[:, i]
        return out

    def describe(self) -> dict[str, Any]:
        """The facts a report must state: count, architecture, recipe, seed, data sizes."""
        return {
            "models": self.count,
            "architecture": self.architecture.describe(),
            "architecture_source": self.architecture.source,
            "online": self.online,
            "reference_size": len(self.x),
            "candidates_size": len(self.candidates_x),
            "train_sizes": [
                int(a + b)
                for a, b in zip(
                    self.in_reference.sum(axis=1), self.in_candidates.sum(axis=1), strict=True
                )
            ],
            "epochs": self.recipe.epochs,
            "batch_size": self.recipe.batch_size,
            "lr": self.recipe.lr,
            "weight_decay": self.recipe.weight_decay,
            "recipe": self.recipe.describe(),
            "seed": self.seed,
            "backend": self.backend,
            "train_accuracy": [round(a, 6) for a in self.train_accuracy],
        }


_CACHE_ENTRIES = 8


def row_keys(x: NDArray[np.float32], y: NDArray[np.int64] | None = None) -> Iterator[bytes]:
    """A 128-bit digest per sample (of its float32 bytes, and its label when given)."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), int(np.prod(x.shape[1:])))
    labels = np.asarray(y if y is not None else np.zeros(len(x)), dtype="<i8")
    for row, label in zip(flat, labels, strict=True):
        tail = label.tobytes() if y is not None else b""
        yield hashlib.blake2b(row.tobytes() + tail, digest_size=16).digest()


def balanced_membership(count: int, n: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """``[count, n]`` IN-mask: each column has exactly ``count // 2`` True for ``count >= 2``;
    for ``count == 1`` each sample is IN with probability 1/2."""
    if count == 1:
        return rng.random((1, n)) < 0.5
    order = rng.random((count, n)).argsort(axis=0)
    mask: NDArray[np.bool_] = order < count // 2
    return mask


def cap_training_sets(
    in_ref: NDArray[np.bool_],
    candidates_in: NDArray[np.int64],
    train_size: int,
    rng: np.random.Generator,
) -> NDArray[np.bool_]:
    """Drop random reference samples from each model's IN set until IN reference + IN
    candidates <= ``train_size`` (when the candidates alone exceed it, no reference sample is
    left: the model trains on its candidate half)."""
    out = in_ref.copy()
    for k in range(len(out)):
        inside = np.flatnonzero(out[k])
        keep = max(train_size - int(candidates_in[k]), 0)
        if len(inside) > keep:
            out[k, rng.permutation(inside)[keep:]] = False
    return out


def train_reference_models(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    architecture: Architecture,
    count: int,
    recipe: TrainingRecipe,
    seed: int,
    candidates: tuple[NDArray[np.float32], NDArray[np.int64]] | None = None,
    train_size: int | None = None,
    jobs: int = 1,
    backend: str = "local",
    address: str | None = None,
    device: str = "cpu",
    threads: int = 1,
    progress: bool = False,
) -> ReferenceSet:
    """Train ``count`` reference models, model ``k`` on a balanced random half of the reference
    data (plus, when ``candidates`` is given, a balanced random half of the candidates: online).

    ``train_size`` caps each model's training set (reference + candidate samples) at the
    target's training-set size: reference samples are dropped at random from a model's half
    until it fits (online models then train on as many samples as offline ones, not on half the
    reference data *plus* half the candidates). ``None`` keeps the halves as drawn.

    Deterministic for a given ``seed`` whatever ``jobs``/``backend`` (bit for bit on CPUs):
    membership comes from ``numpy.random.default_rng(seed)``, model ``k``'s torch seed from
    ``SeedSequence(seed)``. ``threads`` bounds torch's threads per model: small MLPs train fastest
    on one thread, and parallelism comes from ``jobs`` or the cluster. ``backend``/``address``
    choose where the models train (:mod:`audit.mia._execution`), ``device`` on what."""
    runner = make_backend(backend)
    job = reference_job(
        x,
        y,
        architecture=architecture,
        count=count,
        recipe=recipe,
        seed=seed,
        candidates=candidates,
        train_size=train_size,
        device=device,
        threads=threads,
    )
    with contextlib.ExitStack() as stack:
        tick: Callable[[int, object], None] = lambda k, result: None  # noqa: E731
        if progress:
            from tqdm import tqdm

            bar = stack.enter_context(tqdm(total=count, desc="reference models", unit="model"))
            tick = lambda k, result: bar.update(1)  # noqa: E731
        done = runner.map(reference_tasks(job), jobs=jobs, address=address, on_result=tick)
    return reference_set(job, done, seed=seed, backend=backend)


def reference_job(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    *,
    architecture: Architecture,
    count: int,
    recipe: TrainingRecipe,
    seed: int,
    candidates: tuple[NDArray[np.float32], NDArray[np.int64]] | None = None,
    train_size: int | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> TrainingJob:
    """What :func:`train_reference_models` sends to the workers: memberships and seeds drawn
    from ``seed`` (its arguments, without the choice of backend)."""
    if count < 1:
        raise InputError("at least one reference model is needed")
    if len(x) < 2:
        raise InputError("the reference data needs at least two samples")
    rng = np.random.default_rng(seed)
    cx, cy = candidates if candidates is not None else (x[:0], y[:0])
    in_ref = balanced_membership(count, len(x), rng)
    in_cand = balanced_membership(count, len(cx), rng)
    if train_size is not None:
        if train_size < 1:
            raise InputError("the reference models' training-set size must be positive")
        in_ref = cap_training_sets(in_ref, in_cand.sum(axis=1), train_size, rng)
    seeds = tuple(int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(count))
    return TrainingJob(
        architecture=architecture,
        recipe=recipe,
        x=x,
        y=y,
        candidates_x=cx,
        candidates_y=cy,
        in_reference=in_ref,
        in_candidates=in_cand,
        seeds=seeds,
        threads=threads,
        device=device,
    )


def reference_set(
    job: TrainingJob, trained: Sequence[TrainedWeights], *, seed: int, backend: str
) -> ReferenceSet:
    """The reference set of ``job`` (drawn from ``seed``), ``trained[k]`` being its model ``k``
    as a backend returned it."""
    if [t.index for t in trained] != list(range(job.count)):
        raise InputError("the trained models do not match the job's reference models")
    return ReferenceSet(
        architecture=job.architecture,
        recipe=job.recipe,
        seed=seed,
        x=job.x,
        y=job.y,
        in_reference=job.in_reference,
        candidates_x=job.candidates_x,
        candidates_y=job.candidates_y,
        in_candidates=job.in_candidates,
        models=tuple(module_from_state(job.architecture, r.state) for r in trained),
        train_accuracy=tuple(r.train_accuracy for r in trained),
        backend=backend,
    )
