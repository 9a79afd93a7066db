"""A fixed batch dimension (an export without dynamic shapes) is freed on import, or refused with
advice when the graph depends on it (prune/model/_batch.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from prune.cli import cli as prune_cli
from prune.errors import ModelImportError
from prune.model import read_model
from prune.model._batch import BATCH_SYMBOL

RNG = np.random.default_rng(0)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], batch: int | str) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _flatten_mlp(batch: int | str, *, allowzero: int) -> bytes:
    """x [B, 2, 3] -> Reshape to [B, -1] (a constant holding B, as torch's default export writes
    it) -> Gemm -> Relu -> y [B, 4]."""
    target = [batch if isinstance(batch, int) else 0, -1]
    w = RNG.normal(size=(6, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"], allowzero=allowzero),
        helper.make_node("Gemm", ["flat", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(target, dtype=np.int64), "shape"),
        numpy_helper.from_array(w, "w"),
    ]
    return _model(nodes, inits, batch)


def _run(raw: bytes, x: NDArray[np.float32]) -> NDArray[np.float32]:
    session = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _write(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("allowzero", [0, 1])
def test_fixed_batch_reshape_is_freed_and_scores_row_by_row(tmp_path: Path, allowzero: int) -> None:
    raw = _flatten_mlp(4, allowzero=allowzero)
    freed, changed = read_model(_write(tmp_path, raw))
    assert changed
    proto = onnx.load_from_string(freed)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_SYMBOL
    x = RNG.normal(size=(9, 2, 3)).astype(np.float32)
    rows = np.concatenate([_run(raw, x[i : i + 4]) for i in (0, 4)] + [_run(raw, x[5:9])[3:]])
    np.testing.assert_allclose(_run(freed, x), rows, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_run(freed, x[:1]), rows[:1], rtol=1e-6, atol=1e-6)


def test_free_batch_model_is_returned_unchanged(tmp_path: Path) -> None:
    raw = _flatten_mlp("N", allowzero=0)
    assert read_model(_write(tmp_path, raw)) == (raw, False)


def _row_offset_model() -> bytes:
    """y = x.reshape(B, 6)[:, :4] + c with c a [B, 4] constant: row i gets its own offset, so
    the model means something only at batch B."""
    c = RNG.normal(size=(2, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["cut"]),
        helper.make_node("Add", ["cut", "c"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([2, 6], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([4], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(c, "c"),
    ]
    return _model(nodes, inits, 2)


def test_a_graph_that_depends_on_its_fixed_batch_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(ModelImportError, match=r"fixed batch of 2.*re-export it with a dynamic"):
        read_model(_write(tmp_path, _row_offset_model()))


def test_cli_refusal_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, _row_offset_model())
    result = CliRunner().invoke(prune_cli, ["inspect", str(path)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "fixed batch of 2" in lines[0], result.output


def _double_mlp(scale: float) -> bytes:
    w = (RNG.normal(size=(6, 4)) * scale).astype(np.float64)
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"),
            numpy_helper.from_array(w, "w"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_a_float64_model_is_converted_to_float32(tmp_path: Path) -> None:
    raw = _double_mlp(1.0)
    converted, changed = read_model(_write(tmp_path, raw))
    assert changed
    proto = onnx.load_from_string(converted)
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = RNG.uniform(size=(5, 2, 3))
    want = ort.InferenceSession(raw, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(_run(converted, x.astype(np.float32)), want, rtol=1e-5, atol=1e-5)


def test_a_float64_model_that_float32_cannot_hold_is_left_alone(tmp_path: Path) -> None:
    """Weights of 1e39 overflow float32: the conversion is refused and the model read as is."""
    raw = _double_mlp(1e39)
    assert read_model(_write(tmp_path, raw)) == (raw, False)
