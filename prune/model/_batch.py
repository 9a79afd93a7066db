"""Free a fixed batch dimension: exporters' default output runs at one batch size only.

``torch.onnx.export`` without ``dynamic_shapes``/``dynamic_axes`` writes the example's batch
size into the graph: the input is declared ``[B, ...]`` and every flatten becomes a ``Reshape`` to
the constant ``[B, -1]`` (or ``[B, 144]``). Such a model cannot score 5 rows at once, while the
patch engine, the export's re-check and the auditor's replay all run batches of any size.

:func:`free_batch` rewrites such a graph so that it takes any batch size: the input's and the
outputs' leading dimension become the symbol ``batch``, stale ``value_info`` shapes are dropped,
and each ``Reshape``/``Expand`` whose constant target starts with ``B`` on a tensor whose leading
dimension is ``B`` gets ``0`` there (``Reshape``: copy the input's leading dimension; ``allowzero``
is cleared, as the target then holds no other 0) or ``1`` (``Expand``: keep it). The
result is accepted only when onnxruntime gives the same outputs as the original at batch ``B`` and
scores a batch of another size exactly as the original scores those rows in chunks of ``B``;
otherwise the refusal says to re-export with a dynamic batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from prune.errors import ModelImportError

__all__ = ["free_batch", "run_outputs"]

BATCH_SYMBOL = "batch"
_CHECK_SEED = 20260101


def _fixed_batch(proto: Any, input_name: str) -> int | None:
    for value in proto.graph.input:
        if value.name != input_name:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


def _leading_dims(proto: Any) -> dict[str, int | None]:
    """The leading dimension of every value, by ONNX shape inference at the fixed batch."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(proto, data_prop=True)
    out: dict[str, int | None] = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        out[value.name] = int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None
    return out


def _constants(proto: Any) -> dict[str, np.ndarray[Any, Any]]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _rewrite(proto: Any, input_name: str, batch: int) -> tuple[Any, int]:
    """A copy of ``proto`` with the batch freed; also the number of shape constants rewritten."""
    import onnx
    from onnx import numpy_helper

    leading = _leading_dims(proto)
    constants = _constants(proto)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    del graph.value_info[:]
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        fixed = bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == batch
        if dims and (value.name == input_name or fixed):
            dims[0].Clear()
            dims[0].dim_param = BATCH_SYMBOL
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    rewritten = 0
    for position, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Reshape", "Expand"):
            continue
        if len(node.input) < 2 or leading.get(node.input[0]) != batch:
            continue
        target = constants.get(node.input[1])
        if target is None or target.ndim != 1 or target.size == 0 or int(target[0]) != batch:
            continue
        fixed = np.array(target, dtype=np.int64)
        if node.op_type == "Expand":
            fixed[0] = 1  # broadcast keeps the input's leading dimension
        else:
            if (fixed == 0).any():
                continue  # a literal empty dimension (allowzero): leave it to the check
            # 0 copies the input's leading dimension; with no 0 in the original target,
            # allowzero (which only changes what a 0 means) can be dropped
            fixed[0] = 0
            for attr in node.attribute:
                if attr.name == "allowzero":
                    attr.i = 0
        name = f"{node.input[1]}__batch_free_{position}"
        while name in taken:
            name += "_"
        taken.add(name)
        graph.initializer.append(numpy_helper.from_array(fixed, name=name))
        node.input[1] = name
        rewritten += 1
    return copy, rewritten


def run_outputs(raw: bytes, x: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    """Every graph output of ``raw`` on ``x`` (one onnxruntime thread, CPU): the runs that the
    import's rewrites (fixed batch, float64, MaxPool) compare with the original."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [np.asarray(o) for o in session.run(None, {name: x})]


def _same(a: list[np.ndarray[Any, Any]], b: list[np.ndarray[Any, Any]]) -> bool:
    if len(a) != len(b):
        return False
    for u, v in zip(a, b, strict=True):
        if u.shape != v.shape:
            return False
        if u.dtype.kind == "f":
            scale = max(1.0, float(np.max(np.abs(u))) if u.size else 1.0)
            if not np.allclose(u, v, rtol=1e-5, atol=1e-5 * scale, equal_nan=False):
                return False
        elif not np.array_equal(u, v):
            return False
    return True


def _check(original: bytes, freed: bytes, batch: int, sample_shape: tuple[int, ...]) -> str:
    """Why ``freed`` does not score like ``original`` ('' when it does): the same outputs at batch
    ``batch``, and a batch of ``batch + 3`` rows scored as the original scores them ``batch`` at
    a time (the last, partial chunk as the final rows of a full one)."""
    rng = np.random.default_rng(_CHECK_SEED)
    other = batch + 3
    x = rng.uniform(0.0, 1.0, size=(other, *sample_shape)).astype(np.float32)
    try:
        if not _same(run_outputs(freed, x[:batch]), run_outputs(original, x[:batch])):
            return f"at batch {batch} the rewritten graph's outputs differ from the original's"
        whole = run_outputs(freed, x)
        chunks: list[list[np.ndarray[Any, Any]]] = []
        for start in range(0, other, batch):
            stop = min(start + batch, other)
            outs = run_outputs(original, x[stop - batch : stop])
            chunks.append([o[batch - (stop - start) :] for o in outs])
    except Exception as exc:  # onnxruntime's own failure types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"onnxruntime: {first[:200]}"
    expected = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]
    if not _same(whole, expected):
        return f"a batch of {other} rows is not scored as the same rows {batch} at a time"
    return ""


def free_batch(proto: Any, input_name: str, sample_shape: tuple[int, ...]) -> tuple[Any, int]:
    """``(proto, 0)`` unchanged when the input's batch dimension is free; else a rewritten copy
    that takes any batch size and the fixed batch it had. Raises :class:`ModelImportError` when
    the graph cannot be freed (see the module docstring)."""
    batch = _fixed_batch(proto, input_name)
    if batch is None:
        return proto, 0
    advice = (
        f"the model was exported with a fixed batch of {batch} and cannot be freed "
        "automatically ({why}); re-export it with a dynamic batch dimension "
        "(torch.onnx.export(..., dynamic_shapes=...) or dynamic_axes={{'input': {{0: 'batch'}}}})"
    )
    try:
        freed, _ = _rewrite(proto, input_name, batch)
    except Exception as exc:  # onnx shape inference's own failure types
        raise ModelImportError(advice.format(why=f"shape inference: {exc}"[:200])) from None
    why = _check(proto.SerializeToString(), freed.SerializeToString(), batch, sample_shape)
    if why:
        raise ModelImportError(advice.format(why=why))
    return freed, batch
