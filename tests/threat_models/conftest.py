"""One threat matrix per test session, run through the real CLI on digits (seed 0), with its
scenario and proofs kept under a session temporary folder for the tests that inspect them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from threat_models.cli import cli

SEED = 0


@dataclass(frozen=True)
class MatrixRun:
    exit_code: int
    doc: dict[str, Any]
    work: Path

    def row(self, adversary: str) -> dict[str, Any]:
        (row,) = [r for r in self.doc["rows"] if r["adversary"] == adversary]
        return row

    @property
    def scenario(self) -> Path:
        return self.work / f"seed-{SEED}" / "scenario"


@pytest.fixture(scope="session")
def matrix_run(tmp_path_factory: pytest.TempPathFactory) -> MatrixRun:
    work = tmp_path_factory.mktemp("matrix") / "work"
    result = CliRunner().invoke(
        cli, ["matrix", "--seeds", str(SEED), "--json", "--work", str(work)]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return MatrixRun(result.exit_code, json.loads(result.stdout), work)
