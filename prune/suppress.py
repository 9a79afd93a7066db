"""The class-suppression patch forms (docs/FORMATS.md "Class suppression"): forget a whole class
by capping its logit below the best other class.

v1 (``prune/class-suppress/v1``): ``z'_K = min(z_K, max_{j != K} z_j - m)``, every other logit
unchanged. Class ``K`` is then never the top class anywhere its logits are bounded (see
:mod:`prune.formats._class_claim` for the float32 argument), predictions of every other class are
kept (an input predicted ``j != K`` has ``z_j >= z_K >= z'_K``, so stays ``j``), and inputs that
were predicted ``K`` move to the best remaining class.

v2 (``prune/class-suppress/v2``, the default): the rows the original gives ``K``
(``z_K > max_{j != K} z_j``) are first *remapped* to ``L = z A + beta``, learnt to look like a
model retrained without ``K`` (:mod:`prune.unlearn._class_remap`), every other row keeps
``L = z``; then the v1 suppression is applied to ``L``. ``K`` is never the top class wherever
``L`` is bounded, and rows predicted ``j != K`` are treated exactly as in v1, so no other class
loses a sample.

Only per-row ops over axis 1 are used, so each row of a batch is computed on its own.
:func:`append_class_suppression` appends the nodes after the logits through a node sink (the
same one the region patch uses); :func:`export_suppressed` writes the whole model: the original
graph byte-identical, the suppression subgraph appended, and the original's output tail
(Softmax, ArgMax, ...) replayed on ``prune/output`` as for the region patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from prune.errors import PatchError
from prune.formats import (
    CLASS_REMAP_FORMAT,
    CLASS_SUPPRESS_FORMAT,
    decimal_string,
    float32_margin_holds,
    remap_problems,
)
from prune.model import ImportedModel, PLHead
from prune.regions import InputBox

__all__ = [
    "CLASS_REMAP_FORMAT",
    "CLASS_SUPPRESS_FORMAT",
    "Remap",
    "append_class_suppression",
    "export_suppressed",
    "logit_bound",
    "suppression_only",
]

_INFLATE = 1e-9
"""Relative and absolute outward slack on the float64 interval bound (its own rounding)."""


@dataclass(frozen=True, eq=False)
class Remap:
    """The v2 remap of the rows the original gives ``K``: ``L = z @ matrix + shift`` (float32
    ``[C, C]`` and ``[C]``), suppressed afterwards like any logits."""

    matrix: NDArray[np.float32]
    shift: NDArray[np.float32]


class Sink(Protocol):
    def node(self, op: str, inputs: list[str], *, name: str, **attrs: Any) -> str: ...

    def const(self, name: str, value: NDArray[np.generic]) -> str: ...


def append_class_suppression(
    sink: Sink,
    logits: str,
    *,
    classes: int,
    forget_class: int,
    margin: float,
    opset: int,
    output: str,
    remap: Remap | None = None,
) -> str:
    """Append the suppression after ``logits`` ``[N, classes]``; returns the name of the output
    (``output``). Node order and names are part of the format: the verifier rebuilds this list
    and compares it node for node.

    v1, four elementwise/per-row nodes (measured: the first construction with Gather/Concat cost
    1.55x the inference time of the digits MLP, this one 1.17x): ``others = z + mask`` (mask 0,
    ``-inf`` at K: exact), ``best = ReduceMax(others, axis 1)``, ``ceiling = best + cap`` (cap
    ``+inf``, ``-margin`` at K: ``fl(best - margin)`` at K, ``+inf`` elsewhere),
    ``output = Min(z, ceiling)`` (``z_j`` exactly for ``j != K``).

    v2 (``remap`` given): ``top = ReduceMax(z)``, ``active = Less(best, top)`` (``z_K > best``:
    the original's top class is K), ``remapped = Gemm(z, map, shift)``,
    ``logits = Where(active, remapped, z)``, then the four v1 nodes on ``logits`` (names
    ``class/logits_others``, ``class/logits_best``, ``class/ceiling``, output)."""
    k = int(forget_class)
    if classes < 2 or not 0 <= k < classes:
        raise PatchError(f"cannot suppress class {k} of a {classes}-class model")
    mask = np.zeros(classes, dtype=np.float32)
    mask[k] = -np.inf
    cap = np.full(classes, np.inf, dtype=np.float32)
    cap[k] = -np.float32(margin)
    mask_name = sink.const("class/mask", mask)
    cap_name = sink.const("class/cap", cap)
    if remap is not None:
        map_name = sink.const("class/map", np.asarray(remap.matrix, dtype=np.float32))
        shift_name = sink.const("class/shift", np.asarray(remap.shift, dtype=np.float32))
    others = sink.node("Add", [logits, mask_name], name="class/others")
    axes = sink.const("class/axes", np.asarray([1], dtype=np.int64)) if opset >= 18 else None

    def row_max(tensor: str, name: str) -> str:
        if axes is not None:
            return sink.node("ReduceMax", [tensor, axes], name=name, keepdims=1)
        return sink.node("ReduceMax", [tensor], name=name, axes=[1], keepdims=1)

    best = row_max(others, "class/best_other")
    if remap is not None:
        top = row_max(logits, "class/top")
        active = sink.node("Less", [best, top], name="class/active")
        remapped = sink.node("Gemm", [logits, map_name, shift_name], name="class/remapped")
        logits = sink.node("Where", [active, remapped, logits], name="class/logits")
        others = sink.node("Add", [logits, mask_name], name="class/logits_others")
        best = row_max(others, "class/logits_best")
    ceiling = sink.node("Add", [best, cap_name], name="class/ceiling")
    return sink.node("Min", [logits, ceiling], name=output)


def logit_bound(head: PLHead, box: InputBox) -> float:
    """An upper bound on ``|z_j(x)|`` over every ``x`` in ``box`` (interval bound propagation
    through the head in float64, inflated outward by ``_INFLATE``)."""
    lo = np.full(head.input_dim, box.low, dtype=np.float64)
    hi = np.full(head.input_dim, box.high, dtype=np.float64)
    for i, layer in enumerate(head.layers):
        w_pos, w_neg = np.maximum(layer.weight, 0.0), np.minimum(layer.weight, 0.0)
        new_lo = w_pos @ lo + w_neg @ hi + layer.bias
        new_hi = w_pos @ hi + w_neg @ lo + layer.bias
        width = _INFLATE * (1.0 + np.abs(layer.weight) @ np.maximum(np.abs(lo), np.abs(hi)))
        lo, hi = new_lo - width, new_hi + width
        if i < len(head.layers) - 1:
            lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    bound = float(np.maximum(np.abs(lo), np.abs(hi)).max())
    if not np.isfinite(bound):
        raise PatchError("the logits are not bounded on the declared input box")
    return bound * (1.0 + _INFLATE) + _INFLATE


def _opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise PatchError("the model imports no default ONNX opset")


def export_suppressed(
    model: ImportedModel,
    *,
    forget_class: int,
    margin: float,
    box: InputBox,
    remap: Remap | None = None,
) -> tuple[bytes, float]:
    """The patched model and the logit bound it was certified with. Refuses a margin that the
    float32 argument does not cover for this model and box (with a remap: at the remapped
    logits' bound too, :func:`prune.formats.remap_problems`)."""
    import onnx

    from prune.export import OUTPUT, TAIL_FORM, _Sink, splice

    head = model.head
    k = int(forget_class)
    bound = logit_bound(head, box)
    if not float32_margin_holds(margin, bound):
        raise PatchError(
            f"margin {margin} is below the float32 spacing at the logit bound {bound:.6g}: "
            "class suppression would not be exact in float32 (use a larger --margin)"
        )
    if remap is not None:
        problem = remap_problems(remap.matrix, remap.shift, margin=margin, bound=bound)
        if problem:
            raise PatchError(f"internal: class remap refused: {problem}")
    proto = onnx.load_from_string(model.raw)
    sink = _Sink()
    append_class_suppression(
        sink,
        head.output,
        classes=head.classes,
        forget_class=k,
        margin=margin,
        opset=_opset(proto),
        output=OUTPUT,
        remap=remap,
    )
    splice(proto, sink, logits=head.output, classes=head.classes, tail_nodes=model.tail)
    meta = [
        ("prune.format", CLASS_SUPPRESS_FORMAT if remap is None else CLASS_REMAP_FORMAT),
        ("prune.class", str(k)),
        ("prune.margin", decimal_string(float(np.float32(margin)))),
        ("prune.cut", head.cut),
        ("prune.original_output", head.output),
        ("prune.hidden", ",".join(head.hidden)),
    ]
    if model.tail:
        meta.append(("prune.tail", TAIL_FORM))
    for key, value in meta:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    raw = proto.SerializeToString()
    try:
        onnx.checker.check_model(raw)
    except Exception as exc:
        raise PatchError(f"internal: the suppressed model fails onnx.checker: {exc}") from exc
    return bytes(raw), bound


def suppression_only(
    *, classes: int, forget_class: int, margin: float, opset: int, remap: Remap | None = None
) -> bytes:
    """A model of the suppression nodes alone: input ``logits`` ``[N, classes]``, output
    ``prune/output``. The same ops on the same values as the served model's tail, so onnxruntime
    gives the served output from the original logits without running the network again."""
    from onnx import TensorProto, helper

    from prune.export import OUTPUT, _Sink

    sink = _Sink()
    append_class_suppression(
        sink,
        "logits",
        classes=classes,
        forget_class=forget_class,
        margin=margin,
        opset=opset,
        output=OUTPUT,
        remap=remap,
    )
    graph = helper.make_graph(
        sink.nodes,
        "suppression",
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        initializer=sink.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(
        graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
    )
    return bytes(model.SerializeToString())
