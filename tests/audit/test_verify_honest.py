"""An honest proof verifies; the verdict policy is fail-closed; the report round-trips."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from audit.errors import AuditError, InputError, VerificationError
from audit.verify import CHECKS, Policy, VerificationReport, render_table, verify_proof
from tests.audit.adversarial.kit import ProofKit, session_kit
from tests.audit.adversarial.tampers import payload_of


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


@pytest.fixture(scope="module")
def report(kit: ProofKit) -> VerificationReport:
    return verify_proof(kit.inputs(), now=kit.now, rng=np.random.default_rng(1))


def test_honest_proof_verifies(report: VerificationReport) -> None:
    assert report.verified, [o for o in report.outcomes if o.status != "pass"]
    assert [o.name for o in report.outcomes] == list(CHECKS)
    assert report.outcome("commitment.consistency").status == "not-run"  # first batch
    assert report.outcome("membership.inference").status == "not-run"  # opt-in
    optional = {
        "commitment.consistency",
        "membership.inference",
        "class.suppression",  # sample deletion: no class claim
        "class.reference",
        "replay.calibrated",  # flip claims only
    }
    assert all(o.status == "pass" for o in report.outcomes if o.name not in optional)
    report.raise_for_failure()


def test_honest_evidence_is_measured(report: VerificationReport, kit: ProofKit) -> None:
    replay = report.outcome("replay.claims").evidence
    assert replay["claims"] == len(kit.rows) and replay["wrong_class"] == 0
    probes = report.outcome("region.probes").evidence
    assert probes["points"] > 0 and probes["points_failed"] == 0
    assert probes["lp_claims"] >= 1 and probes["lp_min_margin"] >= 2.0 - 0.01
    assert 1 <= probes["lp_solved"] <= Policy().lp_classes * probes["lp_claims"]
    assert probes["lp_onnxruntime_min_margin"] >= 2.0 - 0.01
    locality = report.outcome("locality").evidence
    assert locality["outside_supports"] > 0 and locality["max_abs_diff_outside"] == 0.0
    structure = report.outcome("structure.patch").evidence
    assert structure["gate_mismatches"] == 0 and structure["formula_error"] < 1e-5


def test_exact_part_without_a_class_cap_covers_every_class(kit: ProofKit) -> None:
    report = verify_proof(
        kit.inputs(),
        now=kit.now,
        rng=np.random.default_rng(1),
        policy=Policy(lp_classes=0),
        checks=["region.probes"],
    )
    probes = report.outcome("region.probes").evidence
    assert report.outcome("region.probes").status == "pass"
    assert probes["lp_exact"] and probes["lp_classes_left"] == 0 and probes["lp_unsolved"] == 0
    with pytest.raises(InputError, match="LP claims and classes"):
        Policy(lp_classes=-1)


def test_report_json_round_trip(report: VerificationReport) -> None:
    doc = json.loads(report.dumps())
    assert doc["type"] == "https://prune-audit.dev/verification/v1" and doc["version"] == 1
    assert doc["verdict"] == "verified"
    assert VerificationReport.from_json(doc) == report
    doc["verdict"] = "failed"
    with pytest.raises(InputError, match="does not follow"):
        VerificationReport.from_json(doc)
    with pytest.raises(InputError, match="unknown type"):
        VerificationReport.from_json({**doc, "version": 2})


def test_table_names_every_check(report: VerificationReport) -> None:
    table = render_table(report)
    assert all(name in table for name in CHECKS)
    assert table.splitlines()[-1].startswith(
        f"VERIFIED: {len(CHECKS) - 5} passed, 0 failed, 5 not run"  # + replay.calibrated
    )


@pytest.mark.parametrize("missing", ["original", "forget", "reference"])
def test_missing_input_fails_closed(kit: ProofKit, missing: str) -> None:
    report = verify_proof(kit.inputs(**{missing: None}), now=kit.now, rng=np.random.default_rng(0))
    assert report.verdict == "failed"
    failed = report.failures
    assert failed and all("the policy requires it" in o.detail for o in failed)
    with pytest.raises(VerificationError, match="not given, and the policy requires it"):
        report.raise_for_failure()


def test_partial_policy_skips_but_says_so(kit: ProofKit) -> None:
    report = verify_proof(
        kit.inputs(original=None, reference=None),
        now=kit.now,
        rng=np.random.default_rng(0),
        policy=Policy().partial(),
    )
    assert report.verified and not report.complete
    skipped = {o.name for o in report.outcomes if "missing_inputs" in o.evidence}
    assert skipped == {
        "digest.original",
        "structure.original",
        "structure.patch",
        "class.suppression",
        "class.reference",
        "region.certificate",
        "region.probes",
        "locality",
        "utility",
        "replay.calibrated",
    }
    assert "partial" in render_table(report)


def test_empty_check_list_is_an_error(kit: ProofKit) -> None:
    with pytest.raises(InputError, match="empty list of checks"):
        verify_proof(kit.inputs(), now=kit.now, rng=np.random.default_rng(0), checks=[])
    with pytest.raises(InputError, match="unknown check"):
        verify_proof(kit.inputs(), now=kit.now, rng=np.random.default_rng(0), checks=["nope"])


def test_check_subset_runs_in_registry_order(kit: ProofKit) -> None:
    report = verify_proof(
        kit.inputs(),
        now=kit.now,
        rng=np.random.default_rng(0),
        checks=["digest.model", "signature.certificate"],
    )
    assert [o.name for o in report.outcomes] == ["signature.certificate", "digest.model"]
    assert report.verified


def test_auditor_input_errors_are_input_errors(kit: ProofKit, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        verify_proof(kit.inputs(proof=tmp_path / "nope"), now=kit.now, rng=np.random.default_rng(0))
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not a key")
    with pytest.raises(InputError, match="not a PEM public key"):
        verify_proof(kit.inputs(public_key=bad_key), now=kit.now, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="reference data"):
        verify_proof(kit.inputs(reference=bad_key), now=kit.now, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="timezone-aware"):
        verify_proof(kit.inputs(), now=kit.now.replace(tzinfo=None), rng=np.random.default_rng(0))


def test_nonce_store_records_only_verified(kit: ProofKit, tmp_path: Path) -> None:
    store = tmp_path / "nonces.txt"
    first = verify_proof(kit.inputs(nonce_store=store), now=kit.now, rng=np.random.default_rng(0))
    assert first.verified
    nonce = payload_of(kit.proof)["predicate"]["nonce"]
    assert store.read_text().split() == [nonce]
    second = verify_proof(kit.inputs(nonce_store=store), now=kit.now, rng=np.random.default_rng(0))
    assert second.outcome("freshness").status == "fail"
    assert "replayed certificate" in second.outcome("freshness").detail
    assert store.read_text().split() == [nonce]


def test_verdict_needs_a_pass() -> None:
    from audit.verify import CheckOutcome

    empty = VerificationReport(kind="proof", outcomes=())
    with pytest.raises(AuditError, match="empty list of checks"):
        _ = empty.verdict
    skipped = VerificationReport(
        kind="proof", outcomes=(CheckOutcome("x", "not-run", "does not apply"),)
    )
    assert skipped.verdict == "failed"


def test_policy_validates() -> None:
    with pytest.raises(InputError, match="unknown input"):
        Policy(required_inputs=frozenset({"everything"}))
    with pytest.raises(InputError, match="at least 1"):
        replace(Policy(), probe_directions=0)


def test_append_only_batch_verifies(kit: ProofKit, tmp_path: Path) -> None:
    """Second batch of an append-only log: only its own leaves are opened; the root is rebuilt
    through the consistency proof's old subtrees."""
    from tests.audit.adversarial.kit import honest_patch, pick_forget

    log = tmp_path / "commitments.json"
    kit.reissue(tmp_path / "batch1", commitment_log=log)
    rows = pick_forget(kit.work, count=3, seed=5)
    spec, claims = honest_patch(kit.work, rows)
    second = kit.reissue(
        tmp_path / "batch2", rows=rows, spec=spec, claims=claims, commitment_log=log
    )
    report = verify_proof(kit.inputs(second), now=kit.now, rng=np.random.default_rng(0))
    assert report.verified, report.failures
    assert report.outcome("commitment.consistency").status == "pass"
    assert report.outcome("commitment.openings").evidence["batch_leaves"] == 3
    payload = payload_of(second)["predicate"]
    assert payload["previous_root"]["size"] == len(kit.rows)
    # the first batch's openings do not open the second batch
    other = verify_proof(
        kit.inputs(second, forget=tmp_path / "batch1" / "forget.npz"),
        now=kit.now,
        rng=np.random.default_rng(0),
    )
    assert "for the 3 leaves" in other.outcome("commitment.openings").detail


def test_reference_labels_outside_the_models_classes_are_bad_input(
    kit: ProofKit, tmp_path: Path
) -> None:
    data = np.load(kit.work.test)
    bad = tmp_path / "reference.npz"
    y = data["y"].copy()
    y[0] = 10  # digits has classes 0..9
    np.savez(bad, x=data["x"], y=y)
    with pytest.raises(InputError, match="not one of the model's 10 classes"):
        verify_proof(kit.inputs(reference=bad), now=kit.now, rng=np.random.default_rng(0))
