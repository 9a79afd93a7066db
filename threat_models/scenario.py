"""The seeded world every adversary starts from: the owner's trained model and data, its real
keys, a deletion request, the honest PRUNE run and its signed proof, and what the auditor holds.

One scenario is built per seed and shared by all adversaries (each copies what it changes).

* **Owner.** A digits ReLU MLP trained exactly as ``prune train`` does (``prune.train``, same
  defaults) on the training split *plus the auditor's planted canaries*; ``prune keygen`` keys;
  the honest proof is ``prune.unlearn.unlearn`` + ``prune.proofs.write_signed_proof`` (what
  ``prune unlearn --key`` does).
* **Deletion request.** ``forget`` ordinary training records drawn uniformly, plus every planted
  canary, in a random leaf order.
* **Auditor.** The owner's public key, the committed original model, the openings, the test
  split as reference data, the planted canaries and ``held_out_canaries`` twins that were never
  submitted (non-members for the membership check), and a nonce store of earlier audits.

Canaries (Jagielski et al. 2020; Steinke et al. 2023): uniform-noise images with uniformly
random labels, which a model can only predict by memorising them. Threat assumption: the owner
cannot tell canaries from other deletion requests (the auditor submits them through cooperating
data subjects), so it cannot treat them differently.

Time is a parameter: certificates are issued at ``now - issued_before`` and audited at ``now``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.data import Dataset, load_dataset, save_npz
from prune.errors import PruneError
from prune.proofs import generate_keys
from prune.train import DEFAULT_EPOCHS, DEFAULT_HIDDEN, TrainConfig, export_onnx, train
from prune.unlearn import DEFAULT_MARGIN, UnlearnResult, unlearn
from threat_models.errors import ScenarioError
from threat_models.proofs import write_proof

__all__ = ["Scenario", "ScenarioConfig", "build_scenario"]

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class ScenarioConfig:
    """What the scenario is made of. The defaults are ``prune train``'s for digits and the
    engine's defaults for ``prune unlearn``."""

    hidden: tuple[int, ...] = DEFAULT_HIDDEN["digits"]
    epochs: int = DEFAULT_EPOCHS["digits"]
    forget: int = 8
    canaries: int = 8
    held_out_canaries: int = 200
    margin: float = DEFAULT_MARGIN
    issued_before: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.forget < 2 or self.canaries < 1 or self.held_out_canaries < 1:
            raise ScenarioError(
                "a scenario needs at least 2 ordinary forget records, 1 canary and 1 held-out "
                "canary"
            )
        if self.epochs < 1 or not self.hidden or min(self.hidden) < 1:
            raise ScenarioError("the model needs at least one epoch and positive hidden widths")
        if not self.margin > 0 or self.issued_before <= timedelta(0):
            raise ScenarioError("the margin and the certificate age must be positive")

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["hidden"] = list(self.hidden)
        doc["issued_before_seconds"] = self.issued_before.total_seconds()
        del doc["issued_before"]
        return doc


