"""Patch leakage on the matrix's digits scenario: the honest patched model singles out the
forgotten records white-box, decoys dilute what being deleted says about having asked, and the
measurement refuses what it cannot score."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from prune.data import load_npz
from prune.privacy import add_decoys
from prune.unlearn import unlearn
from tests.threat_models.conftest import MatrixRun
from threat_models.errors import ThreatModelError
from threat_models.leakage import black_box, patched_regions, white_box


def _pool(run: MatrixRun) -> tuple[NDArray[np.float32], NDArray[np.bool_], int]:
    """Pool = training set + test set; requesters = the honest proof's opened forget rows."""
    work = run.scenario / "work"
    x_train, _ = load_npz(work / "train.npz")
    x_test, _ = load_npz(work / "test.npz")
    with np.load(run.scenario / "honest-proof" / "forget.npz") as openings:
        forget = openings["x"].reshape(len(openings["x"]), -1)
    requester = np.zeros(len(x_train) + len(x_test), dtype=bool)
    for x in forget:
        requester[: len(x_train)] |= (x_train == x).all(axis=1)
    assert requester.sum() == len(forget)
    return np.concatenate([x_train, x_test]), requester, len(x_train)


def test_white_box_singles_out_the_forgotten_records(matrix_run: MatrixRun) -> None:
    pool, requester, _ = _pool(matrix_run)
    patched = (matrix_run.scenario / "honest-proof" / "model.onnx").read_bytes()
    result = white_box(patched, pool, requester=requester, deleted=requester)
    assert result.precision == 1.0  # nothing but forgotten records is alone in a patched region
    assert result.recall >= 0.75
    assert result.linkability == result.recall * result.precision
    gates = patched_regions(patched, pool)
    assert (gates[requester] >= 1.0).any(axis=1).all()  # each lies in its own patched region


def test_black_box_flags_every_requester_among_others(matrix_run: MatrixRun) -> None:
    pool, requester, n_train = _pool(matrix_run)
    _, y_test = load_npz(matrix_run.scenario / "work" / "test.npz")
    x_test = pool[n_train:]
    patched = (matrix_run.scenario / "honest-proof" / "model.onnx").read_bytes()
    half = len(x_test) // 2
    result = black_box(
        patched,
        pool[: n_train + half],
        requester=requester[: n_train + half],
        deleted=requester[: n_train + half],
        public=(x_test[half:], y_test[half:]),
        seed=0,
    )
    assert result.recall >= 0.75  # changed predictions stand out
    assert result.flagged > result.requesters_flagged  # but so do the reference's own errors


def test_decoys_dilute_requester_linkability(matrix_run: MatrixRun) -> None:
    work = matrix_run.scenario / "work"
    x_train, y_train = load_npz(work / "train.npz")
    pool, _, _ = _pool(matrix_run)
    rng = np.random.default_rng(7)
    requested = rng.choice(len(x_train), 8, replace=False)
    plan = add_decoys(requested, n_train=len(x_train), per_request=3, rng=rng)
    result = unlearn(
        (work / "model.onnx").read_bytes(), x_train, y_train, forget_indices=plan.forget_indices
    )
    requester = np.zeros(len(pool), dtype=bool)
    requester[requested] = True
    deleted = np.zeros(len(pool), dtype=bool)
    deleted[plan.forget_indices] = True
    leak = white_box(result.patched_model, pool, requester=requester, deleted=deleted)
    assert leak.deleted_flagged >= 0.75 * deleted.sum()  # deleted records are still found...
    assert leak.precision <= 0.5  # ...but a deleted record is a requester only ~1/4 of the time
    assert leak.linkability <= 0.5


def test_refuses_unpatched_models_and_empty_requests(matrix_run: MatrixRun) -> None:
    pool, requester, _ = _pool(matrix_run)
    original = (matrix_run.scenario / "work" / "model.onnx").read_bytes()
    with pytest.raises(ThreatModelError, match="prune/patch/v1"):
        patched_regions(original, pool[:10])
    patched = (matrix_run.scenario / "honest-proof" / "model.onnx").read_bytes()
    none = np.zeros(len(pool), dtype=bool)
    with pytest.raises(ThreatModelError, match="no requester"):
        white_box(patched, pool, requester=none, deleted=requester)
    with pytest.raises(ThreatModelError, match="among the deleted"):
        white_box(patched, pool, requester=requester, deleted=none)
