"""The verifier's own reading of ONNX graphs: safe loading, the head after the cut, the
original-versus-patched structure diff, and the rules a patch subgraph must follow.

Threat assumption: both models come from the owner. Nothing in the patched model's metadata is
trusted: the cut must be a tensor of the *original* graph that separates it, the hidden tensors
are recomputed here as the inputs of the Relu nodes after the cut, and the metadata must agree.
External data is refused (an ONNX file must never make the verifier open a path).

Output tail: the logits are the one tensor read by the first Softmax/LogSoftmax/ArgMax nodes on
the way to the outputs (or the single output when there are none); the nodes computed from the
logits form the tail, which the patched model must replay unchanged on ``prune/output``
(docs/FORMATS.md, "Output tail")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.proof import ProofFileError
from audit.verify._framework import CheckUnavailable

__all__ = [
    "ALLOWED_PATCH_OPS",
    "PATCH_OUTPUT",
    "PATCH_PREFIX",
    "TAIL_FORM",
    "Head",
    "expected_outputs",
    "find_head",
    "head_layers",
    "load_onnx",
    "match_original_nodes",
    "metadata",
    "original_problems",
    "output_tail",
    "patch_form_problems",
    "replayed_tail",
    "sub_model",
    "up_to",
]

PATCH_PREFIX = "prune/patch/"
PATCH_OUTPUT = "prune/output"
PATCH_FORMAT = "prune/patch/v1"
TAIL_FORM = "replay"
_TAIL_OPS = frozenset({"Softmax", "LogSoftmax", "ArgMax"})
_ACTIVATIONS = frozenset({"Relu", "LeakyRelu", "PRelu", "Clip"})
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Continuous piecewise-linear ops only: no comparisons, no control flow, no data-dependent
# shapes. A trigger on exact inputs needs one of the excluded ops (Equal, Where, If, ...).
ALLOWED_PATCH_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Neg",
        "Relu",
        "Mul",
        "Div",
        "MatMul",
        "Gemm",
        "Sum",
        "ReduceSum",
        "Reshape",
        "Flatten",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Transpose",
        "Identity",
        "Constant",
    }
)
# Ops that multiply two operands: one of them must be a constant (no data x data products).
_BILINEAR = {"Mul": (0, 1), "MatMul": (0, 1), "Gemm": (0, 1), "Div": (1,)}


def load_onnx(data: bytes, *, what: str) -> Any:
    """Decode an ONNX ``ModelProto`` held in memory; refuse external data and subgraphs with
    functions the verifier cannot inspect."""
    import onnx

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError has no stable public base
        raise ProofFileError(f"{what}: not an ONNX model ({exc.__class__.__name__})") from exc
    if not proto.graph.node:
        raise ProofFileError(f"{what}: not an ONNX model (no nodes)")
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise ProofFileError(f"{what}: tensor {tensor.name[:60]!r} uses external data")
    return proto


def _all_tensors(graph: Any) -> Iterable[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def metadata(proto: Any) -> dict[str, str]:
    """metadata_props as a dict; a duplicated key is refused (two readers could disagree)."""
    out: dict[str, str] = {}
    for prop in proto.metadata_props:
        if prop.key in out:
            raise CheckUnavailable(f"patched model: metadata key {prop.key!r} appears twice")
        out[prop.key] = prop.value
    return out


@dataclass(frozen=True)
class Head:
    """The original model after the cut: ``nodes`` the indices of the nodes the logits
    ``output`` need downstream of the cut, ``tail`` those after the logits. ``layers`` the units
    of each hidden layer (docs/FORMATS.md, "Head layers"): ``(tensor, activation node index)``
    for a breakpoint (the input of a Relu, LeakyRelu or PRelu), ``(tensor, -1)`` for a tensor
    carried across the layer by a skip connection; ``hidden`` their tensors in order. A Clip's
    input is two breakpoints in a row, ``t - min`` then ``t - max`` (one, ``t - min``, when it
    has no upper bound); ``offsets`` holds, per ``hidden`` entry, the bound subtracted from the
    tensor (0 for every other unit)."""

    input: str
    cut: str
    hidden: tuple[str, ...]
    output: str
    nodes: tuple[int, ...]
    tail: tuple[int, ...] = ()
    layers: tuple[tuple[tuple[str, int], ...], ...] = ()
    offsets: tuple[float, ...] = ()

    def offset(self, entry: int) -> float:
        """``z = value(hidden[entry]) - offset`` (a Clip bound, else 0)."""
        return self.offsets[entry] if self.offsets else 0.0


def _constant_value(graph: Any, name: str) -> NDArray[Any] | None:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return np.asarray(numpy_helper.to_array(t))
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return np.asarray(numpy_helper.to_array(attr.t))
    return None


def clip_bounds(graph: Any, node: Any) -> tuple[float, float | None]:
    """``(min, max)`` of a Clip node as float32 values, from its constant inputs 1 and 2 (the
    opset-11-on form); a bound of float32 magnitude or more is absent (``max`` then ``None``).
    Raises :class:`CheckUnavailable` for a bound that is not a constant float scalar, a Clip
    with attributes (opset 6 form: refused, not guessed), a missing lower bound, or
    ``min > max``."""
    if len(node.attribute):
        raise CheckUnavailable(f"head: Clip {node.name[:60]!r} has attributes (opset < 11)")
    bounds: list[float | None] = []
    for position, key in ((1, "min"), (2, "max")):
        if position >= len(node.input) or not node.input[position]:
            bounds.append(None)
            continue
        raw = _constant_value(graph, node.input[position])
        if raw is None:
            raise CheckUnavailable(f"head: Clip {node.name[:60]!r} has a computed bound")
        arr = np.asarray(raw)
        if arr.size != 1 or arr.dtype.kind != "f":
            raise CheckUnavailable(f"head: Clip {node.name[:60]!r} {key} is not a float scalar")
        value = float(np.float32(arr.reshape(())))
        if np.isnan(value):
            raise CheckUnavailable(f"head: Clip {node.name[:60]!r} {key} is NaN")
        bounds.append(value if abs(value) < _FLOAT32_MAX else None)
    lo, hi = bounds
    if lo is None:
        raise CheckUnavailable(f"head: Clip {node.name[:60]!r} has no finite lower bound")
    if hi is not None and lo > hi:
        raise CheckUnavailable(f"head: Clip {node.name[:60]!r} has min > max")
    return lo, hi


def unit_offsets(graph: Any, layers: Sequence[Sequence[tuple[str, int]]]) -> tuple[float, ...]:
    """Per unit entry of ``layers`` (in order), the constant subtracted from its tensor: a
    Clip's first entry its min, its second its max; 0 otherwise."""
    out: list[float] = []
    for units in layers:
        seen: set[int] = set()
        for _, act in units:
            if act < 0 or graph.node[act].op_type != "Clip":
                out.append(0.0)
                continue
            lo, hi = clip_bounds(graph, graph.node[act])
            out.append(hi if act in seen and hi is not None else lo)
            seen.add(act)
    return tuple(out)


