"""Threat 22 (``wide_band``): another patch's activation gate on over a whole certified region.

``region.certificate`` proves claim ``u`` where every other gate is off. On ``u``'s region the
gate of ``v`` is on wherever the neurons whose sign the two patterns fix differently are all
within ``1/n`` of zero. An original with a near-flat neuron (planted before the request) lets an
owner put a decoy patch on the region next door, separated by that neuron alone: its gate is
then on over all of ``u``'s region, where no certificate speaks. ``structure.patch`` requires
every such band to be bounded by a differing neuron (empty on the box, or a slab within
``BAND_FRACTION`` of the box's diameter)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from audit.verify import Policy, verify_proof
from audit.verify._affine import AffineHead
from audit.verify._bands import BAND_FRACTION, wide_band
from prune.data import save_npz
from tests.audit.adversarial.kit import (
    ProofKit,
    Work,
    honest_patch,
    issue_proof,
    session_kit,
)
from tests.audit.adversarial.synthetic import Mlp, mlp_onnx

EPS = 1e-3  # the planted neuron's slope: |z_0| <= 1e-3 on the box [0, 1]^64, below 1/n = 0.01
SHIFT = 0.01  # z_0 = EPS * (x_i - SHIFT)


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def _planted(kit: ProofKit, folder: Path) -> tuple[Work, np.ndarray, int]:
    """The kit's model with hidden neuron 0 replaced by ``EPS * (x_i - SHIFT)`` on a pixel ``i``
    that is 0 at a training row (the requester), and the training data with a fabricated decoy:
    the requester with ``x_i = 2 * SHIFT``, which flips neuron 0 and no other neuron."""
    mlp = kit.work.mlp
    w1, b1 = mlp.weights[0].copy(), mlp.biases[0].copy()
    x = kit.work.x_train.astype(np.float64)
    for i in np.argsort(np.abs(w1[1:]).max(axis=0)):  # the pixel the other neurons weigh least
        w1[0], b1[0] = 0.0, -EPS * SHIFT
        w1[0, i] = EPS
        planted = Mlp(weights=(w1, *mlp.weights[1:]), biases=(b1, *mlp.biases[1:]))
        z, _ = planted.forward(x)
        rows = np.flatnonzero((x[:, i] == 0) & (np.abs(z[:, 1:]).min(axis=1) > 1e-3))
        for row in rows:
            decoy = x[row].copy()
            decoy[i] = 2 * SHIFT
            zd, _ = planted.forward(decoy[None, :])
            flips = (zd[0] >= 0) != (z[row] >= 0)
            if flips[0] and flips.sum() == 1:
                folder.mkdir(parents=True)
                onnx.save(mlp_onnx(planted), str(folder / "model.onnx"))
                x_train = np.concatenate([kit.work.x_train, decoy[None, :].astype(np.float32)])
                y_train = np.concatenate([kit.work.y_train, kit.work.y_train[row : row + 1]])
                save_npz(folder / "train.npz", x_train, y_train)
                save_npz(folder / "test.npz", kit.work.x_test, kit.work.y_test)
                work = replace(
                    kit.work, folder=folder, mlp=planted, x_train=x_train, y_train=y_train
                )
                return work, np.array([row, len(x_train) - 1], dtype=np.int64), int(i)
    raise AssertionError("no pixel and row to plant the neuron on")


def test_a_decoy_patch_next_door_across_a_near_flat_neuron_fails_structure_patch(
    kit: ProofKit, tmp_path: Path
) -> None:
    """Requester and decoy have regions that differ in the planted neuron only; every claim is
    certified for its own patch and replays (both push the same target), but the decoy's gate
    is on at the requester's sample and over its whole region: ``structure.patch`` fails, and
    nothing else does."""
    work, rows, _ = _planted(kit, tmp_path / "work")
    spec, claims = honest_patch(work, rows)
    z, _ = work.mlp.forward(work.x_train[rows[:1]].astype(np.float64))
    assert 1.0 - spec.n * abs(z[0, 0]) > 0.5  # the decoy's gate at the requester's sample
    proof = tmp_path / "proof"
    issue_proof(work, kit.keys, proof, rows=rows, spec=spec, claims=claims, created=kit.created)
    inputs = replace(
        kit.inputs(proof), original=work.model, reference=work.test, forget=proof / "forget.npz"
    )
    report = verify_proof(inputs, now=kit.now, rng=np.random.default_rng(0), policy=Policy())
    failed = {o.name for o in report.outcomes if o.status == "fail"}
    assert failed == {"structure.patch"}, failed
    assert report.outcome("region.certificate").status == "pass"
    detail = report.outcome("structure.patch").detail
    assert "inside the region of patch 0, the gate of patch 1 is on" in detail
    assert not report.verified


def _head(w1: np.ndarray, w2: np.ndarray) -> AffineHead:
    return AffineHead(
        weights=(w1, w2, np.ones((1, w2.shape[0]))),
        biases=(np.zeros(w1.shape[0]), np.zeros(w2.shape[0]), np.zeros(1)),
    )


def _run(head: AffineHead, x: np.ndarray, patterns: np.ndarray, **kw: object) -> str | None:
    z, _ = head.forward(x)
    options: dict[str, object] = {"n": 1000.0}
    options.update(kw)
    return wide_band(
        head,
        (0.0, 1.0),
        x,
        z >= 0,
        np.arange(len(x), dtype=np.int64),
        patterns,
        **options,  # type: ignore[arg-type]
    )


def test_patterns_split_by_a_trained_first_layer_neuron_pass() -> None:
    """Two regions separated by a neuron of slope 1: the band is a slab of half-width 1e-3,
    far below ``BAND_FRACTION`` of the diameter of ``[0, 1]^2``."""
    head = _head(np.array([[1.0, -1.0], [0.0, 1.0]]), np.eye(2))
    x = np.array([[0.6, 0.5], [0.4, 0.5]])
    z, _ = head.forward(x)
    assert _run(head, x, z >= 0) is None


def test_patterns_split_by_a_near_flat_neuron_fail() -> None:
    """The same two regions, but the separating neuron has slope 1e-6: its band (|z| < 1/n) is
    the whole box, so the other gate is on over all of each region."""
    head = _head(np.array([[1e-6, -1e-6], [0.0, 1.0]]), np.eye(2))
    x = np.array([[0.6, 0.5], [0.4, 0.5]])
    z, _ = head.forward(x)
    problem = _run(head, x, z >= 0)
    assert problem is not None and "patch 1 is on" in problem


def test_a_neuron_far_from_zero_on_the_box_bounds_the_band_whatever_its_slope() -> None:
    """A flat neuron that stays at least 1/n from 0 on the whole box leaves no band at all; one
    that comes within 1/n of 0 somewhere in the box bounds nothing unless it is steep."""
    from audit.verify._bands import _Band, _bounding

    rows = np.array([[1e-9, 0.0], [1e-9, 0.0], [-1e-9, 0.0], [1.0, 0.0]])
    offsets = np.array([0.5, 0.0, -0.5, -0.5])
    got = _bounding(rows, offsets, _Band(low=0.0, high=1.0, band=1e-3, reach=0.1))
    assert got.tolist() == [True, False, True, True]


def test_a_second_layer_neuron_bounds_the_band_on_the_claims_region() -> None:
    """Regions that differ only in a second-layer neuron: its slope on the claim's region
    (through the active first-layer units) decides. The dense gate may use it too (the first
    layer agrees, so its stored row is the served pre-activation there), unless it is tied at
    the patch's sample (a tied row is not checked against the sample)."""
    w1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    head = _head(w1, np.array([[1.0, -1.0], [1.0, 1.0]]))
    x = np.array([[0.6, 0.5], [0.4, 0.5]])
    z, _ = head.forward(x)
    assert ((z[0] >= 0) != (z[1] >= 0)).tolist() == [False, False, True, False]
    assert _run(head, x, z >= 0) is None
    untied = np.zeros((2, 4), dtype=bool)
    assert _run(head, x, z >= 0, dense_ties=untied) is None
    tied = untied.copy()
    tied[:, 2] = True
    assert _run(head, x, z >= 0, dense_ties=tied) is not None


