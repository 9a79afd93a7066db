"""MaxPool in the patched head: rewrite it into selection convolutions and a ReLU tournament.

A model whose only piecewise-linear ops after a ``MaxPool`` are affine (the classic
``Conv -> Relu -> MaxPool -> Flatten -> Linear``) has no valid cut: the patched head must hold an
activation, and ``MaxPool`` is not a sign-pattern op. Its regions are argmax patterns, and
``max(a, b) = a + relu(b - a)`` makes them sign patterns: for a ``k x k`` window with stride
``s``, each window position ``p`` is selected by a depthwise ``Conv`` with a one-hot kernel
(``S_p[c, y, x] = X[c, s*y + i, s*x + j]``; exact in float32: one product by 1, the others by 0)
and the window maximum is a pairwise tree of ``m = a + Relu(b - a)`` (``Sub``, ``Relu``,
``Add``: activations and residual joins the head already supports). In real arithmetic the
rewritten graph computes the same function; in float32 each ``a + (b - a)`` may differ from
``b`` by one rounding, so :func:`expand_maxpools` keeps the rewrite only when onnxruntime's
outputs agree with the original's within :data:`TOLERANCE` on random inputs.

Only what the rewrite is exact for is rewritten: 2-D pooling, no padding, ``ceil_mode = 0``,
dilations 1, the indices output unused; a ``GlobalMaxPool`` is the ``MaxPool`` over its whole
feature map. It is a fallback: the importer applies it only when the
model as exported has no valid cut (:func:`prune.model._graph.read_model`), so models that already
work keep their graph. The committed original is then the rewritten model
(``PROOF/original.onnx``), as for an embedded or batch-freed one."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["POOLS", "TOLERANCE", "expand_maxpools"]

POOLS = frozenset({"MaxPool", "GlobalMaxPool"})

TOLERANCE = 1e-4
"""Largest ``|rewritten - original| / (1 + |original|)`` accepted on any output entry."""
_CHECK_ROWS = 64
_CHECK_SEED = 20260102


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _convertible(node: Any, channels: int | None, used: set[str]) -> bool:
    kernel = list(_attr(node, "kernel_shape", []))
    pads = list(_attr(node, "pads", [0] * 2 * len(kernel)))
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return (
        node.domain in ("", "ai.onnx")
        and len(kernel) == 2
        and channels is not None
        and not any(pads)
        and auto_pad in ("NOTSET", "VALID")
        and not _attr(node, "ceil_mode", 0)
        and list(_attr(node, "dilations", [1, 1])) == [1, 1]
        and not (len(node.output) > 1 and node.output[1] and node.output[1] in used)
    )


def _feature_maps(proto: Any) -> dict[str, tuple[int, int, int]]:
    """``(channels, height, width)`` of every 4-D value with a static per-sample shape."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(proto)
    out: dict[str, tuple[int, int, int]] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in list(dims)[1:]):
            out[value.name] = (dims[1].dim_value, dims[2].dim_value, dims[3].dim_value)
    return out


def _as_maxpool(node: Any, maps: dict[str, tuple[int, int, int]]) -> Any:
    """A ``GlobalMaxPool`` as the ``MaxPool`` over its whole feature map (same output)."""
    from onnx import helper

    if node.op_type != "GlobalMaxPool" or node.input[0] not in maps:
        return node
    _, height, width = maps[node.input[0]]
    return helper.make_node(
        "MaxPool", [node.input[0]], [node.output[0]], kernel_shape=[height, width]
    )


def _tournament(node: Any, channels: int, tag: str) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers computing ``node``'s output from its input (see module doc)."""
    from onnx import helper, numpy_helper

    kh, kw = (int(k) for k in _attr(node, "kernel_shape", []))
    strides = [int(s) for s in _attr(node, "strides", [1, 1])]
    nodes, inits = [], []
    level: list[str] = []
    for i in range(kh):
        for j in range(kw):
            kernel = np.zeros((channels, 1, kh, kw), np.float32)
            kernel[:, 0, i, j] = 1.0
            name = f"{tag}/select_{i}_{j}"
            inits.append(numpy_helper.from_array(kernel, name + "/w"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [node.input[0], name + "/w"],
                    [name],
                    group=channels,
                    kernel_shape=[kh, kw],
                    strides=strides,
                    pads=[0, 0, 0, 0],
                )
            )
            level.append(name)
    step = 0
    while len(level) > 1:
        nxt = []
        for a, b in zip(level[0::2], level[1::2], strict=False):
            step += 1
            last = len(level) == 2
            out = node.output[0] if last else f"{tag}/max_{step}"
            nodes += [
                helper.make_node("Sub", [b, a], [f"{tag}/diff_{step}"]),
                helper.make_node("Relu", [f"{tag}/diff_{step}"], [f"{tag}/gain_{step}"]),
                helper.make_node("Add", [a, f"{tag}/gain_{step}"], [out]),
            ]
            nxt.append(out)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    if level[0] != node.output[0]:  # a 1 x 1 window: the selection is the output
        nodes.append(helper.make_node("Identity", [level[0]], [node.output[0]]))
    return nodes, inits


def _rewrite(proto: Any) -> tuple[Any, int]:
    import onnx

    maps = _feature_maps(proto)
    used = {name for node in proto.graph.node for name in node.input}
    used |= {o.name for o in proto.graph.output}
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    nodes: list[Any] = []
    count = 0
    for position, original in enumerate(copy.graph.node):
        node = _as_maxpool(original, maps)
        channels = maps[node.input[0]][0] if node.input and node.input[0] in maps else None
        if node.op_type != "MaxPool" or not _convertible(node, channels, used):
            nodes.append(original)
            continue
        count += 1
        tag = f"maxpool/{position}"
        added, inits = _tournament(node, int(channels or 0), tag)
        nodes += added
        copy.graph.initializer.extend(inits)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    del copy.graph.value_info[:]
    return copy, count


def _agrees(original: bytes, rewritten: bytes, sample_shape: tuple[int, ...]) -> bool:
    from prune.model._batch import run_outputs

    rng = np.random.default_rng(_CHECK_SEED)
    x = rng.uniform(0.0, 1.0, size=(_CHECK_ROWS, *sample_shape)).astype(np.float32)
    outs = [run_outputs(raw, x) for raw in (original, rewritten)]
    for a, b in zip(outs[0], outs[1], strict=True):
        if a.shape != b.shape:
            return False
        if a.dtype.kind != "f":
            continue  # labels may differ only at exact ties; the logits are compared
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if not np.isfinite(b64).all() or np.max(np.abs(a64 - b64) / (1 + np.abs(a64))) > TOLERANCE:
            return False
    return True


def expand_maxpools(proto: Any, sample_shape: tuple[int, ...]) -> tuple[Any, int]:
    """``proto`` with every convertible ``MaxPool`` rewritten (see the module docstring) and
    the number rewritten; ``(proto, 0)`` when there is none, or when onnxruntime's outputs of the
    rewritten graph disagree with the original's."""
    if not any(node.op_type in POOLS for node in proto.graph.node):
        return proto, 0
    try:
        rewritten, count = _rewrite(proto)
    except Exception:  # onnx shape inference's own failure types: leave the model as it is
        return proto, 0
    if not count:
        return proto, 0
    try:
        ok = _agrees(proto.SerializeToString(), rewritten.SerializeToString(), sample_shape)
    except Exception:  # onnxruntime's own failure types
        return proto, 0
    return (rewritten, count) if ok else (proto, 0)
