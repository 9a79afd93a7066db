"""Intervals that include the reference models' variance (two-level bootstrap), reference-model
resampling, the training-set size cap and the owner's recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit.errors import InputError
from audit.mia import (
    Architecture,
    LiraAttack,
    TrainingRecipe,
    evaluate,
    read_train_json,
    train_reference_models,
)
from tests.audit.test_mia_attacks import _references
from tests.audit.test_mia_support import digits_split, overfit_target


def test_identical_replicates_give_the_candidates_interval_and_differing_ones_widen_it() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.2, 1, 80), rng.normal(0, 1, 300)
    plain = evaluate(pos, neg, bootstrap=200, rng=np.random.default_rng(1))
    same = evaluate(
        pos, neg, bootstrap=200, rng=np.random.default_rng(1), replicates=[(pos, neg)] * 5
    )
    assert same.auc == plain.auc and same.model_bootstrap == 5 and plain.model_bootstrap == 0
    # replicates whose reference models shift one side: the interval must take them in
    shifted = [(pos + d, neg) for d in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    wide = evaluate(pos, neg, bootstrap=200, rng=np.random.default_rng(1), replicates=shifted)
    assert wide.auc.low < plain.auc.low - 0.05 and wide.auc.high > plain.auc.high + 0.05
    assert wide.auc.value == plain.auc.value  # the estimate is the full set's
    with pytest.raises(InputError, match="same members"):
        evaluate(pos, neg, bootstrap=10, rng=np.random.default_rng(1), replicates=[(pos[:3], neg)])


def test_a_resampled_attack_uses_the_drawn_models_and_shares_their_logits() -> None:
    refs = _references(online=False)
    split, target = overfit_target(0)
    x, y = split.non_members.x[:30], split.non_members.y[:30]
    attack = LiraAttack().fit(reference=refs)
    rows = np.array([0, 0, 2, 3])
    replica = attack.resampled(rows)
    assert replica is not attack and replica.reference_ is not None
    sub = replica.reference_
    assert sub.parent is refs and sub.count == 4 and sub.rows == (0, 0, 2, 3)
    np.testing.assert_array_equal(sub.in_reference, refs.in_reference[rows])
    np.testing.assert_array_equal(sub.logits(x, y), refs.logits(x, y)[rows])
    assert replica.sd_out_ != attack.sd_out_  # refitted on the draw
    # the same draw as a freshly built set gives the same scores
    again = LiraAttack().fit(reference=refs.resample(rows))
    np.testing.assert_array_equal(replica.score(target, x, y), again.score(target, x, y))
    assert make_loss_is_unchanged(rows)


def make_loss_is_unchanged(rows: np.ndarray) -> bool:
    from audit.mia import LossAttack

    loss = LossAttack().fit()
    return loss.resampled(rows) is loss  # reads no reference models: nothing to resample


def test_online_reference_models_train_on_the_targets_size() -> None:
    split = digits_split(0)
    cand = (split.members.x, split.members.y)  # 200 candidates, half IN per model
    small = Architecture("mlp", (8,), (64,), 10)
    refs = train_reference_models(
        split.reference.x,  # 400 reference samples: halves of 200
        split.reference.y,
        architecture=small,
        count=2,
        recipe=TrainingRecipe(epochs=1),
        seed=0,
        candidates=cand,
        train_size=200,
    )
    sizes = refs.describe()["train_sizes"]
    assert sizes == [200, 200]  # not 200 reference + 100 candidates
    assert (refs.in_candidates.sum(axis=0) == 1).all()  # candidates stay balanced (K // 2)
    assert (refs.in_reference.sum(axis=1) == 200 - refs.in_candidates.sum(axis=1)).all()


def test_the_owners_train_json_is_read_and_malformed_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "config": {
                    "arch": "cnn",
                    "hidden": [64],
                    "epochs": 12,
                    "batch_size": 64,
                    "lr": 0.002,
                    "weight_decay": 0.0005,
                    "seed": 3,
                },
                "dataset": "fashion-mnist",
            }
        )
    )
    owner = read_train_json(path)
    assert owner.arch == "cnn:64" and owner.train_size is None
    recipe = owner.recipe(epochs=None, lr=0.01)
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.weight_decay) == (
        12,
        64,
        0.01,
        0.0005,
    )
    for doc, message in (
        ("[]", "version 1"),
        ('{"version": 2}', "version 1"),
        ('{"version": 1, "config": {"epochs": 1.5}}', "integer"),
        ('{"version": 1, "config": {"lr": -1}}', "invalid training recipe"),
        ('{"version": 1, "config": {"arch": "rnn"}}', "unknown config.arch"),
        ('{"version": 1, "train_size": 0}', "train_size"),
        ("{not json", "not JSON"),
    ):
        path.write_text(doc)
        with pytest.raises(InputError, match=message):
            read_train_json(path)


def test_online_lira_takes_its_in_variance_from_the_training_pool_when_the_cap_leaves_none() -> (
    None
):
    split = digits_split(0)
    pool = (split.members.x, split.members.y)
    refs = train_reference_models(
        split.reference.x,
        split.reference.y,
        architecture=Architecture("mlp", (8,), (64,), 10),
        count=4,
        recipe=TrainingRecipe(epochs=1),
        seed=0,
        candidates=pool,
        train_size=50,  # below each model's 100 candidates: no reference sample stays IN
    )
    assert not refs.in_reference.any()
    attack = LiraAttack(variant="online").fit(reference=refs)
    assert np.isfinite(attack.sd_in_) and attack.sd_in_ > 0 and np.isfinite(attack.sd_out_)
