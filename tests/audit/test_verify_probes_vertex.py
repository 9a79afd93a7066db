"""A patch that holds at its sample and almost everywhere in its region, but not at the region's
worst vertex: the exact part of ``region.probes`` finds that vertex by LP and confirms the
counterexample with onnxruntime at a point inside the region (and ``region.certificate``
refuses the claim too)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linprog

from audit.verify import Policy, verify_proof
from tests.audit.adversarial.kit import ProofKit, session_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def _region_margins(kit: ProofKit, u: int, target: int) -> tuple[float, float]:
    """(margin of the original at the sample, exact minimum over its region), float64 LPs."""
    mlp = kit.work.mlp
    x0 = kit.work.x_train[kit.rows[u]].astype(np.float64)
    weights = [w.astype(np.float64) for w in mlp.weights]
    biases = [b.astype(np.float64) for b in mlp.biases]
    rows, offs, jac, off, value = [], [], np.eye(len(x0)), np.zeros(len(x0)), x0
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        jac, off, value = w @ jac, w @ off + b, w @ value + b
        if i < len(weights) - 1:
            rows.append(jac)
            offs.append(off)
            mask = (value >= 0).astype(np.float64)
            jac, off, value = jac * mask[:, None], off * mask, value * mask
    z_rows, z_off = np.concatenate(rows), np.concatenate(offs)
    _, logits = mlp.forward(x0[None, :])
    s = np.where(np.concatenate([r @ x0 + o for r, o in zip(rows, offs, strict=True)]) >= 0, -1, 1)
    at_x0 = logits[0, target] - np.delete(logits[0], target).max()
    worst = np.inf
    for j in range(len(off)):
        if j == target:
            continue
        res = linprog(
            jac[target] - jac[j],
            A_ub=z_rows * s[:, None],
            b_ub=-z_off * s,
            bounds=[(0.0, 1.0)] * len(x0),
            method="highs",
        )
        assert res.status == 0
        worst = min(worst, float(res.fun + off[target] - off[j]))
    return float(at_x0), worst


def test_patch_short_only_near_the_worst_vertex_fails_the_exact_part(
    kit: ProofKit, tmp_path: Path
) -> None:
    u = 0
    claim = kit.claims[u]
    at_x0, worst = _region_margins(kit, u, claim.target)
    need = claim.certified_margin
    # the claim holds at the sample with room, and fails only within 3 % of the way to the
    # region's worst point
    push = need - worst - 0.03 * (at_x0 - worst)
    assert at_x0 + push > need + 0.5
    d = kit.spec.d.copy()
    d[u] = 0.0
    d[u, claim.target] = push
    K = kit.spec.K.copy()
    K[u] = abs(push)
    spec = dataclasses.replace(kit.spec, d=d, K=K)
    proof = kit.reissue(tmp_path / "short", spec=spec)
    report = verify_proof(
        kit.inputs(proof),
        now=kit.now,
        rng=np.random.default_rng(0),
        policy=Policy(probe_claims=None, lp_claims=len(kit.claims), lp_classes=0),
        checks=["replay.claims", "region.certificate", "region.probes"],
    )
    assert report.outcome("replay.claims").status == "pass"  # the sample itself is fine
    assert report.outcome("region.certificate").status == "fail"
    probes = report.outcome("region.probes")
    assert probes.status == "fail"
    assert "exact LP finds a point in the region" in probes.detail, probes.detail
    assert probes.evidence["lp_counterexample_margin"] < need
