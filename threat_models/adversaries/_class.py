"""Adaptive owners of a *class* deletion (``prune unlearn --forget-class K``, suppression form):
the class-mode counterparts of the sample-mode cheats, one per root cause (issue 11).

The honest proof is one canonical suppression subgraph ``z'_K = min(z_K, max_{j != K} z_j - m)``
and a class claim over a declared box; its per-sample claims are point replays. A sample cheat
that edits patch gates has no gate to edit here, so each root cause is attacked on what the
class proof does have:

* exact-input filter: the suppression is faded out away from the class's training samples;
* partial / region-only: the class's training samples are patched region by region (part of
  them, or all of them with the engine's ``--class-mode regions``), the class stays predictable
  on its other inputs, and the proof says ``mode: class`` (or, all of them, a sample deletion:
  the auditor who was asked to check class ``K`` says so, ``--expect-class K``);
* sabotage: a second class is suppressed too, the certificate keeps the honest utility;
* residual memorisation: the genuine suppression with a hair-thin margin, so the class keeps
  about half the top class's probability;
* NaN: NaN in every other column where the original predicts ``K`` (numpy reads "not K",
  onnxruntime's ArgMax reads ``K``);
* region cap: the suppression is switched off beyond a half-space far from the samples;
* hair margin: a margin below the float32 spacing of the real logits, "proved" with a logit
  bound that the owner understates;
* narrow box: the claim's box is drawn inside the data (both modes: the sample proof's box too).

Batch coupling, NaN in the top class, the additive trigger (toward ``K``), the concatenated
original logits, rollback, substitution and the certificate forgeries apply to both modes and
live with their sample-mode versions."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prune.errors import PruneError
from prune.formats import decimal_string
from prune.unlearn import UnlearnResult, unlearn
from threat_models.adversaries._base import Adversary, DishonestProof, signed, standard
from threat_models.adversaries._onnx import PREFIX, declared_box, with_parameters
from threat_models.adversaries._soundness import (
    _OUT0,
    OUTPUT,
    _const_node,
    _edit,
    _flat_input,
    _gated_output,
    _init,
    _original_output,
    _serve,
)
from threat_models.errors import ScenarioError
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome
from threat_models.scenario import Scenario

__all__ = [
    "ClassAsSamples",
    "ClassExactInputFilter",
    "ClassHairMargin",
    "ClassNanTarget",
    "ClassPartial",
    "ClassRegionCap",
    "ClassRegionOnly",
    "ClassResidual",
    "ClassSabotage",
    "NarrowBox",
]

_CLASS: frozenset[str] = frozenset({"class"})
FILTER_RADIUS2 = 0.5  # squared L2 distance at which the filtered suppression has faded out
PARTIAL_PATCHED = 16  # training samples of the class that the partial owner really patches
TIE_MARGIN = 0.05  # >= the auditor's minimum certified margin (0.01), far below the honest 8
HAIR_MARGIN = 1.5e-7  # float32: fl(M - m) == M once |M| >= 4
HAIR_BOUND = "0.01"  # the owner's stated logit bound, which makes the hair margin "hold"
CAP_FRACTION = 0.5


def _k(scenario: Scenario) -> int:
    if scenario.forget_class is None:
        raise ScenarioError("a class-mode adversary needs a class-deletion scenario")
    return scenario.forget_class


def _classes(scenario: Scenario) -> int:
    return int(max(scenario.y_train.max(), scenario.y_test.max())) + 1


def _engine(scenario: Scenario, **options: Any) -> UnlearnResult:
    """The owner's genuine engine on the scenario's data with the honest options (changed by
    ``options``)."""
    kwargs: dict[str, Any] = {
        "x_test": scenario.x_test,
        "y_test": scenario.y_test,
        "margin": scenario.config.margin,
        "seed": scenario.seed,
        **options,
    }
    try:
        result = unlearn(scenario.original_bytes, scenario.x_train, scenario.y_train, **kwargs)
    except PruneError as exc:
        raise ScenarioError(f"the engine failed for the adversary: {exc}") from exc
    return result


class ClassExactInputFilter(Adversary):
    """The canonical suppression, faded out away from the class's training samples: the output
    is ``z + (z' - z) * e`` with ``e = max_i ReLU(1 - |x - x_i|^2 / r^2)`` over the forget
    samples (per-row ops only). Every forget sample gets its claim; the class's other inputs
    (its test samples) keep ``K``."""

    name: ClassVar[str] = "class_exact_input_filter"
    threat: ClassVar[Threat | None] = threat("exact-input-filter")
    summary: ClassVar[str] = "suppression faded out away from the training samples of K"
    modes: ClassVar[frozenset[str]] = _CLASS
    counterpart: ClassVar[str | None] = "exact_input_filter"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        keys = scenario.honest.forget_x.reshape(len(scenario.honest.forget_x), -1)
        keys = np.asarray(keys, dtype=np.float32)

        def build(proto: Any, helper: Any) -> None:
            flat, _ = _flat_input(proto, helper)
            kt = _init(proto, "adv/keys_t", np.ascontiguousarray(keys.T))
            k2 = _init(proto, "adv/keys_sq", (keys**2).sum(1, dtype=np.float32)[None, :])
            m2 = _init(proto, "adv/minus2", np.full((1, 1), -2.0, np.float32))
            inv = _init(proto, "adv/inv_r2", np.full((1, 1), 1.0 / FILTER_RADIUS2, np.float32))
            one = _init(proto, "adv/f_one", np.ones((1, 1), np.float32))
            n = proto.graph.node
            p = PREFIX + "adv/"
            axis1 = _const_node(proto, helper, "adv/row_axis", np.array([1], np.int64))
            n.append(helper.make_node("Mul", [flat, flat], [p + "xx"]))
            n.append(helper.make_node("ReduceSum", [p + "xx", axis1], [p + "x2"], keepdims=1))
            n.append(helper.make_node("MatMul", [flat, kt], [p + "xk"]))
            n.append(helper.make_node("Mul", [p + "xk", m2], [p + "-2xk"]))
            n.append(helper.make_node("Add", [p + "-2xk", k2], [p + "k2-2xk"]))
            n.append(helper.make_node("Add", [p + "k2-2xk", p + "x2"], [p + "dist2"]))
            n.append(helper.make_node("Mul", [p + "dist2", inv], [p + "scaled"]))
            n.append(helper.make_node("Sub", [one, p + "scaled"], [p + "1-s"]))
            n.append(helper.make_node("Relu", [p + "1-s"], [p + "near"]))
            n.append(helper.make_node("ReduceMax", [p + "near"], [p + "on"], axes=[1], keepdims=1))
            _gated_output(proto, helper, p + "on")

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, f"suppression only within r^2 {FILTER_RADIUS2}")


class ClassPartial(Adversary):
    """Commits and claims the whole class, but patches only ``PARTIAL_PATCHED`` of its training
    samples, region by region (the genuine sample engine); the other samples' claims are copied
    from the honest run, pointing at patch 0. The proof says ``mode: class``."""

    name: ClassVar[str] = "class_partial"
    threat: ClassVar[Threat | None] = threat("partial")
    summary: ClassVar[str] = f"patches {PARTIAL_PATCHED} samples of the class, claims all"
    modes: ClassVar[frozenset[str]] = _CLASS
    counterpart: ClassVar[str | None] = "partial"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        k, honest = _k(scenario), scenario.honest
        count = min(PARTIAL_PATCHED, len(scenario.forget_rows) // 2)
        done = _engine(scenario, forget_indices=scenario.forget_rows[:count])
        fake = tuple(replace(c, patch=0) for c in honest.claims if c.leaf_index >= count)
        outcome = Outcome.of(honest).but(
            patched_model=done.patched_model,
            claims=(*done.claims, *fake),
            method={**done.method, "mode": "class", "forget_class": k},
            duals=done.duals,
            class_claim=None,
        )
        proof = signed(scenario, out / "proof", outcome)
        return standard(
            self, scenario, out, proof, f"{count} of {len(scenario.forget_rows)} samples patched"
        )


@functools.lru_cache(maxsize=2)
def _regions_of_class(scenario: Scenario) -> UnlearnResult:
    """The genuine ``--class-mode regions`` run of the scenario's class (shared by the two
    region-only adversaries: it patches every training sample of the class)."""
    result = _engine(scenario, forget_class=_k(scenario), class_mode="regions")
    if not result.complete:
        raise ScenarioError("the region engine left samples of the class uncertified")
    return result


class ClassRegionOnly(Adversary):
    """A complete, genuine ``--class-mode regions`` proof: every training sample of the class
    patched and certified over its linear region. Every claim is true; the class is still
    predicted everywhere else (its test samples). Presented as the deletion of the class."""

    name: ClassVar[str] = "class_region_only"
    threat: ClassVar[Threat | None] = threat("region-only-class")
    summary: ClassVar[str] = "regions of the class's training samples, passed off as the class"
    modes: ClassVar[frozenset[str]] = _CLASS

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        result = _regions_of_class(scenario)
        proof = signed(scenario, out / "proof", Outcome.of(result))
        return standard(self, scenario, out, proof, f"{len(result.claims)} region claims")


class ClassAsSamples(Adversary):
    """The same region patches of every training sample of the class, certified as a *sample*
    deletion of those records: every sample check passes, and no class check would apply if the
    auditor took the certificate's word for what was requested."""

    name: ClassVar[str] = "class_as_samples"
    threat: ClassVar[Threat | None] = threat("region-only-class")
    summary: ClassVar[str] = "the class's samples patched, certified as a sample deletion"
    modes: ClassVar[frozenset[str]] = _CLASS

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        result = _regions_of_class(scenario)
        method = {**result.method, "mode": "samples", "forget_class": None}
        method.pop("class_mode", None)
        proof = signed(scenario, out / "proof", Outcome.of(result).but(method=method))
        return standard(self, scenario, out, proof, f"{len(result.claims)} sample claims")


