"""``audit mia`` in-process (click's CliRunner) and once through the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from audit.cli import cli
from audit.mia import DOCUMENT_TYPE, Architecture, TrainingRecipe
from audit.mia._arch import module_from_state
from audit.mia._train import train_model
from audit.runtime import OnnxModel
from tests.audit.test_mia_support import digits_split, export_onnx

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained MLP as ONNX plus members / non-members / reference .npz files."""
    root = tmp_path_factory.mktemp("mia")
    split = digits_split(4, members=150, non_members=150)
    arch = Architecture("mlp", (32, 16), (64,), 10)
    trained = train_model(
        arch,
        split.members.x,
        split.members.y,
        recipe=TrainingRecipe(epochs=60, batch_size=32),
        seed=0,
    )
    export_onnx(module_from_state(arch, trained.state), root / "model.onnx", (64,))
    other = train_model(
        arch, split.reference.x, split.reference.y, recipe=TrainingRecipe(epochs=5), seed=1
    )
    export_onnx(module_from_state(arch, other.state), root / "other.onnx", (64,))
    for name, data in (
        ("members", split.members),
        ("non_members", split.non_members),
        ("reference", split.reference),
    ):
        np.savez(root / f"{name}.npz", x=data.x, y=data.y)
    return root


def _args(work: Path, *extra: str) -> list[str]:
    return [
        "mia",
        str(work / "model.onnx"),
        "--members",
        str(work / "members.npz"),
        "--non-members",
        str(work / "non_members.npz"),
        "--reference",
        str(work / "reference.npz"),
        "--shadow-models",
        "3",
        "--epochs",
        "5",
        "--bootstrap",
        "20",
        "--quiet",
        *extra,
    ]


def test_mia_prints_a_table_and_writes_a_versioned_document(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "mia.json"
    result = CliRunner().invoke(
        cli,
        _args(work, "--json", str(out), "--compare", f"other={work / 'other.onnx'}"),
    )
    assert result.exit_code == 0, result.output
    for name in ("loss", "confidence", "entropy", "shadow", "lira", "rmia", "other"):
        assert name in result.output
    doc = json.loads(out.read_text())
    assert (doc["version"], doc["type"], doc["game"]) == (
        1,
        DOCUMENT_TYPE,
        "members-vs-non-members",
    )
    assert doc["reference_models"]["models"] == 3
    assert doc["reference_models"]["architecture"] == "mlp:32,16"
    assert doc["versions"]["torch"] == torch.__version__
    model = doc["models"]["model"]
    onnx_model = OnnxModel(work / "model.onnx")
    for key, name in (("accuracy_members", "members"), ("accuracy_non_members", "non_members")):
        with np.load(work / f"{name}.npz") as data:
            want = (onnx_model.logits(data["x"]).argmax(1) == data["y"]).mean()
        assert model[key] == pytest.approx(want)
    lira = model["attacks"]["lira"]
    assert lira["params"]["variant"] == "offline" and lira["params"]["variance"] == "fixed"
    assert lira["params"]["sd_out"] > 0  # the fit-time variance is recorded
    assert lira["model_bootstrap"] == 20 and doc["model_bootstrap"] == 20
    assert "scores" not in lira
    assert lira["auc"]["low"] <= lira["auc"]["value"] <= lira["auc"]["high"]
    assert set(lira["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert len(lira["roc"]["fpr"]) == len(lira["roc"]["tpr"]) >= 2
    assert not list(tmp_path.glob("*.partial"))


def test_the_owners_recipe_per_sample_scores_and_per_class_thresholds(
    work: Path, tmp_path: Path
) -> None:
    train_json = tmp_path / "train.json"
    train_json.write_text(
        json.dumps(
            {
                "version": 1,
                "config": {
                    "arch": "mlp",
                    "hidden": [32, 16],
                    "epochs": 7,
                    "batch_size": 32,
                    "lr": 0.002,
                    "weight_decay": 0.0001,
                    "seed": 0,
                },
                "train_size": 150,
            }
        )
    )
    out = tmp_path / "mia.json"
    args = _args(
        work,
        "--json",
        str(out),
        "--train-json",
        str(train_json),
        "--attack",
        "loss",
        "--attack",
        "lira",
        "--per-class",
        "--sample-scores",
        "--model-bootstrap",
        "4",
    )
    args.remove("--epochs")
    args.remove("5")
    result = CliRunner().invoke(cli, [*args, "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    ref = doc["reference_models"]
    assert (ref["epochs"], ref["batch_size"], ref["lr"], ref["weight_decay"]) == (
        7,
        64,
        0.002,
        1e-4,
    )
    assert max(ref["train_sizes"]) <= 150
    loss = doc["models"]["model"]["attacks"]["loss"]
    assert loss["params"] == {"per_class": True} and loss["model_bootstrap"] == 4
    assert len(loss["scores"]["members"]) == 150 and len(loss["scores"]["non_members"]) == 150
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": 1, "config": {"epochs": "many"}}))
    result = CliRunner().invoke(cli, [*args, "--train-json", str(bad)])
    assert result.exit_code == 2 and "config.epochs must be a number" in result.output


def test_online_lira_with_per_example_variance(work: Path) -> None:
    args = _args(work, "--attack", "lira", "--lira-variant", "online", "--variance", "per-example")
    args[args.index("--shadow-models") + 1] = "4"
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "online" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("overlap", "disjoint"),
        ("no-y", "missing array y"),
        ("arch", "unknown architecture"),
        ("compare", "LABEL=MODEL.onnx"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    work: Path, tmp_path: Path, change: str, message: str
) -> None:
    args = _args(work, "--attack", "lira", "--json", str(tmp_path / "out.json"))
    if change == "overlap":
        shutil.copy(work / "members.npz", tmp_path / "ref.npz")
        args[args.index("--reference") + 1] = str(tmp_path / "ref.npz")
    elif change == "no-y":
        np.savez(tmp_path / "bad.npz", x=np.zeros((3, 64), np.float32))
        args[args.index("--members") + 1] = str(tmp_path / "bad.npz")
    elif change == "arch":
        args += ["--arch", "transformer"]
    else:
        args += ["--compare", "nolabel"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.json").exists()


def test_installed_entry_point(work: Path) -> None:
    exe = shutil.which("audit")
    if exe is None:
        pytest.skip("the audit entry point is not installed in this environment")
    done = subprocess.run(
        [exe, *_args(work, "--attack", "loss", "--attack", "rmia")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "rmia" in done.stdout and "3 reference models" in done.stdout
