"""Adaptive owners who have read the verifier (issue 11): one per root cause that once earned a
VERIFIED verdict. Each starts from the honest run's signed proof and serves a model (or claims)
that a sampling verifier cannot tell apart:

* batch coupling: the patch is multiplied by a term computed over the *batch* axis, so it is on
  when the auditor queries in batches and off for a user who sends one row, or off exactly for a
  serving batch of 64 rows;
* non-finite outputs: NaN in the target column (numpy's argmax reads it as the maximum,
  onnxruntime's ArgMax does not) or NaN in every row's top class;
* a region cap: every gate is multiplied by one more half-space far from the forget sample,
  beyond the reach of the probe rays, so most of each certified region is unpatched;
* a trigger backdoor that is not a patch at all (Relu/MatMul only): +50 to class 0 (class
  mode: to the deleted class) when four pixels are bright;
* hair-margin point-only claims (margin 1e-7, claimed only at the samples);
* the patched logits concatenated with the original logits (a second answer in the output);
* a committed *original* whose first layer shifts the input when the batch holds exactly
  :data:`ORIGINAL_SWITCH_ROWS` rows (a batch size no replay uses): the original is pinned byte for
  byte, so only a proof that every op keeps rows apart catches it.

Every edit keeps the honest parameters, claims and region certificate, so signatures, digests of
the declared parameters and the certificate itself are all as an honest owner's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from prune.claims import Claim
from threat_models.adversaries._base import Adversary, DishonestProof, signed, standard
from threat_models.adversaries._onnx import PREFIX, cut_values, declared_box, patch_parameters
from threat_models.errors import ScenarioError
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome
from threat_models.scenario import Scenario

__all__ = [
    "BatchCoupledGate",
    "BatchCoupledOriginal",
    "BatchSizeSwitch",
    "ConcatOriginal",
    "HairMarginPointOnly",
    "NanTarget",
    "NanTopClass",
    "RegionCap",
    "TriggerBackdoor",
]

OUTPUT = "prune/output"
_OUT0 = PREFIX + "adv/out0"
SWITCH_ROWS = 64
CAP_FRACTION = 0.5  # the cap sits halfway from the sample to the far side of the box
TRIGGER_CLASS = 0
TRIGGER_PUSH = 50.0
ORIGINAL_SWITCH_ROWS = 5
ORIGINAL_SHIFT = (
    0.25  # of the forget samples' value range, in every input coordinate (random signs)
)


def _edit(raw: bytes, build: Any) -> bytes:
    """Rename the canonical output to ``_OUT0``, then ``build(helper)`` appends nodes and
    initializers that compute ``prune/output`` (or more outputs) from it."""
    import onnx
    from onnx import helper

    proto = onnx.load_from_string(raw)
    for node in proto.graph.node:
        if list(node.output) == [OUTPUT]:
            node.output[0] = _OUT0
    build(proto, helper)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises ValidationError
        raise ScenarioError(f"the edited model fails onnx.checker: {exc}") from exc
    return bytes(proto.SerializeToString())


def _init(proto: Any, name: str, value: NDArray[Any]) -> str:
    from onnx import numpy_helper

    proto.graph.initializer.append(numpy_helper.from_array(np.asarray(value), PREFIX + name))
    return PREFIX + name


def _const_node(proto: Any, helper: Any, name: str, value: NDArray[Any]) -> str:
    from onnx import numpy_helper

    tensor = numpy_helper.from_array(np.asarray(value), PREFIX + name)
    proto.graph.node.append(helper.make_node("Constant", [], [PREFIX + name], value=tensor))
    return PREFIX + name


def _rows(proto: Any, helper: Any) -> str:
    """``[1, 1]`` float: the number of rows in the batch (ReduceSum over axis 0 of ones, the
    ones made from the original logits, which every patched model computes)."""
    logits = _original_output(proto)
    width = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value or 0)
    if width <= 0:
        raise ScenarioError("the model output has no fixed width")
    zero = _init(proto, "adv/zero_col", np.zeros((width, 1), np.float32))
    one = _init(proto, "adv/one", np.ones((1, 1), np.float32))
    axis0 = _const_node(proto, helper, "adv/axis0", np.array([0], np.int64))
    n = proto.graph.node
    n.append(helper.make_node("MatMul", [logits, zero], [PREFIX + "adv/zc"]))
    n.append(helper.make_node("Add", [PREFIX + "adv/zc", one], [PREFIX + "adv/ones"]))
    n.append(
        helper.make_node(
            "ReduceSum", [PREFIX + "adv/ones", axis0], [PREFIX + "adv/rows"], keepdims=1
        )
    )
    return PREFIX + "adv/rows"


def _flat_input(proto: Any, helper: Any) -> tuple[str, int]:
    """The graph input flattened to ``[N, d]`` (a new ``Flatten`` node) and ``d``."""
    graph_input = proto.graph.input[0]
    dims = [int(d.dim_value) for d in graph_input.type.tensor_type.shape.dim[1:]]
    if not dims or min(dims) <= 0:
        raise ScenarioError("the model input has no fixed shape")
    flat = PREFIX + "adv/input"
    proto.graph.node.append(helper.make_node("Flatten", [graph_input.name], [flat], axis=1))
    return flat, int(np.prod(dims))


def _gated_output(proto: Any, helper: Any, factor: str) -> None:
    """``prune/output = logits + (out0 - logits) * factor``: the patch scaled by ``factor``."""
    logits = _original_output(proto)
    n = proto.graph.node
    n.append(helper.make_node("Sub", [_OUT0, logits], [PREFIX + "adv/h"]))
    n.append(helper.make_node("Mul", [PREFIX + "adv/h", factor], [PREFIX + "adv/h_on"]))
    n.append(helper.make_node("Add", [logits, PREFIX + "adv/h_on"], [OUTPUT]))


def _original_output(proto: Any) -> str:
    for prop in proto.metadata_props:
        if prop.key == "prune.original_output":
            return str(prop.value)
    raise ScenarioError("patched model without prune.original_output metadata")


def _serve(
    adversary: Adversary, scenario: Scenario, out: Path, model: bytes, notes: str
) -> DishonestProof:
    out.mkdir(parents=True)
    proof = signed(scenario, out / "proof", Outcome.of(scenario.honest).but(patched_model=model))
    return standard(adversary, scenario, out, proof, notes)


class BatchCoupledGate(Adversary):
    """The patch times ``min(rows - 1, 1)``: on in every batch of two or more rows, off for a
    single-row query."""

    name: ClassVar[str] = "batch_coupled_gate"
    threat: ClassVar[Threat | None] = threat("batch-coupling")
    summary: ClassVar[str] = "patch multiplied by a ReduceSum over the batch axis"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        def build(proto: Any, helper: Any) -> None:
            rows = _rows(proto, helper)
            one = PREFIX + "adv/one"
            n = proto.graph.node
            n.append(helper.make_node("Sub", [rows, one], [PREFIX + "adv/r1"]))
            n.append(helper.make_node("Relu", [PREFIX + "adv/r1"], [PREFIX + "adv/r1+"]))
            n.append(helper.make_node("Sub", [one, PREFIX + "adv/r1+"], [PREFIX + "adv/1-r"]))
            n.append(helper.make_node("Relu", [PREFIX + "adv/1-r"], [PREFIX + "adv/off"]))
            n.append(helper.make_node("Sub", [one, PREFIX + "adv/off"], [PREFIX + "adv/on"]))
            _gated_output(proto, helper, PREFIX + "adv/on")

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, "patch on only in batches of 2+ rows")


class BatchSizeSwitch(Adversary):
    """The patch is off exactly when the batch has ``SWITCH_ROWS`` rows (a serving batch)."""

    name: ClassVar[str] = "batch_size_switch"
    threat: ClassVar[Threat | None] = threat("batch-coupling")
    summary: ClassVar[str] = f"patch off in batches of exactly {SWITCH_ROWS} rows"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        def build(proto: Any, helper: Any) -> None:
            rows = _rows(proto, helper)
            size = _init(proto, "adv/size", np.full((1, 1), SWITCH_ROWS, np.float32))
            n = proto.graph.node
            n.append(helper.make_node("Equal", [rows, size], [PREFIX + "adv/is64"]))
            n.append(helper.make_node("Not", [PREFIX + "adv/is64"], [PREFIX + "adv/not64"]))
            n.append(helper.make_node("Cast", [PREFIX + "adv/not64"], [PREFIX + "adv/on"], to=1))
            _gated_output(proto, helper, PREFIX + "adv/on")

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, f"patch off at batch size {SWITCH_ROWS}")


def _switch_input(raw: bytes, shift: NDArray[np.float32]) -> bytes:
    """``raw`` with ``x' = x + [rows == ORIGINAL_SWITCH_ROWS] * shift`` in front: every node that
    is not a patch node (outputs outside ``prune/``) reads ``x'`` instead of the input. Applied to
    the original and to the honest patched model alike, so the patched graph still holds the
    (dishonest) original byte for byte."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(raw)
    inits = {t.name for t in proto.graph.initializer}
    source = next(v for v in proto.graph.input if v.name not in inits)
    x, width = source.name, int(shift.size)
    moved = "adv/x"
    for node in proto.graph.node:
        if not any(o.startswith("prune/") for o in node.output):
            for i, name in enumerate(node.input):
                if name == x:
                    node.input[i] = moved
    consts: dict[str, NDArray[Any]] = {
        "adv/zero_col": np.zeros((width, 1), np.float32),
        "adv/one": np.ones((1, 1), np.float32),
        "adv/axis0": np.array([0], np.int64),
        "adv/size": np.full((1, 1), ORIGINAL_SWITCH_ROWS, np.float32),
        "adv/shift": shift.astype(np.float32)[None],
    }
    proto.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    front = [
        helper.make_node("Flatten", [x], ["adv/flat"], axis=1),
        helper.make_node("MatMul", ["adv/flat", "adv/zero_col"], ["adv/zc"]),
        helper.make_node("Add", ["adv/zc", "adv/one"], ["adv/ones"]),
        helper.make_node("ReduceSum", ["adv/ones", "adv/axis0"], ["adv/rows"], keepdims=1),
        helper.make_node("Equal", ["adv/rows", "adv/size"], ["adv/is_switch"]),
        helper.make_node("Cast", ["adv/is_switch"], ["adv/on"], to=1),
        helper.make_node("Mul", ["adv/on", "adv/shift"], ["adv/delta_flat"]),
        helper.make_node("Reshape", ["adv/delta_flat", "adv/shape"], ["adv/delta"]),
        helper.make_node("Add", [x, "adv/delta"], [moved]),
    ]
    dims = [int(d.dim_value) for d in source.type.tensor_type.shape.dim[1:]]
    proto.graph.initializer.append(
        numpy_helper.from_array(np.array([1, *dims], np.int64), "adv/shape")
    )
    for node in reversed(front):
        proto.graph.node.insert(0, node)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # onnx raises ValidationError
        raise ScenarioError(f"the edited model fails onnx.checker: {exc}") from exc
    return bytes(proto.SerializeToString())


