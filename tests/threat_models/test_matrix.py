"""The threat matrix on digits, through the real CLI: every adversary produces a complete proof
signed with the owner's real key, is caught by its threat's checks, and the honest owner
passes every check. Per-adversary assertions pin *which* checks catch each cheat."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from audit.verify import CHECKS, Policy, VerifyInputs, verify_proof
from tests.threat_models.conftest import MatrixRun
from threat_models.adversaries import ADVERSARIES, HONEST
from threat_models.matrix import ALL_CHECKS, MATRIX_TYPE
from threat_models.model import THREATS

PROOF_FILES = ("model.onnx", "summary.json", "certificate.json", "model.sig", "forget.npz")
SAMPLE = [name for name, cls in ADVERSARIES.items() if "sample" in cls.modes]


def test_matrix_is_ok_and_exits_zero(matrix_run: MatrixRun) -> None:
    doc = matrix_run.doc
    assert matrix_run.exit_code == 0
    assert doc["type"] == MATRIX_TYPE and doc["version"] == 1 and doc["ok"] is True
    assert doc["checks"] == list(ALL_CHECKS)
    assert {r["adversary"] for r in doc["rows"]} == set(SAMPLE)
    assert doc["setting"] == "digits-mlp-sample"
    # the class-only adversaries are listed, each with its sample-mode counterpart
    assert set(doc["not_applicable"]) == set(ADVERSARIES) - set(SAMPLE)
    for name, entry in doc["not_applicable"].items():
        assert entry["modes"] == ["class"], name
        counterpart = entry["counterpart"]
        assert counterpart is None or "sample" in ADVERSARIES[counterpart].modes, name


def test_honest_owner_passes_every_check(matrix_run: MatrixRun) -> None:
    row = matrix_run.row(HONEST)
    assert row["failed"] == []
    statuses = row["statuses"]
    assert set(statuses) == set(ALL_CHECKS)
    not_run = {name for name, status in statuses.items() if status == "not-run"}
    # a first batch has no previous root; a sample deletion with flip claims has no class
    # claim and no calibrated claims
    assert not_run == {
        "commitment.consistency",
        "class.suppression",
        "class.reference",
        "replay.calibrated",
    }
    assert statuses["membership.inference"] == statuses["membership.canaries"] == "pass"


@pytest.mark.parametrize("name", [n for n in SAMPLE if n != HONEST])
def test_every_adversary_is_caught_by_its_threat(matrix_run: MatrixRun, name: str) -> None:
    row = matrix_run.row(name)
    threat = next(t for t in THREATS if name in t.adversaries)
    assert row["threat"] == threat.number
    assert set(row["failed"]) & set(threat.caught_by), row["failed"]
    assert row["caught"] and row["ok"]


@pytest.mark.parametrize("name", SAMPLE)
def test_every_proof_is_complete(matrix_run: MatrixRun, name: str) -> None:
    proof = matrix_run.work / "seed-0" / name / "proof"
    for file in PROOF_FILES:
        assert (proof / file).is_file(), file
    assert any((proof / "receipts").iterdir())


def _verify_failures(row: dict[str, object]) -> set[str]:
    return {name for name in row["failed"] if name in CHECKS}  # type: ignore[attr-defined]


def test_residual_memorisation_is_caught_only_by_the_canaries(matrix_run: MatrixRun) -> None:
    """Every claim is true and certified: only the canary membership check can see the cheat
    (``membership.inference`` compares the forget set with ordinary held-out records, which a
    model that never saw them predicts just as well)."""
    row = matrix_run.row("residual_memorisation")
    assert row["failed"] == ["membership.canaries"]
    evidence = row["evidence"]["membership.canaries"]
    honest = matrix_run.row(HONEST)["evidence"]["membership.canaries"]
    assert evidence["auc"]["value"] > evidence["max_auc"] > honest["auc"]["value"]


def test_calibrated_zero_push_passes_every_claim_check_and_fails_the_canaries(
    matrix_run: MatrixRun,
) -> None:
    """Calibrated targets that are the original's own outputs: every obligation holds for the
    original itself (``replay.calibrated`` and the subject's receipt pass), so only the
    auditor's own membership measurement can see that nothing was forgotten."""
    row = matrix_run.row("calibrated_zero_push")
    assert row["failed"] == ["membership.canaries"]
    assert row["statuses"]["replay.calibrated"] == "pass"
    assert row["statuses"]["receipt.replay"] == "pass"
    evidence = row["evidence"]["membership.canaries"]
    honest = matrix_run.row(HONEST)["evidence"]["membership.canaries"]
    assert evidence["auc"]["value"] > evidence["max_auc"] > honest["auc"]["value"]


def test_equivocation_passes_audit_verify_and_fails_the_subjects_receipt(
    matrix_run: MatrixRun,
) -> None:
    row = matrix_run.row("equivocation")
    assert _verify_failures(row) == set()
    assert "receipt.binding" in row["failed"]


def test_certificate_forgeries_fail_exactly_their_binding_check(matrix_run: MatrixRun) -> None:
    assert "signature.certificate" in matrix_run.row("forged_signature")["failed"]
    # a certificate naming another original: digest.original fails, and the checks that would
    # run that original model fail closed without running it (never a pass)
    other_model = _verify_failures(matrix_run.row("forged_other_model"))
    assert "digest.original" in other_model
    assert other_model - {"digest.original"} <= {
        "structure.patch",
        "region.certificate",
        "region.probes",
        "locality",
        "utility",
    }
    assert _verify_failures(matrix_run.row("replayed_certificate")) == {"freshness"}
    assert "commitment.openings" in matrix_run.row("forged_other_forget_set")["failed"]


def test_exact_input_filter_passes_replay_but_not_probes(matrix_run: MatrixRun) -> None:
    row = matrix_run.row("exact_input_filter")
    assert row["statuses"]["replay.claims"] == "pass"
    assert row["statuses"]["region.probes"] == "fail"


def test_model_level_cheats(matrix_run: MatrixRun) -> None:
    assert "structure.patch" in matrix_run.row("structure_trigger")["failed"]
    assert "structure.original" in matrix_run.row("structure_weights")["failed"]
    sabotage = matrix_run.row("sabotage")
    assert sabotage["statuses"]["utility"] == "fail"
    rollback = matrix_run.row("rollback")
    assert rollback["statuses"]["signature.model"] == "pass"  # re-signed by the owner
    assert rollback["statuses"]["digest.model"] == "fail"
    assert "replay.claims" in matrix_run.row("partial")["failed"]
    assert "replay.claims" in matrix_run.row("noop")["failed"]


@pytest.mark.parametrize("name", ["duplicate_label_tail", "second_best_tail", "batch_size_tail"])
def test_unfaithful_tails_fail_only_the_tail_proof(matrix_run: MatrixRun, name: str) -> None:
    """Signed, otherwise honest proofs whose original tail serves forget samples their label
    again (the served label departs from the certified logits): only ``structure.tail`` sees it,
    every replay stops at ``prune/output``."""
    row = matrix_run.row(name)
    assert _verify_failures(row) == {"structure.tail"}
    served = [int(n) for n in re.findall(r"(\d+) of \d+ served their label", row["notes"])]
    assert max(served) > 0, row["notes"]


def test_shared_region_fails_only_structure_patch(matrix_run: MatrixRun) -> None:
    """A decoy leaf and a second patch on a requester's region: every claim certified for its
    own patch, the probes see the claimed targets, and the served model gives the requester's
    original label on part of the region; only ``structure.patch`` (one region, one patch)
    catches it (threat 21)."""
    row = matrix_run.row("shared_region")
    assert row["failed"] == ["structure.patch"]
    served = re.search(r"(\d+) of \d+ points of the certified region", row["notes"])
    assert served is not None and int(served.group(1)) > 0, row["notes"]


def test_wide_band_fails_only_structure_patch(
    matrix_run: MatrixRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A near-flat neuron planted in the committed original and a decoy patch on the region next
    door to a requester's, across that neuron alone: every claim certified for its own patch,
    the decoy's gate on over the whole requester's region, where the served model gives the
    original label on part of it; only the band rule of ``structure.patch`` catches it (threat
    22). Without that rule the same proof earns VERIFIED."""
    row = matrix_run.row("wide_band")
    assert row["failed"] == ["structure.patch"]
    assert "the gate of patch" in row["details"]["structure.patch"]
    served = re.search(r"(\d+) of \d+ points of the certified region", row["notes"])
    assert served is not None and int(served.group(1)) > 0, row["notes"]
    folder = matrix_run.work / "seed-0" / "wide_band"
    store = tmp_path / "nonces.txt"  # the matrix's store, untouched by this audit
    shutil.copy(folder / "auditor-nonces.txt", store)
    monkeypatch.setattr("audit.verify._structure._band_problem", lambda *args: None)
    report = verify_proof(
        VerifyInputs(
            proof=folder / "proof",
            public_key=matrix_run.scenario / "keys" / "owner.pub",
            original=folder / "original.onnx",
            forget=folder / "proof" / "forget.npz",
            reference=matrix_run.scenario / "work" / "test.npz",
            nonce_store=store,
        ),
        now=datetime.now(UTC),
        rng=np.random.default_rng(1),
        policy=Policy(),
    )
    assert report.verified, [(o.name, o.detail) for o in report.outcomes if o.status == "fail"]


def test_scenario_files_are_prune_train_layout(matrix_run: MatrixRun) -> None:
    work: Path = matrix_run.scenario / "work"
    for name in ("model.onnx", "train.npz", "test.npz", "train.json"):
        assert (work / name).is_file()
    assert (matrix_run.scenario / "keys" / "owner.key").stat().st_mode & 0o077 == 0
