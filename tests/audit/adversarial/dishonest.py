"""Adversaries that are dishonest owners: every artifact is signed with the owner's real key,
so only the verifier's own measurements (structure diff, regions, replay, probes, locality,
utility) can catch them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.audit.adversarial.kit import ProofKit, build_work, honest_patch, pick_forget
from tests.audit.adversarial.registry import (
    Tampered,
    adversary,
    edit_certificate,
    reissued,
)

# -- the patched model, signed by a dishonest owner ------------------------------------------------


@adversary("model_original_swapped_in_signed", "digest.original", "is the original model itself")
def model_original_swapped_in_signed(kit: ProofKit, dest: Path) -> Tampered:
    """The owner signs the unpatched original as the 'patched' model."""
    return reissued(kit, dest, model_bytes=kit.work.model.read_bytes())


@adversary(
    "model_for_other_forget_set", "structure.patch", "not the region of its claimed forget sample"
)
def model_for_other_forget_set(kit: ProofKit, dest: Path) -> Tampered:
    """The patched model of a different forget set, certified with this forget set's claims."""
    other_rows = pick_forget(kit.work, count=len(kit.rows), seed=99)
    other_spec, _ = honest_patch(kit.work, other_rows)
    return reissued(kit, dest, spec=other_spec)


@adversary("onnx_extra_output", "structure.patch", "graph outputs are")
def onnx_extra_output(kit: ProofKit, dest: Path) -> Tampered:
    """A patched model that also exposes a hidden tensor as a second output."""
    spec = replace(kit.spec, extra_outputs=("/0/Gemm_output_0",))
    return reissued(kit, dest, spec=spec)


@adversary("onnx_original_weights_changed", "structure.original", "original weights changed")
def onnx_original_weights_changed(kit: ProofKit, dest: Path) -> Tampered:
    """The original's first-layer weights nudged inside the 'patched' model."""

    def edit(model: onnx.ModelProto) -> None:
        for i, tensor in enumerate(model.graph.initializer):
            if tensor.name == "0.weight":
                value = numpy_helper.to_array(tensor) * np.float32(1.01)
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, tensor.name))

    return reissued(kit, dest, model_edit=edit)


@adversary("patch_data_dependent_op", "structure.patch", "unexpected extra Equal")
def patch_data_dependent_op(kit: ProofKit, dest: Path) -> Tampered:
    """A patch subgraph with a comparison op (the raw material of an input trigger)."""
    node = helper.make_node(
        "Equal", ["prune/patch/z", "prune/patch/z"], ["prune/patch/eq"], name="prune/patch/eq"
    )
    return reissued(kit, dest, spec=replace(kit.spec, extra_nodes=(node,)))


@adversary("metadata_hidden_lies", "structure.patch", "metadata prune.hidden")
def metadata_hidden_lies(kit: ProofKit, dest: Path) -> Tampered:
    """Metadata naming other hidden tensors than the original graph's Relu inputs."""
    spec = replace(kit.spec, metadata={"prune.hidden": "/0/Gemm_output_0"})
    return reissued(kit, dest, spec=spec)


@adversary("patch_trigger_gate", "structure.patch", "does not fix the sign of every hidden neuron")
def patch_trigger_gate(kit: ProofKit, dest: Path) -> Tampered:
    """Gates that also demand z_k = 0 on some neurons: only a thin sliver around each point."""
    pos = kit.spec.pos.copy()
    neg = kit.spec.neg.copy()
    neg[:4] = 1.0
    pos[:4] = 1.0
    return reissued(kit, dest, spec=replace(kit.spec, pos=pos, neg=neg))


