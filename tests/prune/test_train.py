from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from click.testing import CliRunner

from prune.cli import cli
from prune.data import load_dataset
from prune.train import TrainConfig, model_input, train


def test_training_is_seeded() -> None:
    data = load_dataset("digits")
    cfg = TrainConfig(hidden=(8,), epochs=2, seed=3)
    m1, r1 = train(data, cfg)
    m2, r2 = train(data, cfg)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert r1.train_accuracy == r2.train_accuracy


def test_cli_train_writes_folder_and_onnx_matches_torch(tmp_path: Path) -> None:
    out = tmp_path / "work"
    result = CliRunner().invoke(
        cli, ["train", "--out", str(out), "--hidden", "16,16", "--epochs", "30", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "model.onnx",
        "test.npz",
        "train.json",
        "train.npz",
    ]
    meta = json.loads((out / "train.json").read_text())
    assert meta["version"] == 1 and meta["input_shape"] == [64]
    test = np.load(out / "test.npz")
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": test["x"]})[0]
    acc = float((logits.argmax(1) == test["y"]).mean())
    assert abs(acc - meta["test_accuracy"]) < 1e-6
    assert acc > 0.5


def test_cli_train_cnn_exposes_feature_tensor(tmp_path: Path) -> None:
    import onnx

    out = tmp_path / "cnn"
    result = CliRunner().invoke(
        cli, ["train", "--arch", "cnn", "--out", str(out), "--epochs", "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    names = {o for n in onnx.load(str(out / "model.onnx")).graph.node for o in n.output}
    assert "features" in names
    x = np.load(out / "test.npz")["x"]
    assert x.shape[1:] == (1, 8, 8)
    assert model_input("cnn", x).shape == x.shape


def test_cli_train_refuses_non_empty_output(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