def _suppress_nodes(proto: Any, helper: Any, source: str, k: int, tag: str) -> str:
    """``min(source_k, max_{j != k} source_j - 8)`` appended after ``source`` (opset 17 form)."""
    classes = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    mask = np.zeros((1, classes), np.float32)
    mask[0, k] = -np.inf
    cap = np.full((1, classes), np.inf, np.float32)
    cap[0, k] = -8.0
    p = PREFIX + f"adv/{tag}/"
    m = _init(proto, f"adv/{tag}/mask", mask)
    c = _init(proto, f"adv/{tag}/cap", cap)
    n = proto.graph.node
    n.append(helper.make_node("Add", [source, m], [p + "others"]))
    n.append(helper.make_node("ReduceMax", [p + "others"], [p + "best"], axes=[1], keepdims=1))
    n.append(helper.make_node("Add", [p + "best", c], [p + "ceiling"]))
    return p + "ceiling"


class ClassSabotage(Adversary):
    """A second class is suppressed as well (a "cleanup"), and the certificate keeps the honest
    run's utility numbers."""

    name: ClassVar[str] = "class_sabotage"
    threat: ClassVar[Threat | None] = threat("sabotage")
    summary: ClassVar[str] = "another class suppressed too; certificate keeps the honest accuracy"
    modes: ClassVar[frozenset[str]] = _CLASS
    counterpart: ClassVar[str | None] = "sabotage"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        other = (_k(scenario) + 1) % _classes(scenario)

        def build(proto: Any, helper: Any) -> None:
            ceiling = _suppress_nodes(proto, helper, _OUT0, other, "second")
            proto.graph.node.append(helper.make_node("Min", [_OUT0, ceiling], [OUTPUT]))

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, f"class {other} suppressed too")