@adversary(
    "patch_gated_elsewhere", "structure.patch", "not the region of its claimed forget sample"
)
def patch_gated_elsewhere(kit: ProofKit, dest: Path) -> Tampered:
    """Patch 0 gated on the region of some other training point."""
    z, _ = kit.work.mlp.forward(kit.work.x_train)
    own = (z[kit.rows[0]] >= 0).astype(np.float64)
    other = next(r for r in range(len(z)) if not np.array_equal((z[r] >= 0), own.astype(bool)))
    pos = kit.spec.pos.copy()
    pos[:, 0] = (z[other] >= 0).astype(np.float64)
    return reissued(kit, dest, spec=replace(kit.spec, pos=pos, neg=1.0 - pos))


@adversary("patch_unowned", "structure.patch", "belong to no claimed forget sample")
def patch_unowned(kit: ProofKit, dest: Path) -> Tampered:
    """An extra patch, on a region no claim explains (a hidden backdoor region)."""
    z, _ = kit.work.mlp.forward(kit.work.x_test[:1])
    extra = (z[0] >= 0).astype(np.float64)[:, None]
    spec = replace(
        kit.spec,
        pos=np.concatenate([kit.spec.pos, extra], axis=1),
        neg=np.concatenate([kit.spec.neg, 1.0 - extra], axis=1),
        d=np.concatenate([kit.spec.d, kit.spec.d[:1]]),
        K=np.concatenate([kit.spec.K, kit.spec.K[:1]]),
    )
    return reissued(kit, dest, spec=spec)


@adversary("point_only_special_case", "region.probes", "break their claim")
def point_only_special_case(kit: ProofKit, dest: Path) -> Tampered:
    """Patches just big enough at the forget points, claimed to certify their whole regions."""
    _, logits = kit.work.mlp.forward(kit.work.x_train[kit.rows])
    d = np.zeros_like(kit.spec.d)
    claims = []
    for u, claim in enumerate(kit.claims):
        others = np.delete(logits[u], claim.target)
        d[u, claim.target] = others.max() - logits[u, claim.target] + 0.05
        claims.append(replace(claim, certified_margin=0.04))
    spec = replace(kit.spec, d=d, K=np.abs(d).max(axis=1))
    return reissued(kit, dest, spec=spec, claims=claims)


@adversary("claim_margin_inflated", "replay.claims", "fall short of their certified margin")
def claim_margin_inflated(kit: ProofKit, dest: Path) -> Tampered:
    """Claims certifying a margin far above what the patch gives."""
    claims = [replace(c, certified_margin=1e4) for c in kit.claims]
    return reissued(kit, dest, claims=claims)


@adversary("claim_wrong_target", "replay.claims", "not predicted as claimed")
def claim_wrong_target(kit: ProofKit, dest: Path) -> Tampered:
    """Claims naming a target the patched model does not predict."""
    claims = [
        replace(c, target=next(t for t in range(10) if t not in (c.label, c.target)))
        for c in kit.claims
    ]
    return reissued(kit, dest, claims=claims)


@adversary("locality_leak", "locality", "get different logits")
def locality_leak(kit: ProofKit, dest: Path) -> Tampered:
    """K below the patch size: the patch leaks onto every input, not only its regions."""
    return reissued(kit, dest, spec=replace(kit.spec, K=kit.spec.K / 2))


