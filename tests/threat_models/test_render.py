"""Matrix verdict logic, rendering and CLI exit codes on synthetic rows (no model is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import threat_models.cli as cli_module
from audit.verify import CheckOutcome
from threat_models.auditor import MembershipPolicy
from threat_models.matrix import ALL_CHECKS, Matrix, Row
from threat_models.render import COLUMN_CODES, render_matrix
from threat_models.scenario import ScenarioConfig


def _row(adversary: str, threat: int | None, failed: set[str], caught_by: tuple[str, ...]) -> Row:
    outcomes = tuple(
        CheckOutcome(name, "fail" if name in failed else "pass", "") for name in ALL_CHECKS
    )
    return Row(0, adversary, threat, caught_by, outcomes, "", 0.0)


def _matrix(*rows: Row) -> Matrix:
    return Matrix((0,), rows, ScenarioConfig(), MembershipPolicy(), "2026-01-01T00:00:00Z")


def test_caught_only_by_a_listed_check() -> None:
    assert _row("noop", 1, {"replay.claims"}, ("replay.claims",)).ok
    assert not _row("noop", 1, {"locality"}, ("replay.claims",)).ok  # failed, but not caught
    assert not _row("honest", None, {"locality"}, ()).ok  # a false alarm
    assert _row("honest", None, set(), ()).ok


def test_matrix_ok_needs_every_row() -> None:
    honest = _row("honest", None, set(), ())
    missed = _row("noop", 1, set(), ("replay.claims",))
    assert _matrix(honest).ok
    assert not _matrix(honest, missed).ok
    assert not _matrix().ok  # no rows is never a pass
    doc = _matrix(honest, missed).to_json()
    assert doc["ok"] is False and doc["summary"]["noop"] == {
        "threat": 1,
        "caught_by": ["replay.claims"],
        "seeds": 1,
        "ok": 0,
        "not_built": 0,
    }


def test_render_marks_and_verdicts() -> None:
    text = render_matrix(
        _matrix(
            _row("honest", None, set(), ()),
            _row("noop", 1, {"replay.claims", "locality"}, ("replay.claims",)),
            _row("sabotage", 8, set(), ("utility",)),
        )
    )
    assert set(COLUMN_CODES) == set(ALL_CHECKS)
    lines = {name: next(ln for ln in text.splitlines() if f" {name} " in ln) for name in
             ("honest", "noop", "sabotage")}  # fmt: skip
    assert "passes 1/1" in lines["honest"]
    assert "[X]" in lines["noop"] and "caught 1/1" in lines["noop"]
    assert "MISSED" in lines["sabotage"]
    assert text.rstrip().endswith("NOT OK")


def test_cli_exit_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missed = _matrix(_row("honest", None, set(), ()), _row("noop", 1, set(), ("replay.claims",)))
    monkeypatch.setattr(cli_module, "run_matrix", lambda **_: missed)
    result = CliRunner().invoke(cli_module.cli, ["matrix", "--seeds", "0", "--quiet"])
    assert result.exit_code == 1 and "MISSED" in result.stdout
    existing = tmp_path / "work"
    existing.mkdir()
    result = CliRunner().invoke(cli_module.cli, ["matrix", "--work", str(existing)])
    assert result.exit_code == 2 and "already exists" in result.stderr
    monkeypatch.undo()
    result = CliRunner().invoke(cli_module.cli, ["matrix", "--seeds", "1", "1"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "distinct" in result.stderr