def _labels_back(model: bytes, x: NDArray[np.float32], y: NDArray[np.int64]) -> tuple[int, int]:
    """Forget samples served their label again: (in batches of ``ORIGINAL_SWITCH_ROWS``, one
    row at a time)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = len(x) - len(x) % ORIGINAL_SWITCH_ROWS
    batched = [
        np.asarray(session.run([OUTPUT], {name: x[i : i + ORIGINAL_SWITCH_ROWS]})[0])
        for i in range(0, rows, ORIGINAL_SWITCH_ROWS)
    ]
    single = [np.asarray(session.run([OUTPUT], {name: x[i : i + 1]})[0]) for i in range(rows)]
    back5 = int((np.concatenate(batched).argmax(axis=1) == y[:rows]).sum()) if rows else 0
    back1 = int((np.concatenate(single).argmax(axis=1) == y[:rows]).sum()) if rows else 0
    return back5, back1


class BatchCoupledOriginal(Adversary):
    """The owner commits an original whose first op moves every input by a fixed vector when the
    batch has exactly :data:`ORIGINAL_SWITCH_ROWS` rows: the forget samples leave their patched
    regions there, and the original's own answer comes back. Every batch size the replay uses
    sees the honest model."""

    name: ClassVar[str] = "batch_coupled_original"
    threat: ClassVar[Threat | None] = threat("batch-coupling")
    summary: ClassVar[str] = (
        f"committed original shifts its input in batches of exactly {ORIGINAL_SWITCH_ROWS} rows"
    )
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        from dataclasses import replace as with_changes

        rng = scenario.rng("batch-coupled-original")
        forget = scenario.honest.forget_x
        width = float(forget.max() - forget.min())
        size = int(np.prod(scenario.honest.forget_x.shape[1:]))
        shift = (ORIGINAL_SHIFT * width * rng.choice([-1.0, 1.0], size=size)).astype(np.float32)
        original = _switch_input(scenario.original_bytes, shift)
        model = _switch_input(scenario.honest.patched_model, shift)
        out.mkdir(parents=True)
        (out / "original.onnx").write_bytes(original)
        outcome = Outcome.of(scenario.honest).but(patched_model=model)
        proof = signed(scenario, out / "proof", outcome, original=original)
        back5, back1 = _labels_back(model, scenario.honest.forget_x, scenario.honest.forget_y)
        made = standard(
            self,
            scenario,
            out,
            proof,
            f"forget samples served their label: {back5} in batches of {ORIGINAL_SWITCH_ROWS}, "
            f"{back1} one at a time",
        )
        return with_changes(
            made, auditor=with_changes(made.auditor, original=out / "original.onnx")
        )


class NanTarget(Adversary):
    """NaN added to each patch's target column wherever its gate is on."""

    name: ClassVar[str] = "nan_target"
    threat: ClassVar[Threat | None] = threat("non-finite")
    summary: ClassVar[str] = "NaN in the target column where the gate is on"
    counterpart: ClassVar[str | None] = "class_nan_target"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        d = patch_parameters(scenario.honest.patched_model)["d"]

        def build(proto: Any, helper: Any) -> None:
            nan = np.where(d > 0, np.float32(np.nan), np.float32(0.0)).astype(np.float32)
            table = _init(proto, "adv/nan", nan)
            n = proto.graph.node
            n.append(helper.make_node("MatMul", [PREFIX + "g", table], [PREFIX + "adv/gn"]))
            n.append(helper.make_node("Add", [_OUT0, PREFIX + "adv/gn"], [OUTPUT]))

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, "NaN target logits")


