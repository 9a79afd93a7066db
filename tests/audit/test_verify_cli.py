"""``audit verify`` on the command line: table, --json, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from audit.cli import cli
from audit.verify import CHECKS
from tests.audit.adversarial.kit import ProofKit, session_kit
from tests.audit.adversarial.tampers import flip_byte


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> ProofKit:
    return session_kit(tmp_path_factory)


def _args(kit: ProofKit, proof: Path | None = None) -> list[str]:
    proof = proof or kit.proof
    return [
        "verify",
        str(proof),
        "--public-key",
        str(kit.keys / "owner.pub"),
        "--original",
        str(kit.work.model),
        "--forget",
        str(proof / "forget.npz"),
        "--reference",
        str(kit.work.test),
        "--seed",
        "3",
    ]


def test_verified_exit_0_with_table_and_json(kit: ProofKit, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, [*_args(kit), "--json", str(out)])
    assert result.exit_code == 0, result.output
    # not run on this flip-claim sample proof: commitment.consistency, membership.inference,
    # class.suppression, class.reference, replay.calibrated
    assert f"VERIFIED: {len(CHECKS) - 5} passed, 0 failed, 5 not run" in result.output
    doc = json.loads(out.read_text())
    assert doc["verdict"] == "verified" and doc["settings"]["seed"] == 3
    assert [c["name"] for c in doc["checks"]][:2] == ["signature.certificate", "signature.model"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_json_to_stdout_is_pure_json(kit: ProofKit) -> None:
    result = CliRunner().invoke(cli, [*_args(kit), "--json", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["type"] == "https://prune-audit.dev/verification/v1"


def test_failed_exit_1_names_the_check(kit: ProofKit, tmp_path: Path) -> None:
    proof = kit.copy_proof(tmp_path / "proof")
    flip_byte(proof / "model.onnx")
    result = CliRunner().invoke(cli, [*_args(kit, proof), "--quiet"])
    assert result.exit_code == 1
    assert result.output.startswith("audit: verification failed: signature.model: ")
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback


def test_missing_required_input_exit_1(kit: ProofKit) -> None:
    args = [a for a in _args(kit)]
    i = args.index("--reference")
    del args[i : i + 2]
    result = CliRunner().invoke(cli, [*args, "--quiet"])
    assert result.exit_code == 1
    assert "policy requires it" in result.output
    partial = CliRunner().invoke(cli, [*args, "--partial"])
    assert partial.exit_code == 0 and "partial" in partial.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--public-key", "/nonexistent.pub"], "public key: /nonexistent.pub does not exist"),
        (["--reference", "/nonexistent.npz"], "reference data: /nonexistent.npz does not exist"),
        (["--original", "/nonexistent.onnx"], "original model /nonexistent.onnx does not exist"),
    ],
)
def test_bad_input_exit_2(kit: ProofKit, change: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, [*_args(kit), *change])
    assert result.exit_code == 2
    assert result.output.strip() == f"audit: error: {message}"


def test_usage_error_exit_2(kit: ProofKit) -> None:
    result = CliRunner().invoke(cli, ["verify", str(kit.proof)])
    assert result.exit_code == 2 and "--public-key" in result.output
    result = CliRunner().invoke(cli, [*_args(kit), "--check", "no.such.check"])
    assert result.exit_code == 2


def test_installed_entry_point(kit: ProofKit, tmp_path: Path) -> None:
    """The real console script, in a fresh process: exit status and one line on stderr."""
    exe = Path(sys.executable).with_name("audit")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proof = kit.copy_proof(tmp_path / "proof")
    (proof / "forget.npz").write_bytes(b"PK\x03\x04 not really")
    args = [str(exe), *_args(kit, proof), "--quiet", "--fail-fast"]
    bad = subprocess.run(args, capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert bad.stderr.startswith("audit: verification failed: commitment.openings: forget set:")
    assert len(bad.stderr.strip().splitlines()) == 1