@adversary("utility_understated", "utility", "the certificate states 0.0000")
def utility_understated(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate that claims no accuracy loss for a patch that costs accuracy."""

    def edit(summary: dict[str, Any]) -> None:
        summary["test_accuracy_after"] = summary["test_accuracy_before"]

    return reissued(kit, dest, spec=replace(kit.spec, K=kit.spec.K / 2), summary_edit=edit)


# -- root causes of issue 11: NaN, batch coupling, hair margins ------------------------------------


def _reroute_output(model: onnx.ModelProto, nodes: list[onnx.NodeProto], out: str) -> None:
    """Rename the canonical output node's result to ``prune/patch/out0`` and append ``nodes``
    that compute the graph output ``prune/output`` from it (``out`` is their final tensor)."""
    for node in model.graph.node:
        if list(node.output) == ["prune/output"]:
            node.output[0] = "prune/patch/out0"
    nodes[-1].output[0] = "prune/output"
    assert out == "prune/output"
    model.graph.node.extend(nodes)


def _batch_rows(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes computing ``prune/patch/rows`` ``[1, 1]``: the number of rows in the batch (a
    ReduceSum over axis 0 of a column of ones)."""
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((64, 1), np.float32), "prune/patch/zero_col"),
            numpy_helper.from_array(np.ones((1, 1), np.float32), "prune/patch/one11"),
        ]
    )
    axis0 = numpy_helper.from_array(np.array([0], np.int64), "prune/patch/axis0")
    return [
        helper.make_node("Constant", [], ["prune/patch/axis0"], value=axis0),
        helper.make_node("MatMul", ["input", "prune/patch/zero_col"], ["prune/patch/zc"]),
        helper.make_node("Add", ["prune/patch/zc", "prune/patch/one11"], ["prune/patch/ones"]),
        helper.make_node(
            "ReduceSum", ["prune/patch/ones", "prune/patch/axis0"], ["prune/patch/rows"], keepdims=1
        ),
    ]


@adversary("patch_batch_coupled", "structure.patch", "not the canonical form")
def patch_batch_coupled(kit: ProofKit, dest: Path) -> Tampered:
    """The patch is multiplied by ``min(rows - 1, 1)``, a ReduceSum over the batch axis: on in
    batches, off for a user who queries one row at a time."""

    def edit(model: onnx.ModelProto) -> None:
        model.graph.initializer.append(
            numpy_helper.from_array(np.ones((1, 1), np.float32), "prune/patch/one_b")
        )
        nodes = [
            *_batch_rows(model),
            helper.make_node("Sub", ["prune/patch/rows", "prune/patch/one_b"], ["prune/patch/r1"]),
            helper.make_node("Relu", ["prune/patch/r1"], ["prune/patch/r1p"]),
            helper.make_node("Neg", ["prune/patch/r1p"], ["prune/patch/-r1"]),
            helper.make_node("Add", ["prune/patch/-r1", "prune/patch/one_b"], ["prune/patch/1-r"]),
            helper.make_node("Relu", ["prune/patch/1-r"], ["prune/patch/off"]),
            helper.make_node("Sub", ["prune/patch/one_b", "prune/patch/off"], ["prune/patch/on"]),
            helper.make_node("Sub", ["prune/patch/out0", "logits"], ["prune/patch/hh"]),
            helper.make_node("Mul", ["prune/patch/hh", "prune/patch/on"], ["prune/patch/hon"]),
            helper.make_node("Add", ["logits", "prune/patch/hon"], ["prune/patch/final"]),
        ]
        _reroute_output(model, nodes, "prune/output")

    return reissued(kit, dest, model_edit=edit)


@adversary("patch_nan_target", "structure.patch", "not the canonical form")
def patch_nan_target(kit: ProofKit, dest: Path) -> Tampered:
    """NaN written into each patch's target column: numpy's argmax reads NaN as the maximum,
    onnxruntime's ArgMax returns the original label."""

    def edit(model: onnx.ModelProto) -> None:
        nan = np.zeros(kit.spec.d.shape, np.float32)
        nan[kit.spec.d > 0] = np.nan
        model.graph.initializer.append(numpy_helper.from_array(nan, "prune/patch/nan"))
        nodes = [
            helper.make_node("MatMul", ["prune/patch/g", "prune/patch/nan"], ["prune/patch/gn"]),
            helper.make_node("Add", ["prune/patch/out0", "prune/patch/gn"], ["prune/patch/final"]),
        ]
        _reroute_output(model, nodes, "prune/output")

    return reissued(kit, dest, model_edit=edit)