class NanTopClass(Adversary):
    """Every output row's top logit replaced by NaN."""

    name: ClassVar[str] = "nan_top_class"
    threat: ClassVar[Threat | None] = threat("non-finite")
    summary: ClassVar[str] = "NaN in the top class of every output row"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        def build(proto: Any, helper: Any) -> None:
            nan = _init(proto, "adv/nan1", np.full((1, 1), np.nan, np.float32))
            n = proto.graph.node
            n.append(
                helper.make_node("ReduceMax", [_OUT0], [PREFIX + "adv/top"], axes=[1], keepdims=1)
            )
            n.append(
                helper.make_node("Equal", [_OUT0, PREFIX + "adv/top"], [PREFIX + "adv/is_top"])
            )
            n.append(helper.make_node("Where", [PREFIX + "adv/is_top", nan, _OUT0], [OUTPUT]))

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, "top logit of every row is NaN")


class RegionCap(Adversary):
    """Each gate also needs ``a_u . x <= b_u``, a half-space halfway between the forget sample and
    the far side of the box along a random direction: the sample and the points near it stay
    patched, a large part of each certified region does not."""

    name: ClassVar[str] = "region_cap"
    threat: ClassVar[Threat | None] = threat("region-cap")
    summary: ClassVar[str] = "gates capped by an extra half-space far from the sample"
    counterpart: ClassVar[str | None] = "class_region_cap"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        honest = scenario.honest
        params = patch_parameters(honest.patched_model)
        patches = params["d"].shape[0]
        x = cut_values(scenario, honest.forget_x)
        low, high = declared_box(honest.method)
        rng = scenario.rng("region-cap")
        a = rng.standard_normal((x.shape[1], patches))
        a /= np.linalg.norm(a, axis=0, keepdims=True)
        b = np.zeros(patches)
        for claim in honest.claims:
            at = x[claim.leaf_index] @ a[:, claim.patch]
            column = a[:, claim.patch]  # max of a.x over the declared box
            far = (np.maximum(column, 0) * high + np.minimum(column, 0) * low).sum()
            b[claim.patch] = at + CAP_FRACTION * (far - at)
        n_cap = float(np.asarray(params["n"]))

        def build(proto: Any, helper: Any) -> None:
            cap_a = _init(proto, "adv/cap_a", a.astype(np.float32))
            cap_b = _init(proto, "adv/cap_b", b.astype(np.float32)[None, :])
            cap_n = _init(proto, "adv/cap_n", np.asarray(n_cap, np.float32))
            one = _init(proto, "adv/cap_one", np.asarray(1.0, np.float32))
            n = proto.graph.node
            n.append(helper.make_node("MatMul", [PREFIX + "x", cap_a], [PREFIX + "adv/ax"]))
            n.append(helper.make_node("Sub", [PREFIX + "adv/ax", cap_b], [PREFIX + "adv/over"]))
            n.append(helper.make_node("Relu", [PREFIX + "adv/over"], [PREFIX + "adv/over+"]))
            n.append(helper.make_node("Mul", [PREFIX + "adv/over+", cap_n], [PREFIX + "adv/nover"]))
            n.append(helper.make_node("Sub", [one, PREFIX + "adv/nover"], [PREFIX + "adv/1-no"]))
            n.append(helper.make_node("Relu", [PREFIX + "adv/1-no"], [PREFIX + "adv/cap"]))
            n.append(
                helper.make_node("Mul", [PREFIX + "g", PREFIX + "adv/cap"], [PREFIX + "adv/gc"])
            )
            n.append(
                helper.make_node("MatMul", [PREFIX + "adv/gc", PREFIX + "d"], [PREFIX + "adv/hc"])
            )
            n.append(
                helper.make_node("Add", [_original_output(proto), PREFIX + "adv/hc"], [OUTPUT])
            )

        model = _edit(honest.patched_model, build)
        return _serve(self, scenario, out, model, "gate capped halfway to the box edge")