def head_layers(
    graph: Any, nodes: Sequence[int], cut: str
) -> tuple[tuple[tuple[str, int], ...], ...]:
    """The hidden layers of the head made of ``nodes`` (file order) after ``cut``. Depth of a
    tensor: the cut 0, an activation's output its input's depth plus one, any other node's
    output the largest depth of its computed inputs. Layer ``l`` lists, for each tensor in
    order (the cut, then node outputs in file order) of depth below ``l``: the tensor as a
    breakpoint when an activation of output depth ``l`` reads it, then the tensor as carried
    when a non-activation node of output depth ``l`` or more reads it."""
    depth = {cut: 0}
    reads: list[tuple[str, int]] = []  # (tensor, reading node)
    for index in nodes:
        node = graph.node[index]
        inputs = [name for name in node.input if name in depth]
        if not inputs or len(node.output) < 1:
            raise CheckUnavailable(f"head: node {node.name[:60]!r} reads no computed tensor")
        reads.extend((name, index) for name in inputs)
        if node.op_type in _ACTIVATIONS:
            if inputs != [node.input[0]]:
                raise CheckUnavailable(f"head: activation {node.name[:60]!r} on a non-data input")
            depth[node.output[0]] = depth[node.input[0]] + 1
        else:
            depth[node.output[0]] = max(depth[name] for name in inputs)
    ordered = [cut, *(graph.node[i].output[0] for i in nodes)]
    total = max(depth.values())
    layers: list[tuple[tuple[str, int], ...]] = []
    for layer in range(1, total + 1):
        units: list[tuple[str, int]] = []
        for name in ordered:
            if depth[name] >= layer:
                continue
            users = [i for tensor, i in reads if tensor == name]
            acts = [i for i in users if graph.node[i].op_type in _ACTIVATIONS]
            if len(acts) > 1:
                raise CheckUnavailable(f"head: tensor {name[:60]!r} feeds several activations")
            if acts and depth[name] == layer - 1:
                units.append((name, acts[0]))
                clip = graph.node[acts[0]]
                if clip.op_type == "Clip" and clip_bounds(graph, clip)[1] is not None:
                    units.append((name, acts[0]))
            if any(
                graph.node[i].op_type not in _ACTIVATIONS
                and depth[graph.node[i].output[0]] >= layer
                for i in users
            ):
                units.append((name, -1))
        layers.append(tuple(units))
    return tuple(layers)


