"""Model import: an ONNX model in, its piecewise-linear head after a cut tensor out.

The prefix (everything before the cut) may use any ONNX op and is evaluated with onnxruntime;
the head (cut to logits) may use affine ops, residual joins (Add/Sub/Sum/Concat of computed
tensors) and Relu/LeakyRelu/PRelu/Clip, and is converted to dense float64 layers. The output
tail after the logits (Softmax, ArgMax, label lookups, extra outputs) is replayed on the patched
logits by the export.

Default cut: the model input when the whole model converts, else the earliest tensor (in the
file's node order) after which it does, with at least one activation after it and a dense head of
at most :data:`MAX_DENSE_ENTRIES` weights. :func:`inspect_model` lists every candidate and why it
is or is not a valid cut."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.errors import ModelImportError
from prune.model._graph import GraphIndex, default_opset, parse_model, read_model
from prune.model._head import (
    MAX_DENSE_ENTRIES,
    AffineLayer,
    HeadPlan,
    PLHead,
    check_cut,
    dense_entries,
    extract_head,
)
from prune.model._runtime import Device, OrtRunner
from prune.model._tail import check_tail

__all__ = [
    "MAX_DENSE_ENTRIES",
    "AffineLayer",
    "CutReport",
    "Device",
    "HeadPlan",
    "ImportedModel",
    "OrtRunner",
    "PLHead",
    "inspect_model",
    "load_model",
    "pooling_cuts",
    "read_model",
]


@dataclass(frozen=True, eq=False)
class ImportedModel:
    """An ONNX model ready to patch: the original bytes (never modified), its single input and
    per-sample input shape, and the PL head after the cut."""

    raw: bytes
    proto: Any
    input_name: str
    input_shape: tuple[int, ...]
    head: PLHead
    opset: int
    outputs: tuple[str, ...] = ()
    tail: tuple[int, ...] = ()

    @property
    def input_space(self) -> bool:
        """True when the cut is the model input (the region lives in input space)."""
        return self.head.cut == self.input_name

    def cut_values(
        self, x: NDArray[np.float32], *, device: Device = "cpu", batch_size: int = 4096
    ) -> NDArray[np.float32]:
        """The cut tensor for each sample, flattened to ``[N, d]`` (float32, as the runtime
        computes it: the prefix runs in onnxruntime)."""
        if self.input_space:
            return np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        runner = OrtRunner(self.raw, outputs=[self.head.cut], device=device)
        return runner.run(x, batch_size=batch_size)[0].reshape(len(x), -1)

    def logits(
        self, x: NDArray[np.float32], *, device: Device = "cpu", batch_size: int = 4096
    ) -> NDArray[np.float32]:
        """The original model's logits by onnxruntime."""
        runner = OrtRunner(self.raw, outputs=[self.head.output], device=device)
        return runner.run(x, batch_size=batch_size)[0]


@dataclass(frozen=True)
class CutReport:
    """One candidate cut: ``ok`` with the head's activation count and dense size, or why not."""

    tensor: str
    ok: bool
    reason: str
    activations: int = 0
    dense_entries: int = 0
    breakpoint_ops: tuple[str, ...] = ()
    """The op type of each activation node of the head (its piecewise-linear ops)."""


def _candidates(index: GraphIndex) -> list[str]:
    tail = set(index.tail)
    names = [index.input_name]
    for i, node in enumerate(index.nodes):
        if i in tail or node.op_type == "Constant":
            continue
        names.extend(o for o in node.output if o and o not in index.constants)
    return names


def _report(index: GraphIndex, tensor: str) -> CutReport:
    try:
        plan = check_cut(index, tensor)
        size = dense_entries(index, tensor, plan)
    except ModelImportError as exc:
        return CutReport(tensor=tensor, ok=False, reason=str(exc))
    acts = plan.activations
    ops = tuple(index.nodes[i].op_type for i in plan.breakpoint_nodes)
    if size > MAX_DENSE_ENTRIES:
        return CutReport(
            tensor=tensor,
            ok=False,
            reason=f"the dense head would hold {size:,} weights (over {MAX_DENSE_ENTRIES:,}); "
            "cut later",
            activations=acts,
            dense_entries=size,
        )
    return CutReport(
        tensor=tensor,
        ok=True,
        reason="",
        activations=acts,
        dense_entries=size,
        breakpoint_ops=ops,
    )


