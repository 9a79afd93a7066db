"""Owners who commit an original with an *unfaithful output tail* (threat 20): the certified
logits move, the label a client reads does not.

The verifier pins the patched model's tail to the original's, byte for byte, and then treats it
as a known function of ``prune/output``; every replay stops at the logits. A code-reading owner
therefore commits an original whose tail serves something the logits do not say, and the honest
patch goes through unchanged:

* ``duplicate_label_tail``: skl2onnx's label lookup ``ArgMax -> ArrayFeatureExtractor(classes)``
  with a ``classes`` table that names, for each class a forget sample is moved to, the label most
  of those samples had (duplicate labels): the forgotten samples are served their label again;
* ``second_best_tail``: the served label is the second-best class (``TopK``), so a forget sample
  the patch just pushed below its new class is served its old label, in every batch;
* ``batch_size_tail``: the same, but only when the batch has exactly
  :data:`TAIL_SWITCH_ROWS` rows (``Shape`` of the logits compared with a constant), a batch size
  no replay uses and that ``structure.rows`` (which stops at ``prune/output``) does not see.

The original and the patched model get the same tail nodes and constants (the patched one reading
``prune/output``), the patched one the ``prune.tail = replay`` metadata; claims, parameters and
region certificate are the honest ones, signed with the owner's key."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from threat_models.adversaries._base import Adversary, DishonestProof, signed, standard
from threat_models.errors import ScenarioError
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome
from threat_models.scenario import Scenario

__all__ = ["BatchSizeTail", "DuplicateLabelTail", "SecondBestTail"]

OUTPUT = "prune/output"
LABEL = "label"
TAIL_SWITCH_ROWS = 5
_PATCH_NAMES = ("prune/", "class/")

TailNodes = Callable[[str], tuple[list[Any], dict[str, NDArray[Any]]]]
"""``logits name -> (tail nodes computing LABEL, their constants)``."""


def _with_tail(raw: bytes, tail: TailNodes, *, patched: bool) -> bytes:
    """``raw`` with ``tail`` appended on its logits (the original's single output, or
    ``prune/output``) and ``LABEL`` added as a graph output before the logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(raw)
    logits = OUTPUT if patched else proto.graph.output[0].name
    if len(proto.graph.output) != 1 or proto.graph.output[0].name != logits:
        raise ScenarioError("expected a model whose single output is the logits")
    nodes, consts = tail(logits)
    proto.graph.node.extend(nodes)
    ml = any(n.domain == "ai.onnx.ml" for n in nodes)
    if ml and not any(o.domain == "ai.onnx.ml" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    # after the original's own initializers, before the patch's: where an export from the
    # dishonest original puts them (the class form is rebuilt byte for byte by the verifier)
    inits = [type(t)() for t in proto.graph.initializer]
    for copy, tensor in zip(inits, proto.graph.initializer, strict=True):
        copy.CopyFrom(tensor)
    at = next((i for i, t in enumerate(inits) if t.name.startswith(_PATCH_NAMES)), len(inits))
    inits[at:at] = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    shape: list[str | int] = ["batch"] if nodes[-1].op_type == "Reshape" else ["batch", 1]
    proto.graph.output.insert(0, helper.make_tensor_value_info(LABEL, TensorProto.INT64, shape))
    if patched:
        proto.metadata_props.append(onnx.StringStringEntryProto(key="prune.tail", value="replay"))
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises ValidationError
        raise ScenarioError(f"the edited model fails onnx.checker: {exc}") from exc
    return bytes(proto.SerializeToString())


def _served(model: bytes, x: NDArray[np.float32], rows: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """(served labels, argmax of ``prune/output``) for ``x`` queried ``rows`` at a time (the
    rows that fill whole batches)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    labels, top = [], []
    for i in range(0, len(x) - len(x) % rows, rows):
        label, logits = session.run([LABEL, OUTPUT], {name: x[i : i + rows]})
        labels.append(np.asarray(label).reshape(-1))
        top.append(np.asarray(logits).argmax(axis=1))
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(labels), np.concatenate(top)


def _build(
    adversary: Adversary, scenario: Scenario, out: Path, tail: TailNodes, rows: tuple[int, ...]
) -> DishonestProof:
    original = _with_tail(scenario.original_bytes, tail, patched=False)
    model = _with_tail(scenario.honest.patched_model, tail, patched=True)
    out.mkdir(parents=True)
    (out / "original.onnx").write_bytes(original)
    outcome = Outcome.of(scenario.honest).but(patched_model=model)
    proof = signed(scenario, out / "proof", outcome, original=original)
    x, y = scenario.honest.forget_x, scenario.honest.forget_y
    notes = []
    for size in rows:
        served, top = _served(model, x, size)
        back = int((served == y[: len(served)]).sum())
        moved = int((top != y[: len(top)]).sum())
        notes.append(f"{back} of {len(served)} served their label ({moved} moved) at {size} rows")
    made = standard(adversary, scenario, out, proof, "forget samples: " + "; ".join(notes))
    return replace(made, auditor=replace(made.auditor, original=out / "original.onnx"))


def _label_lookup(classes: NDArray[np.int64]) -> TailNodes:
    def tail(logits: str) -> tuple[list[Any], dict[str, NDArray[Any]]]:
        from onnx import helper

        nodes = [
            helper.make_node("ArgMax", [logits], ["tail/idx"], axis=1, name="tail/argmax"),
            helper.make_node(
                "ArrayFeatureExtractor",
                ["tail/classes", "tail/idx"],
                ["tail/afe"],
                domain="ai.onnx.ml",
                name="tail/lookup",
            ),
            helper.make_node("Reshape", ["tail/afe", "tail/flat"], [LABEL], name="tail/flat"),
        ]
        return nodes, {"tail/classes": classes, "tail/flat": np.array([-1], np.int64)}

    return tail


def _second_best(switch_rows: int | None) -> TailNodes:
    """The served label is the second-best class (always, or only in batches of
    ``switch_rows``)."""

    def tail(logits: str) -> tuple[list[Any], dict[str, NDArray[Any]]]:
        from onnx import helper

        second = LABEL if switch_rows is None else "tail/second"
        nodes = [
            helper.make_node("TopK", [logits, "tail/two"], ["tail/top", "tail/top_idx"], axis=1),
            helper.make_node(
                "Slice", ["tail/top_idx", "tail/one", "tail/two", "tail/one"], [second]
            ),
        ]
        consts: dict[str, NDArray[Any]] = {
            "tail/two": np.array([2], np.int64),
            "tail/one": np.array([1], np.int64),
        }
        if switch_rows is not None:
            nodes += [
                helper.make_node("ArgMax", [logits], ["tail/first"], axis=1),
                helper.make_node("Shape", [logits], ["tail/shape"]),
                helper.make_node("Gather", ["tail/shape", "tail/zero"], ["tail/rows"], axis=0),
                helper.make_node("Equal", ["tail/rows", "tail/switch"], ["tail/on"]),
                helper.make_node("Where", ["tail/on", second, "tail/first"], [LABEL]),
            ]
            consts["tail/zero"] = np.array(0, np.int64)
            consts["tail/switch"] = np.array(switch_rows, np.int64)
        else:  # the tail needs a Softmax/LogSoftmax/ArgMax for the logits to be found
            nodes.append(helper.make_node("ArgMax", [logits], ["tail/first"], axis=1))
        return nodes, consts

    return tail


class DuplicateLabelTail(Adversary):
    """``classes[t] = y`` for the label ``y`` most forget samples moved to class ``t`` had."""

    name: ClassVar[str] = "duplicate_label_tail"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})
    threat: ClassVar[Threat | None] = threat("unfaithful-tail")
    summary: ClassVar[str] = "label lookup whose classes table names a moved class by its old label"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        x, y = scenario.honest.forget_x, scenario.honest.forget_y
        probe = _with_tail(
            scenario.honest.patched_model,
            _label_lookup(np.arange(_classes(scenario), dtype=np.int64)),
            patched=True,
        )
        _, top = _served(probe, x, 1)
        classes = np.arange(_classes(scenario), dtype=np.int64)
        for target in np.unique(top):
            labels = Counter(int(v) for v in y[top == target])
            classes[int(target)] = labels.most_common(1)[0][0]
        return _build(self, scenario, out, _label_lookup(classes), (1,))


class SecondBestTail(Adversary):
    """The served label is the second-best class of the logits (``TopK``)."""

    name: ClassVar[str] = "second_best_tail"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})
    threat: ClassVar[Threat | None] = threat("unfaithful-tail")
    summary: ClassVar[str] = "served label is the logits' second-best class"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        return _build(self, scenario, out, _second_best(None), (1,))


class BatchSizeTail(Adversary):
    """The served label is the second-best class in batches of exactly
    :data:`TAIL_SWITCH_ROWS` rows, the argmax otherwise."""

    name: ClassVar[str] = "batch_size_tail"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})
    threat: ClassVar[Threat | None] = threat("unfaithful-tail")
    summary: ClassVar[str] = (
        f"served label is the second-best class in batches of exactly {TAIL_SWITCH_ROWS} rows"
    )

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        tail = _second_best(TAIL_SWITCH_ROWS)
        return _build(self, scenario, out, tail, (1, TAIL_SWITCH_ROWS))


def _classes(scenario: Scenario) -> int:
    import onnx

    proto = onnx.load_from_string(scenario.original_bytes)
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise ScenarioError("the original's logits have no fixed class count")
    return int(dims[1].dim_value)
