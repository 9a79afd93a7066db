"""The patched ONNX model (``prune/patch/v1``, docs/FORMATS.md "Patched ONNX").

Invariant, tested byte for byte: every node and initializer of the original graph is kept
unchanged and in place (same names, order, attributes, raw data); the patch adds only nodes and
initializers named ``prune/patch/*``, appended after the original ones, and
``prune/output = logits + sum_u h_u``. A verifier can therefore diff the file against the
committed original and inspect the patch subgraph on its own.

Output tail (docs/FORMATS.md, "Output tail"): when the original computes its outputs from the
logits through more nodes (Softmax, ArgMax, label lookup, ...), those *tail* nodes are moved after
the patch subgraph, each unchanged except that every read of the logits reads ``prune/output``
instead; the graph outputs keep their names, order and types, with the logits (if they were an
output) replaced by ``prune/output``, and ``prune/output`` appended when they were not. Without a
tail this is the v1 form: the single output ``prune/output``."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.errors import PatchError
from prune.gates import (
    ML_DOMAIN,
    ML_OPSET,
    RoutedGate,
    TreeGate,
    make_gate,
    ml_opset,
    tree_refusal,
)
from prune.model import ImportedModel
from prune.patched import PatchSet
from prune.regions import InputBox

__all__ = ["FORMAT", "OUTPUT", "PREFIX", "TAIL_FORM", "export_patched", "splice"]

FORMAT = "prune/patch/v1"
PREFIX = "prune/patch/"
OUTPUT = "prune/output"
TAIL_FORM = "replay"
"""Metadata ``prune.tail``: the original's output tail replayed on ``prune/output``."""


class _Sink:
    """Collects the patch subgraph (implements :class:`prune.gates.NodeSink`)."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def node(self, op: str, inputs: list[str], *, name: str, **attrs: Any) -> str:
        from onnx import helper

        out = name if name == OUTPUT else PREFIX + name
        node_name = PREFIX + ("output" if name == OUTPUT else name)
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name, **attrs))
        return out

    def param(self, name: str, value: NDArray[np.generic]) -> str:
        """A patch parameter: always an initializer (covered by the patch digest)."""
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name=PREFIX + name))
        return PREFIX + name

    def const(self, name: str, value: NDArray[np.generic]) -> str:
        """Float32 values become initializers (the patch parameters, all covered by the patch
        digest, which is defined over float32 only); integer shapes and axes become
        ``Constant`` nodes."""
        from onnx import helper, numpy_helper

        array = np.asarray(value)
        tensor = numpy_helper.from_array(array, name=PREFIX + name)
        if array.dtype == np.float32:
            self.initializers.append(tensor)
        else:
            self.nodes.append(
                helper.make_node("Constant", [], [PREFIX + name], name=PREFIX + name, value=tensor)
            )
        return PREFIX + name


def export_patched(model: ImportedModel, patches: PatchSet, box: InputBox) -> bytes:
    """Serialized patched model; passes ``onnx.checker``. ``model.raw`` is not modified."""
    import onnx

    head = model.head
    if len(patches) == 0:
        raise PatchError("no patches to export")
    proto = onnx.load_from_string(model.raw)
    sink = _Sink()
    params = patches.parameters(head, box)
    for key, value in params.items():
        sink.param(key, value)
    x = sink.node("Flatten", [head.cut], name="x", axis=1)
    flat_z = [_unit_values(sink, head, i) for i in range(len(head.hidden))]
    if flat_z:
        z = sink.node("Concat", flat_z, name="z", axis=1)
    else:
        z = sink.node("Mul", [x, sink.const("no_hidden", np.zeros((0,), np.float32))], name="z")
    n_patches, n_out = patches.d.shape
    gate = make_gate(patches.gate)
    if isinstance(gate, RoutedGate):
        h_sum = gate.onnx_delta(
            sink,
            x=x,
            z=z,
            n=PREFIX + "n",
            params=params,
            linear=_gate_linear(patches),
            affine=patches.C is not None,
            hidden=head.n_hidden,
            classes=n_out,
        )
        sink.node("Add", [head.output, h_sum], name=OUTPUT)
        if isinstance(gate, TreeGate):
            _import_ml(proto)
        return _finish(proto, sink, patches.gate, head, n_out, model.tail)
    g = gate.onnx_gate(sink, x=x, z=z, n=PREFIX + "n", patches=n_patches, hidden=head.n_hidden)
    if _gate_linear(patches):
        h_sum = sink.node("MatMul", [g, PREFIX + "d"], name="h_sum")
    else:
        h_sum = _patch_networks(sink, x, g, patches)
    sink.node("Add", [head.output, h_sum], name=OUTPUT)
    return _finish(proto, sink, patches.gate, head, n_out, model.tail)


def _import_ml(proto: Any) -> None:
    """The ``tree`` gate's ``ai.onnx.ml`` import (docs/FORMATS.md, "Tree gate"): added at
    :data:`prune.gates.ML_OPSET` when the model has none; versions 1-4 are kept as they are."""
    refusal = tree_refusal(proto)
    if refusal:
        raise PatchError(refusal)
    if ml_opset(proto) is None:
        entry = proto.opset_import.add()
        entry.domain, entry.version = ML_DOMAIN, ML_OPSET


def _unit_values(sink: _Sink, head: Any, entry: int) -> str:
    """The units of ``head.hidden[entry]``, flattened: ``Flatten(tensor) -> z<i>``, and for a
    Clip unit (offset ``c != 0``) ``Sub(z<i>, z<i>/offset) -> z<i>/unit`` with the float32
    scalar ``c`` (docs/FORMATS.md, "Canonical patch graph"). In float32 the sign of
    ``t - c`` is exact, so the served gate sees the Clip's breakpoint pattern."""
    flat = sink.node("Flatten", [head.hidden[entry]], name=f"z{entry}", axis=1)
    offset = head.offset(entry)
    if offset == 0.0:
        return flat
    bound = sink.const(f"z{entry}/offset", np.asarray(offset, dtype=np.float32))
    return sink.node("Sub", [flat, bound], name=f"z{entry}/unit")


