"""``audit receipt``: a data subject's check of their own receipt, honest and tampered."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from audit.cli import cli
from audit.errors import InputError
from audit.receipt import RECEIPT_CHECKS, ReceiptInputs, verify_receipt
from audit.verify import VerificationReport
from tests.audit.adversarial.kit import ProofKit, session_kit
from tests.audit.adversarial.tampers import edit_certificate


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def _subject(kit: ProofKit, tmp_path: Path, leaf: int = 2) -> ReceiptInputs:
    """What the data subject of leaf ``leaf`` holds: their sample, label and receipt."""
    sample = tmp_path / "x.npy"
    np.save(sample, kit.work.x_train[kit.rows[leaf]])
    return ReceiptInputs(
        receipt=kit.proof / "receipts" / f"receipt-{leaf}.json",
        certificate=kit.proof / "certificate.json",
        public_key=kit.keys / "owner.pub",
        sample=sample,
        label=int(kit.work.y_train[kit.rows[leaf]]),
        model=kit.proof / "model.onnx",
    )


def _failed(report: VerificationReport, name: str) -> str:
    outcome = report.outcome(name)
    assert report.verdict == "failed" and outcome.status == "fail", outcome
    return outcome.detail


def test_honest_receipt_verifies(kit: ProofKit, tmp_path: Path) -> None:
    report = verify_receipt(_subject(kit, tmp_path), now=kit.now)
    assert report.verified and report.complete
    assert [o.name for o in report.outcomes] == list(RECEIPT_CHECKS)
    assert report.outcome("receipt.replay").evidence["predicted"] == kit.claims[2].target


def test_other_sample_is_not_included(kit: ProofKit, tmp_path: Path) -> None:
    inputs = _subject(kit, tmp_path)
    np.save(tmp_path / "x.npy", kit.work.x_train[kit.rows[3]])
    detail = _failed(verify_receipt(inputs, now=kit.now), "receipt.inclusion")
    assert "not committed at leaf 2" in detail


def test_wrong_label_fails_claim_and_inclusion(kit: ProofKit, tmp_path: Path) -> None:
    inputs = _subject(kit, tmp_path)
    wrong = replace(inputs, label=(int(kit.claims[2].label) + 1) % 10)
    report = verify_receipt(wrong, now=kit.now)
    assert "the subject's label is" in _failed(report, "receipt.claim")
    assert "not committed" in _failed(report, "receipt.inclusion")


def test_receipt_salt_tampered(kit: ProofKit, tmp_path: Path) -> None:
    inputs = _subject(kit, tmp_path)
    doc = json.loads(inputs.receipt.read_text())
    doc["salt"] = ("00" if doc["salt"][:2] != "00" else "11") + doc["salt"][2:]
    tampered = tmp_path / "receipt.json"
    tampered.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    report = verify_receipt(replace(inputs, receipt=tampered), now=kit.now)
    assert "not committed" in _failed(report, "receipt.inclusion")


def test_receipt_for_another_certificate(kit: ProofKit, tmp_path: Path) -> None:
    other = kit.reissue(tmp_path / "other")
    inputs = _subject(kit, tmp_path)
    report = verify_receipt(
        replace(inputs, receipt=other / "receipts" / "receipt-2.json"), now=kit.now
    )
    assert "names another certificate" in _failed(report, "receipt.binding")


def test_certificate_by_another_key(kit: ProofKit, tmp_path: Path) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    edit_certificate(proof, lambda doc: None, key=kit.other_keys / "owner.key")
    inputs = replace(_subject(kit, tmp_path), certificate=proof / "certificate.json")
    report = verify_receipt(inputs, now=kit.now)
    assert "no signature by the given public key" in _failed(report, "receipt.certificate")


def test_malformed_receipt_fails(kit: ProofKit, tmp_path: Path) -> None:
    bad = tmp_path / "receipt.json"
    bad.write_text('{"version": 1}')
    report = verify_receipt(replace(_subject(kit, tmp_path), receipt=bad), now=kit.now)
    assert "receipt unreadable" in _failed(report, "receipt.binding")


def test_swapped_model_fails_replay(kit: ProofKit, tmp_path: Path) -> None:
    inputs = replace(_subject(kit, tmp_path), model=kit.work.model)
    assert "digest mismatch" in _failed(verify_receipt(inputs, now=kit.now), "receipt.replay")


def test_sample_is_required_unless_partial(kit: ProofKit, tmp_path: Path) -> None:
    bare = replace(_subject(kit, tmp_path), sample=None, label=None, model=None)
    assert "policy requires it" in _failed(verify_receipt(bare, now=kit.now), "receipt.inclusion")
    partial = verify_receipt(bare, now=kit.now, partial=True)
    assert partial.verified and not partial.complete


def test_sample_without_label_is_usage_error(kit: ProofKit, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="go together"):
        verify_receipt(replace(_subject(kit, tmp_path), label=None), now=kit.now)


def test_cli_receipt_exit_codes(kit: ProofKit, tmp_path: Path) -> None:
    inputs = _subject(kit, tmp_path)
    label = kit.claims[2].label
    base = [
        "receipt",
        str(inputs.receipt),
        "--certificate",
        str(inputs.certificate),
        "--public-key",
        str(inputs.public_key),
        "--sample",
        str(inputs.sample),
        "--model",
        str(inputs.model),
    ]
    runner = CliRunner()
    ok = runner.invoke(cli, [*base, "--label", str(label), "--json", str(tmp_path / "r.json")])
    assert ok.exit_code == 0, ok.output
    assert "VERIFIED" in ok.output
    assert json.loads((tmp_path / "r.json").read_text())["kind"] == "receipt"
    failed = runner.invoke(cli, [*base, "--label", str((label + 1) % 10)])
    assert failed.exit_code == 1
    assert "audit: verification failed: receipt.claim" in failed.output
    missing = runner.invoke(
        cli,
        [
            "receipt",
            str(tmp_path / "nope.json"),
            "--certificate",
            str(inputs.certificate),
            "--public-key",
            str(inputs.public_key),
        ],
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output
