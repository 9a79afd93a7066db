"""The owner-side onnxruntime runner (prune/model/_runtime.py): batched runs write each batch
into its rows of the result (I/O binding) and must give exactly what one call gives."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from prune.model import OrtRunner
from tests.prune._engine_models import graph_model


def _mlp(argmax: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 4)).astype(np.float32)
    w2 = rng.normal(size=(3, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["input", "w1"], ["h"], name="g1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("Gemm", ["r", "w2"], ["logits"], name="g2", transB=1),
    ]
    if argmax:
        nodes.append(
            helper.make_node("ArgMax", ["logits"], ["label"], name="am", axis=1, keepdims=0)
        )
    return graph_model(nodes, {"w1": w1, "w2": w2})


def _whole(raw: bytes, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    """The rows in one plain onnxruntime call (intermediate tensors made graph outputs)."""
    runner = OrtRunner(raw, outputs=names, threads=1)
    return [np.asarray(o) for o in runner._session.run(names, {"input": x})]


@pytest.mark.parametrize("batch_size", [1, 8, 37, 4096])
def test_batched_run_equals_one_call(batch_size: int) -> None:
    """An intermediate tensor and the graph output, 37 rows in batches that do and do not divide
    them: the same float32 values, shapes and row order as the rows run at once."""
    raw = _mlp()
    x = np.random.default_rng(1).normal(size=(37, 4)).astype(np.float32)
    runner = OrtRunner(raw, outputs=["r", "logits"], threads=1)
    r, logits = runner.run(x, batch_size=batch_size)
    whole = _whole(raw, ["r", "logits"], x)
    assert r.dtype == logits.dtype == np.float32
    assert r.shape == (37, 6) and logits.shape == (37, 3)
    np.testing.assert_array_equal(r, whole[0])
    np.testing.assert_array_equal(logits, whole[1])
    again = runner.run(x[::-1], batch_size=batch_size)[1]  # a reused session, other rows
    np.testing.assert_array_equal(again, whole[1][::-1])


def test_outputs_that_are_not_float32_are_converted() -> None:
    """An int64 output (ArgMax) is collected batch by batch and returned as float32, as before
    the I/O binding; a float output requested with it too."""
    proto_raw = _mlp(argmax=True)
    import onnx

    proto = onnx.load_from_string(proto_raw)
    proto.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["batch"])
    )
    raw = proto.SerializeToString()
    x = np.random.default_rng(2).normal(size=(21, 4)).astype(np.float32)
    label, logits = OrtRunner(raw, outputs=["label", "logits"], threads=1).run(x, batch_size=5)
    expected_label, expected_logits = _whole(raw, ["label", "logits"], x)
    assert label.dtype == np.float32 and label.shape == (21,)
    np.testing.assert_array_equal(label, expected_label.astype(np.float32))
    np.testing.assert_array_equal(logits, expected_logits)


def test_input_rows_are_converted_to_contiguous_float32() -> None:
    """A strided float64 input is run as float32 rows, batch by batch."""
    raw = _mlp()
    wide = np.random.default_rng(3).normal(size=(30, 8))
    x = wide[:, ::2]  # float64, not contiguous
    out = OrtRunner(raw, outputs=["logits"], threads=1).run(x, batch_size=7)[0]  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, _whole(raw, ["logits"], x.astype(np.float32))[0])