def output_tail(original: Any) -> tuple[str, tuple[int, ...]]:
    """(logits tensor, tail node indices) of ``original`` (module docstring)."""
    graph = original.graph
    outputs = [o.name for o in graph.output]
    after_tail: set[str] = set()
    firsts: set[str] = set()
    for node in graph.node:
        reads_tail = any(name in after_tail for name in node.input)
        if node.op_type in _TAIL_OPS and node.domain in ("", "ai.onnx") and not reads_tail:
            if node.input:
                firsts.add(node.input[0])
            after_tail.update(node.output)
        elif reads_tail:
            after_tail.update(node.output)
    if not firsts:
        if len(outputs) != 1:
            raise CheckUnavailable(
                f"original model: {len(outputs)} outputs and no Softmax/LogSoftmax/ArgMax"
            )
        return outputs[0], ()
    if len(firsts) != 1:
        raise CheckUnavailable(f"original model: the output tail reads {len(firsts)} tensors")
    logits = next(iter(firsts))
    constants = _constants(graph)
    after = {logits}
    tail: list[int] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Constant" and any(name in after for name in node.input):
            tail.append(index)
            after.update(node.output)
    for index in tail:
        for name in graph.node[index].input:
            if name and name not in after and name not in constants:
                raise CheckUnavailable(
                    f"original model: tail node {graph.node[index].name[:60]!r} reads "
                    f"{name[:60]!r}, which is not computed from the logits"
                )
    if any(name not in after for name in outputs):
        raise CheckUnavailable("original model: an output is not computed from the logits")
    return logits, tuple(tail)


def _constants(graph: Any) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    return names


def find_head(original: Any, cut: str) -> Head:
    """The head of ``original`` after tensor ``cut``. Raises :class:`CheckUnavailable` unless
    ``cut`` is the graph input or a computed tensor that *separates* the graph: every node after
    it reads only tensors after it or constants, and the logits are after it."""
    graph = original.graph
    constants = _constants(graph)
    inputs = [i.name for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise CheckUnavailable(f"original model: expected one input, got {len(inputs)}")
    logits, tail = output_tail(original)
    tail_set = set(tail)
    outputs = [logits]
    produced = {name for node in graph.node for name in node.output}
    if cut != inputs[0] and cut not in produced:
        raise CheckUnavailable(f"cut tensor {cut[:60]!r} is not a tensor of the original model")
    after = {cut}
    nodes: list[int] = []
    for index, node in enumerate(graph.node):
        if index in tail_set:
            continue
        if node.op_type != "Constant" and any(name in after for name in node.input):
            nodes.append(index)
            after.update(node.output)
    if cut in {o for i in tail for o in graph.node[i].output}:
        raise CheckUnavailable(f"cut tensor {cut[:60]!r} is after the logits")
    for index in nodes:
        node = graph.node[index]
        for name in node.input:
            if name and name not in after and name not in constants:
                raise CheckUnavailable(
                    f"cut {cut[:60]!r} does not separate the model: node {node.name[:60]!r} "
                    f"after it reads {name[:60]!r} from before it"
                )
    if outputs[0] not in after:
        raise CheckUnavailable(f"the logits {outputs[0]!r} do not depend on the cut {cut!r}")
    wanted = {outputs[0]}
    needed: list[int] = []
    for index in reversed(nodes):
        if any(name in wanted for name in graph.node[index].output):
            needed.insert(0, index)
            wanted.update(name for name in graph.node[index].input if name)
    layers = head_layers(graph, needed, cut)
    hidden = tuple(name for layer in layers for name, _ in layer)
    offsets = unit_offsets(graph, layers)
    return Head(
        inputs[0],
        cut,
        hidden,
        outputs[0],
        tuple(needed),
        tail,
        layers,
        offsets if any(offsets) else (),
    )


def _same(a: Any, b: Any) -> bool:
    return bool(a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True))