def _finish(
    proto: Any, sink: _Sink, gate: str, head: Any, n_out: int, tail_nodes: tuple[int, ...]
) -> bytes:
    import onnx

    splice(proto, sink, logits=head.output, classes=n_out, tail_nodes=tail_nodes)
    tail_positions = set(tail_nodes)
    meta = [
        ("prune.format", FORMAT),
        ("prune.gate", gate),
        ("prune.cut", head.cut),
        ("prune.original_output", head.output),
        ("prune.hidden", ",".join(head.hidden)),
    ]
    if tail_positions:
        meta.append(("prune.tail", TAIL_FORM))
    for meta_key, meta_value in meta:
        entry = proto.metadata_props.add()
        entry.key, entry.value = meta_key, meta_value
    raw = proto.SerializeToString()
    try:
        onnx.checker.check_model(raw if len(raw) < 2_000_000_000 else proto)
    except Exception as exc:
        raise PatchError(f"internal: the patched model fails onnx.checker: {exc}") from exc
    return bytes(raw)


def splice(
    proto: Any, sink: _Sink, *, logits: str, classes: int, tail_nodes: tuple[int, ...]
) -> None:
    """Append the sink's initializers and nodes to ``proto`` (in place) after the original nodes
    before the output tail, then the tail replayed on ``prune/output`` (docs/FORMATS.md, "Output
    tail form"); the graph outputs become ``[prune/output]`` without a tail, else the original
    outputs with the logits renamed (or ``prune/output`` appended)."""
    from onnx import TensorProto, helper

    graph = proto.graph
    graph.initializer.extend(sink.initializers)
    batch = _batch_dim(graph.output[0])
    out_info = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch, classes])
    tail_positions = set(tail_nodes)
    kept = [_copy(node) for i, node in enumerate(graph.node) if i not in tail_positions]
    tail = [_rewired(graph.node[i], logits) for i in sorted(tail_positions)]
    del graph.node[:]
    graph.node.extend([*kept, *sink.nodes, *tail])
    outputs = [out_info if o.name == logits else o for o in graph.output]
    if not tail_positions:
        outputs = [out_info]
    elif all(o.name != logits for o in graph.output):
        outputs.append(out_info)
    kept_outputs = [_copy(o) for o in outputs]
    del graph.output[:]
    graph.output.extend(kept_outputs)


def _copy(message: Any) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _rewired(node: Any, logits: str) -> Any:
    """A copy of tail ``node`` reading ``prune/output`` wherever it read the logits."""
    copy = _copy(node)
    for i, name in enumerate(copy.input):
        if name == logits:
            copy.input[i] = OUTPUT
    return copy


def _gate_linear(patches: PatchSet) -> bool:
    """Whether every patch is constant with entries in ``{0, +-K_u}`` (in float32), as the
    Lagrangian solver's ``delta * e_t`` patches are. Then, for ``g`` in [0, 1],
    ``h_u = ReLU(d_u + K_u g_u - K_u) - ReLU(-d_u + K_u g_u - K_u) = g_u d_u`` entrywise (an entry
    ``+-K`` gives ``+-K g``, an entry 0 gives 0), so ``sum_u h_u = g @ d``: one MatMul instead of
    ``[N, P, O]`` intermediates, the same function of the same parameters."""
    if patches.C is not None:
        return False
    d32 = patches.d.astype(np.float32)
    k32 = patches.K.astype(np.float32)[:, None]
    return bool(np.all((d32 == 0) | (np.abs(d32) == k32)))


def _patch_networks(sink: _Sink, x: str, g: str, patches: PatchSet) -> str:
    """``sum_u h_u`` by the general formula (affine or arbitrary constant patches)."""
    n_patches, n_out = patches.d.shape
    axes = sink.const("axes2", np.asarray([2], dtype=np.int64))
    g3 = sink.node("Unsqueeze", [g, axes], name="g3")
    kg = sink.node("Mul", [g3, PREFIX + "K"], name="Kg")
    shift = sink.node("Sub", [kg, PREFIX + "K"], name="Kg-K")
    if patches.C is not None:
        xc = sink.node("MatMul", [x, PREFIX + "C"], name="xC")
        shape = sink.const("p_shape", np.asarray([0, n_patches, n_out], dtype=np.int64))
        xc3 = sink.node("Reshape", [xc, shape], name="xC3")
        p = sink.node("Add", [xc3, PREFIX + "d"], name="p")
    else:
        p = PREFIX + "d"
    up = sink.node("Relu", [sink.node("Add", [p, shift], name="p+s")], name="h_up")
    neg_p = sink.node("Neg", [p], name="-p")
    down = sink.node("Relu", [sink.node("Add", [neg_p, shift], name="-p+s")], name="h_down")
    h = sink.node("Sub", [up, down], name="h")
    axes1 = sink.const("axes1", np.asarray([1], dtype=np.int64))
    return sink.node("ReduceSum", [h, axes1], name="h_sum", keepdims=0)


def _batch_dim(output: Any) -> str | int:
    dims = output.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):
        return int(dims[0].dim_value)
    if dims and dims[0].dim_param:
        return str(dims[0].dim_param)
    return "batch"
