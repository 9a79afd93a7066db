"""The class-mode threat matrix (honest proof: ``prune unlearn --forget-class K``, suppression)
on digits, seed 0, through the real CLI, with a few class-mode adversaries: each is caught by its
threat's checks and the honest class proof passes every check. The full class matrix (every
adversary, three seeds, Fashion-MNIST MLP and CNN) is a benchmark
(``benchmarks/results/threat-matrix-*.json``), not a test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from threat_models.adversaries import ADVERSARIES, HONEST
from threat_models.auditor import MembershipPolicy
from threat_models.cli import cli
from threat_models.matrix import Matrix
from threat_models.model import THREATS
from threat_models.scenario import ScenarioConfig

CHOSEN = ("class_nan_target", "class_hair_margin", "narrow_box", "class_region_cap")


@pytest.fixture(scope="module")
def class_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any]]:
    work = tmp_path_factory.mktemp("class-matrix") / "work"
    args = ["matrix", "--mode", "class", "--seeds", "0", "--json", "--work", str(work)]
    for name in CHOSEN:
        args += ["--adversary", name]
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout)


def _row(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (row,) = [r for r in doc["rows"] if r["adversary"] == name]
    return row


def test_class_matrix_is_ok(class_run: tuple[int, dict[str, Any]]) -> None:
    code, doc = class_run
    assert code == 0 and doc["ok"] is True
    assert doc["setting"] == "digits-mlp-class"
    assert {r["adversary"] for r in doc["rows"]} == {HONEST, *CHOSEN}
    assert set(doc["not_applicable"]) == {
        n for n, c in ADVERSARIES.items() if "class" not in c.modes
    }


def test_honest_class_proof_passes_every_check(class_run: tuple[int, dict[str, Any]]) -> None:
    row = _row(class_run[1], HONEST)
    assert row["failed"] == []
    statuses = row["statuses"]
    assert statuses["class.suppression"] == statuses["class.reference"] == "pass"
    assert statuses["membership.canaries"] == "pass"
    # region checks have nothing to check in a suppression proof: reported, not passed
    assert statuses["structure.patch"] == statuses["region.certificate"] == "not-run"


@pytest.mark.parametrize("name", CHOSEN)
def test_class_adversary_is_caught(class_run: tuple[int, dict[str, Any]], name: str) -> None:
    row = _row(class_run[1], name)
    threat = next(t for t in THREATS if name in t.adversaries)
    assert set(row["failed"]) & set(threat.caught_by), row["failed"]
    assert "class.suppression" in row["failed"]


def test_class_nan_is_caught_black_box_too(class_run: tuple[int, dict[str, Any]]) -> None:
    row = _row(class_run[1], "class_nan_target")
    assert {"class.reference", "replay.claims"} <= set(row["failed"])


def test_sample_only_adversary_is_refused_in_class_mode(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["matrix", "--mode", "class", "--adversary", "region_cap", "--work", str(tmp_path / "w")],
    )
    assert result.exit_code == 2
    assert "does not apply to class mode" in result.output and "class_region_cap" in result.output


def test_setting_configurations() -> None:
    fashion = ScenarioConfig.setting("fashion-mnist", "cnn", "class")
    assert fashion.name == "fashion-mnist-cnn-class"
    assert fashion.train_subset and fashion.test_subset  # cheap, and recorded in the JSON
    doc = fashion.to_json()
    assert doc["setting"] == fashion.name and doc["train_subset"] == fashion.train_subset
    digits = ScenarioConfig.setting("digits", "mlp", "sample")
    assert digits == ScenarioConfig() and digits.train_subset is None


def test_input_space_adversary_is_refused_on_a_cnn(tmp_path: Path) -> None:
    """``shared_region`` and ``wide_band`` fabricate a point of a region in input space: on a CNN
    (its head starts at a feature cut) the matrix refuses them by name before building anything,
    and lists them as not applicable instead of crashing mid-run."""
    result = CliRunner().invoke(
        cli,
        [
            "matrix",
            "--dataset",
            "fashion-mnist",
            "--model",
            "cnn",
            "--adversary",
            "wide_band",
            "--work",
            str(tmp_path / "w"),
        ],
    )
    assert result.exit_code == 2
    assert "'wide_band' does not apply to a cnn" in result.output
    assert not (tmp_path / "w" / "seed-0").exists()
    skipped = Matrix(
        seeds=(0,),
        rows=(),
        config=ScenarioConfig.setting("fashion-mnist", "cnn", "sample"),
        membership=MembershipPolicy(),
        created="2026-12-03T00:00:00Z",
    ).not_applicable
    assert {"shared_region", "wide_band"} <= set(skipped)
    assert skipped["wide_band"]["architectures"] == ["mlp"]