def _list_problem(kind: str, original: Sequence[Any], patched: Sequence[Any]) -> list[str]:
    if len(original) != len(patched) or not all(map(_same, original, patched)):
        return [f"{kind} differ from the original model's"]
    return []


def replayed_tail(original: Any) -> list[Any]:
    """The canonical tail of the patched model: the original's tail nodes in order, each
    reading ``prune/output`` where it read the logits (byte-identical otherwise)."""
    logits, tail = output_tail(original)
    out: list[Any] = []
    for index in tail:
        node = type(original.graph.node[index])()
        node.CopyFrom(original.graph.node[index])
        for i, name in enumerate(node.input):
            if name == logits:
                node.input[i] = PATCH_OUTPUT
        out.append(node)
    return out


def expected_outputs(original: Any) -> list[Any]:
    """The patched model's graph outputs, as ``ValueInfoProto``s with ``prune/output`` typed
    by the caller: the original's outputs with the logits renamed to ``prune/output`` (or
    ``prune/output`` appended), or ``[prune/output]`` alone when there is no tail."""
    logits, tail = output_tail(original)
    if not tail:
        return [None]
    outs: list[Any] = [None if o.name == logits else o for o in original.graph.output]
    if None not in outs:
        outs.append(None)
    return outs


def match_original_nodes(original: Any, patched: Any) -> tuple[list[str], list[Any]]:
    """Original nodes before the tail must appear in the patched graph byte-identical and in
    the same order; the patched graph must end with the replayed tail (:func:`replayed_tail`);
    every other node is a patch node. Returns (problems, patch nodes)."""
    problems: list[str] = []
    extra: list[Any] = []
    j = 0
    _, tail = output_tail(original)
    tail_set = set(tail)
    base = [n for i, n in enumerate(original.graph.node) if i not in tail_set]
    nodes = list(patched.graph.node)
    if tail:
        canonical = replayed_tail(original)
        got = nodes[-len(canonical) :] if len(nodes) >= len(canonical) else []
        if len(got) != len(canonical) or not all(map(_same, got, canonical)):
            problems.append("the output tail is not the original's replayed on prune/output")
        nodes = nodes[: -len(canonical)] if len(nodes) >= len(canonical) else nodes
    for node in nodes:
        if j < len(base) and _same(node, base[j]):
            j += 1
        else:
            extra.append(node)
    if j < len(base):
        missing = base[j]
        problems.append(
            f"original node {missing.name[:60] or missing.op_type!r} is missing or changed"
        )
    return problems, extra


def _initializer_problems(original: Any, patched: Any) -> list[str]:
    problems: list[str] = []
    base = {t.name: t for t in original.graph.initializer}
    seen: set[str] = set()
    order: list[str] = []
    for tensor in patched.graph.initializer:
        if tensor.name in seen:
            problems.append(f"initializer {tensor.name[:60]!r} appears twice")
        seen.add(tensor.name)
        if tensor.name in base:
            order.append(tensor.name)
            if not _same(tensor, base[tensor.name]):
                problems.append(f"original weights changed: initializer {tensor.name[:60]!r}")
        elif not tensor.name.startswith(PATCH_PREFIX):
            problems.append(f"extra initializer {tensor.name[:60]!r} outside {PATCH_PREFIX}")
    missing = [name for name in base if name not in seen]
    if missing:
        problems.append(f"original initializer {missing[0][:60]!r} is missing")
    elif order != list(base):
        problems.append("original initializers are reordered")
    return problems