def test_the_dense_gate_uses_only_the_first_layer_where_the_patterns_differ() -> None:
    """A near-flat first-layer neuron splits the two regions and a steep second-layer neuron
    differs too: the activation gate reads the served second-layer pre-activation, which bounds
    the band; the dense gate's second-layer row is the other patch's own linearisation, which
    differs from the served one once the first layer differs, so it cannot."""
    head = AffineHead(
        weights=(np.array([[1e-7, -1e-7], [1.0, 0.0]]), np.eye(2)[::-1], np.ones((1, 2))),
        biases=(np.zeros(2), np.array([-0.5, 0.0]), np.zeros(1)),
    )
    x = np.array([[0.6, 0.5], [0.4, 0.5]])
    z, _ = head.forward(x)
    assert ((z[0] >= 0) != (z[1] >= 0)).tolist() == [True, False, True, False]
    assert _run(head, x, z >= 0) is None
    assert _run(head, x, z >= 0, dense_ties=np.zeros((2, 4), dtype=bool)) is not None


def test_the_band_needs_a_declared_box() -> None:
    head = _head(np.array([[1.0, -1.0], [0.0, 1.0]]), np.eye(2))
    x = np.array([[0.6, 0.5], [0.4, 0.5]])
    z, _ = head.forward(x)
    problem = wide_band(head, None, x, z >= 0, np.arange(2), z >= 0, n=1000.0)
    assert problem is not None and "no input box" in problem


