"""A decoy patch next door across a planted near-flat neuron (threat 22): every claim certified,
the original label served on the requester's region.

``region.certificate`` proves claim ``u`` for ``f + p_u`` on the points of ``S_u`` where every
other gate is off. With the activation gate, on ``S_u`` the gate of another patch ``v`` is
``g_v = relu(1 - n sum_{k in D(u,v)} |z_k|)``, ``D(u,v)`` the neurons whose sign the two
patterns fix differently: on only where all of them are within ``1/n`` of zero, a thin band
when one of them has a trained slope. The owner breaks that premise *before* the request: the
original it commits has one planted first-layer neuron ``z_p = a (x_i - c)`` on a pixel ``i``
that is at the box's low end at the requester's sample, with ``a`` so small that ``|z_p| <
1/n`` on the whole box and zero outgoing weights (the original computes exactly the trained
function; nothing the auditor measures changes). The neuron splits the requester's original
region ``R`` in two: ``S_u = R ∩ {x_i <= c}`` (the requester's region) and the region next door
``S_v = R ∩ {x_i >= c}``, which differ in that neuron alone. A fabricated decoy leaf (decoys
are the owner's own choice, and no data subject holds their receipts) at a point ``x2`` of
``S_v`` gets its own, honest-looking patch ``v``; on the whole of ``S_u`` its gate is
``1 - n a (c - x_i) >= 1 - n a (c - low)`` (about 0.99), so the served model there is ``f + p_u
+ g_v p_v``, which no certificate speaks about.

The two constant patches are sized as in :mod:`threat_models.adversaries._shared`: each alone
certifies its claim with a lead of hundreds of logits on its own region (``p_u``: the
requester's target ``t``; ``p_v``: the requester's own label ``y``, the decoy labelled ``t``),
while their sum is an arbitrary shift that serves ``t`` near the requester's sample and ``y``
(the original label) on the part of ``S_u`` towards its vertex where ``y`` leads most. The
decoy sits next to that part, across the planted neuron (the same pixels, pixel ``i`` moved
past ``c``). Everything else is the honest run, its patterns extended by the planted neuron's
sign at each claimed sample (its regions are subsets of the old ones, so its claims still
hold), certified afresh and signed with the owner's key; the auditor gets the planted original
as *the* committed original. With ``structure.patch``'s band rule switched off, ``audit
verify`` returned VERIFIED on digits seed 0 (verifier seeds 0-8); the served model gives the
requester's original label on part of its certified region (10 of 21 points of the segment
towards the decoy)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from prune.claims import Claim
from prune.model import ImportedModel, OrtRunner, load_model
from prune.regions import InputBox, linearize
from threat_models.adversaries._base import (
    Adversary,
    DishonestProof,
    first_requester,
    signed,
    standard,
)
from threat_models.adversaries._residual import _input_box, _patterns
from threat_models.adversaries._shared import (
    PULL,
    PUSH,
    SEGMENT,
    decoy_inputs,
    decoy_outcome,
    opposed_pushes,
    region_lp,
)
from threat_models.errors import ScenarioError
from threat_models.model import Threat, threat
from threat_models.scenario import Scenario

__all__ = ["WideBand"]

F64 = NDArray[np.float64]
FLAT = 0.9
"""The planted neuron's slope is ``FLAT / (n (high - low))``: ``|z_p| < FLAT / n`` on the box."""
SHIFT = 0.01
"""Where the planted neuron crosses zero, as a fraction of the box from its low end: the
requester's region is the slab ``x_i <= low + SHIFT (high - low)`` of its original region."""
TIE = 2e-6
"""Smallest ``|z_p|`` allowed at a claimed sample (the verifier reads ``|z| <= 1e-6`` as a tie)."""
WHAT = "wide band"
TOWARDS = 0.9
"""How far from the requester's sample towards the vertex where ``y`` leads most (on ``S_u``)
the fabricated decoy is placed (then moved across the planted neuron)."""