_LAYOUT = frozenset({"Flatten", "Reshape", "Identity", "Cast", "Dropout", "Squeeze", "Unsqueeze"})


def _past_layout(index: GraphIndex, cut: str) -> str:
    """Inside the model, move a cut past layout-only ops (Flatten, Reshape, ...): the same points
    and regions, on a flat tensor (``prune train``'s CNN cut lands on ``features``)."""
    while cut != index.input_name:
        users = index.consumers.get(cut, ())
        if len(users) != 1 or index.nodes[users[0]].op_type not in _LAYOUT:
            break
        nxt = index.nodes[users[0]].output[0]
        if not _report(index, nxt).ok:
            break
        cut = nxt
    return cut


def _affine_model(index: GraphIndex) -> bool:
    """The whole model is affine (no activation at all): its one region is the input box."""
    try:
        check_cut(index, index.input_name, require_activation=False)
    except ModelImportError:
        return False
    return True


def inspect_model(raw: bytes) -> tuple[GraphIndex, list[CutReport]]:
    """Every candidate cut of the model, in node order (the input first)."""
    proto = parse_model(raw)
    index = GraphIndex.build(proto)
    return index, [_report(index, name) for name in _candidates(index)]


def _faithful_tail(index: GraphIndex) -> None:
    """Refuse an output tail the verifier's ``structure.tail`` would refuse (the served labels
    and probabilities must follow the patched logits)."""
    if not index.tail:
        return
    logits = index.sample_shape(index.output_name)
    if len(logits) != 1:
        raise ModelImportError(
            f"the logits '{index.output_name}' have per-sample shape {logits}, not [classes]; "
            "a model with an output tail must compute [N, classes] logits"
        )
    check_tail(index.proto, index.output_name, logits[0])


def pooling_cuts(raw: bytes) -> list[CutReport]:
    """The cuts that are valid only with the model's ``MaxPool`` rewritten into the head
    (:mod:`prune.model._maxpool`): tensors before a pool, in node order. ``prune unlearn --cut T``
    with one of them imports the rewritten model (:func:`read_model`). Empty when the model has
    no pooling that rewrites."""
    from prune.model._graph import checked_sample_shape
    from prune.model._maxpool import expand_maxpools

    proto = parse_model(raw)
    shape = checked_sample_shape(proto)
    if shape is None:
        return []
    rewritten, count = expand_maxpools(proto, shape)
    if not count:
        return []
    index, pooled = GraphIndex.build(proto), GraphIndex.build(rewritten)
    known = set(_candidates(index))
    out = []
    for name in _candidates(pooled):
        if name in known and not _report(index, name).ok:
            report = _report(pooled, name)
            if report.ok:
                out.append(report)
    return out


def load_model(raw: bytes, *, cut: str | None = None) -> ImportedModel:
    """Parse ``raw`` ONNX bytes and extract the head after ``cut`` (see the module docstring for
    the default). Raises :class:`ModelImportError` naming the op and node that blocks it."""
    proto = parse_model(raw)
    index = GraphIndex.build(proto)
    input_shape = index.sample_shape(index.input_name)
    _faithful_tail(index)
    affine_model = False
    if cut is None:
        reports = []
        for name in _candidates(index):
            report = _report(index, name)
            if report.ok:
                cut = name
                break
            reports.append(report)
        if cut is None and _affine_model(index):
            cut, affine_model = index.input_name, True
        if cut is None:
            first = reports[0].reason if reports else "the graph has no computed tensors"
            raise ModelImportError(
                f"no tensor of the model is a valid cut (at the input: {first}); "
                "`prune inspect MODEL` lists why for each tensor"
            )
        cut = _past_layout(index, cut)
    head = extract_head(index, cut, require_activation=not affine_model)
    return ImportedModel(
        raw=raw,
        proto=proto,
        input_name=index.input_name,
        input_shape=input_shape,
        head=head,
        opset=default_opset(proto),
        outputs=index.outputs,
        tail=index.tail,
    )