def test_the_threshold_scales_with_the_box() -> None:
    """A slope just above ``1 / (n * BAND_FRACTION * diam)`` is thin, just below it is not."""
    diam = np.sqrt(2.0)
    limit = 1.0 / (1000.0 * BAND_FRACTION * diam)
    x = np.array([[0.6, 0.5], [0.4, 0.5]])
    for slope, ok in ((1.01 * limit, True), (0.99 * limit, False)):
        head = AffineHead(
            weights=(np.array([[slope, 0.0], [0.0, 1.0]]), np.eye(2), np.ones((1, 2))),
            biases=(np.array([-0.5 * slope, 0.0]), np.zeros(2), np.zeros(1)),
        )
        z, _ = head.forward(x)
        assert (_run(head, x, z >= 0) is None) == ok


def _pairwise(
    head: AffineHead,
    box: tuple[float, float],
    x: np.ndarray,
    patch: np.ndarray,
    patterns: np.ndarray,
    n: float,
    ties: np.ndarray | None,
) -> set[tuple[int, int]]:
    """The rule read off docs/FORMATS.md "Thin gate bands", one pair at a time: the pairs
    (u, v) that no differing neuron bounds."""
    low, high = box
    reach = 1.0 / (n * BAND_FRACTION * (high - low) * np.sqrt(x.shape[1]))
    sizes = [w.shape[0] for w in head.weights[:-1]]
    layer = np.repeat(np.arange(len(sizes)), sizes)
    bad = set()
    for u in sorted(set(patch.tolist())):
        claim = int(np.flatnonzero(patch == u)[0])
        rows, offs, _, _ = head.local_affine(x[claim])
        centre = rows.sum(axis=1) * 0.5 * (low + high) + offs
        spread = np.abs(rows).sum(axis=1) * 0.5 * (high - low)
        ok = (np.abs(centre) - spread >= 1.0 / n) | (np.linalg.norm(rows, axis=1) >= reach)
        signs = head.forward(x[claim : claim + 1])[0][0] >= 0
        for v in range(len(patterns)):
            if v == u:
                continue
            differ = patterns[v] != signs
            if ties is not None and differ.any():
                differ &= (layer == layer[differ].min()) & ~ties[v]
            if not (differ & ok).any():
                bad.add((u, v))
    return bad


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_the_blocked_matrix_counts_agree_with_the_rule_pair_by_pair(
    dense: bool, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random three-layer heads with near-flat and tied neurons, claims sharing patches, and
    blocks of a few claims (the block edges fall inside the claims): the verdict of
    :func:`wide_band` is the pair-by-pair rule's (first failing pair in the same order)."""
    import audit.verify._bands as bands

    rng = np.random.default_rng(seed)
    d, sizes = 5, (6, 4)
    weights = [rng.normal(size=(sizes[0], d)), rng.normal(size=(sizes[1], sizes[0]))]
    weights += [rng.normal(size=(3, sizes[1]))]
    for w in weights[:-1]:
        w[rng.random(w.shape[0]) < 0.4] *= 1e-7  # near-flat units: bound nothing
    head = AffineHead(
        weights=tuple(weights), biases=tuple(rng.normal(size=w.shape[0]) * 0.1 for w in weights)
    )
    x = rng.random((14, d))
    z, _ = head.forward(x)
    patch = rng.integers(0, 9, size=14)
    patch[:9] = np.arange(9)  # every patch has a claim
    patterns = np.zeros((9, sum(sizes)), dtype=bool)
    for row in range(len(patch) - 1, -1, -1):
        patterns[patch[row]] = z[row] >= 0
    patterns[7] = patterns[3]  # a second patch on one region: never bounded
    patterns[8] = patterns[2]
    patterns[8, sizes[0]] ^= True  # differs only in a second-layer unit
    ties = (rng.random(patterns.shape) < 0.2) if dense else None
    box, n = (0.0, 1.0), 1000.0
    want = _pairwise(head, box, x, patch, patterns, n, ties)
    assert want  # the shared pattern at least
    monkeypatch.setattr(bands, "PAIR_BLOCK", 2 * len(patterns))  # two claims a block
    got = wide_band(head, box, x, z >= 0, patch, patterns, n=n, dense_ties=ties)
    u, v = min(want)
    assert got is not None and f"region of patch {u}, the gate of patch {v} " in got


def test_mismatches_counts_masked_differences_exactly() -> None:
    from audit.verify._bands import mismatches

    rng = np.random.default_rng(0)
    mask, signs = rng.random((7, 50)) < 0.5, rng.random((7, 50)) < 0.5
    patterns, keep = rng.random((11, 50)) < 0.5, rng.random((11, 50)) < 0.5
    want = (mask[:, None, :] & keep[None] & (signs[:, None, :] != patterns[None])).sum(axis=2)
    assert np.array_equal(mismatches(mask, signs, patterns, keep=keep), want)
    plain = (signs[:, None, :] != patterns[None]).sum(axis=2)
    assert np.array_equal(mismatches(None, signs, patterns), plain)


def test_deeper_rows_beyond_the_work_budget_fail_closed() -> None:
    """Two regions told apart only by a second-layer neuron: each claim needs its region's
    deeper rows (2 x 2 x 2 = 8 multiply-adds here). Below that budget the rule refuses to call
    the bands bounded, with the reason; at it, the same proof passes. The engine's
    ``verify_proof`` reads the budget from ``Policy.band_work``."""
    w1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    head = _head(w1, np.array([[1.0, -1.0], [1.0, 1.0]]))
    x = np.array([[0.6, 0.5], [0.4, 0.5]])
    z, _ = head.forward(x)
    assert _run(head, x, z >= 0, work=16.0) is None
    problem = _run(head, x, z >= 0, work=15.0)
    assert problem is not None and "over what is left of the verifier's budget" in problem
    assert Policy().band_work >= 1e12