class ClassResidual(Adversary):
    """The genuine suppression with margin ``TIE_MARGIN`` (at least the auditor's minimum): the
    forgotten class keeps nearly the top class's probability wherever it was the top class, so
    memorised records of the class (the planted canaries) still stand out."""

    name: ClassVar[str] = "class_residual"
    threat: ClassVar[Threat | None] = threat("residual-memorisation")
    summary: ClassVar[str] = f"suppression margin {TIE_MARGIN}: p(K) stays ~1/2"
    modes: ClassVar[frozenset[str]] = _CLASS
    counterpart: ClassVar[str | None] = "residual_memorisation"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        result = _engine(scenario, forget_class=_k(scenario), class_margin=TIE_MARGIN)
        proof = signed(scenario, out / "proof", Outcome.of(result))
        return standard(self, scenario, out, proof, f"class margin {TIE_MARGIN}")


class ClassNanTarget(Adversary):
    """The original logits, with NaN in every column but ``K`` wherever the original predicts
    ``K``: numpy's argmax reads the first NaN (not ``K``), onnxruntime's ArgMax reads ``K``."""

    name: ClassVar[str] = "class_nan_target"
    threat: ClassVar[Threat | None] = threat("non-finite")
    summary: ClassVar[str] = "NaN in the other columns where the original predicts K"
    modes: ClassVar[frozenset[str]] = _CLASS
    counterpart: ClassVar[str | None] = "nan_target"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        k = _k(scenario)

        def build(proto: Any, helper: Any) -> None:
            classes = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
            logits = _original_output(proto)
            pick = np.zeros((classes, 1), np.float32)
            pick[k, 0] = 1.0
            nan_row = np.full((1, classes), np.nan, np.float32)
            nan_row[0, k] = 0.0
            pk = _init(proto, "adv/pick_k", pick)
            nr = _init(proto, "adv/nan_row", nan_row)
            zero = _init(proto, "adv/zero_row", np.zeros((1, classes), np.float32))
            p = PREFIX + "adv/"
            n = proto.graph.node
            n.append(helper.make_node("MatMul", [logits, pk], [p + "zk"]))
            n.append(helper.make_node("ReduceMax", [logits], [p + "top"], axes=[1], keepdims=1))
            n.append(helper.make_node("Equal", [p + "zk", p + "top"], [p + "is_k"]))
            n.append(helper.make_node("Where", [p + "is_k", nr, zero], [p + "nan"]))
            n.append(helper.make_node("Add", [logits, p + "nan"], [OUTPUT]))

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, "original logits, NaN beside K")


