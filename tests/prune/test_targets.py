from __future__ import annotations

import numpy as np
import pytest

from prune.errors import PatchError
from prune.targets import TARGET_POLICIES, choose_targets

LOGITS = np.array([[5.0, 4.0, 1.0, 3.0], [0.0, 2.0, 9.0, 1.0], [1.0, 1.5, 0.5, 2.0]])
LABELS = np.array([0, 2, 3])


def _forbid(labels: np.ndarray, classes: int = 4) -> np.ndarray:
    mask = np.zeros((len(labels), classes), dtype=bool)
    mask[np.arange(len(labels)), labels] = True
    return mask


def test_runner_up_and_least_likely() -> None:
    rng = np.random.default_rng(0)
    assert choose_targets("runner-up", LOGITS, _forbid(LABELS), rng=rng).tolist() == [1, 1, 1]
    assert choose_targets("least-likely", LOGITS, _forbid(LABELS), rng=rng).tolist() == [2, 0, 2]


@pytest.mark.parametrize("policy", list(TARGET_POLICIES))
def test_policies_never_pick_a_forbidden_class(policy: str) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 5))
    forbidden = rng.random((500, 5)) < 0.5
    forbidden[np.arange(500), rng.integers(0, 5, 500)] = False  # at least one allowed
    targets = choose_targets(policy, logits, forbidden, rng=rng)
    assert not forbidden[np.arange(500), targets].any()


def test_random_is_seeded_and_spread() -> None:
    logits = np.zeros((400, 4))
    forbidden = _forbid(np.zeros(400, dtype=np.int64))
    a = choose_targets("random", logits, forbidden, rng=np.random.default_rng(7))
    b = choose_targets("random", logits, forbidden, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert set(np.unique(a).tolist()) == {1, 2, 3}


def test_no_allowed_class_and_unknown_policy() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(PatchError, match="no allowed target"):
        choose_targets("runner-up", LOGITS[:1], np.ones((1, 4), dtype=bool), rng=rng)
    with pytest.raises(PatchError, match="unknown target policy"):
        choose_targets("nearest", LOGITS, _forbid(LABELS), rng=rng)
