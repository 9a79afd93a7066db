"""``replay.calibrated`` and the ``calibrated`` claim kind: an honest calibrated proof verifies;
each named dishonest variant (re-signed by the owner, so only the claim check can catch it)
fails with its message; the reader rejects malformed calibrated claims."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from audit.receipt import ReceiptInputs, verify_receipt
from audit.verify import (
    MembershipPolicy,
    Policy,
    VerificationReport,
    VerifyInputs,
    verify_proof,
)
from prune.claims import CalibratedClaim
from prune.export import export_patched
from prune.formats import CalibratedClaimRecord, MalformedError
from prune.formats import parse_claim as _claim
from prune.model import PLHead, load_model
from prune.patched import PatchSet, patch_bounds
from prune.proofs import generate_keys, write_signed_proof
from prune.unlearn import UnlearnResult, unlearn
from prune.unlearn._points import declare_box
from tests.prune._engine_models import DigitsWork, digits_work

FORGET = np.array([3, 7, 12, 40, 41, 99], dtype=np.int64)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[DigitsWork, UnlearnResult, Path]:
    work = digits_work()
    result = unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_indices=FORGET,
        x_test=work.x_test,
        y_test=work.y_test,
        target_policy="calibrated",
        calibrated_tolerance=0.0,  # flat margins: the constant-patch lie below must fail
    )
    keys = tmp_path_factory.mktemp("keys")
    generate_keys(keys)
    return work, result, keys


def _proof(
    setup: tuple[DigitsWork, UnlearnResult, Path], dest: Path, result: UnlearnResult | None = None
) -> VerifyInputs:
    work, honest, keys = setup
    out = result or honest
    dest.mkdir()
    (dest / "model.onnx").write_bytes(out.patched_model)
    write_signed_proof(
        dest, result=out, original_model=work.raw, key_path=keys / "owner.key", now=NOW
    )
    return VerifyInputs(
        proof=dest,
        public_key=keys / "owner.pub",
        original=work.model_path,
        forget=dest / "forget.npz",
        reference=work.folder / "test.npz",
    )


def _verify(inputs: VerifyInputs, policy: Policy | None = None) -> VerificationReport:
    return verify_proof(
        inputs, now=NOW + timedelta(minutes=1), rng=np.random.default_rng(0), policy=policy
    )


def _claims(
    result: UnlearnResult, edit: Callable[[CalibratedClaim], CalibratedClaim]
) -> UnlearnResult:
    claims = tuple(edit(c) if isinstance(c, CalibratedClaim) else c for c in result.claims)
    return dataclasses.replace(result, claims=claims)


def test_honest_calibrated_proof_verifies(
    setup: tuple[DigitsWork, UnlearnResult, Path], tmp_path: Path
) -> None:
    report = _verify(_proof(setup, tmp_path / "P"))
    assert report.verdict == "verified", [
        (o.name, o.detail) for o in report.outcomes if o.status == "fail"
    ]
    outcome = report.outcome("replay.calibrated")
    assert outcome.status == "pass" and outcome.evidence["claims"] == len(FORGET)
    assert report.outcome("replay.claims").status == "not-run"


def test_calibrated_output_lie_fails(
    setup: tuple[DigitsWork, UnlearnResult, Path], tmp_path: Path
) -> None:
    def lie(c: CalibratedClaim) -> CalibratedClaim:
        out = list(c.output)
        out[c.rival] += 0.5
        return dataclasses.replace(c, output=tuple(out))

    report = _verify(_proof(setup, tmp_path / "P", _claims(setup[1], lie)))
    outcome = report.outcome("replay.calibrated")
    assert outcome.status == "fail" and "do not output the declared logits" in outcome.detail


def test_calibrated_bound_understated_fails(
    setup: tuple[DigitsWork, UnlearnResult, Path], tmp_path: Path
) -> None:
    def lie(c: CalibratedClaim) -> CalibratedClaim:  # below the margin at the sample itself
        return dataclasses.replace(c, upper_margin=c.output[c.label] - c.output[c.rival] - 0.5)

    report = _verify(_proof(setup, tmp_path / "P", _claims(setup[1], lie)))
    outcome = report.outcome("replay.calibrated")
    assert outcome.status == "fail"
    assert "more confident than their claimed bound" in outcome.detail
    assert "region claims do not hold" in outcome.detail


def test_calibrated_constant_patch_is_not_flat_over_the_region(
    setup: tuple[DigitsWork, UnlearnResult, Path], tmp_path: Path
) -> None:
    """The owner outputs the target at the sample with a constant patch (no flattening): the
    sample itself passes, but the margin grows inside the region beyond the claimed bound."""
    work, honest, _ = setup
    imported = load_model(work.raw)
    head = imported.head
    box = declare_box(imported, work.x_train)
    x = honest.forget_x.reshape(len(FORGET), -1).astype(np.float64)
    logits, z = head.forward(x)
    claims = [c for c in honest.claims if isinstance(c, CalibratedClaim)]
    target = np.array([c.output for c in claims])
    d = target - logits
    patches = PatchSet(
        gate="activation",
        n=float(honest.method["n"]),
        active=z >= 0,
        d=d,
        C=None,
        K=patch_bounds(None, d, box),
        targets=np.array([c.rival for c in claims]),
    )
    model = export_patched(imported, patches, box)
    lied = dataclasses.replace(honest, patched_model=model)
    report = _verify(_proof(setup, tmp_path / "P", lied))
    outcome = report.outcome("replay.calibrated")
    assert outcome.status == "fail", outcome.detail
    assert "region claims do not hold" in outcome.detail
    assert "declared logits" not in outcome.detail  # the sample itself is honest
    assert outcome.evidence["region_lps"] > 0


def test_two_sided_membership_passes_calibrated_and_reports_two_versions(
    setup: tuple[DigitsWork, UnlearnResult, Path], tmp_path: Path
) -> None:
    policy = Policy(membership=MembershipPolicy(attack="loss", sides="two"))
    report = verify_proof(
        _proof(setup, tmp_path / "P"),
        now=NOW + timedelta(minutes=1),
        rng=np.random.default_rng(0),
        policy=policy,
        checks=["membership.inference"],
    )
    outcome = report.outcome("membership.inference")
    assert outcome.status == "pass", outcome.detail
    assert "not detectable to a single-model attacker" in outcome.detail
    assert "two_version_auc" in outcome.evidence
    assert outcome.evidence["two_version_detectable"] is True  # a local patch always is


def _record() -> dict[str, object]:
    return CalibratedClaimRecord(
        leaf_index=0,
        label=1,
        rival=2,
        patch=0,
        upper_margin="1.5",
        output=("0.0", "2.0", "0.5"),
        source="cross-fitted",
    ).to_dict()


def test_calibrated_record_round_trip_and_obligation() -> None:
    doc = _record()
    back = _claim(doc, "claims[0]")
    assert isinstance(back, CalibratedClaimRecord) and back.to_dict() == doc
    rows = back.obligations(3)
    np.testing.assert_array_equal(rows.coeffs, [[0.0, 1.0, -1.0]])
    np.testing.assert_array_equal(rows.bound, [1.5])
    assert rows.scope == "patch" and rows.patch == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "teleport"}, "unknown claim kind"),
        ({"kind_version": 2}, "kind_version"),
        ({"rival": 1}, "two different classes"),
        ({"rival": 3}, "two different classes"),
        ({"region": "point-only"}, "region claim"),
        ({"source": "guess"}, "source"),
        ({"upper_margin": 1.5}, "expected a string"),
        ({"upper_margin": "1.50"}, "upper_margin"),
        ({"output": ["1.0"]}, "at least two"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_calibrated_records_are_rejected(change: dict[str, object], message: str) -> None:
    doc = {**_record(), **change}
    with pytest.raises(MalformedError, match=message):
        _claim(doc, "claims[0]")


@pytest.fixture(scope="module", params=["routed", "tree"])
def routed(setup: tuple[DigitsWork, UnlearnResult, Path], request: Any) -> UnlearnResult:
    """The same request with each routed gate (affine patches gathered per input) and the
    default tolerance (partly flattened margins)."""
    work = setup[0]
    return unlearn(
        work.raw,
        work.x_train,
        work.y_train,
        forget_indices=FORGET,
        x_test=work.x_test,
        y_test=work.y_test,
        target_policy="calibrated",
        gate=request.param,
    )


def test_routed_calibrated_proof_verifies_every_region(
    setup: tuple[DigitsWork, UnlearnResult, Path], routed: UnlearnResult, tmp_path: Path
) -> None:
    assert routed.method["gate"] in ("routed", "tree")
    report = _verify(_proof(setup, tmp_path / "P", routed))
    assert report.verdict == "verified", [
        (o.name, o.detail) for o in report.outcomes if o.status == "fail"
    ]
    assert report.outcome("structure.patch").status == "pass"
    certificate = report.outcome("region.certificate")
    assert certificate.status == "pass" and certificate.evidence["claims"] == len(FORGET)
    assert report.outcome("replay.calibrated").status == "pass"


def test_routed_calibrated_patch_steeper_than_claimed_fails(
    setup: tuple[DigitsWork, UnlearnResult, Path], routed: UnlearnResult, tmp_path: Path
) -> None:
    """A routed model whose affine patches steepen the margin by half its gradient instead
    of flattening it, with ``d`` moved so that every forget sample still outputs its declared
    logits: the samples replay honestly, the region bound does not hold, and both region
    checks say so."""
    work = setup[0]
    imported = load_model(work.raw)
    box = declare_box(imported, work.x_train)
    claims = [c for c in routed.claims if isinstance(c, CalibratedClaim)]
    x = routed.forget_x.reshape(len(FORGET), -1).astype(np.float64)
    _, z = imported.head.forward(x)
    first = {c.patch: i for i, c in reversed(list(enumerate(claims)))}
    rows = np.array([first[u] for u in range(len(first))])
    target = np.array([claims[i].output for i in rows])
    logits, _ = imported.head.forward(x[rows])
    C = np.zeros((len(rows), x.shape[1], target.shape[1]))
    for u, i in enumerate(rows):
        grad = _margin_gradient(imported.head, x[i], claims[i].label, claims[i].rival)
        C[u, :, claims[i].label] = 0.5 * grad
    d = target - logits - np.einsum("ui,uio->uo", x[rows], C)
    patches = PatchSet(
        gate=str(routed.method["gate"]),
        n=float(routed.method["n"]),
        active=z[rows] >= 0,
        d=d,
        C=C,
        K=patch_bounds(C, d, box),
        targets=np.array([claims[i].rival for i in rows]),
    )
    lied = dataclasses.replace(routed, patched_model=export_patched(imported, patches, box))
    report = _verify(_proof(setup, tmp_path / "P", lied))
    assert report.outcome("structure.patch").status == "pass"  # the canonical routed form
    certificate = report.outcome("region.certificate")
    assert certificate.status == "fail" and "not proved over their region" in certificate.detail
    replay = report.outcome("replay.calibrated")
    assert replay.status == "fail" and "region claims do not hold" in replay.detail
    assert "declared logits" not in replay.detail  # the samples themselves are honest


def _margin_gradient(
    head: PLHead, x: NDArray[np.float64], label: int, rival: int
) -> NDArray[np.float64]:
    """Gradient of ``f_label - f_rival`` on the linear region of ``x`` (the head's layers
    composed with the pattern of ``x``)."""
    jac, value = np.eye(len(x)), x.copy()
    for i, layer in enumerate(head.layers):
        jac, value = layer.weight @ jac, layer.weight @ value + layer.bias
        if i < len(head.layers) - 1:
            mask = (value >= 0).astype(np.float64)
            jac, value = jac * mask[:, None], value * mask
    return np.asarray(jac[label] - jac[rival])


def _receipt(
    setup: tuple[DigitsWork, UnlearnResult, Path], proof: Path, tmp_path: Path, leaf: int = 1
) -> ReceiptInputs:
    """What the data subject of ``leaf`` holds: their sample (as submitted), label, receipt."""
    work, _, keys = setup
    sample = tmp_path / "subject.npy"
    np.save(sample, np.ascontiguousarray(work.x_train[FORGET[leaf]], dtype=np.float32))
    return ReceiptInputs(
        receipt=proof / "receipts" / f"receipt-{leaf}.json",
        certificate=proof / "certificate.json",
        public_key=keys / "owner.pub",
        sample=sample,
        label=int(work.y_train[FORGET[leaf]]),
        model=proof / "model.onnx",
    )


def test_a_subject_checks_a_calibrated_receipt(
    setup: tuple[DigitsWork, UnlearnResult, Path], tmp_path: Path
) -> None:
    """``audit receipt`` on a calibrated claim: the claim names the subject's label and its
    bound, and the served model gives the declared output at the subject's own sample."""
    inputs = _receipt(setup, _proof(setup, tmp_path / "P").proof, tmp_path)
    report = verify_receipt(inputs, now=NOW + timedelta(minutes=1))
    assert report.verified and report.complete, [(o.name, o.detail) for o in report.outcomes]
    assert report.outcome("receipt.claim").evidence["kind"] == "calibrated"
    replay = report.outcome("receipt.replay").evidence
    assert replay["output_gap"] <= replay["tolerance"]
    assert replay["margin"] <= replay["upper_margin"] + Policy().margin_tolerance


@pytest.mark.parametrize(
    ("shift", "message"),
    [("output", "from the declared one"), ("bound", "more confident than claimed")],
)
def test_a_calibrated_receipt_whose_claim_the_model_breaks_fails(
    setup: tuple[DigitsWork, UnlearnResult, Path], tmp_path: Path, shift: str, message: str
) -> None:
    """The owner signs a claim the served model does not keep at the subject's sample: another
    declared output, or a bound below the served margin."""

    def lie(c: CalibratedClaim) -> CalibratedClaim:
        if shift == "output":
            out = list(c.output)
            out[c.rival] += 0.5
            return dataclasses.replace(c, output=tuple(out))
        return dataclasses.replace(c, upper_margin=c.output[c.label] - c.output[c.rival] - 0.5)

    proof = _proof(setup, tmp_path / "P", _claims(setup[1], lie)).proof
    report = verify_receipt(_receipt(setup, proof, tmp_path), now=NOW + timedelta(minutes=1))
    outcome = report.outcome("receipt.replay")
    assert outcome.status == "fail" and message in outcome.detail
    assert report.outcome("receipt.claim").status == "pass"