class ClassRegionCap(Adversary):
    """The suppression times ``ReLU(1 - n ReLU(a.x - b))`` on the flattened input: off beyond a
    half-space halfway between the mean forget sample and the far side of the input range,
    along a random direction."""

    name: ClassVar[str] = "class_region_cap"
    threat: ClassVar[Threat | None] = threat("region-cap")
    summary: ClassVar[str] = "suppression off beyond a half-space far from the samples"
    modes: ClassVar[frozenset[str]] = _CLASS
    counterpart: ClassVar[str | None] = "region_cap"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        x = scenario.honest.forget_x.reshape(len(scenario.honest.forget_x), -1)
        rng = scenario.rng("class-region-cap")
        a = rng.standard_normal(x.shape[1])
        a /= np.linalg.norm(a)
        at = float((x.astype(np.float64) @ a).max())
        far = float(np.maximum(a, 0).sum())  # the input range is [0, 1]
        b = at + CAP_FRACTION * max(far - at, 0.0)

        def build(proto: Any, helper: Any) -> None:
            flat, _ = _flat_input(proto, helper)
            ca = _init(proto, "adv/cap_a", a.astype(np.float32)[:, None])
            cb = _init(proto, "adv/cap_b", np.full((1, 1), b, np.float32))
            cn = _init(proto, "adv/cap_n", np.full((1, 1), 1000.0, np.float32))
            one = _init(proto, "adv/cap_one", np.ones((1, 1), np.float32))
            p = PREFIX + "adv/"
            n = proto.graph.node
            n.append(helper.make_node("MatMul", [flat, ca], [p + "ax"]))
            n.append(helper.make_node("Sub", [p + "ax", cb], [p + "over"]))
            n.append(helper.make_node("Relu", [p + "over"], [p + "over+"]))
            n.append(helper.make_node("Mul", [p + "over+", cn], [p + "nover"]))
            n.append(helper.make_node("Sub", [one, p + "nover"], [p + "1-no"]))
            n.append(helper.make_node("Relu", [p + "1-no"], [p + "cap"]))
            _gated_output(proto, helper, p + "cap")

        model = _edit(scenario.honest.patched_model, build)
        return _serve(self, scenario, out, model, "suppression capped by a half-space")


