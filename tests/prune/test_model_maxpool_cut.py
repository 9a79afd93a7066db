"""A cut before a MaxPool, asked for with ``--cut``: the importer rewrites the pooling into the
head (finer regions than the default cut after it), ``prune inspect`` lists such cuts, and the
proof of the rewritten model verifies against ``PROOF/original.onnx`` only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from audit.cli import cli as audit_cli
from prune.cli import cli as prune_cli
from prune.model import load_model, pooling_cuts, read_model

RNG = np.random.default_rng(5)


def _pooled_cnn() -> bytes:
    """x [N, 1, 8, 8] -> Conv(2, pad 1) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm(16) -> Relu
    -> Gemm(10): a valid cut after the pool as exported (the default), and before it only with
    the pooling rewritten."""
    nodes = [
        helper.make_node("Conv", ["x", "k", "kb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"], transB=1),
    ]
    arrays = {
        "k": RNG.normal(size=(2, 1, 3, 3)),
        "kb": RNG.normal(size=2) * 0.1,
        "w1": RNG.normal(size=(16, 32)) * 0.5,
        "b1": RNG.normal(size=16) * 0.1,
        "w2": RNG.normal(size=(10, 16)),
        "b2": np.zeros(10),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in arrays.items()]
    graph = helper.make_graph(
        nodes,
        "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_the_default_cut_stays_after_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(raw := _pooled_cnn())
    assert read_model(path) == (raw, False)
    assert load_model(raw).head.cut == "f"


def test_a_cut_before_the_pool_rewrites_it_into_the_head(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_pooled_cnn())
    raw, changed = read_model(path, cut="x")
    assert changed
    assert "MaxPool" not in {n.op_type for n in onnx.load_from_string(raw).graph.node}
    head = load_model(raw, cut="x").head
    assert head.cut == "x" and len(head.hidden_sizes) > 1  # conv, tournament and Gemm units


@pytest.mark.parametrize("cut", ["f", "hr-missing", None])
def test_other_cuts_leave_the_model_as_exported(tmp_path: Path, cut: str | None) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(raw := _pooled_cnn())
    assert read_model(path, cut=cut) == (raw, False)


def test_inspect_lists_the_cuts_that_need_the_pooling_in_the_head(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(raw := _pooled_cnn())
    assert [r.tensor for r in pooling_cuts(raw)] == ["x", "c", "r"]
    result = CliRunner().invoke(prune_cli, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["default_cut"] == "f"
    assert [c["tensor"] for c in doc["pooling_cuts"]] == ["x", "c", "r"]


def test_unlearn_with_the_pooling_in_the_head_verifies(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    np.savez(tmp_path / "train.npz", x=x[:600], y=y[:600])
    np.savez(tmp_path / "test.npz", x=x[600:900], y=y[600:900])
    (tmp_path / "model.onnx").write_bytes(_pooled_cnn())
    (tmp_path / "forget.txt").write_text("3\n17\n")
    runner = CliRunner()
    keys = runner.invoke(prune_cli, ["keygen", "--out", str(tmp_path / "k"), "--no-passphrase"])
    assert keys.exit_code == 0, keys.output
    proof = tmp_path / "proof"
    result = runner.invoke(
        prune_cli,
        [
            "unlearn", str(tmp_path / "model.onnx"), "--train", str(tmp_path / "train.npz"),
            "--test", str(tmp_path / "test.npz"), "--forget-indices", str(tmp_path / "forget.txt"),
            "--cut", "x", "--key", str(tmp_path / "k" / "owner.key"), "--out", str(proof),
            "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (proof / "original.onnx").exists()  # the rewritten model is the committed original

    def verify(original: Path) -> int:
        return runner.invoke(
            audit_cli,
            [
                "verify", str(proof), "--public-key", str(tmp_path / "k" / "owner.pub"),
                "--original", str(original), "--forget", str(proof / "forget.npz"),
                "--reference", str(tmp_path / "test.npz"), "--quiet",
            ],
        ).exit_code  # fmt: skip

    assert verify(proof / "original.onnx") == 0
    assert verify(tmp_path / "model.onnx") == 1  # the model as exported is not what was patched


def _narrow_cnn(x: np.ndarray, y: np.ndarray, width: int) -> bytes:  # type: ignore[type-arg]
    """:func:`_pooled_cnn`'s graph with a dense head of ``width`` units after the pool: random
    convolution and first layer, the last layer fitted to one-hot labels by least squares (no
    training loop). The regions at the default cut (after the pool) are coarse."""
    rng = np.random.default_rng(11)
    k, kb = rng.normal(size=(2, 1, 3, 3)), np.zeros(2)
    padded = np.pad(x[:, 0], ((0, 0), (1, 1), (1, 1)))
    conv = np.stack(
        [
            sum(k[c, 0, i, j] * padded[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3))
            for c in range(2)
        ],
        axis=1,
    )
    pooled = np.maximum(conv, 0).reshape(len(x), 2, 4, 2, 4, 2).max(axis=(3, 5)).reshape(len(x), -1)
    w1 = rng.normal(size=(width, 32)) / 4
    b1 = -(pooled @ w1.T).mean(axis=0)  # centred: each unit active on about half the rows
    hidden = np.maximum(pooled @ w1.T + b1, 0)
    design = np.hstack([hidden, np.ones((len(x), 1))])
    fit = np.linalg.lstsq(design, np.eye(10)[y], rcond=None)[0]
    model = onnx.load_from_string(_pooled_cnn())
    arrays = {"k": k, "kb": kb, "w1": w1, "b1": b1, "w2": fit[:-1].T, "b2": fit[-1]}
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(arrays[init.name].astype(np.float32), init.name))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_the_default_cut_gives_way_when_its_regions_cost_accuracy(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = data.target.astype(np.int64)
    np.savez(tmp_path / "train.npz", x=x[:800], y=y[:800])
    path = tmp_path / "model.onnx"
    path.write_bytes(raw := _narrow_cnn(x[:800], y[:800], width=6))
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    correct = np.flatnonzero(session.run(None, {"x": x[:800]})[0].argmax(axis=1) == y[:800])
    (tmp_path / "forget.txt").write_text("".join(f"{i}\n" for i in correct[:3]))
    result = CliRunner().invoke(
        prune_cli,
        [
            "unlearn", str(path), "--train", str(tmp_path / "train.npz"), "--forget-indices",
            str(tmp_path / "forget.txt"), "--out", str(tmp_path / "proof"), "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "patching again with the MaxPool in the head (--cut x)" in result.output
    summary = json.loads((tmp_path / "proof" / "summary.json").read_text())
    assert summary["retain_accuracy_before"] - summary["retain_accuracy_after"] <= 0.01
    assert (tmp_path / "proof" / "original.onnx").exists()
