"""CMIA: neighbouring-class probabilities of a forgotten class (audit/mia/_cmia.py)."""

from __future__ import annotations

import numpy as np
import pytest

from audit.errors import InputError
from audit.mia import make_attack
from audit.mia._cmia import remaining_log_probabilities
from audit.mia._metrics import roc_curve, summarize_roc


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(pos, neg)
    return float(summarize_roc(fpr, tpr, ())["auc"][0])


def _logits(rng: np.random.Generator, n: int, neighbour_shift: float) -> np.ndarray:
    z = rng.normal(size=(n, 5))
    z[:, 0] += 6.0  # the forgotten class
    z[:, 1] += 2.0 + neighbour_shift  # its neighbour
    return z


def test_remaining_distribution_excludes_the_label() -> None:
    z = np.array([[3.0, 1.0, 1.0]])
    lp = remaining_log_probabilities(z, np.array([0]))
    assert lp[0, 0] == -np.inf and np.allclose(np.exp(lp[0, 1:]), [0.5, 0.5])


def test_members_with_suppressed_neighbours_are_found() -> None:
    rng = np.random.default_rng(0)
    members, non = _logits(rng, 300, -1.5), _logits(rng, 300, 0.0)
    y = np.zeros(300, dtype=np.int64)
    attack = make_attack("cmia", neighbours=1).fit()
    both = attack.score(np.concatenate([members, non]), np.zeros((600, 1), np.float32), np.r_[y, y])
    assert attack.params()["neighbour_classes"] == {0: [1]}
    assert _auc(both[:300], both[300:]) > 0.75


def test_same_distribution_gives_chance() -> None:
    rng = np.random.default_rng(1)
    z = _logits(rng, 2000, 0.0)
    y = np.zeros(2000, dtype=np.int64)
    scores = make_attack("cmia").fit().score(z, np.zeros((2000, 1), np.float32), y)
    assert abs(_auc(scores[:1000], scores[1000:]) - 0.5) < 0.05


def test_scores_ignore_the_forgotten_logit() -> None:
    """Suppression changes only the forgotten class's logit: CMIA cannot see it."""
    rng = np.random.default_rng(2)
    z = _logits(rng, 50, 0.0)
    y = np.zeros(50, dtype=np.int64)
    capped = z.copy()
    capped[:, 0] = np.delete(z, 0, axis=1).max(axis=1) - 8.0
    attack = make_attack("cmia").fit()
    x = np.zeros((50, 1), np.float32)
    np.testing.assert_allclose(attack.score(z, x, y), attack.score(capped, x, y))


def test_too_many_neighbours_is_refused() -> None:
    with pytest.raises(InputError):
        make_attack("cmia", neighbours=0)
    attack = make_attack("cmia", neighbours=4).fit()
    with pytest.raises(InputError, match="neighbours"):
        attack.score(np.zeros((2, 5)), np.zeros((2, 1), np.float32), np.zeros(2, dtype=np.int64))
