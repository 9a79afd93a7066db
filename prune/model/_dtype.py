"""Float64 models (skl2onnx on scikit-learn's default float64 data) converted to float32.

The patch engine, the exact certificates and the auditor's float32 argument are all about a
float32 head, and ``WORK/train.npz`` holds float32 rows. A model whose input is ``double``
(``to_onnx(clf, X[:1])`` with ``X`` straight from scikit-learn) is rewritten: the input, every
``double`` initializer, ``Constant`` and graph output become ``float``, and every ``Cast`` to
``double`` becomes a ``Cast`` to ``float``. The served model then takes float32 rows like every
model ``prune`` exports. The conversion is kept only when onnxruntime's float outputs of the
converted model agree with the original's (fed the same rows in float64) within
:data:`TOLERANCE`; otherwise the model is left as it is and the import says why it cannot use it.
The committed original is the converted model (``PROOF/original.onnx``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["TOLERANCE", "to_float32"]

TOLERANCE = 1e-4
"""Largest ``|float32 - float64| / (1 + |float64|)`` accepted on any float output entry."""
_CHECK_ROWS = 64
_CHECK_SEED = 20260103


def _narrow_type(kind: Any) -> None:
    """``double`` -> ``float`` in a TypeProto, inside sequences and maps too (ZipMap's output)."""
    from onnx import TensorProto

    which = kind.WhichOneof("value")
    if which == "tensor_type" and kind.tensor_type.elem_type == TensorProto.DOUBLE:
        kind.tensor_type.elem_type = TensorProto.FLOAT
    elif which == "sequence_type":
        _narrow_type(kind.sequence_type.elem_type)
    elif which == "map_type":
        _narrow_type(kind.map_type.value_type)


def _convert(proto: Any) -> Any:
    import onnx
    from onnx import TensorProto, numpy_helper

    double, single = TensorProto.DOUBLE, TensorProto.FLOAT
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    for value in [*graph.input, *graph.output]:
        _narrow_type(value.type)
    del graph.value_info[:]
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == double:
            array = numpy_helper.to_array(tensor).astype(np.float32)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == double:
                attr.i = single
            if attr.HasField("t") and attr.t.data_type == double:
                array = numpy_helper.to_array(attr.t).astype(np.float32)
                attr.t.CopyFrom(numpy_helper.from_array(array, attr.t.name))
    return copy


def _float_outputs(proto: Any) -> Any:
    """``proto`` computing only the float tensors that feed no op of the ``ai.onnx.ml`` tail
    (skl2onnx's float64 ZipMap does not even load in onnxruntime, so the comparison is on the
    tensors before such ops: the logits and probabilities)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    ml = [n for n in copy.graph.node if n.domain == "ai.onnx.ml"]
    keep_names = {o.name for o in copy.graph.output}
    if ml:
        keep_names = {i for n in ml for i in n.input}
    needed: set[str] = set(keep_names)
    kept = []
    for node in reversed(list(copy.graph.node)):
        if node.domain != "ai.onnx.ml" and any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    produced = {o for n in kept for o in n.output}
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    del copy.graph.output[:]
    copy.graph.output.extend(onnx.ValueInfoProto(name=n) for n in sorted(keep_names & produced))
    return copy


def _agrees(original: bytes, converted: bytes, sample_shape: tuple[int, ...]) -> bool:
    import onnx

    from prune.model._batch import run_outputs

    x = np.random.default_rng(_CHECK_SEED).uniform(0.0, 1.0, size=(_CHECK_ROWS, *sample_shape))
    outs = [
        run_outputs(_float_outputs(onnx.load_from_string(raw)).SerializeToString(), rows)
        for raw, rows in ((original, x), (converted, x.astype(np.float32)))
    ]
    compared = 0
    for a, b in zip(outs[0], outs[1], strict=True):
        if a.shape != b.shape or a.dtype.kind != "f":
            continue  # sequences (ZipMap) and labels: the float outputs decide
        wide, narrow = a.astype(np.float64), b.astype(np.float64)
        if not np.isfinite(narrow).all():
            return False
        if np.max(np.abs(wide - narrow) / (1.0 + np.abs(wide)), initial=0.0) > TOLERANCE:
            return False
        compared += 1
    return compared > 0


def to_float32(proto: Any, sample_shape: tuple[int, ...]) -> tuple[Any, bool]:
    """``(converted, True)`` for a model with a ``double`` input whose float32 version agrees
    with it (see the module docstring); ``(proto, False)`` otherwise."""
    from onnx import TensorProto

    inits = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in inits]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.DOUBLE:
        return proto, False
    try:
        converted = _convert(proto)
        ok = _agrees(proto.SerializeToString(), converted.SerializeToString(), sample_shape)
    except Exception:  # onnx / onnxruntime failure types: leave the model to the normal import
        return proto, False
    return (converted, True) if ok else (proto, False)
