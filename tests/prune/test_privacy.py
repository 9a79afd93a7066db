"""Decoy deletions (prune.privacy): every requested row once, K distinct decoys per request,
never a requested row, shuffled; bad requests are one-line DataErrors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from prune.cli import cli
from prune.errors import DataError
from prune.privacy import add_decoys
from tests.prune._engine_models import digits_work


@settings(deadline=None, max_examples=60)
@given(
    n_train=st.integers(min_value=2, max_value=300),
    data=st.data(),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_plan_invariants(n_train: int, data: st.DataObject, seed: int) -> None:
    requests = data.draw(st.integers(min_value=1, max_value=n_train))
    per_request = data.draw(st.integers(min_value=0, max_value=(n_train - requests) // requests))
    rng = np.random.default_rng(seed)
    requested = rng.choice(n_train, requests, replace=False)
    plan = add_decoys(requested, n_train=n_train, per_request=per_request, rng=rng)
    assert len(plan.forget_indices) == requests * (1 + per_request)
    assert len(np.unique(plan.forget_indices)) == len(plan.forget_indices)
    assert sorted(plan.forget_indices[plan.requested].tolist()) == sorted(requested.tolist())
    assert not np.isin(plan.decoys, requested).any()
    assert ((plan.forget_indices >= 0) & (plan.forget_indices < n_train)).all()
    assert (plan.forget_indices[plan.requested_leaves] == plan.forget_indices[plan.requested]).all()


def test_requested_rows_do_not_stay_in_front() -> None:
    """The leaf (and hence patch) order must not reveal who asked."""
    first_leaf_requested = [
        bool(
            add_decoys([5, 6], n_train=100, per_request=3, rng=np.random.default_rng(s)).requested[
                0
            ]
        )
        for s in range(200)
    ]
    share = np.mean(first_leaf_requested)
    assert 0.1 < share < 0.4  # expected 2/8 = 0.25


def test_zero_decoys_is_a_shuffle_of_the_request() -> None:
    plan = add_decoys([3, 1, 2], n_train=10, per_request=0, rng=np.random.default_rng(0))
    assert sorted(plan.forget_indices.tolist()) == [1, 2, 3]
    assert plan.requested.all()


@pytest.mark.parametrize(
    ("requested", "per_request", "message"),
    [
        ([], 1, "empty"),
        ([1, 1], 1, "more than once"),
        ([10], 1, r"\[0, 10\)"),
        ([1], -1, "0 or more"),
        ([1, 2], 5, "lower --decoys"),
    ],
)
def test_bad_requests(requested: list[int], per_request: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        add_decoys(requested, n_train=10, per_request=per_request, rng=np.random.default_rng(0))


def test_unlearn_cli_decoys(tmp_path: Path) -> None:
    """``prune unlearn --decoys 2``: 3 requests become 9 forgotten, certified records."""
    work = digits_work("mlp")
    forget = tmp_path / "forget.txt"
    forget.write_text("12\n3\n40\n")
    out = tmp_path / "proof"
    res = CliRunner().invoke(
        cli,
        [
            "unlearn", str(work.model_path), "--train", str(work.folder / "train.npz"),
            "--forget-indices", str(forget), "--decoys", "2", "--out", str(out), "--quiet",
            "--threads", "1",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["forget_points"] == 9 and summary["certified"] == 9


def test_unlearn_cli_decoys_need_requests(tmp_path: Path) -> None:
    work = digits_work("mlp")
    res = CliRunner().invoke(
        cli,
        [
            "unlearn", str(work.model_path), "--train", str(work.folder / "train.npz"),
            "--forget-class", "3", "--decoys", "1", "--out", str(tmp_path / "p"),
        ],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "--decoys needs --forget-indices" in res.stderr
    assert not (tmp_path / "p").exists()