def _plant(raw: bytes, pixel: int, slope: float, crossing: float) -> bytes:
    """``raw`` (an MLP whose first ops are ``Gemm(transB=1) -> Relu -> Gemm(transB=1)`` on the
    input) with one more first-layer neuron ``slope * (x[pixel] - crossing)`` whose outgoing
    weights are zero: the same function, one more (near-flat) neuron in every pattern."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(raw)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}

    def consumer(name: str) -> onnx.NodeProto:
        nodes = [n for n in graph.node if name in n.input]
        if len(nodes) != 1:
            raise ScenarioError("wide band: the original is not a plain Gemm/Relu MLP")
        node: onnx.NodeProto = nodes[0]
        return node

    def trans_b(node: onnx.NodeProto) -> int:
        return next((int(a.i) for a in node.attribute if a.name == "transB"), 0)

    first = consumer(graph.input[0].name)
    relu = consumer(first.output[0])
    second = consumer(relu.output[0])
    if (
        (first.op_type, relu.op_type, second.op_type) != ("Gemm", "Relu", "Gemm")
        or trans_b(first) != 1
        or trans_b(second) != 1
        or len(first.input) < 3
        or not {first.input[1], first.input[2], second.input[1]} <= set(inits)
    ):
        raise ScenarioError("wide band: the original is not a plain Gemm/Relu MLP")
    w1 = numpy_helper.to_array(inits[first.input[1]])
    b1 = numpy_helper.to_array(inits[first.input[2]])
    w2 = numpy_helper.to_array(inits[second.input[1]])
    row = np.zeros((1, w1.shape[1]), dtype=w1.dtype)
    row[0, pixel] = slope
    planted = {
        first.input[1]: np.concatenate([w1, row]),
        first.input[2]: np.concatenate([b1, np.array([-slope * crossing], dtype=b1.dtype)]),
        second.input[1]: np.concatenate([w2, np.zeros((w2.shape[0], 1), dtype=w2.dtype)], 1),
    }
    for name, value in planted.items():
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return bytes(proto.SerializeToString())


class WideBand(Adversary):
    """A planted near-flat neuron in the committed original and a decoy patch on the region next
    door to a requester's, across that neuron only (see the module docstring); every other
    patch and claim is the honest one."""

    name: ClassVar[str] = "wide_band"
    architectures: ClassVar[frozenset[str]] = frozenset({"mlp"})  # decoy built in input space
    threat: ClassVar[Threat | None] = threat("wide-band")
    summary: ClassVar[str] = (
        "near-flat neuron planted in the original, decoy patch next door: both gates on"
    )

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        honest = scenario.honest
        if honest.method.get("gate") != "activation" or not honest.complete:
            raise ScenarioError("wide band needs a complete, activation-gated honest run")
        imported0 = load_model(scenario.original_bytes)
        if not imported0.input_space:
            raise ScenarioError("wide band: the decoy is built in input space (an MLP)")
        box = _input_box(honest.method)
        params, claims, candidates = decoy_inputs(scenario)

        def attempt(pick: Claim) -> DishonestProof:
            return self._build_on(scenario, out, imported0, box, params, claims, pick)

        return first_requester(candidates, attempt, WHAT)

    def _build_on(
        self,
        scenario: Scenario,
        out: Path,
        imported0: ImportedModel,
        box: InputBox,
        params: dict[str, NDArray[Any]],
        claims: list[Claim],
        pick: Claim,
    ) -> DishonestProof:
        """The planted neuron and decoy next to ``pick``'s region; :class:`ScenarioError` when
        that region cannot hold them (the caller tries the next requester)."""
        honest = scenario.honest
        owners = [c.patch for c in claims]
        d0 = np.asarray(params["d"], dtype=np.float64)
        n = float(params["n"])
        u, y, t = pick.patch, pick.label, pick.target
        shape = honest.forget_x.shape[1:]
        forget = honest.forget_x.reshape(len(honest.forget_x), -1).astype(np.float64)
        x1 = forget[pick.leaf_index]
        slope = FLAT / (n * (box.high - box.low))
        crossing = box.low + SHIFT * (box.high - box.low)
        pixel = self._pixel(imported0, forget, x1, box, slope, crossing)
        original = _plant(scenario.original_bytes, pixel, slope, crossing)
        imported = load_model(original)
        seen = _patterns(imported, honest.forget_x.astype(np.float32))  # [leaves, H + 1]
        active = np.stack([seen[claims[owners.index(p)].leaf_index] for p in range(len(d0))])
        planted = imported0.head.hidden_sizes[0]  # the new neuron's index in every pattern
        if not np.array_equal(
            np.delete(active, planted, axis=1), np.asarray(params["pos"]).T.astype(bool)
        ) or any(not np.array_equal(seen[c.leaf_index], active[c.patch]) for c in claims):
            raise ScenarioError("wide band: the planted patterns do not match the claimed samples")
        regions = linearize(imported.head, active[u][None], box=box)
        F1, F2 = regions.F1[0].numpy(), regions.F2[0].numpy()
        lim = (box.low, box.high)

        far = region_lp(regions, F1[t] - F1[y], lim, WHAT)  # the vertex of S_u most on y's side
        towards = x1 + TOWARDS * (far - x1)
        x2 = towards.copy()
        x2[pixel] = 2.0 * crossing - box.low  # across the planted neuron: z_p = -z_p(x1)
        beside = active[u].copy()
        beside[planted] = True
        got = _patterns(imported, x2.astype(np.float32).reshape(1, *shape))[0]
        if not np.array_equal(got, beside):
            raise ScenarioError("wide band: the decoy point is not in the region next door")
        # on S_u the decoy's gate is 1 - n a (c - x_i) in [1 - drop, 1]: its push (which
        # favours y over t by PUSH + PULL) is short by at most drop (PUSH + PULL), towards t;
        # f_t - f_y is the same on S_u and S_v (the planted neuron is mute)
        drop = n * slope * (crossing - box.low)
        on_y = float((F1[t] - F1[y]) @ towards + F2[t] - F2[y]) + drop * (PUSH + PULL)
        d = opposed_pushes(regions, d0, pick, x1, on_y, lim, WHAT)
        before = int(np.argmax(F1 @ x2 + F2))  # the original at the decoy (S_v: the same f)
        decoy = Claim(
            leaf_index=len(claims),
            train_index=-1,
            label=t,
            original_prediction=before,
            target=y,
            patch=len(d0),
            certified_margin=pick.certified_margin,
            region="certified",
        )
        requester = active[u]
        active = np.concatenate([active, beside[None]])
        model, outcome = decoy_outcome(scenario, imported, claims, decoy, d, active, n, x2)
        served_y = self._served_label(imported, model, x1, towards, requester, y, t, x2, shape)
        (out / "original.onnx").write_bytes(original)
        proof = signed(scenario, out / "proof", outcome, original=original)
        made = standard(
            self,
            scenario,
            out,
            proof,
            f"planted neuron {planted} (slope {slope:.2g} on pixel {pixel}, |z| < {FLAT:g}/n on "
            f"the box) in the committed original; decoy leaf {len(claims)} next door to leaf "
            f"{pick.leaf_index} (patch {u}), second patch {len(d0)}, its gate >= {1 - drop:.3g} "
            f"on the requester's region: {served_y} of {SEGMENT} points of the certified region "
            f"(segment from the requester towards the decoy) served their original label {y}",
        )
        return replace(made, auditor=replace(made.auditor, original=out / "original.onnx"))

    @staticmethod
    def _pixel(
        imported: ImportedModel,
        forget: F64,
        x1: F64,
        box: InputBox,
        slope: float,
        crossing: float,
    ) -> int:
        """The pixel to plant the neuron on: at the box's low end at the requester's sample, no
        claimed sample within :data:`TIE` of the neuron's zero, and (of those) the pixel the
        trained first layer weighs least, so that the decoy's step moves no other neuron."""
        usable = (x1 == box.low) & (np.abs(slope * (forget - crossing)) > TIE).all(axis=0)
        if not usable.any():
            raise ScenarioError("wide band: no pixel to plant the neuron on")
        weight = np.abs(imported.head.layers[0].weight).max(axis=0)
        return int(np.flatnonzero(usable)[np.argmin(weight[usable])])

    @staticmethod
    def _served_label(
        imported: ImportedModel,
        model: bytes,
        x1: F64,
        towards: F64,
        pattern: NDArray[np.bool_],
        label: int,
        target: int,
        x2: F64,
        shape: tuple[int, ...],
    ) -> int:
        """How many of :data:`SEGMENT` points from the requester's sample towards the decoy,
        each in the requester's region (the planted original's own pattern, checked), the served
        model gives the requester's original ``label``. The requester's sample must be served
        its ``target`` and the decoy the ``label`` (their claims replay)."""
        steps = np.linspace(0.0, 1.0, SEGMENT)[:, None]
        points = (x1[None] + steps * (towards - x1)[None]).astype(np.float32).reshape(-1, *shape)
        inside = (_patterns(imported, points) == pattern[None]).all(axis=1)
        if not inside.all():
            raise ScenarioError("wide band: a point of the segment left the requester's region")
        runner = OrtRunner(model, outputs=["prune/output"])
        labels = runner.run(points)[0].argmax(axis=1)
        decoy = runner.run(x2.astype(np.float32).reshape(1, *shape))[0].argmax(axis=1)
        if labels[0] != target or decoy[0] != label:
            raise ScenarioError("wide band: a claim does not replay at its own sample")
        return int((labels == label).sum())
