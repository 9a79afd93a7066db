"""``structure.tail``: a static proof that every served output is a faithful, row-by-row
function of ``prune/output``.

Threat: every claim is about the logits ``prune/output``; the graph outputs a client reads are the
original's *output tail* replayed on them (docs/FORMATS.md, "Output tail form"). The tail is pinned
byte for byte to the committed original, but that pins a dishonest original as well, and the
replays stop at the logits. A code-reading owner can commit a tail that serves what the logits do
not say: a label lookup with duplicate labels (the forgotten sample's new class served under its
old label), an order-reversing step after the softmax (``Neg``, a permutation ``MatMul``,
``ArgMin``, the second of ``TopK``), or rows coupled over the batch (a softmax over axis 0, the
batch size read with ``Shape`` and compared with 5).

The proof is an abstract interpretation of the nodes computed from ``prune/output`` over a small
allow-list; a node outside it, or an attribute the rule does not know, is refused (it never
assumes). Each value has one of three states:

* ``logits``: shape ``[N, C]`` (``C`` the logits' classes, the batch first, from ONNX shape
  inference at two batch sizes as in ``structure.rows``) and a per-row strictly increasing
  function of ``prune/output`` along the class axis: ``Identity``, ``Cast`` to float or double,
  ``Softmax``/``LogSoftmax`` over axis 1, and ``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze``
  whose result is again ``[N, C]``;
* ``label``: one value per row (a shape whose only axis above 1 is the batch) equal to
  ``table[argmax of the row]``, where ``table`` holds ``C`` pairwise distinct constants (so the
  served label names exactly one class): ``ArgMax`` over axis 1 of a ``logits`` value gives the
  table ``0..C-1``; ``ArrayFeatureExtractor`` of a 1-D constant or ``Gather`` (axis 0) from one,
  indexed by a label whose table is ``0..C-1``, gives the constant (exactly ``C`` entries);
  ``LabelEncoder`` with distinct keys maps every table entry (no default used); ``Cast`` keeps a
  table only when it casts back exactly; layout ops keep the one-value-per-row shape;
* ``map``: ``ZipMap`` of a ``logits`` value with ``C`` distinct class labels (a served output, read
  by no node).

Every graph output must have a state, and every other input of a tail node must be a constant.
Faithful means: the served label is the logits' argmax under an injective naming, the served
probabilities are ordered as the logits (up to float rounding, which the certified margins
exceed). Nothing here reads a batch size, reduces or normalises over the batch axis, or moves an
element to another row, so the tail is row by row as well."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._graph import PATCH_OUTPUT, up_to
from audit.verify._rows import BATCHES

__all__ = ["StructureTail", "TailProblem", "tail_problems"]

_DEFAULT = ("", "ai.onnx")
_ML = "ai.onnx.ml"
_FLOATS = frozenset({1, 11})  # TensorProto FLOAT, DOUBLE
_NUMBERS = frozenset({1, 2, 3, 4, 5, 6, 7, 11, 12, 13})  # float, (u)int8..64, double
_ATTRS: Mapping[str, frozenset[str]] = {
    "Identity": frozenset(),
    "Cast": frozenset({"to"}),
    "Softmax": frozenset({"axis"}),
    "LogSoftmax": frozenset({"axis"}),
    "ArgMax": frozenset({"axis", "keepdims", "select_last_index"}),
    "Reshape": frozenset({"allowzero"}),
    "Flatten": frozenset({"axis"}),
    "Squeeze": frozenset({"axes"}),
    "Unsqueeze": frozenset({"axes"}),
    "Gather": frozenset({"axis"}),
    "ArrayFeatureExtractor": frozenset(),
    "LabelEncoder": frozenset(
        {"keys_int64s", "keys_strings", "keys_floats", "default_int64", "default_string"}
        | {"default_float", "values_int64s", "values_strings", "values_floats"}
    ),
    "ZipMap": frozenset({"classlabels_int64s", "classlabels_strings"}),
}
_ML_OPS = frozenset({"ArrayFeatureExtractor", "LabelEncoder", "ZipMap"})
_LAYOUT = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})

Dims = tuple[tuple[int, int], ...]
"""A shape at the two batch sizes of :data:`~audit.verify._rows.BATCHES`."""


@dataclass(frozen=True)
class TailProblem:
    """Why one node (or output) of the tail is not proved faithful."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"tail node {self.node[:40]!r} ({self.op[:30]}): {self.reason}"


