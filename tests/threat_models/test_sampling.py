from __future__ import annotations

import math

import numpy as np
import pytest

from threat_models.sampling import miss_probability, miss_probability_bound, replays_needed


def test_miss_probability_matches_combinatorics() -> None:
    n, m, k = 50, 5, 7
    exact = math.comb(n - m, k) / math.comb(n, k)
    assert miss_probability(n=n, k=k, f=m / n) == pytest.approx(exact, rel=1e-12)


def test_miss_probability_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    n, k, f = 40, 6, 0.2
    cheated = set(range(int(f * n)))
    trials = 20_000
    misses = sum(
        not cheated.intersection(rng.choice(n, size=k, replace=False).tolist())
        for _ in range(trials)
    )
    p = miss_probability(n=n, k=k, f=f)
    assert abs(misses / trials - p) < 4 * math.sqrt(p * (1 - p) / trials)


def test_bound_dominates_exact() -> None:
    for n in (10, 100, 1000):
        for k in (0, 1, 5, 10):
            for f in (0.01, 0.1, 0.5):
                assert miss_probability(n=n, k=k, f=f) <= miss_probability_bound(k=k, f=f) + 1e-15


def test_edge_cases() -> None:
    assert miss_probability(n=10, k=10, f=0.1) == 0.0
    assert miss_probability(n=10, k=3, f=0.0) == 1.0
    assert miss_probability(n=10, k=0, f=0.5) == 1.0
    with pytest.raises(ValueError):
        miss_probability(n=0, k=0, f=0.1)
    with pytest.raises(ValueError):
        miss_probability(n=10, k=11, f=0.1)


def test_replays_needed_is_minimal() -> None:
    n, f, alpha = 600, 0.01, 1e-3
    k = replays_needed(n=n, f=f, alpha=alpha)
    assert miss_probability(n=n, k=k, f=f) <= alpha
    assert miss_probability(n=n, k=k - 1, f=f) > alpha


def test_sampling_cli_json() -> None:
    import json

    from click.testing import CliRunner

    from threat_models.cli import cli

    result = CliRunner().invoke(
        cli, ["sampling", "--n", "600", "--f", "0.01", "--k", "300", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["version"] == 1
    row = doc["rows"][0]
    assert row["k_needed"] == replays_needed(n=600, f=0.01, alpha=0.01)
    assert row["miss"]["300"] == pytest.approx(miss_probability(n=600, k=300, f=0.01))
