"""The verifier's own parse of the original head into float64 affine layers with ReLU between
them, written from the ONNX operator specification (not from the owner's code).

Used where onnxruntime alone cannot answer: the region of a point as linear constraints (the
dense gate rows, the exact LP over a region). Invariant: :func:`parse_head` only accepts a plain
chain (Gemm / MatMul / Add with constant operands, Relu, Flatten(axis=1), Identity); callers
check the parse against onnxruntime on real points (:meth:`AffineHead.max_error`) before using
it, so a mis-parse can never silently decide anything."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._framework import CheckUnavailable
from audit.verify._graph import Head

__all__ = ["AffineHead", "parse_head"]

F64 = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class AffineHead:
    """``z_1 = W_1 x + b_1``, ``z_{l+1} = W_{l+1} relu(z_l) + b_{l+1}``; the last ``z`` is the
    logits. ``weights[l]`` is ``[out, in]``."""

    weights: tuple[F64, ...]
    biases: tuple[F64, ...]

    def forward(self, x: F64) -> tuple[F64, F64]:
        """(hidden pre-activations concatenated ``[N, H]``, logits ``[N, O]``)."""
        hidden: list[F64] = []
        value = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            value = value @ w.T + b
            if i < len(self.weights) - 1:
                hidden.append(value)
                value = np.maximum(value, 0.0)
        z = np.concatenate(hidden, axis=1) if hidden else np.zeros((len(x), 0))
        return z, value

    def local_affine(self, x: F64) -> tuple[F64, F64, F64, F64]:
        """At one point ``x`` ``[d]``: the pre-activations and logits as affine functions of the
        input on ``x``'s linear region: ``(Z [H, d], z0 [H], F [O, d], f0 [O])``."""
        jac = np.eye(len(x))
        off = np.zeros(len(x))
        value = x.astype(np.float64)
        rows: list[F64] = []
        offs: list[F64] = []
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            jac, off = w @ jac, w @ off + b
            value = w @ value + b
            if i < len(self.weights) - 1:
                rows.append(jac)
                offs.append(off)
                active = (value >= 0).astype(np.float64)
                jac, off, value = jac * active[:, None], off * active, np.maximum(value, 0.0)
        z_rows = np.concatenate(rows) if rows else np.zeros((0, len(x)))
        z_off = np.concatenate(offs) if offs else np.zeros(0)
        return z_rows, z_off, jac, off

    def max_error(self, x: F64, z: F64, logits: F64) -> float:
        """Largest relative disagreement with onnxruntime's ``z`` and ``logits`` on ``x``."""
        pz, pl = self.forward(x)
        scale = 1.0 + max(float(np.abs(logits).max(initial=0)), float(np.abs(z).max(initial=0)))
        err = max(float(np.abs(pz - z).max(initial=0)), float(np.abs(pl - logits).max(initial=0)))
        return err / scale


def _constant(graph: Any, name: str) -> F64:
    from onnx import numpy_helper

    for tensor in graph.initializer:
        if tensor.name == name:
            return np.asarray(numpy_helper.to_array(tensor), dtype=np.float64)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return np.asarray(numpy_helper.to_array(attr.t), dtype=np.float64)
    raise CheckUnavailable(f"head parse: {name[:60]!r} is not a constant")


def _attr(node: Any, name: str, default: float) -> float:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            return float(onnx.helper.get_attribute_value(attr))
    return default


def parse_head(original: Any, head: Head) -> AffineHead:
    """Parse the head chain of ``original`` (nodes ``head.nodes``); raise
    :class:`CheckUnavailable` naming the first node that is not a plain affine/ReLU step."""
    graph = original.graph
    current = head.cut
    weights: list[F64] = []
    biases: list[F64] = []
    w: F64 | None = None
    b: F64 | None = None
    relus = 0
    for index in head.nodes:
        node = graph.node[index]
        data = [n for n in node.input if n == current]
        if len(data) != 1 or node.input[0] != current:
            raise CheckUnavailable(f"head parse: node {node.name[:50]!r} is not on a single chain")
        op = node.op_type
        if op in ("Gemm", "MatMul"):
            if w is not None:
                raise CheckUnavailable(
                    f"head parse: two linear maps in a row at {node.name[:50]!r}"
                )
            if _attr(node, "transA", 0) != 0:
                raise CheckUnavailable(f"head parse: transA at {node.name[:50]!r}")
            mat = _constant(graph, node.input[1])
            mat = mat.T if op == "Gemm" and _attr(node, "transB", 0) else mat
            if mat.ndim != 2:
                raise CheckUnavailable(f"head parse: weight of {node.name[:50]!r} is not 2-D")
            w = _attr(node, "alpha", 1.0) * mat.T if op == "Gemm" else mat.T
            b = np.zeros(w.shape[0])
            if op == "Gemm" and len(node.input) > 2 and node.input[2]:
                b = b + _attr(node, "beta", 1.0) * np.broadcast_to(
                    _constant(graph, node.input[2]), b.shape
                )
        elif op == "Add" and w is not None and b is not None:
            other = node.input[1] if node.input[0] == current else node.input[0]
            b = b + np.broadcast_to(_constant(graph, other), b.shape)
        elif op == "Relu" and w is not None and b is not None:
            if relus >= len(head.hidden) or head.hidden[relus] != current:
                raise CheckUnavailable(f"head parse: Relu {node.name[:50]!r} out of order")
            weights.append(w)
            biases.append(b)
            w = b = None
            relus += 1
        elif op == "Identity" or (op == "Flatten" and _attr(node, "axis", 1) == 1 and w is None):
            pass
        else:
            raise CheckUnavailable(f"head parse: unsupported {op} at {node.name[:50]!r}")
        current = node.output[0]
    if w is None or b is None or current != head.output or relus != len(head.hidden):
        raise CheckUnavailable("head parse: the head does not end in a linear map to the logits")
    weights.append(w)
    biases.append(b)
    for prev, nxt in itertools.pairwise(weights):
        if prev.shape[0] != nxt.shape[1]:
            raise CheckUnavailable("head parse: layer widths do not chain")
    return AffineHead(tuple(weights), tuple(biases))