def _patch_node_problems(
    nodes: Sequence[Any], *, sources: set[str], constants: set[str]
) -> list[str]:
    problems: list[str] = []
    known = set(sources) | constants
    const = set(constants)
    produced_output = False
    for node in nodes:
        label = f"patch node {node.name[:50] or node.op_type!r}"
        if node.op_type not in ALLOWED_PATCH_OPS or node.domain not in ("", "ai.onnx"):
            problems.append(
                f"{label}: op {node.domain + '.' if node.domain else ''}{node.op_type} is not allowed in a patch"
            )
            continue
        if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            problems.append(f"{label}: subgraph attributes are not allowed")
        for name in node.output:
            if not (name.startswith(PATCH_PREFIX) or name == PATCH_OUTPUT):
                problems.append(f"{label}: output {name[:60]!r} outside {PATCH_PREFIX}")
            produced_output |= name == PATCH_OUTPUT
        for name in node.input:
            if name and name not in known:
                problems.append(f"{label}: reads {name[:60]!r}, which a patch may not read")
        if node.op_type in _BILINEAR:
            operands = [node.input[i] for i in _BILINEAR[node.op_type] if i < len(node.input)]
            if node.op_type != "Div" and not any(name in const for name in operands):
                problems.append(f"{label}: {node.op_type} of two data tensors is not allowed")
            if node.op_type == "Div" and not all(name in const for name in operands):
                problems.append(f"{label}: division by a data tensor is not allowed")
        if node.op_type == "Constant" or all(not n or n in const for n in node.input):
            const.update(node.output)
        known.update(node.output)
    if not produced_output:
        problems.append(f"no patch node produces {PATCH_OUTPUT!r}")
    return problems


TREE_ML_OPSET = 3
"""The ``ai.onnx.ml`` version the tree gate imports when the original imports none."""


def _opset_problems(original: Any, patched: Any) -> list[str]:
    """The patched model imports the original's opsets; the tree gate (FORMATS.md "Tree gate")
    appends ``ai.onnx.ml`` version 3 when the original has none, and needs a version from 1 to 4
    (version 5 deprecates ``TreeEnsembleRegressor``)."""
    import onnx

    want = list(original.opset_import)
    if metadata(patched).get("prune.gate") == "tree":
        ml = [e.version for e in original.opset_import if e.domain == "ai.onnx.ml"]
        if not ml:
            want.append(onnx.helper.make_opsetid("ai.onnx.ml", TREE_ML_OPSET))
        elif not 1 <= ml[0] <= 4:
            return [f"the tree gate needs ai.onnx.ml opset 1-4, the original imports {ml[0]}"]
    return _list_problem("opset imports", want, patched.opset_import)


def original_problems(original: Any, patched: Any) -> list[str]:
    """Ways in which ``patched`` fails to contain ``original`` unchanged: nodes (same bytes, same
    order), initializers, graph inputs, opsets, functions; empty when the original is intact."""
    node_problems, _ = match_original_nodes(original, patched)
    problems = node_problems + _initializer_problems(original, patched)
    problems += _list_problem("graph inputs", original.graph.input, patched.graph.input)
    problems += _opset_problems(original, patched)
    problems += _list_problem("functions", original.functions, patched.functions)
    problems += _list_problem(
        "sparse initializers", original.graph.sparse_initializer, patched.graph.sparse_initializer
    )
    return problems


