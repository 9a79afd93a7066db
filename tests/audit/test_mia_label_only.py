"""Label-only attacks: the gap attack is the accuracy gap, the decision-boundary distance is a
bisection along seeded random directions whose query count is what the attack states."""

from __future__ import annotations

import numpy as np
import pytest

import audit.mia._label_only as label_only
from audit.errors import InputError
from audit.mia import BoundaryAttack, GapAttack, make_attack
from audit.mia._metrics import evaluate
from tests.audit.test_mia_support import overfit_target


def test_the_gap_attack_scores_correctness_and_its_advantage_is_the_accuracy_gap() -> None:
    split, target = overfit_target(3)
    attack = GapAttack().fit()
    pos = attack.score(target, split.members.x, split.members.y)
    neg = attack.score(target, split.non_members.x, split.non_members.y)
    acc_in = (target(split.members.x).argmax(1) == split.members.y).mean()
    acc_out = (target(split.non_members.x).argmax(1) == split.non_members.y).mean()
    assert set(np.unique(np.concatenate([pos, neg]))) <= {0.0, 1.0}
    metrics = evaluate(pos, neg, bootstrap=10, rng=np.random.default_rng(0))
    assert metrics.advantage.value == pytest.approx(acc_in - acc_out)
    assert attack.params()["queries_per_sample"] == 1


def _naive_distance(target, x, label, directions, radius, steps) -> float:
    """One sample, one direction at a time, by the textbook bisection."""
    best = radius
    for d in directions:

        def flips(r: float, d: np.ndarray = d) -> bool:
            return int(target((x + np.float32(r) * d)[None]).argmax(1)[0]) != label

        if not flips(radius):
            continue
        lo, hi = 0.0, radius
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if flips(mid) else (mid, hi)
        best = min(best, hi)
    return best


def test_boundary_distance_equals_a_per_sample_bisection_and_costs_what_it_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    split, target = overfit_target(3)
    x, y = split.non_members.x[:12], split.non_members.y[:12]
    attack = BoundaryAttack(directions=3, steps=6, max_radius=4.0, seed=1).fit()
    rows: list[int] = []
    real_query = label_only.query

    def counting(model, points, **kw):
        rows.append(len(points))
        return real_query(model, points, **kw)

    monkeypatch.setattr(label_only, "query", counting)
    got = attack.score(target, x, y)
    assert sum(rows) == len(x) * (attack.queries_per_sample - 1)  # + 1 label query per sample
    assert attack.params()["queries_per_sample"] == 1 + 3 * (1 + 6)
    dirs = attack._directions(x)
    for n in range(len(x)):
        label = int(target(x[n : n + 1]).argmax(1)[0])
        want = _naive_distance(target, x[n], label, dirs[n], 4.0, 6)
        assert got[n] == pytest.approx(want if label == y[n] else -want, abs=4.0 / 2**6)


def test_members_lie_further_from_the_boundary_on_an_overfit_model() -> None:
    split, target = overfit_target(3)
    attack = make_attack("boundary", directions=4, steps=6).fit()
    pos = attack.score(target, split.members.x, split.members.y)
    neg = attack.score(target, split.non_members.x[:300], split.non_members.y[:300])
    assert evaluate(pos, neg, bootstrap=50, rng=np.random.default_rng(0)).auc.value > 0.55
    with pytest.raises(InputError, match="pass the model"):
        attack.score(target(split.members.x), split.members.x, split.members.y)
    with pytest.raises(InputError, match="directions >= 1"):
        BoundaryAttack(directions=0)
