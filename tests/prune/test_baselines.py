"""Baseline unlearning methods on a tiny digits MLP: each one runs, moves forget accuracy the
expected way, and keeps the invariant its docstring states."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import nn

from prune.baselines import (
    UNLEARNING_METHODS,
    Amnesiac,
    AmnesiacModel,
    Retrain,
    Sisa,
    SisaEnsemble,
    TrainRecipe,
    UnlearningMethod,
    UpdateLog,
    check_forget,
    fit,
    predict_logits,
    recipe_for,
)
from prune.data import Dataset, load_dataset
from prune.errors import DataError
from prune.train import TrainConfig, model_input, train

CLASS = 3


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, and the suite shares two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def recipe(digits: Dataset) -> TrainRecipe:
    return recipe_for(digits, TrainConfig(arch="mlp", hidden=(32,), epochs=20, seed=0))


@pytest.fixture(scope="module")
def xy(digits: Dataset) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    return model_input("mlp", digits.x_train), digits.y_train


@pytest.fixture(scope="module")
def original(recipe: TrainRecipe, xy: tuple[NDArray[np.float32], NDArray[np.int64]]) -> nn.Module:
    return fit(recipe, *xy)


def _accuracy(model: nn.Module, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    return float((predict_logits(model, x).argmax(1) == y).mean())


def _params(model: nn.Module) -> torch.Tensor:
    return nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def _make(name: str, recipe: TrainRecipe) -> UnlearningMethod:
    cls = UNLEARNING_METHODS[name]
    return Retrain(recipe=recipe) if cls is Retrain else cls()


def test_fit_replays_prune_train_bit_for_bit(digits: Dataset, recipe: TrainRecipe) -> None:
    reference, _ = train(digits, recipe.config)
    ours = fit(recipe, model_input("mlp", digits.x_train), digits.y_train)
    assert torch.equal(_params(reference), _params(ours))


def test_fit_leaves_the_global_rng_alone(
    recipe: TrainRecipe, xy: tuple[NDArray[np.float32], NDArray[np.int64]]
) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(recipe, xy[0][:50], xy[1][:50])
    assert torch.equal(torch.rand(3), expected)


def test_registry_holds_every_method_as_a_frozen_keyword_only_dataclass() -> None:
    assert set(UNLEARNING_METHODS) == {
        "retrain",
        "finetune",
        "neggrad",
        "neggrad+",
        "random-labels",
        "amnesiac",
        "sisa",
    }
    for name, cls in UNLEARNING_METHODS.items():
        assert cls.name == name
        assert dataclasses.is_dataclass(cls)
        assert getattr(cls, "__dataclass_params__").frozen  # noqa: B009
        assert all(f.kw_only for f in dataclasses.fields(cls))
        with pytest.raises(TypeError):
            cls(1)


@pytest.mark.parametrize("bad", [[], [0, 0], [-1], [10_000]])
def test_malformed_forget_requests_are_rejected(bad: list[int]) -> None:
    with pytest.raises(DataError):
        check_forget(np.array(bad, dtype=np.int64), 100)


def test_forgetting_everything_is_rejected() -> None:
    with pytest.raises(DataError, match="nothing would remain"):
        check_forget(np.arange(5, dtype=np.int64), 5)


def test_retrain_never_sees_the_forget_points(
    recipe: TrainRecipe, xy: tuple[NDArray[np.float32], NDArray[np.int64]], original: nn.Module
) -> None:
    x, y = xy
    forget = np.flatnonzero(y == CLASS)
    method = Retrain(recipe=recipe, seed=0)
    gen = torch.Generator().manual_seed(0)
    clean = method.unlearn(original, x, y, forget, generator=gen)
    poisoned_x = x.copy()
    poisoned_x[forget] = np.random.default_rng(0).random(poisoned_x[forget].shape)
    poisoned_y = y.copy()
    poisoned_y[forget] = (y[forget] + 1) % 10
    poisoned = method.unlearn(original, poisoned_x, poisoned_y, forget, generator=gen)
    assert torch.equal(_params(clean), _params(poisoned))
    keep = np.flatnonzero(y != CLASS)
    assert torch.equal(_params(clean), _params(fit(recipe, x[keep], y[keep], seed=0)))


@pytest.mark.parametrize(
    ("name", "max_ratio"),
    [
        ("retrain", 0.05),
        ("finetune", 1.0),
        ("neggrad", 1.0),
        ("neggrad+", 0.7),
        ("random-labels", 0.7),
        ("amnesiac", 0.7),
        ("sisa", 0.05),
    ],
)
def test_class_unlearning_lowers_forget_accuracy(
    name: str,
    max_ratio: float,
    recipe: TrainRecipe,
    xy: tuple[NDArray[np.float32], NDArray[np.int64]],
    original: nn.Module,
) -> None:
    x, y = xy
    forget = np.flatnonzero(y == CLASS)
    method = _make(name, recipe)
    model = original if name not in ("amnesiac", "sisa") else method.prepare(x, y, recipe=recipe)
    before_params = _params(model)
    before = _accuracy(model, x[forget], y[forget])
    after_model = method.unlearn(model, x, y, forget, generator=torch.Generator().manual_seed(1))
    after = _accuracy(after_model, x[forget], y[forget])
    assert before > (0.5 if name == "sisa" else 0.9)  # SISA members see 1/S of the data
    assert after <= before * max_ratio
    assert torch.equal(_params(model), before_params), "the model passed in was modified"


def test_sisa_retrains_only_the_shards_that_held_a_forget_point(
    recipe: TrainRecipe, xy: tuple[NDArray[np.float32], NDArray[np.int64]]
) -> None:
    x, y = xy
    sisa = Sisa(shards=4)
    ensemble = sisa.prepare(x, y, recipe=recipe)
    assert isinstance(ensemble, SisaEnsemble)
    rows = ensemble.shard_rows
    assert sorted(np.concatenate(rows).tolist()) == list(range(len(x)))
    forget = np.concatenate([rows[1][:3], rows[3][:2]])
    out = sisa.unlearn(ensemble, x, y, forget, generator=torch.Generator())
    assert isinstance(out, SisaEnsemble)
    assert out.retrain_counts == (0, 1, 0, 1)
    for s in (0, 2):
        assert torch.equal(_params(out.members[s]), _params(ensemble.members[s]))
    kept = rows[1][3:]
    assert out.shard_rows[1].tolist() == kept.tolist()
    exact = fit(recipe, x[kept], y[kept], seed=ensemble.seeds[1])
    assert torch.equal(_params(out.members[1]), _params(exact))
    again = sisa.unlearn(out, x, y, rows[1][3:4], generator=torch.Generator())
    assert isinstance(again, SisaEnsemble) and again.retrain_counts == (0, 2, 0, 1)


def test_sisa_ensemble_averages_member_probabilities(
    recipe: TrainRecipe, xy: tuple[NDArray[np.float32], NDArray[np.int64]]
) -> None:
    x, y = xy
    ensemble = Sisa(shards=3).prepare(x, y, recipe=recipe)
    assert isinstance(ensemble, SisaEnsemble)
    probs = np.mean(
        [
            torch.softmax(torch.from_numpy(predict_logits(m, x[:20])), 1).numpy()
            for m in ensemble.members
        ],
        axis=0,
    )
    np.testing.assert_allclose(np.exp(predict_logits(ensemble, x[:20])), probs, rtol=1e-5)


def test_update_log_sums_steps_like_a_naive_loop(
    recipe: TrainRecipe, xy: tuple[NDArray[np.float32], NDArray[np.int64]], tmp_path: Path
) -> None:
    x, y = xy
    small = dataclasses.replace(recipe, config=dataclasses.replace(recipe.config, epochs=2))
    memory = Amnesiac().prepare(x, y, recipe=small)
    on_disk = Amnesiac(log_dir=tmp_path / "log").prepare(x, y, recipe=small)
    assert isinstance(memory, AmnesiacModel) and isinstance(on_disk, AmnesiacModel)
    steps_per_epoch = -(-len(x) // small.config.batch_size)
    assert memory.log.steps == 2 * steps_per_epoch
    assert memory.log.nbytes == memory.log.steps * sum(p.numel() for p in memory.parameters()) * 4
    reopened = UpdateLog.open(tmp_path / "log")
    forget = np.array([5, 17, 400], dtype=np.int64)
    steps = memory.log.steps_touching(forget, len(x))
    assert np.array_equal(steps, reopened.steps_touching(forget, len(x)))
    assert 0 < len(steps) <= 2 * len(forget)
    torch.testing.assert_close(memory.log.sum_of(steps), reopened.sum_of(steps))


def test_amnesiac_undoing_every_step_returns_to_the_initialisation(
    recipe: TrainRecipe, xy: tuple[NDArray[np.float32], NDArray[np.int64]]
) -> None:
    x, y = xy
    small = dataclasses.replace(recipe, config=dataclasses.replace(recipe.config, epochs=2))
    model = Amnesiac().prepare(x, y, recipe=small)
    assert isinstance(model, AmnesiacModel)
    everyone_but_one = np.arange(len(x) - 1, dtype=np.int64)
    out = Amnesiac(repair_epochs=0).unlearn(
        model, x, y, everyone_but_one, generator=torch.Generator()
    )
    assert isinstance(out, AmnesiacModel)
    assert out.undone == frozenset(range(model.log.steps))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(small.config.seed)
        init = small.build()
    torch.testing.assert_close(_params(out), _params(init), atol=1e-5, rtol=0)
    again = Amnesiac(repair_epochs=0).unlearn(
        out, x, y, np.array([len(x) - 1]), generator=torch.Generator()
    )
    assert torch.equal(_params(again), _params(out)), "steps must be undone at most once"