def patch_form_problems(original: Any, patched: Any, head: Head) -> list[str]:
    """Ways in which the part of ``patched`` that is not ``original`` departs from the declared
    patch form (docs/FORMATS.md): one float32 output ``prune/output``, metadata that matches the
    original graph, patch nodes of allowed ops that read only the cut, the hidden tensors, the
    original logits and patch constants."""
    import onnx

    problems: list[str] = []
    _, patch_nodes = match_original_nodes(original, patched)
    outputs = list(patched.graph.output)
    expected_out = expected_outputs(original)
    want = [PATCH_OUTPUT if o is None else o.name for o in expected_out]
    if [o.name for o in outputs] != want:
        names = ", ".join(o.name[:40] for o in outputs)
        problems.append(f"graph outputs are [{names}], expected exactly [{', '.join(want)}]")
    else:
        for got, exp in zip(outputs, expected_out, strict=True):
            if exp is None and got.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                problems.append(f"{PATCH_OUTPUT} is not float32")
            elif exp is not None and not _same(got, exp):
                problems.append(f"graph output {got.name[:40]!r} differs from the original's")
    meta = metadata(patched)
    expected = {
        "prune.format": PATCH_FORMAT,
        "prune.cut": head.cut,
        "prune.original_output": head.output,
        "prune.hidden": ",".join(head.hidden),
    }
    if head.tail:
        expected["prune.tail"] = TAIL_FORM
    elif "prune.tail" in meta:
        problems.append("metadata prune.tail is present but the original has no output tail")
    for key, value in expected.items():
        if meta.get(key) != value:
            problems.append(
                f"metadata {key} is {meta.get(key, '<absent>')[:60]!r}, "
                f"the original graph gives {value[:60]!r}"
            )
    if meta.get("prune.gate") not in ("activation", "dense"):
        problems.append(f"metadata prune.gate is {meta.get('prune.gate', '<absent>')[:30]!r}")
    patch_inits = {t.name for t in patched.graph.initializer if t.name.startswith(PATCH_PREFIX)}
    patch_consts = {o for n in patch_nodes if n.op_type == "Constant" for o in n.output}
    problems += _patch_node_problems(
        patch_nodes,
        sources={head.cut, head.output, *head.hidden},
        constants=patch_inits | patch_consts,
    )
    return problems


def sub_model(proto: Any, *, cut: str, cut_shape: Sequence[int], outputs: Sequence[str]) -> bytes:
    """An in-memory model whose input is the tensor ``cut`` (shape ``[batch, *cut_shape]``) and
    whose outputs are ``outputs``: every node that does not depend on the model input other
    than through the cut. Used to run the head alone (region probes live in the cut space).
    ``proto`` is not modified."""
    import onnx

    graph = proto.graph
    before = {i.name for i in graph.input} - {t.name for t in graph.initializer} - {cut}
    nodes = []
    for node in graph.node:
        if any(name in before for name in node.input):
            before.update(name for name in node.output if name != cut)
        else:
            nodes.append(node)
    nodes = _needed(nodes, outputs)
    cut_info = onnx.helper.make_tensor_value_info(
        cut, onnx.TensorProto.FLOAT, ["batch", *[int(s) for s in cut_shape]]
    )
    out_info = [onnx.ValueInfoProto(name=name) for name in outputs]
    sub = onnx.helper.make_graph(
        nodes, "head", [cut_info], out_info, initializer=list(graph.initializer)
    )
    model = onnx.helper.make_model(sub, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    return bytes(model.SerializeToString())


def _needed(nodes: Sequence[Any], outputs: Sequence[str]) -> list[Any]:
    """The nodes ``outputs`` depend on, in their order."""
    want = set(outputs)
    keep: list[Any] = []
    for node in reversed(list(nodes)):
        if any(name in want for name in node.output):
            keep.append(node)
            want.update(name for name in node.input if name)
    return keep[::-1]


def up_to(proto: Any, outputs: Sequence[str]) -> bytes:
    """``proto`` cut down to the nodes ``outputs`` need, with those as its graph outputs (the
    output tail after the logits removed). ``proto`` is not modified."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    kept = [onnx.NodeProto() for _ in range(0)]
    for node in _needed(list(proto.graph.node), outputs):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        kept.append(copy)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    used = {name for node in kept for name in node.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    copies = []
    for tensor in inits:
        c = onnx.TensorProto()
        c.CopyFrom(tensor)
        copies.append(c)
    del model.graph.initializer[:]
    model.graph.initializer.extend(copies)
    model.graph.ClearField("value_info")
    return bytes(model.SerializeToString())