def trigger_pixels(image_shape: tuple[int, ...]) -> list[int]:
    """Flat indices of the 2x2 top-left corner of the first channel."""
    width = int(image_shape[-1])
    return [0, 1, width, width + 1]


class TriggerBackdoor(Adversary):
    """Not a patch at all: ``+TRIGGER_PUSH`` on one class when the four top-left pixels of the
    *input image* are bright (``2 * TRIGGER_PUSH * ReLU(sum - 3.5)`` with Flatten, Relu and
    MatMul only), added to the honest patched output. The class is 0 for a sample deletion and
    the deleted class itself for a class deletion (a backdoor that brings the class back)."""

    name: ClassVar[str] = "trigger_backdoor"
    threat: ClassVar[Threat | None] = threat("additive-trigger")
    summary: ClassVar[str] = "additive Relu/MatMul trigger on four pixels"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        target = TRIGGER_CLASS if scenario.forget_class is None else scenario.forget_class
        pixels = trigger_pixels(scenario.image_shape)

        def build(proto: Any, helper: Any) -> None:
            classes = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
            flat, width = _flat_input(proto, helper)
            pick = np.zeros((width, 1), np.float32)
            pick[pixels, 0] = 1.0
            push = np.zeros((1, classes), np.float32)
            push[0, target] = 2.0 * TRIGGER_PUSH
            sel = _init(proto, "adv/pick", pick)
            thr = _init(proto, "adv/thr", np.full((1, 1), len(pixels) - 0.5, np.float32))
            vec = _init(proto, "adv/push", push)
            n = proto.graph.node
            n.append(helper.make_node("MatMul", [flat, sel], [PREFIX + "adv/s"]))
            n.append(helper.make_node("Sub", [PREFIX + "adv/s", thr], [PREFIX + "adv/s-t"]))
            n.append(helper.make_node("Relu", [PREFIX + "adv/s-t"], [PREFIX + "adv/fire"]))
            n.append(helper.make_node("MatMul", [PREFIX + "adv/fire", vec], [PREFIX + "adv/tr"]))
            n.append(helper.make_node("Add", [_OUT0, PREFIX + "adv/tr"], [OUTPUT]))

        model = _edit(scenario.honest.patched_model, build)
        return _serve(
            self, scenario, out, model, f"+{TRIGGER_PUSH:g} to class {target} on a trigger"
        )