@dataclass(frozen=True, eq=False)
class Scenario:
    """Everything built for one seed (paths under ``root``; arrays in memory).

    ``forget_rows`` are training rows in leaf order; ``canary_leaves`` the leaves that are
    planted canaries; ``honest`` the engine's result behind the honest proof ``honest_proof``."""

    seed: int
    root: Path
    config: ScenarioConfig
    now: datetime
    x_train: F32
    y_train: I64
    x_test: F32
    y_test: I64
    forget_rows: I64
    canary_leaves: I64
    held_out_x: F32
    held_out_y: I64
    honest: UnlearnResult

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def original(self) -> Path:
        return self.work / "model.onnx"

    @property
    def train_npz(self) -> Path:
        return self.work / "train.npz"

    @property
    def reference(self) -> Path:
        return self.work / "test.npz"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def private_key(self) -> Path:
        return self.keys / "owner.key"

    @property
    def public_key(self) -> Path:
        return self.keys / "owner.pub"

    @property
    def honest_proof(self) -> Path:
        return self.root / "honest-proof"

    @property
    def issued(self) -> datetime:
        """When the owner's certificates are issued."""
        return self.now - self.config.issued_before

    @property
    def original_bytes(self) -> bytes:
        return self.original.read_bytes()

    @property
    def canary_x(self) -> F32:
        return np.asarray(self.honest.forget_x[self.canary_leaves], dtype=np.float32)

    @property
    def canary_y(self) -> I64:
        return np.asarray(self.honest.forget_y[self.canary_leaves], dtype=np.int64)

    def ordinary_leaves(self) -> I64:
        """Leaves of the forget set that are real data subjects (not canaries)."""
        mask = np.ones(len(self.forget_rows), dtype=bool)
        mask[self.canary_leaves] = False
        return np.flatnonzero(mask).astype(np.int64)

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator for one named purpose, derived from the seed (adversaries draw their own
        choices from it, so that each is reproducible on its own)."""
        salt = int.from_bytes(purpose.encode()[:8].ljust(8, b"\0"), "little")
        return np.random.default_rng([self.seed, salt])


def _canaries(
    rng: np.random.Generator, count: int, shape: tuple[int, ...], classes: int
) -> tuple[F32, I64]:
    x = rng.random((count, *shape), dtype=np.float32)
    y = rng.integers(0, classes, size=count).astype(np.int64)
    return x, y


def _train_owner_model(
    data: Dataset, config: ScenarioConfig, seed: int, out: Path
) -> tuple[F32, I64, F32, I64]:
    """``prune train --dataset digits --arch mlp`` on the given data (which includes the
    canaries): writes out/model.onnx, train.npz, test.npz, train.json."""
    model, result = train(
        data, TrainConfig(arch="mlp", hidden=config.hidden, epochs=config.epochs, seed=seed)
    )
    out.mkdir(parents=True)
    export_onnx(model, out / "model.onnx", input_shape=result.input_shape)
    x_tr = data.x_train.reshape(len(data.x_train), -1)
    x_te = data.x_test.reshape(len(data.x_test), -1)
    save_npz(out / "train.npz", x_tr, data.y_train)
    save_npz(out / "test.npz", x_te, data.y_test)
    doc = {"version": 1, **dataclasses.asdict(result)}
    (out / "train.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return x_tr, data.y_train, x_te, data.y_test


def build_scenario(
    root: Path, *, seed: int, now: datetime, config: ScenarioConfig | None = None
) -> Scenario:
    """Train, key, request, unlearn honestly and sign, under ``root`` (which must not exist)."""
    config = config or ScenarioConfig()
    if now.tzinfo is None:
        raise ScenarioError("the scenario time must be timezone-aware")
    if root.exists():
        raise ScenarioError(f"scenario folder {root} already exists")
    rng = np.random.default_rng([seed, 0x5CE4A])
    digits = load_dataset("digits", seed=seed)
    shape = digits.image_shape
    planted_x, planted_y = _canaries(rng, config.canaries, shape, digits.classes)
    held_x, held_y = _canaries(rng, config.held_out_canaries, shape, digits.classes)
    x_all = np.concatenate([digits.x_train, planted_x])
    y_all = np.concatenate([digits.y_train, planted_y]).astype(np.int64)
    order = rng.permutation(len(x_all))
    data = dataclasses.replace(digits, x_train=x_all[order], y_train=y_all[order])
    canary_rows = np.flatnonzero(order >= len(digits.x_train))
    ordinary = rng.choice(np.flatnonzero(order < len(digits.x_train)), config.forget, replace=False)
    forget_rows = rng.permutation(np.concatenate([ordinary, canary_rows])).astype(np.int64)
    canary_leaves = np.flatnonzero(np.isin(forget_rows, canary_rows)).astype(np.int64)

    root.mkdir(parents=True)
    x_tr, y_tr, x_te, y_te = _train_owner_model(data, config, seed, root / "work")
    generate_keys(root / "keys")
    original = (root / "work" / "model.onnx").read_bytes()
    try:
        honest = unlearn(
            original,
            x_tr,
            y_tr,
            forget_indices=forget_rows,
            x_test=x_te,
            y_test=y_te,
            margin=config.margin,
            seed=seed,
        )
    except PruneError as exc:
        raise ScenarioError(f"the honest unlearning run failed: {exc}") from exc
    if not honest.complete:
        raise ScenarioError(
            f"the honest run left {len(honest.failed)} forget points uncertified; the scenario "
            "needs a complete honest proof"
        )
    scenario = Scenario(
        seed=seed,
        root=root,
        config=config,
        now=now,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        forget_rows=forget_rows,
        canary_leaves=canary_leaves,
        held_out_x=held_x.reshape(len(held_x), -1),
        held_out_y=held_y,
        honest=honest,
    )
    write_proof(
        scenario.honest_proof,
        result=honest,
        original=original,
        key=scenario.private_key,
        created=scenario.issued,
    )
    return scenario