class ClassHairMargin(Adversary):
    """The canonical graph with margin ``HAIR_MARGIN`` and a class claim stating the logit bound
    ``HAIR_BOUND``, at which the margin clears the float32 spacing. The real logits are far
    larger: ``fl(M - m) == M``, class ``K`` ties with the best other class and onnxruntime's
    ArgMax returns the lower index."""

    name: ClassVar[str] = "class_hair_margin"
    threat: ClassVar[Threat | None] = threat("point-only")
    summary: ClassVar[str] = f"class margin {HAIR_MARGIN:g} with an understated logit bound"
    modes: ClassVar[frozenset[str]] = _CLASS
    counterpart: ClassVar[str | None] = "hair_margin_point_only"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        k, honest = _k(scenario), scenario.honest
        if honest.class_claim is None:
            raise ScenarioError("the honest class run made no class claim")
        m32 = np.float32(HAIR_MARGIN)
        classes = _classes(scenario)
        cap = np.full(classes, np.inf, np.float32)
        cap[k] = -m32
        model = with_parameters(honest.patched_model, {"class/cap": cap})
        model = _set_metadata(model, "prune.margin", decimal_string(float(m32)))
        claim = replace(
            honest.class_claim, margin=decimal_string(float(m32)), logit_bound=HAIR_BOUND
        )
        method = {**honest.method, "margin": float(m32)}
        outcome = Outcome.of(honest).but(patched_model=model, class_claim=claim, method=method)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, f"margin {float(m32):g}, bound {HAIR_BOUND}")


def _set_metadata(raw: bytes, key: str, value: str) -> bytes:
    import onnx

    proto = onnx.load_from_string(raw)
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
    return bytes(proto.SerializeToString())


class NarrowBox(Adversary):
    """The honest model and claims, but the declared input box is the lower quarter of the
    honest one: every guarantee is stated over a box that leaves out most of the data the
    model serves (a region certificate or a float32 argument over a smaller box is easier to
    "prove"). Sample mode: ``method.input_box``; class mode: the class claim's box too."""

    name: ClassVar[str] = "narrow_box"
    threat: ClassVar[Threat | None] = threat("narrow-box")
    summary: ClassVar[str] = "declared input box drawn inside the data"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        honest = scenario.honest
        low, high = declared_box(honest.method)
        narrow = low + (high - low) / 4.0
        box = {**dict(honest.method["input_box"]), "low": low, "high": narrow}
        outcome = Outcome.of(honest).but(method={**honest.method, "input_box": box})
        if honest.class_claim is not None:
            claim = replace(honest.class_claim, high=decimal_string(narrow))
            outcome = outcome.but(class_claim=claim)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, f"box [{low:g}, {narrow:g}]")
