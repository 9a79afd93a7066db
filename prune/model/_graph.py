"""Reading an ONNX model: parse, validate, index producers/consumers and constant tensors.

Threat assumption: the model file is the owner's own, but it may be malformed or come from another
exporter; everything that cannot be read raises :class:`ModelImportError` with one line naming the
file problem, the op or the node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError

__all__ = ["MIN_OPSET", "GraphIndex", "describe_node", "parse_model"]

MIN_OPSET = 13
"""The patch subgraph uses the opset-13 forms of ReduceSum/Unsqueeze (axes as inputs)."""


def describe_node(node: Any, index: int) -> str:
    """``Gemm node '/0/Gemm'`` (or ``#index`` when the node has no name)."""
    name = node.name or f"#{index} (output '{node.output[0] if node.output else '?'}')"
    return f"{node.op_type} node '{name}'"


def parse_model(raw: bytes) -> Any:
    """Decode and check an ONNX ``ModelProto``; reject what the patch engine cannot export."""
    import onnx

    if not raw:
        raise ModelImportError("the model file is empty")
    try:
        proto = onnx.load_from_string(raw)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelImportError(
            f"not an ONNX model (cannot decode protobuf: {exc.__class__.__name__})"
        ) from exc
    if not proto.graph.node:
        raise ModelImportError("not an ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelImportError(f"the ONNX model fails onnx.checker: {first}") from exc
    opset = default_opset(proto)
    if opset < MIN_OPSET:
        raise ModelImportError(
            f"the model uses ONNX opset {opset}; the patch export needs opset >= {MIN_OPSET} "
            "(re-export the model with a newer opset)"
        )
    if len(proto.graph.output) != 1:
        raise ModelImportError(
            f"the model must have exactly one output (the logits), it has {len(proto.graph.output)}"
        )
    if len(_real_inputs(proto)) != 1:
        raise ModelImportError(
            f"the model must have exactly one input, it has {len(_real_inputs(proto))}"
        )
    return proto


def default_opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ModelImportError("the model imports no default-domain ONNX opset")


def _real_inputs(proto: Any) -> list[Any]:
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


@dataclass(frozen=True, eq=False)
class GraphIndex:
    """Lookup tables over one graph. ``constants`` holds every initializer and every ``Constant``
    node output as float64/int64 arrays; ``producer``/``consumers`` map tensor names to node
    positions (nodes are in the file's topological order)."""

    proto: Any
    nodes: tuple[Any, ...]
    constants: Mapping[str, NDArray[Any]]
    producer: Mapping[str, int]
    consumers: Mapping[str, tuple[int, ...]]
    input_name: str
    input_shape: tuple[int | str, ...]
    output_name: str

    @classmethod
    def build(cls, proto: Any) -> GraphIndex:
        from onnx import numpy_helper

        graph = proto.graph
        constants: dict[str, NDArray[Any]] = {
            t.name: numpy_helper.to_array(t) for t in graph.initializer
        }
        producer: dict[str, int] = {}
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for name in node.output:
                producer[name] = i
            for name in node.input:
                if name:
                    consumers.setdefault(name, []).append(i)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = _constant_value(node, i)
                if value is not None:
                    constants[node.output[0]] = value
        inp = _real_inputs(proto)[0]
        dims = inp.type.tensor_type.shape.dim
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        )
        return cls(
            proto=proto,
            nodes=tuple(graph.node),
            constants=constants,
            producer=producer,
            consumers={k: tuple(v) for k, v in consumers.items()},
            input_name=inp.name,
            input_shape=shape,
            output_name=graph.output[0].name,
        )

    def tensor_names(self) -> set[str]:
        names = {self.input_name}
        for node in self.nodes:
            names.update(o for o in node.output if o)
        return names

    def sample_shape(self, tensor: str) -> tuple[int, ...]:
        """Per-sample shape (without the batch axis) of a tensor, by ONNX shape inference."""
        if tensor == self.input_name:
            dims = self.input_shape[1:]
        else:
            dims = self._inferred_shapes().get(tensor, ())
            if not dims:
                raise ModelImportError(
                    f"cannot infer the shape of tensor '{tensor}' (ONNX shape inference gives none)"
                )
            dims = dims[1:]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise ModelImportError(
                f"tensor '{tensor}' has a symbolic per-sample shape {dims}; only the batch axis may be dynamic"
            )
        return tuple(int(d) for d in dims)

    def _inferred_shapes(self) -> dict[str, tuple[int | str, ...]]:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self.proto)
        except Exception as exc:
            raise ModelImportError(f"ONNX shape inference fails on the model: {exc}") from exc
        out: dict[str, tuple[int | str, ...]] = {}
        for vi in [*inferred.graph.value_info, *inferred.graph.output]:
            dims = vi.type.tensor_type.shape.dim
            out[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
            )
        return out


def _constant_value(node: Any, index: int) -> NDArray[Any] | None:
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return np.asarray(numpy_helper.to_array(attr.t))
        if attr.name == "value_float":
            return np.asarray(attr.f, dtype=np.float64)
        if attr.name == "value_floats":
            return np.asarray(list(attr.floats), dtype=np.float64)
        if attr.name == "value_int":
            return np.asarray(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.asarray(list(attr.ints), dtype=np.int64)
    raise ModelImportError(f"{describe_node(node, index)} has no supported value attribute")
