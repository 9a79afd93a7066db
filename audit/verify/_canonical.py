"""The canonical patch graph: the verifier rebuilds, with its own code and from the spec in
docs/FORMATS.md ("Canonical patch graph"), the exact patch subgraph that the declared
parameters define, and the submitted graph must equal it node for node.

Why: a patch graph that is *any* piecewise-linear function of the allowed ops can hide terms
that vanish on the points a verifier samples (an extra half-space, a trigger, a batch-coupled
sum). Pinning the graph to one canonical form makes the model a known function of the declared
parameters, so the region certificates (``region.certificate``) prove the served function itself.

What must be equal: the patch nodes (op type, domain, name, inputs, outputs, attributes, order,
compared as deterministic protobuf bytes), the set of ``prune/patch/`` initializers with their
dtype and shape (and the value of every structural constant), the graph outputs and the
``prune.*`` metadata. The failure names the first difference.

Registry: :data:`GATE_FORMS` maps the metadata ``prune.gate`` to the function that emits the
gate's nodes, :data:`TAIL_FORMS` the patch tail (``sum_u h_u`` and the output). Every op of
every form acts per row (axis 1 and beyond, ``Reshape`` keeps the batch dimension as ``0``,
``MatMul`` against constants), so no form can couple the rows of a batch.

This module never imports owner-side code: the node sequence is written from FORMATS.md."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._graph import (
    PATCH_FORMAT,
    PATCH_OUTPUT,
    PATCH_PREFIX,
    TAIL_FORM,
    Head,
    expected_outputs,
    metadata,
)
from audit.verify._patch import ROUTED_GATES, PatchParams
from audit.verify._routed import ROUTED, routed_gate, routed_patch_network
from audit.verify._tree import TREE, tree_gate

__all__ = [
    "GATE_FORMS",
    "TAIL_FORMS",
    "CanonicalGraph",
    "PatchSpec",
    "canonical_patch",
    "compare_patch_graph",
    "gate_linear",
]


@dataclass(frozen=True)
class PatchSpec:
    """What the canonical graph is a function of: the head (cut, hidden tensors, logits), the
    gate kind, the parameter shapes and whether the patch tail is the linear ``g @ d`` form."""

    head: Head
    gate: str
    patches: int
    classes: int
    hidden: int
    cut_dim: int
    affine: bool
    linear: bool
    routing: Any = None
    """The routed gates' checked router (:class:`audit.verify._routed.Routing`, whose depth
    and width fix how many levels the graph has, or :class:`audit.verify._tree.TreeRouting`,
    re-encoded into the tree node); ``None`` for the other gates."""


@dataclass
class CanonicalGraph:
    """The rebuilt subgraph: nodes in order, initializer name -> (shape, fixed value or None)."""

    nodes: list[Any] = field(default_factory=list)
    initializers: dict[str, tuple[tuple[int, ...], NDArray[np.float32] | None]] = field(
        default_factory=dict
    )
    dtypes: dict[str, int] = field(default_factory=dict)
    """ONNX data type of an initializer when it is not FLOAT (the routed gate's tables)."""

    def node(self, op: str, inputs: list[str], *, name: str, **attrs: Any) -> str:
        from onnx import helper

        out = name if name == PATCH_OUTPUT else PATCH_PREFIX + name
        node_name = PATCH_PREFIX + ("output" if name == PATCH_OUTPUT else name)
        self.nodes.append(helper.make_node(op, inputs, [out], name=node_name, **attrs))
        return out

    def param(self, name: str, shape: tuple[int, ...], dtype: int = 1) -> str:
        """A declared parameter, float32 unless ``dtype`` (an ONNX data type) says otherwise;
        its value is the owner's, checked elsewhere."""
        self.initializers[PATCH_PREFIX + name] = (shape, None)
        if dtype != 1:
            self.dtypes[PATCH_PREFIX + name] = dtype
        return PATCH_PREFIX + name

    def const(self, name: str, value: NDArray[Any]) -> str:
        """A structural constant: float32 -> initializer with a fixed value; integers ->
        ``Constant`` node (as docs/FORMATS.md specifies)."""
        from onnx import helper, numpy_helper

        array = np.asarray(value)
        if array.dtype == np.float32:
            self.initializers[PATCH_PREFIX + name] = (tuple(array.shape), array)
        else:
            tensor = numpy_helper.from_array(array, name=PATCH_PREFIX + name)
            self.nodes.append(
                helper.make_node(
                    "Constant", [], [PATCH_PREFIX + name], name=PATCH_PREFIX + name, value=tensor
                )
            )
        return PATCH_PREFIX + name


GateForm = Callable[[CanonicalGraph, PatchSpec, str, str], str]
TailForm = Callable[[CanonicalGraph, PatchSpec, str, str], None]


def _activation_gate(graph: CanonicalGraph, spec: PatchSpec, x: str, z: str) -> str:
    graph.param("pos", (spec.hidden, spec.patches))
    graph.param("neg", (spec.hidden, spec.patches))
    below = graph.node("Relu", [graph.node("Neg", [z], name="gate/neg_z")], name="gate/below")
    above = graph.node("Relu", [z], name="gate/above")
    v_pos = graph.node("MatMul", [below, PATCH_PREFIX + "pos"], name="gate/v_pos")
    v_neg = graph.node("MatMul", [above, PATCH_PREFIX + "neg"], name="gate/v_neg")
    violation = graph.node("Add", [v_pos, v_neg], name="gate/violation")
    scaled = graph.node("Mul", [violation, PATCH_PREFIX + "n"], name="gate/scaled")
    one = graph.const("gate/one", np.asarray(1.0, dtype=np.float32))
    return graph.node("Relu", [graph.node("Sub", [one, scaled], name="gate/1-nV")], name="g")


def _dense_gate(graph: CanonicalGraph, spec: PatchSpec, x: str, z: str) -> str:
    graph.param("A", (spec.cut_dim, spec.patches * spec.hidden))
    graph.param("b", (spec.patches * spec.hidden,))
    ax = graph.node("MatMul", [x, PATCH_PREFIX + "A"], name="gate/ax")
    slack = graph.node("Sub", [PATCH_PREFIX + "b", ax], name="gate/slack")
    scaled = graph.node("Mul", [slack, PATCH_PREFIX + "n"], name="gate/scaled")
    one = graph.const("gate/one", np.asarray(1.0, dtype=np.float32))
    violated = graph.node("Relu", [graph.node("Neg", [scaled], name="gate/-ns")], name="gate/v")
    inside = graph.node(
        "Relu", [graph.node("Sub", [one, violated], name="gate/1-v")], name="gate/inside"
    )
    shape = graph.const("gate/shape", np.asarray([0, spec.patches, spec.hidden], dtype=np.int64))
    per_patch = graph.node("Reshape", [inside, shape], name="gate/per_patch")
    axes = graph.const("gate/axes", np.asarray([2], dtype=np.int64))
    total = graph.node("ReduceSum", [per_patch, axes], name="gate/total", keepdims=0)
    offset = graph.const("gate/h-1", np.asarray(float(spec.hidden - 1), dtype=np.float32))
    return graph.node("Relu", [graph.node("Sub", [total, offset], name="gate/total-h+1")], name="g")


def _logits_tail(graph: CanonicalGraph, spec: PatchSpec, x: str, g: str) -> None:
    """``prune/output = original logits + sum_u h_u`` (FORMATS.md "Patched ONNX"); for the
    routed gate, ``+ h_r`` of the one routed patch (FORMATS.md "Routed gate")."""
    if spec.gate in ROUTED_GATES:
        h_sum = routed_patch_network(graph, spec, x, g)
    elif spec.linear:
        h_sum = graph.node("MatMul", [g, PATCH_PREFIX + "d"], name="h_sum")
    else:
        h_sum = _patch_networks(graph, spec, x, g)
    graph.node("Add", [spec.head.output, h_sum], name=PATCH_OUTPUT)


def _patch_networks(graph: CanonicalGraph, spec: PatchSpec, x: str, g: str) -> str:
    p_count, o = spec.patches, spec.classes
    axes = graph.const("axes2", np.asarray([2], dtype=np.int64))
    g3 = graph.node("Unsqueeze", [g, axes], name="g3")
    kg = graph.node("Mul", [g3, PATCH_PREFIX + "K"], name="Kg")
    shift = graph.node("Sub", [kg, PATCH_PREFIX + "K"], name="Kg-K")
    if spec.affine:
        xc = graph.node("MatMul", [x, PATCH_PREFIX + "C"], name="xC")
        shape = graph.const("p_shape", np.asarray([0, p_count, o], dtype=np.int64))
        xc3 = graph.node("Reshape", [xc, shape], name="xC3")
        p = graph.node("Add", [xc3, PATCH_PREFIX + "d"], name="p")
    else:
        p = PATCH_PREFIX + "d"
    up = graph.node("Relu", [graph.node("Add", [p, shift], name="p+s")], name="h_up")
    neg_p = graph.node("Neg", [p], name="-p")
    down = graph.node("Relu", [graph.node("Add", [neg_p, shift], name="-p+s")], name="h_down")
    h = graph.node("Sub", [up, down], name="h")
    axes1 = graph.const("axes1", np.asarray([1], dtype=np.int64))
    return graph.node("ReduceSum", [h, axes1], name="h_sum", keepdims=0)


GATE_FORMS: dict[str, GateForm] = {
    "activation": _activation_gate,
    "dense": _dense_gate,
    ROUTED: routed_gate,
    TREE: tree_gate,
}
"""``prune.gate`` -> the gate's canonical nodes (returns the ``g [N, P]`` tensor)."""
TAIL_FORMS: dict[str, TailForm] = {"logits": _logits_tail, TAIL_FORM: _logits_tail}
"""``prune.tail`` (absent: ``logits``) -> the nodes after the gate, ending in the output.
``replay`` (FORMATS.md "Output tail form") adds the same patch nodes; the original's output tail
replayed on ``prune/output`` follows them and is checked node for node by
:func:`audit.verify._graph.match_original_nodes`, the outputs by :func:`expected_outputs`."""


def gate_linear(params: PatchParams) -> bool:
    """FORMATS.md: the tail is ``g @ d`` exactly when every patch is constant with float32
    entries in ``{0, +-K_u}`` (then ``h_u = g_u d_u`` for ``g`` in [0, 1])."""
    if params.C is not None:
        return False
    d32, k32 = params.d.astype(np.float32), params.K.astype(np.float32)[:, None]
    return bool(np.all((d32 == 0) | (np.abs(d32) == k32)))


def canonical_patch(spec: PatchSpec, *, tail: str = "logits") -> CanonicalGraph:
    """The canonical patch subgraph for ``spec`` (raises ``KeyError`` for an unknown form)."""
    gate_form, tail_form = GATE_FORMS[spec.gate], TAIL_FORMS[tail]
    graph = CanonicalGraph()
    graph.param("n", ())
    graph.param("K", (spec.patches, 1))
    graph.param("d", (spec.patches, spec.classes))
    if spec.affine and spec.gate in ROUTED_GATES:  # gathered per input: one [d, O] block per patch
        graph.param("C", (spec.patches, spec.cut_dim, spec.classes))
    elif spec.affine:
        graph.param("C", (spec.cut_dim, spec.patches * spec.classes))
    head = spec.head
    x = graph.node("Flatten", [head.cut], name="x", axis=1)
    flat: list[str] = []
    for i, name in enumerate(head.hidden):
        flat.append(graph.node("Flatten", [name], name=f"z{i}", axis=1))
        if head.offset(i) != 0.0:  # a Clip unit: the tensor minus its bound
            bound = graph.const(f"z{i}/offset", np.asarray(head.offset(i), dtype=np.float32))
            flat[i] = graph.node("Sub", [flat[i], bound], name=f"z{i}/unit")
    if flat:
        z = graph.node("Concat", flat, name="z", axis=1)
    else:
        z = graph.node("Mul", [x, graph.const("no_hidden", np.zeros((0,), np.float32))], name="z")
    g = gate_form(graph, spec, x, z)
    tail_form(graph, spec, x, g)
    return graph


def _describe(node: Any) -> str:
    ins = ", ".join(n[:40] for n in node.input)
    outs = ", ".join(n[:40] for n in node.output)
    attrs = ",".join(a.name for a in node.attribute)
    return f"{node.op_type} {node.name[:60]!r}({ins}) -> {outs}" + (f" [{attrs}]" if attrs else "")


def _node_bytes(node: Any) -> bytes:
    return bytes(node.SerializeToString(deterministic=True))


def compare_patch_graph(
    *,
    expected: CanonicalGraph,
    patch_nodes: list[Any],
    patched: Any,
    original: Any,
    expected_meta: Mapping[str, str],
) -> list[str]:
    """Differences between the submitted patch subgraph and the canonical one, first first."""
    from onnx import TensorProto, numpy_helper

    problems: list[str] = []
    for i, want in enumerate(expected.nodes):
        if i >= len(patch_nodes):
            problems.append(f"patch node {i}: missing, expected {_describe(want)}")
            break
        got = patch_nodes[i]
        if _node_bytes(got) != _node_bytes(want):
            problems.append(f"patch node {i}: found {_describe(got)}, expected {_describe(want)}")
            break
    if not problems and len(patch_nodes) > len(expected.nodes):
        extra = patch_nodes[len(expected.nodes)]
        problems.append(f"patch node {len(expected.nodes)}: unexpected extra {_describe(extra)}")
    base = {t.name for t in original.graph.initializer}
    found = {t.name: t for t in patched.graph.initializer if t.name not in base}
    for name in sorted(set(found) - set(expected.initializers)):
        problems.append(f"unexpected initializer {name[:60]!r}")
    for name, (shape, value) in expected.initializers.items():
        tensor = found.get(name)
        if tensor is None:
            problems.append(f"initializer {name!r} is missing")
            continue
        dtype = expected.dtypes.get(name, TensorProto.FLOAT)
        if tensor.data_type != dtype or tuple(tensor.dims) != shape:
            kind = TensorProto.DataType.Name(dtype).lower()
            problems.append(f"initializer {name!r}: expected {kind} of shape {list(shape)}")
            continue
        if value is not None:
            got_value = numpy_helper.to_array(tensor)
            if not np.array_equal(got_value, value):
                problems.append(f"initializer {name!r}: expected the constant {value.tolist()}")
    outputs = list(patched.graph.output)
    want_out = expected_outputs(original)
    want_names = [PATCH_OUTPUT if o is None else o.name for o in want_out]
    if [o.name for o in outputs] != want_names:
        problems.append(
            f"graph outputs are {[o.name[:40] for o in outputs]}, expected {want_names}"
        )
    else:
        for got_out, want in zip(outputs, want_out, strict=True):
            if want is None and got_out.type.tensor_type.elem_type != TensorProto.FLOAT:
                problems.append(f"{PATCH_OUTPUT} is not float32")
            elif want is not None and _node_bytes(got_out) != _node_bytes(want):
                problems.append(f"graph output {got_out.name[:40]!r} differs from the original's")
    if list(patched.graph.value_info) != list(original.graph.value_info):
        problems.append("graph value_info differs from the original model's")
    meta = metadata(patched)
    original_meta = metadata(original)
    for key, want in expected_meta.items():
        if meta.get(key) != want:
            problems.append(
                f"metadata {key} is {meta.get(key, '<absent>')[:60]!r}, expected {want[:60]!r}"
            )
    stray = sorted(k for k in meta if k not in expected_meta and meta[k] != original_meta.get(k))
    if stray:
        problems.append(f"unexpected metadata {stray[0][:60]!r}")
    return problems


def expected_metadata(head: Head, gate: str, tail: str | None) -> dict[str, str]:
    meta = {
        "prune.format": PATCH_FORMAT,
        "prune.gate": gate,
        "prune.cut": head.cut,
        "prune.original_output": head.output,
        "prune.hidden": ",".join(head.hidden),
    }
    if tail is not None:
        meta["prune.tail"] = tail
    return meta