@dataclass(frozen=True)
class _State:
    kind: Literal["logits", "label", "map"]
    dims: Dims
    table: NDArray[Any] | None = None  # label: the value served for class k is table[k]

    def is_index(self) -> bool:
        """A label whose value is the class index itself (what a lookup may be indexed by)."""
        t = self.table
        return t is not None and t.dtype.kind in "iu" and np.array_equal(t, np.arange(len(t)))


class _Refused(Exception):
    """One node is refused (the message says why)."""


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _distinct(values: NDArray[Any]) -> bool:
    flat = values.reshape(-1).tolist()
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return False
    return len(set(flat)) == len(flat)


def _constants(proto: Any) -> dict[str, NDArray[Any]]:
    """Initializers and ``Constant`` nodes holding one ``value`` tensor, except names a caller
    may override (an initializer also declared as a graph input) or that another node also
    produces (two definitions: which one a runtime reads is not the verifier's to guess)."""
    from collections import Counter

    from onnx import numpy_helper

    declared = {i.name for i in proto.graph.input}
    inits = {t.name for t in proto.graph.initializer}
    produced = Counter(o for node in proto.graph.node for o in node.output if o)
    values = {
        t.name: np.asarray(numpy_helper.to_array(t))
        for t in proto.graph.initializer
        if t.name not in declared and t.name not in produced
    }
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT and len(node.output) == 1:
            name = node.output[0]
            if name in declared or name in inits or produced[name] != 1:
                continue
            for attr in node.attribute:
                if attr.name == "value" and len(node.attribute) == 1:
                    values[name] = np.asarray(numpy_helper.to_array(attr.t))
    return values


def _opset(proto: Any, domains: Sequence[str]) -> int:
    for entry in proto.opset_import:
        if entry.domain in domains:
            return int(entry.version)
    return 0


