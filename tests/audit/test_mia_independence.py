"""A sample's score is its own: the same bits whether it is scored alone, with 10 or with 500
companions (issue 19: LiRA's fixed variance used to be pooled over the candidates of one call),
and the threshold signals keep their order, without ties, on a saturated model."""

from __future__ import annotations

import itertools

import mpmath
import numpy as np
import pytest
import torch

from audit.mia import LiraAttack, make_attack, torch_logits_fn
from audit.mia._arch import module_from_state
from audit.mia._signals import logit_confidence, true_class_log_probability
from audit.mia._train import train_model
from tests.audit.test_mia_attacks import _references
from tests.audit.test_mia_support import ARCH, OVERFIT_RECIPE, digits_split, overfit_target


def _scores_with_companions(attack, target, x, y, companions: int) -> float:
    """The score of sample 0 when scored together with ``companions`` others."""
    rows = np.arange(companions + 1)
    return float(attack.score(target, x[rows], y[rows])[0])


@pytest.mark.parametrize(
    ("name", "params", "online"),
    [
        ("lira", {"variant": "offline", "variance": "fixed"}, False),
        ("lira", {"variant": "offline", "variance": "per-example"}, False),
        ("lira", {"variant": "online", "variance": "fixed"}, True),
        ("rmia", {"offline_a": 0.3, "population": 150}, False),
        ("loss", {}, False),
        ("confidence", {}, False),
        ("entropy", {}, False),
        ("loss", {"per_class": True}, False),
        ("shadow", {"max_iter": 20}, False),
        ("gap", {}, False),
        ("boundary", {"directions": 2, "steps": 4}, False),
    ],
)
def test_a_samples_score_does_not_depend_on_its_companions(
    name: str, params: dict, online: bool
) -> None:
    refs = _references(online=online)
    split, target = overfit_target(0)
    if online:  # online LiRA scores the candidates its models trained with: 400 of them
        x = np.concatenate([split.non_members.x[:200], split.members.x])
        y = np.concatenate([split.non_members.y[:200], split.members.y])
        counts = (0, 10, 399)
    else:
        x, y = split.non_members.x[:501], split.non_members.y[:501]
        counts = (0, 10, 500)
    attack = make_attack(name, **params).fit(reference=refs)
    sd_before = getattr(attack, "sd_out_", None)
    for first in (0, 7):  # a member-like and another sample, each scored first
        xs, ys = np.roll(x, -first, axis=0), np.roll(y, -first)
        got = [_scores_with_companions(attack, target, xs, ys, c) for c in counts]
        assert got[0] == got[1] == got[2], got  # bit for bit
    if sd_before is not None:
        assert np.array_equal([attack.sd_out_], [sd_before], equal_nan=True)  # fit-time only


def test_the_fixed_variance_comes_from_the_reference_models_alone() -> None:
    refs = _references(online=False)
    split, target = overfit_target(0)
    a = LiraAttack().fit(reference=refs)
    b = LiraAttack().fit(reference=refs)
    a.score(target, split.members.x[:5], split.members.y[:5])
    b.score(target, split.non_members.x, split.non_members.y)
    assert a.sd_out_ == b.sd_out_ and a.params()["sd_out"] == a.sd_out_
    phi = np.stack([logit_confidence(lg, refs.y) for lg in refs.logits(refs.x, refs.y)])
    out = ~refs.in_reference
    mu = np.array([phi[out[:, n], n].mean() for n in range(phi.shape[1])])
    dof = sum(int(out[:, n].sum()) - 1 for n in range(phi.shape[1]))
    want = np.sqrt(sum(((phi[out[:, n], n] - mu[n]) ** 2).sum() for n in range(phi.shape[1])) / dof)
    assert a.sd_out_ == pytest.approx(want, rel=1e-12)


def _saturated_target():
    """The overfit digits MLP with its output layer scaled by 40: p_y rounds to 1 in float64 on
    most samples, as on a strongly overfit real model."""
    split = digits_split(0)
    trained = train_model(ARCH, split.members.x, split.members.y, recipe=OVERFIT_RECIPE, seed=0)
    module = module_from_state(ARCH, trained.state)
    with torch.no_grad():
        module[-1].weight.mul_(40.0)
        module[-1].bias.mul_(40.0)
    return split, torch_logits_fn(module)


def _exact_order_key(row: np.ndarray, label: int) -> mpmath.mpf:
    """log p_y = -log1p(sum_{j != y} exp(l_j - l_y)) in 60-digit arithmetic, free of
    cancellation (the ordering exact arithmetic would give)."""
    with mpmath.workdps(60):
        own = mpmath.mpf(float(row[label]))
        rest = mpmath.fsum(
            mpmath.exp(mpmath.mpf(float(v)) - own) for j, v in enumerate(row) if j != label
        )
        return -mpmath.log1p(rest)


def test_loss_and_confidence_keep_their_order_without_ties_on_a_saturated_model() -> None:
    split, target = _saturated_target()
    x = np.concatenate([split.members.x, split.non_members.x])
    y = np.concatenate([split.members.y, split.non_members.y])
    logits = target(x).astype(np.float64)
    naive = np.exp(logits - logits.max(1, keepdims=True))
    naive_p = naive[np.arange(len(y)), y] / naive.sum(1)
    assert (naive_p == 1.0).sum() > 100  # saturated: the naive p_y ties at 1 on many samples
    loss = make_attack("loss").fit().score(target, x, y)
    conf = make_attack("confidence").fit().score(target, x, y)
    distinct_rows = len({(r.tobytes(), int(c)) for r, c in zip(logits, y, strict=True)})
    assert len(np.unique(loss)) == distinct_rows  # no artificial ties
    assert len(np.unique(conf)) == len({r.tobytes() for r in logits})
    exact = [_exact_order_key(r, int(c)) for r, c in zip(logits, y, strict=True)]
    _assert_same_order(loss, exact)
    stable = true_class_log_probability(logits, y)
    assert np.allclose(stable, [float(e) for e in exact], rtol=1e-9, atol=0)  # log p_y itself
    top = logits.argmax(1)
    _assert_same_order(
        conf, [_exact_order_key(r, int(c)) for r, c in zip(logits, top, strict=True)]
    )


def _assert_same_order(scores: np.ndarray, exact: list) -> None:
    """Sorted by the exact values, the scores never decrease, and they strictly increase
    wherever the exact values differ by more than float64 rounding can blur."""
    order = sorted(range(len(exact)), key=lambda i: exact[i])
    s = scores[order]
    e = [exact[i] for i in order]
    steps = np.diff(s)
    gaps = np.array(
        [float((b - a) / max(abs(a), abs(b), 1e-300)) for a, b in itertools.pairwise(e)]
    )
    assert (steps[gaps > 1e-12] > 0).all()
    assert (steps >= 0).all() or np.abs(steps[steps < 0]).max() < 1e-9
