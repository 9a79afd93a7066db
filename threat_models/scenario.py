"""The seeded world every adversary starts from: the owner's trained model and data, its real
keys, a deletion request, the honest PRUNE run and its signed proof, and what the auditor holds.

One scenario is built per seed and shared by all adversaries (each copies what it changes).
A *setting* is a data set (``digits``, ``fashion-mnist``), an architecture (``mlp``, ``cnn``) and
a deletion mode (``sample``, ``class``): :meth:`ScenarioConfig.setting`.

* **Owner.** A ReLU MLP or CNN trained exactly as ``prune train`` does (``prune.train``, same
  recipe and epochs; Fashion-MNIST on seeded 6,000-image training and 1,000-image test subsets,
  to keep the matrix cheap - the configuration, recorded in the matrix JSON, says so) on the
  training split *plus the
  auditor's planted canaries*; ``prune keygen`` keys; the honest proof is
  ``prune.unlearn.unlearn`` + ``prune.proofs.write_signed_proof`` (what ``prune unlearn --key``
  does).
* **Deletion request.** Sample mode: ``forget`` ordinary training records drawn uniformly, plus
  every planted canary, in a random leaf order. Class mode: ``prune unlearn --forget-class K``
  in the default ``suppress`` mode, ``K`` drawn from the seed; the canaries are planted with
  label ``K`` (so they are part of the deleted class) and the held-out canaries carry ``K`` too;
  ``control_canaries`` noise records with other labels stay in the training data, so that the
  model must memorise each canary rather than learn "noise is ``K``".
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
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from prune.data import Dataset, load_dataset, save_npz
from prune.errors import PruneError
from prune.proofs import generate_keys
from prune.train import (
    DEFAULT_EPOCHS,
    DEFAULT_HIDDEN,
    TrainConfig,
    export_onnx,
    model_input,
    train,
)
from prune.unlearn import DEFAULT_MARGIN, UnlearnResult, unlearn
from threat_models.errors import ScenarioError
from threat_models.proofs import write_proof

__all__ = ["MODES", "Mode", "Scenario", "ScenarioConfig", "build_scenario"]

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]
DatasetName = Literal["digits", "fashion-mnist"]
Arch = Literal["mlp", "cnn"]
Mode = Literal["sample", "class"]
MODES: tuple[Mode, ...] = get_args(Mode)

_CHEAP_FASHION: dict[str, Any] = {"train_subset": 6000, "test_subset": 1000}
"""Fashion-MNIST in the matrix: a seeded 6,000-image training subset and 1,000 test images (the
auditor's reference data), trained with ``prune train``'s recipe (12 epochs; ``prune train``
takes all 60,000 images): the soundness matrix needs a real Fashion-MNIST model, not the best
one, and 12 epochs are what makes the canaries memorised (measured: 4 epochs of the MLP leave
some canaries at p(y) < 0.2)."""


@dataclass(frozen=True, kw_only=True)
class ScenarioConfig:
    """What the scenario is made of. The defaults are ``prune train``'s for digits MLP and the
    engine's defaults for ``prune unlearn``; :meth:`setting` gives the matrix's configuration
    of each (data set, architecture, mode). ``hidden``/``epochs`` default to ``prune train``'s
    for the data set; ``train_subset``/``test_subset`` (``None``: the whole split) draw a seeded
    subset; ``forget_class`` (class mode) is drawn from the seed when ``None``."""

    dataset: DatasetName = "digits"
    arch: Arch = "mlp"
    mode: Mode = "sample"
    hidden: tuple[int, ...] | None = None
    epochs: int | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    forget: int = 8
    forget_class: int | None = None
    canaries: int = 8
    held_out_canaries: int = 200
    control_canaries: int = 32
    """Class mode: noise records with random labels other than ``K``, planted and never
    deleted. Without them the ``K``-labelled canaries teach the model "noise is ``K``", a rule
    that held-out canaries share, and the canary check measures nothing individual."""
    margin: float = DEFAULT_MARGIN
    issued_before: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.dataset not in DEFAULT_HIDDEN or self.arch not in ("mlp", "cnn"):
            raise ScenarioError(f"unknown data set {self.dataset!r} or architecture {self.arch!r}")
        if self.mode not in MODES:
            raise ScenarioError(f"unknown mode {self.mode!r} (choose {', '.join(MODES)})")
        if self.hidden is None:
            object.__setattr__(self, "hidden", DEFAULT_HIDDEN[self.dataset])
        if self.epochs is None:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS[self.dataset])
        if self.forget < 2 or self.canaries < 1 or self.held_out_canaries < 1:
            raise ScenarioError(
                "a scenario needs at least 2 ordinary forget records, 1 canary and 1 held-out "
                "canary"
            )
        if self.train_epochs < 1 or not self.widths or min(self.widths) < 1:
            raise ScenarioError("the model needs at least one epoch and positive hidden widths")
        for subset in (self.train_subset, self.test_subset):
            if subset is not None and subset < 100:
                raise ScenarioError("a data subset needs at least 100 records")
        if self.forget_class is not None and (self.mode != "class" or self.forget_class < 0):
            raise ScenarioError("forget_class is a non-negative class, for class mode only")
        if not self.margin > 0 or self.issued_before <= timedelta(0):
            raise ScenarioError("the margin and the certificate age must be positive")

    @classmethod
    def setting(cls, dataset: DatasetName, arch: Arch, mode: Mode) -> ScenarioConfig:
        """The matrix's configuration of one setting: ``prune train``'s recipe, and for
        Fashion-MNIST the cheap subsets of ``_CHEAP_FASHION``."""
        if dataset == "fashion-mnist":
            return cls(dataset=dataset, arch=arch, mode=mode, **_CHEAP_FASHION)
        return cls(dataset=dataset, arch=arch, mode=mode)

    @property
    def name(self) -> str:
        """``<dataset>-<arch>-<mode>``, the setting's name (result file names use it)."""
        return f"{self.dataset}-{self.arch}-{self.mode}"

    @property
    def widths(self) -> tuple[int, ...]:
        assert self.hidden is not None  # set in __post_init__
        return self.hidden

    @property
    def train_epochs(self) -> int:
        assert self.epochs is not None  # set in __post_init__
        return self.epochs

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["hidden"] = list(self.widths)
        doc["issued_before_seconds"] = self.issued_before.total_seconds()
        doc["setting"] = self.name
        del doc["issued_before"]
        return doc


@dataclass(frozen=True, eq=False)
class Scenario:
    """Everything built for one seed (paths under ``root``; arrays in memory, ``x`` in the
    model's input shape).

    ``forget_rows`` are training rows in leaf order; ``canary_leaves`` the leaves that are
    planted canaries; ``honest`` the engine's result behind the honest proof ``honest_proof``;
    ``forget_class`` the deleted class (class mode) or ``None``."""

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
    forget_class: int | None = None
    image_shape: tuple[int, ...] = (1, 8, 8)
    """``(channels, height, width)`` of the data set's images."""

    @property
    def mode(self) -> Mode:
        return self.config.mode

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


def _subset(data: Dataset, config: ScenarioConfig, seed: int) -> Dataset:
    """The seeded training and test subsets of ``config`` (the data set itself without)."""
    rng = np.random.default_rng([seed, 0x5B5E7])
    x_tr, y_tr, x_te, y_te = data.x_train, data.y_train, data.x_test, data.y_test
    if config.train_subset is not None and config.train_subset < len(x_tr):
        keep = np.sort(rng.choice(len(x_tr), config.train_subset, replace=False))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    if config.test_subset is not None and config.test_subset < len(x_te):
        keep = np.sort(rng.choice(len(x_te), config.test_subset, replace=False))
        x_te, y_te = x_te[keep], y_te[keep]
    return dataclasses.replace(data, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)


def _train_owner_model(
    data: Dataset, config: ScenarioConfig, seed: int, out: Path
) -> tuple[F32, I64, F32, I64]:
    """``prune train --dataset D --arch A`` on the given data (which includes the canaries):
    writes out/model.onnx, train.npz, test.npz, train.json."""
    model, result = train(
        data,
        TrainConfig(arch=config.arch, hidden=config.widths, epochs=config.train_epochs, seed=seed),
    )
    out.mkdir(parents=True)
    export_onnx(model, out / "model.onnx", input_shape=result.input_shape)
    x_tr = model_input(config.arch, data.x_train)
    x_te = model_input(config.arch, data.x_test)
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
    try:
        loaded = _subset(load_dataset(config.dataset, seed=seed), config, seed)
    except PruneError as exc:
        raise ScenarioError(f"cannot load {config.dataset}: {exc}") from exc
    shape = loaded.image_shape
    forget_class: int | None = None
    if config.mode == "class":
        forget_class = config.forget_class
        if forget_class is None:
            forget_class = int(np.random.default_rng([seed, 0xC1A55]).integers(loaded.classes))
        if forget_class >= loaded.classes:
            raise ScenarioError(f"class {forget_class} is not a class of {config.dataset}")
    planted_x, planted_y = _canaries(rng, config.canaries, shape, loaded.classes)
    held_x, held_y = _canaries(rng, config.held_out_canaries, shape, loaded.classes)
    extra_x, extra_y = planted_x[:0], planted_y[:0]
    if forget_class is not None:  # the canaries belong to the deleted class
        planted_y[:] = forget_class
        held_y[:] = forget_class
        cx_rng = np.random.default_rng([seed, 0xC0471])
        extra_x, extra_y = _canaries(cx_rng, config.control_canaries, shape, loaded.classes - 1)
        extra_y = extra_y + (extra_y >= forget_class)  # any label but K
    x_all = np.concatenate([loaded.x_train, planted_x, extra_x])
    y_all = np.concatenate([loaded.y_train, planted_y, extra_y]).astype(np.int64)
    order = rng.permutation(len(x_all))
    data = dataclasses.replace(loaded, x_train=x_all[order], y_train=y_all[order])
    canary_rows = np.flatnonzero(
        (order >= len(loaded.x_train)) & (order < len(loaded.x_train) + len(planted_x))
    )
    if forget_class is None:
        ordinary = rng.choice(
            np.flatnonzero(order < len(loaded.x_train)), config.forget, replace=False
        )
        forget_rows = rng.permutation(np.concatenate([ordinary, canary_rows])).astype(np.int64)
    else:  # the engine's leaf order for a class: ascending training row
        forget_rows = np.flatnonzero(data.y_train == forget_class).astype(np.int64)
    canary_leaves = np.flatnonzero(np.isin(forget_rows, canary_rows)).astype(np.int64)

    root.mkdir(parents=True)
    x_tr, y_tr, x_te, y_te = _train_owner_model(data, config, seed, root / "work")
    generate_keys(root / "keys")
    original = (root / "work" / "model.onnx").read_bytes()
    request: dict[str, Any] = (
        {"forget_indices": forget_rows} if forget_class is None else {"forget_class": forget_class}
    )
    try:
        honest = unlearn(
            original,
            x_tr,
            y_tr,
            **request,
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
    if not np.array_equal(honest.forget_indices, forget_rows):
        raise ScenarioError("the engine's leaf order is not the scenario's")
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
        held_out_x=model_input(config.arch, held_x),
        held_out_y=held_y,
        honest=honest,
        forget_class=forget_class,
        image_shape=shape,
    )
    write_proof(
        scenario.honest_proof,
        result=honest,
        original=original,
        key=scenario.private_key,
        created=scenario.issued,
    )
    return scenario