class _Walk:
    def __init__(self, proto: Any, logits: str, dims: Dims) -> None:
        self.proto = proto
        self.opset = _opset(proto, _DEFAULT)
        self.constants = _constants(proto)
        self.pair = dims[0]
        self.classes = dims[1][0]
        self.start = (logits, _State("logits", dims))
        self.states: dict[str, _State] = {}
        inits = {t.name for t in proto.graph.initializer}
        self.names = inits | {i.name for i in proto.graph.input}

    def run(self) -> list[TailProblem]:
        for node in self.proto.graph.node:
            reads = [name for name in node.input if name in self.states]
            if any(name in self.states for name in node.output):
                return [TailProblem(node.name, node.op_type, "redefines a tail value")]
            if not reads:
                self.names.update(o for o in node.output if o)
                if self.start[0] in node.output:
                    self.states.setdefault(*self.start)
                continue
            try:
                outs = self.node(node)
            except _Refused as exc:
                return [TailProblem(node.name or node.output[0], node.op_type, str(exc))]
            for name, state in zip(node.output, outs, strict=True):
                if name in self.names or name in self.states:
                    return [TailProblem(node.name, node.op_type, f"redefines {name[:60]!r}")]
                self.states[name] = state
        problems = []
        for out in self.proto.graph.output:
            if out.name not in self.states:
                problems.append(
                    TailProblem(
                        out.name,
                        "output",
                        f"graph output {out.name[:60]!r} is not a faithful function of "
                        f"{PATCH_OUTPUT!r} (no allowed tail computes it)",
                    )
                )
        return problems

    def node(self, node: Any) -> list[_State]:
        op = node.op_type
        if op not in _ATTRS or node.domain not in ((_ML,) if op in _ML_OPS else _DEFAULT):
            domain = f"{node.domain}." if node.domain else ""
            raise _Refused(f"op {domain}{op} is not in the faithful-tail table")
        attrs = _attrs(node)
        unknown = sorted(set(attrs) - _ATTRS[op])
        if unknown:
            raise _Refused(f"attribute {unknown[0]!r} is not in the rule")
        if len([o for o in node.output if o]) != 1 or len(node.output) != 1:
            raise _Refused("has other than one output")
        ins = [self.states.get(name) for name in node.input]
        if any(state is not None and state.kind == "map" for state in ins):
            raise _Refused("reads a ZipMap output (a served map is final)")
        return [getattr(self, "op_" + op)(node, attrs, ins)]

    def data(self, node: Any, ins: list[_State | None], count: int) -> _State:
        """The one state input (position 0) of a unary node; the others must be constants."""
        if len(node.input) > count or ins[0] is None or any(s is not None for s in ins[1:]):
            raise _Refused("reads the logits other than as its first input")
        for name in node.input[1:]:
            if name and name not in self.constants:
                raise _Refused(f"reads {name[:60]!r}, which is neither the logits nor a constant")
        return ins[0]

    def logits(self, state: _State) -> _State:
        if state.kind != "logits":
            raise _Refused(f"expects the logits, reads a {state.kind}")
        return state

    def class_axis(self, attrs: dict[str, Any], default: int) -> None:
        axis = int(attrs.get("axis", default))
        if axis not in (1, -1):
            raise _Refused(f"acts along axis {axis}, not the class axis of [N, C]")

    def op_Identity(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        return self.data(node, ins, 1)

    def op_Softmax(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.logits(self.data(node, ins, 1))
        self.class_axis(attrs, -1 if self.opset >= 13 else 1)
        return state

    op_LogSoftmax = op_Softmax

    def op_ArgMax(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.logits(self.data(node, ins, 1))
        self.class_axis(attrs, 0)
        if int(attrs.get("select_last_index", 0)):
            raise _Refused("select_last_index is set")
        dims = state.dims[:1] + (((1, 1),) if int(attrs.get("keepdims", 1)) else ())
        return _State("label", dims, np.arange(self.classes, dtype=np.int64))

    def op_Cast(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        from onnx import helper

        state = self.data(node, ins, 1)
        to = int(attrs.get("to", 0))
        if state.kind == "logits":
            if to not in _FLOATS:
                raise _Refused("casts the logits to a type other than float or double")
            return state
        assert state.table is not None
        if to not in _NUMBERS or state.table.dtype.kind not in "iuf":
            raise _Refused("casts a label table to or from a type other than int, float, double")
        cast = state.table.astype(helper.tensor_dtype_to_np_dtype(to))
        if not np.array_equal(cast.astype(state.table.dtype), state.table) or not _distinct(cast):
            raise _Refused("the cast does not keep the class labels exact and distinct")
        return _State("label", state.dims, cast)

    def op_Reshape(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.data(node, ins, 2)
        if len(node.input) < 2 or node.input[1] not in self.constants:
            raise _Refused("the Reshape target is not a constant")
        target = [int(v) for v in self.constants[node.input[1]].reshape(-1)]
        if int(attrs.get("allowzero", 0)) and 0 in target:
            raise _Refused("allowzero with a 0 in the target")
        low, high = (_reshaped(state.dims, target, i) for i in (0, 1))
        return self.layout(state, tuple(zip(low, high, strict=True)))

    def op_Flatten(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.data(node, ins, 1)
        axis = int(attrs.get("axis", 1))
        axis = axis + len(state.dims) if axis < 0 else axis
        out = []
        for i in (0, 1):
            dims = [d[i] for d in state.dims]
            out.append((math.prod(dims[:axis]), math.prod(dims[axis:])))
        return self.layout(state, tuple(zip(*out, strict=True)))

    def axes(self, node: Any, attrs: dict[str, Any]) -> list[int]:
        if "axes" in attrs:
            return [int(a) for a in attrs["axes"]]
        if len(node.input) > 1 and node.input[1]:
            return [int(a) for a in self.constants[node.input[1]].reshape(-1)]
        raise _Refused("has no constant axes")

    def op_Squeeze(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.data(node, ins, 2)
        rank = len(state.dims)
        drop = {a + rank if a < 0 else a for a in self.axes(node, attrs)}
        if any(state.dims[a] != (1, 1) for a in drop if 0 <= a < rank) or not drop:
            raise _Refused("squeezes an axis that is not 1")
        return self.layout(state, tuple(d for i, d in enumerate(state.dims) if i not in drop))

    def op_Unsqueeze(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.data(node, ins, 2)
        rank = len(state.dims) + len(self.axes(node, attrs))
        add = {a + rank if a < 0 else a for a in self.axes(node, attrs)}
        rest = iter(state.dims)
        return self.layout(state, tuple((1, 1) if i in add else next(rest) for i in range(rank)))

    def layout(self, state: _State, dims: Dims) -> _State:
        """``state`` with shape ``dims``, which must keep one row per batch row in order."""
        if state.kind == "logits" and dims != (self.pair, (self.classes, self.classes)):
            raise _Refused(f"gives the logits the shape {_show(dims)}, not [N, C]")
        if state.kind == "label" and not _one_per_row(dims, self.pair):
            raise _Refused(f"gives a label the shape {_show(dims)}, not one value per row")
        return _State(state.kind, dims, state.table)

    def lookup(self, table: str, index: _State | None) -> NDArray[Any]:
        if index is None or not index.is_index():
            raise _Refused("the lookup is not indexed by the logits' argmax")
        values = self.constants.get(table)
        if values is None:
            raise _Refused(f"looks up in {table[:60]!r}, which is not a constant")
        if values.ndim != 1 or len(values) != self.classes:
            raise _Refused(f"looks up in a table of shape {values.shape}, not [{self.classes}]")
        if values.dtype.kind not in "iufUSO" or not _distinct(values):
            raise _Refused("the class labels are not pairwise distinct")
        return values

    def op_ArrayFeatureExtractor(
        self, node: Any, attrs: dict[str, Any], ins: list[_State | None]
    ) -> _State:
        if len(node.input) != 2 or ins[0] is not None:
            raise _Refused("reads the logits other than as the indices")
        table = self.lookup(node.input[0], ins[1])
        assert ins[1] is not None
        n = ins[1].dims
        rows = (math.prod(d[0] for d in n), math.prod(d[1] for d in n))
        return _State("label", ((1, 1), rows), table)

    def op_Gather(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        if len(node.input) != 2 or ins[0] is not None or int(attrs.get("axis", 0)) != 0:
            raise _Refused("is not a lookup along axis 0 of a constant")
        table = self.lookup(node.input[0], ins[1])
        assert ins[1] is not None
        return _State("label", ins[1].dims, table)

    def op_LabelEncoder(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.data(node, ins, 1)
        if state.kind != "label" or state.table is None:
            raise _Refused("encodes something other than a class label")
        kinds = {"keys_int64s": "iu", "keys_strings": "OUS", "keys_floats": "f"}
        keys = [attrs[k] for k in kinds if k in attrs]
        if any(k in attrs and state.table.dtype.kind not in kind for k, kind in kinds.items()):
            raise _Refused("its key type is not the label's type")
        values = [
            attrs[k] for k in ("values_int64s", "values_strings", "values_floats") if k in attrs
        ]
        if len(keys) != 1 or len(values) != 1 or len(keys[0]) != len(values[0]):
            raise _Refused("needs one list of keys and one of values, of equal length")
        plain = [_plain(k) for k in keys[0]]
        if len(set(plain)) != len(plain):
            raise _Refused("has duplicate keys")
        mapping = dict(zip(plain, (_plain(v) for v in values[0]), strict=True))
        table = [_plain(v) for v in state.table.tolist()]
        if any(t not in mapping for t in table):
            raise _Refused("a class label is not a key (the default would be served)")
        out = np.asarray([mapping[t] for t in table])
        if not _distinct(out):
            raise _Refused("maps two class labels to the same value")
        return _State("label", state.dims, out)

    def op_ZipMap(self, node: Any, attrs: dict[str, Any], ins: list[_State | None]) -> _State:
        state = self.logits(self.data(node, ins, 1))
        labels = [attrs[k] for k in ("classlabels_int64s", "classlabels_strings") if k in attrs]
        if len(labels) != 1 or len(labels[0]) != self.classes:
            raise _Refused(f"does not name exactly {self.classes} classes")
        if len({_plain(v) for v in labels[0]}) != self.classes:
            raise _Refused("the class labels are not pairwise distinct")
        return _State("map", state.dims)


def _plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _show(dims: Dims) -> str:
    return "[" + ", ".join("N" if a != b else str(a) for a, b in dims) + "]"


def _one_per_row(dims: Dims, pair: tuple[int, int]) -> bool:
    """Every axis is 1 except (at most) one of size N: element ``i`` is row ``i``'s value."""
    sizes = (math.prod(d[0] for d in dims), math.prod(d[1] for d in dims))
    return sizes == pair and all(d in ((1, 1), pair) for d in dims)


def _reshaped(dims: Dims, target: list[int], i: int) -> tuple[int, ...]:
    """The shape ``Reshape`` gives at batch ``i`` (ONNX rules: 0 copies, -1 infers)."""
    shape = [d[i] for d in dims]
    out = [shape[k] if v == 0 and k < len(shape) else v for k, v in enumerate(target)]
    if out.count(-1) > 1 or any(v < -1 for v in out):
        raise _Refused(f"the Reshape target {target} is not a shape")
    if -1 in out:
        known = math.prod(v for v in out if v != -1)
        if known == 0 or math.prod(shape) % known:
            raise _Refused(f"the Reshape target {target} does not fit")
        out[out.index(-1)] = math.prod(shape) // known
    if math.prod(out) != math.prod(shape):
        raise _Refused(f"the Reshape target {target} does not fit")
    return tuple(out)


def _logits_dims(proto: Any) -> Dims | str:
    """The shape of ``prune/output`` at the two batch sizes (``[N, C]``), or why not."""
    import onnx

    from audit.sandbox._policy import _fold_static
    from audit.verify._rows import _inferred

    try:
        sub, _ = _fold_static(onnx.load_from_string(up_to(proto, [PATCH_OUTPUT])))
        low, high = (_inferred(sub, b).get(PATCH_OUTPUT) for b in BATCHES)
    except Exception as exc:  # onnx shape inference raises several unrelated types
        first = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
        return f"shape inference refuses the graph up to {PATCH_OUTPUT!r}: {first}"
    if low is None or high is None or len(low) != 2 or len(high) != 2 or low[1] != high[1]:
        return f"{PATCH_OUTPUT!r} has no inferred shape [N, C] (got {low} and {high})"
    if (low[0], high[0]) not in (BATCHES, (1, 1)) or low[1] < 1:
        return f"{PATCH_OUTPUT!r} has shape {low} at batch {BATCHES[0]}: the batch is not first"
    return ((low[0], high[0]), (low[1], high[1]))


def tail_problems(proto: Any) -> list[TailProblem]:
    """Why the graph outputs of ``proto`` are not proved faithful, row-by-row functions of
    ``prune/output`` (empty: proved; module docstring)."""
    tail = any(PATCH_OUTPUT in node.input for node in proto.graph.node)
    if not tail and [o.name for o in proto.graph.output] == [PATCH_OUTPUT]:
        return []
    dims = _logits_dims(proto)
    if isinstance(dims, str):
        return [TailProblem(PATCH_OUTPUT, "logits", dims)]
    return _Walk(proto, PATCH_OUTPUT, dims).run()


class StructureTail(Check[VerifyContext]):
    name = "structure.tail"
    summary = (
        "every graph output of model.onnx is prune/output or a faithful, row-by-row function of "
        "it (static proof over an allow-list: increasing per-row transforms, argmax, lookups in "
        "distinct labels, ZipMap)"
    )
    requires = frozenset[str]()

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        proto = ctx.patched_proto()
        if PATCH_OUTPUT not in {o for n in proto.graph.node for o in n.output}:
            raise CheckUnavailable(f"model.onnx computes no {PATCH_OUTPUT!r}")
        problems = tail_problems(proto)
        outputs = [o.name for o in proto.graph.output]
        evidence = {"problems": [str(p) for p in problems[:5]], "outputs": outputs[:20]}
        if problems:
            return self.failed(str(problems[0]), **evidence)
        return self.passed(
            f"all {len(outputs)} graph outputs are faithful row-by-row functions of "
            f"{PATCH_OUTPUT!r}",
            **evidence,
        )