@adversary("claims_hair_margin_point_only", "claims.policy", "below the minimum")
def claims_hair_margin_point_only(kit: ProofKit, dest: Path) -> Tampered:
    """Every claim point-only with certified margin 1e-7."""
    claims = [replace(c, certified_margin=1e-7, region="point-only") for c in kit.claims]
    return reissued(kit, dest, claims=claims)


@adversary("duals_dropped", "region.certificate", "names no region certificate")
def duals_dropped(kit: ProofKit, dest: Path) -> Tampered:
    """Certified claims without any region certificate (re-signed by the owner)."""
    proof = kit.copy_proof(dest / "proof")
    (proof / "certificate.dual").unlink()

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["region_certificate"] = None

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(kit.inputs(proof))


@adversary("claims_beyond_the_region", "region.certificate", "not proved over their")
def claims_beyond_the_region(kit: ProofKit, dest: Path) -> Tampered:
    """Each claim states (nearly) the margin the patched model has *at its forget sample*: replay
    passes, but the margin does not hold over the whole region, and no certificate proves it."""
    _, logits = kit.work.mlp.forward(kit.work.x_train[kit.rows])
    claims = []
    for u, claim in enumerate(kit.claims):
        patched = logits[u] + kit.spec.d[claim.patch]
        others = np.delete(patched, claim.target)
        margin = float(patched[claim.target] - others.max())
        claims.append(replace(claim, certified_margin=margin - 1e-3))
    return reissued(kit, dest, claims=claims)


@adversary("box_shrunk", "region.certificate", "outside the declared input box")
def box_shrunk(kit: ProofKit, dest: Path) -> Tampered:
    """A declared input box drawn tight (inputs in [0.4, 0.6]): certificates over it would say
    nothing about real inputs."""
    proof = kit.copy_proof(dest / "proof")

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["method"]["input_box"] = {"low": "0.4", "high": "0.6", "source": "x"}

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(kit.inputs(proof))


@adversary("box_vast", "region.certificate", "beyond float32's range")
def box_vast(kit: ProofKit, dest: Path) -> Tampered:
    """A declared input box as wide as float64 allows: finite bounds whose width overflows, so
    every bound over it is infinite or NaN. The verifier refuses the box before any arithmetic
    (no float32 cut value lies out there), naming it, rather than report a NaN excess."""
    proof = kit.copy_proof(dest / "proof")
    top = repr(float.fromhex("0x1.fffffffffffffp+1023"))

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["method"]["input_box"] = {"low": "-" + top, "high": top, "source": "x"}

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(kit.inputs(proof))


@adversary("box_huge", "region.certificate", "beyond float32's range")
def box_huge(kit: ProofKit, dest: Path) -> Tampered:
    """A declared input box with huge but finite width (1e300), far past float32: refused as a
    box, not left to the bound arithmetic and to float32 casts of its bounds."""
    proof = kit.copy_proof(dest / "proof")

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["method"]["input_box"] = {
            "low": "-1e+300",
            "high": "1e+300",
            "source": "x",
        }

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(kit.inputs(proof))


@adversary("box_float32_edge", "region.certificate", "not proved over their region")
def box_float32_edge(kit: ProofKit, dest: Path) -> Tampered:
    """A declared input box just inside float32's range (±3e38): accepted as a box, so the
    bounds over it are computed and fail the claims, and the probes' onnxruntime points out
    there come back non-finite and fail closed; the audit ends in well under a second."""
    proof = kit.copy_proof(dest / "proof")

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["method"]["input_box"] = {"low": "-3e+38", "high": "3e+38", "source": "x"}

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(kit.inputs(proof))


# -- the auditor's other inputs --------------------------------------------------------------------


@adversary("original_mismatch", "digest.original", "original model digest mismatch")
def original_mismatch(kit: ProofKit, dest: Path) -> Tampered:
    """The auditor is handed a different 'original' model than the one committed."""
    other = build_work(dest / "other-work", seed=1)
    return Tampered(kit.inputs(original=other.model))
