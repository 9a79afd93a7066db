"""Metrics against independent references: scikit-learn's ROC/AUC, the textbook TPR@FPR
definition, Mann–Whitney, and a naive bootstrap loop fed the same random draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from audit.errors import InputError
from audit.mia import evaluate, roc_curve


def _scores(seed: int, n_pos: int = 300, n_neg: int = 500, ties: bool = False):
    rng = np.random.default_rng(seed)
    pos, neg = rng.normal(0.6, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)
    if ties:
        pos, neg = np.round(pos * 2), np.round(neg * 2)
    return pos, neg


@pytest.mark.parametrize("ties", [False, True])
def test_roc_matches_scikit_learn(ties: bool) -> None:
    pos, neg = _scores(1, ties=ties)
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, np.r_[pos, neg], drop_intermediate=False)
    fpr, tpr, thresholds = roc_curve(pos, neg)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thresholds[0] == np.inf and np.all(np.diff(thresholds[1:]) < 0)
    m = evaluate(pos, neg, bootstrap=1, rng=np.random.default_rng(0))
    assert m.auc.value == pytest.approx(roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)


def _naive_tpr_at(pos, neg, fpr_max: float) -> float:
    """Best TPR over every threshold 'score >= t' whose FPR is at most fpr_max."""
    best = 0.0
    for t in np.unique(np.r_[pos, neg]):
        if (neg >= t).mean() <= fpr_max + 1e-12:
            best = max(best, (pos >= t).mean())
    return best


@pytest.mark.parametrize("ties", [False, True])
def test_tpr_at_fpr_and_advantage_follow_their_definitions(ties: bool) -> None:
    pos, neg = _scores(2, ties=ties)
    m = evaluate(pos, neg, fprs=(0.01, 0.001, 0.2), bootstrap=1, rng=np.random.default_rng(0))
    for a in (0.01, 0.001, 0.2):
        assert m.tpr(a).value == pytest.approx(_naive_tpr_at(pos, neg, a))
        assert m.tpr(a, reverse=True).value == pytest.approx(_naive_tpr_at(-pos, -neg, a))
    adv = max((pos >= t).mean() - (neg >= t).mean() for t in np.unique(np.r_[pos, neg]))
    assert m.advantage.value == pytest.approx(adv)


def test_vectorised_bootstrap_equals_a_naive_loop_on_the_same_draws() -> None:
    pos, neg = _scores(3, n_pos=120, n_neg=200, ties=True)
    boot, fprs = 150, (0.01, 0.05)
    m = evaluate(pos, neg, fprs=fprs, bootstrap=boot, rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)
    aucs, tprs, rev, advs = [], {a: [] for a in fprs}, {a: [] for a in fprs}, []
    for _ in range(boot):
        p = pos[rng.integers(0, len(pos), len(pos))]
        n = neg[rng.integers(0, len(neg), len(neg))]
        labels = np.r_[np.ones(len(p)), np.zeros(len(n))]
        aucs.append(roc_auc_score(labels, np.r_[p, n]))
        advs.append(max((p >= t).mean() - (n >= t).mean() for t in np.unique(np.r_[p, n])))
        for a in fprs:
            tprs[a].append(_naive_tpr_at(p, n, a))
            rev[a].append(_naive_tpr_at(-p, -n, a))
    q = [2.5, 97.5]
    np.testing.assert_allclose([m.auc.low, m.auc.high], np.percentile(aucs, q), atol=1e-12)
    dist = np.percentile(np.abs(np.array(aucs) - 0.5), q)
    np.testing.assert_allclose([m.distinguishability.low, m.distinguishability.high], dist)
    np.testing.assert_allclose([m.advantage.low, m.advantage.high], np.percentile(advs, q))
    for a in fprs:
        np.testing.assert_allclose([m.tpr(a).low, m.tpr(a).high], np.percentile(tprs[a], q))
        got = m.tpr(a, reverse=True)
        np.testing.assert_allclose([got.low, got.high], np.percentile(rev[a], q))


def test_two_sided_distinguishability_sees_a_set_that_looks_less_like_members() -> None:
    pos, neg = _scores(4)
    m = evaluate(-pos, neg, bootstrap=50, rng=np.random.default_rng(0))
    assert m.auc.value < 0.5
    assert m.distinguishability.value == pytest.approx(0.5 - m.auc.value)
    assert m.tpr(0.01, reverse=True).value > m.tpr(0.01).value
    assert m.distinguishability.low > 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
    st.lists(st.integers(-5, 5), min_size=1, max_size=30),
)
def test_auc_is_the_mann_whitney_statistic(pos: list[int], neg: list[int]) -> None:
    p, n = np.array(pos, float), np.array(neg, float)
    u = sum((a > b) + 0.5 * (a == b) for a in p for b in n) / (len(p) * len(n))
    m = evaluate(p, n, bootstrap=1, rng=np.random.default_rng(0))
    assert m.auc.value == pytest.approx(u, abs=1e-12)
    fpr, tpr, _ = roc_curve(p, n)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0


def test_roc_points_are_thinned_but_keep_the_low_fpr_end() -> None:
    pos, neg = _scores(5, n_pos=3000, n_neg=3000)
    m = evaluate(pos, neg, bootstrap=1, rng=np.random.default_rng(0), roc_points=200)
    assert len(m.roc_fpr) <= 210
    assert m.roc_fpr[0] == 0.0 and m.roc_fpr[-1] == 1.0
    assert sum(f <= 0.01 for f in m.roc_fpr) >= 30


def test_seeded_bootstrap_is_reproducible_and_doc_is_plain_json() -> None:
    pos, neg = _scores(6)
    a = evaluate(pos, neg, bootstrap=40, rng=np.random.default_rng(1))
    b = evaluate(pos, neg, bootstrap=40, rng=np.random.default_rng(1))
    assert a == b
    doc = a.to_dict()
    assert doc["tpr_at_fpr"]["0.01"]["value"] == a.tpr(0.01).value
    assert doc["members"] == 300 and doc["non_members"] == 500


@pytest.mark.parametrize(
    ("pos", "neg", "message"),
    [([], [1.0], "at least one"), ([1.0], [], "at least one"), ([np.nan], [1.0], "NaN")],
)
def test_bad_scores_are_rejected(pos, neg, message: str) -> None:
    with pytest.raises(InputError, match=message):
        evaluate(np.array(pos), np.array(neg), rng=np.random.default_rng(0))