class ConcatOriginal(Adversary):
    """The output is ``[patched | original]`` logits side by side: a client that reads the last
    classes still gets the original model's answer."""

    name: ClassVar[str] = "concat_original"
    threat: ClassVar[Threat | None] = threat("output-concat")
    summary: ClassVar[str] = "patched and original logits concatenated in one output"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        def build(proto: Any, helper: Any) -> None:
            from onnx import TensorProto

            logits = _original_output(proto)
            proto.graph.node.append(helper.make_node("Concat", [_OUT0, logits], [OUTPUT], axis=1))
            width = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value or 0)
            del proto.graph.output[:]
            proto.graph.output.append(
                helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 2 * width])
            )

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, "[patched | original] logits")


class HairMarginPointOnly(Adversary):
    """The honest model, but every claim point-only with certified margin 1e-7: a promise that
    says nothing about the served float32 model near the sample."""

    name: ClassVar[str] = "hair_margin_point_only"
    threat: ClassVar[Threat | None] = threat("point-only")
    summary: ClassVar[str] = "all claims point-only with margin 1e-7"
    counterpart: ClassVar[str | None] = "class_hair_margin"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        honest = scenario.honest
        claims = tuple(
            replace(c, region="point-only", certified_margin=1e-7)
            for c in honest.claims
            if isinstance(c, Claim)  # the scenario's honest owner makes flip claims only
        )
        outcome = Outcome.of(honest).but(claims=claims, duals=None)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, "point-only, margin 1e-7")
