"""The class checks: a class deletion must leave the class unpredictable, not only its
training samples changed.

``class.suppression`` (certificates with a ``class_claim``, form ``prune/class-suppress/v1``):

1. *canonical graph*: the verifier rebuilds the whole expected model from ``--original`` and the
   claim (class ``K``, margin ``m``) with its own code: the original graph untouched, the
   suppression nodes ``z'_K = min(z_K, max_{j != K} z_j - m)`` appended exactly as docs/FORMATS.md
   lists them, one graph output, the metadata. ``model.onnx`` must equal it, serialised
   deterministically: any other node, op, attribute, constant or output is a failure;
2. *the box covers the data*: every forget sample and at least 99 % of the auditor's reference
   points (cut values) lie in the claimed box, the rule of ``region.certificate`` (a box drawn
   inside the data would certify the class's absence where nobody queries);
3. *exact bound over the box*: interval bound propagation through the verifier's own parse of
   the original head over the claimed box, in float64 with a rigorous rounding term per layer
   (``gamma_n (|W| |x| + |b|)``, ``gamma_n = n u / (1 - n u)``) gives ``B >= |z_j|``; the claim
   holds in float32 only if ``m`` is at least the float32 spacing at ``2B``
   (:func:`prune.formats.float32_margin_holds`, argument in docs/FORMATS.md);
4. *replay*: onnxruntime's patched logits on the forget set and on random points of the box
   equal the formula evaluated here in float32 bit for bit, and no forget sample gets ``K``.

``class.reference`` (every class-mode certificate, region-only ones included, and every
certificate when the auditor states the class it expects, ``Policy.expected_class``: a
certificate of another class or of a sample deletion then fails): the auditor's own
reference data of class ``K`` must never get ``K`` from ``model.onnx`` (non-finite logits fail,
as everywhere: :meth:`VerifyContext.patched_logits`). With no reference sample of class ``K``
the check fails: the class's absence cannot be shown."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from audit.verify._affine import AffineHead, parse_head
from audit.verify._certificate import _box_problem
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from audit.verify._graph import PATCH_OUTPUT, PATCH_PREFIX
from prune.formats import CLASS_SUPPRESS_FORMAT, ClassClaim, float32_margin_holds

__all__ = ["ClassReference", "ClassSuppression", "expected_suppression", "suppress_logits"]

_BOX_POINTS = 256
_U = 2.0**-53


def _opset(proto: Any) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise CheckUnavailable("original model imports no default ONNX opset")


def _batch_dim(output: Any) -> str | int:
    dims = output.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):
        return int(dims[0].dim_value)
    if dims and dims[0].dim_param:
        return str(dims[0].dim_param)
    return "batch"


def expected_suppression(
    original: Any,
    *,
    cut: str,
    hidden: tuple[str, ...],
    logits: str,
    classes: int,
    claim: ClassClaim,
) -> Any:
    """The canonical patched model for ``claim``: a copy of ``original`` with the suppression
    subgraph of docs/FORMATS.md ("Class suppression") appended."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, margin = claim.forget_class, np.float32(float(claim.margin))
    if not 0 <= k < classes:
        raise CheckUnavailable(f"class claim: class {k} is not one of the {classes} classes")
    model = onnx.ModelProto()
    model.CopyFrom(original)
    nodes: list[Any] = []
    mask = np.zeros(classes, dtype=np.float32)
    mask[k] = -np.inf
    cap = np.full(classes, np.inf, dtype=np.float32)
    cap[k] = -margin
    inits = [
        numpy_helper.from_array(mask, name=PATCH_PREFIX + "class/mask"),
        numpy_helper.from_array(cap, name=PATCH_PREFIX + "class/cap"),
    ]

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = name if name == PATCH_OUTPUT else PATCH_PREFIX + name
        node_name = PATCH_PREFIX + ("output" if name == PATCH_OUTPUT else name)
        nodes.append(helper.make_node(op, inputs, [out], name=node_name, **attrs))
        return out

    others = node("Add", [logits, PATCH_PREFIX + "class/mask"], "class/others")
    if _opset(original) >= 18:
        axes = PATCH_PREFIX + "class/axes"
        one = numpy_helper.from_array(np.asarray([1], dtype=np.int64), name=axes)
        nodes.append(helper.make_node("Constant", [], [axes], name=axes, value=one))
        best = node("ReduceMax", [others, axes], "class/best_other", keepdims=1)
    else:
        best = node("ReduceMax", [others], "class/best_other", axes=[1], keepdims=1)
    ceiling = node("Add", [best, PATCH_PREFIX + "class/cap"], "class/ceiling")
    node("Min", [logits, ceiling], PATCH_OUTPUT)
    graph = model.graph
    graph.initializer.extend(inits)
    graph.node.extend(nodes)
    batch = _batch_dim(graph.output[0])
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(PATCH_OUTPUT, TensorProto.FLOAT, [batch, classes])
    )
    for key, value in (
        ("prune.format", CLASS_SUPPRESS_FORMAT),
        ("prune.class", str(k)),
        ("prune.margin", claim.margin),
        ("prune.cut", cut),
        ("prune.original_output", logits),
        ("prune.hidden", ",".join(hidden)),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def suppress_logits(logits: NDArray[np.float32], k: int, margin: float) -> NDArray[np.float32]:
    """The suppression formula in float32 numpy (the reference onnxruntime must match exactly)."""
    z = np.asarray(logits, dtype=np.float32)
    others = np.delete(z, k, axis=1)
    ceiling = others.max(axis=1) - np.float32(margin)
    out = z.copy()
    out[:, k] = np.minimum(z[:, k], ceiling)
    return out


def interval_bound(head: AffineHead, low: float, high: float) -> float:
    """A rigorous upper bound on ``|logit_j(x)|`` for every ``x`` with all coordinates in
    ``[low, high]``: interval arithmetic in float64 plus the standard dot-product rounding bound
    per layer, doubled for the bias add and the interval combination."""
    width = head.weights[0].shape[1]
    lo, hi = np.full(width, low), np.full(width, high)
    for i, (w, b) in enumerate(zip(head.weights, head.biases, strict=True)):
        n = w.shape[1] + 2
        gamma = n * _U / (1.0 - n * _U)
        mag = np.maximum(np.abs(lo), np.abs(hi))
        err = 2.0 * gamma * (np.abs(w) @ mag + np.abs(b)) + np.finfo(np.float64).tiny
        w_pos, w_neg = np.maximum(w, 0.0), np.minimum(w, 0.0)
        lo, hi = w_pos @ lo + w_neg @ hi + b - err, w_pos @ hi + w_neg @ lo + b + err
        if i < len(head.weights) - 1:
            lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    bound = float(np.maximum(np.abs(lo), np.abs(hi)).max())
    return bound * (1.0 + 4 * _U)


class ClassSuppression(Check[VerifyContext]):
    name = "class.suppression"
    summary = (
        "model.onnx is exactly the original plus the canonical class-suppression subgraph, and "
        "class K is never predicted on the declared box (own bound, float32 argument, replay)"
    )
    requires = frozenset({"original", "forget"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        claim = ctx.predicate.class_claim
        if claim is None:
            return self.not_applicable(
                "no class claim: a region-only deletion (see class.reference)"
            )
        head = ctx.head()
        original, patched = ctx.original_proto(), ctx.patched_proto()
        openings = ctx.openings()
        ev = ctx.evaluate(openings.x, key="forget")
        classes = int(ev.logits.shape[1])
        expected = expected_suppression(
            original,
            cut=head.cut,
            hidden=head.hidden,
            logits=head.output,
            classes=classes,
            claim=claim,
        )
        evidence: dict[str, Any] = {"class": claim.forget_class, "margin": claim.margin}
        if expected.SerializeToString(deterministic=True) != patched.SerializeToString(
            deterministic=True
        ):
            return self.failed(
                "model.onnx is not the canonical class-suppression model for this claim "
                "(rebuilt from --original: a node, constant, output or metadata differs)",
                **evidence,
            )
        affine = parse_head(original, head)
        parse_error = affine.max_error(
            ev.x.astype(np.float64), ev.z.astype(np.float64), ev.logits.astype(np.float64)
        )
        if parse_error > 1e-4:
            raise CheckUnavailable(
                f"own parse of the head disagrees with onnxruntime ({parse_error:.3g})"
            )
        low, high = float(claim.low), float(claim.high)
        box_problem = _box_problem(ctx, ev.x, (low, high))
        if box_problem:
            return self.failed(f"class claim: {box_problem}", **evidence)
        bound = interval_bound(affine, low, high)
        margin = float(claim.margin)
        evidence |= {"logit_bound": bound, "owner_logit_bound": claim.logit_bound}
        if not np.isfinite(bound) or not float32_margin_holds(margin, bound):
            return self.failed(
                f"margin {claim.margin} does not survive float32 rounding at the verified logit "
                f"bound {bound:.6g} over the box",
                **evidence,
            )
        cut_shape = ev.extra["cut_shape"]
        box = ctx.rng.uniform(low, high, size=(_BOX_POINTS, ev.x.shape[1])).astype(np.float32)
        points = np.concatenate([ev.x.astype(np.float32), box])
        _, base = ctx.original_head(points, cut_shape)
        got = ctx.patched_head(points, cut_shape)
        want = suppress_logits(base, claim.forget_class, margin)
        mismatched = int((got != want).any(axis=1).sum())
        predicted_k = int((got.argmax(axis=1) == claim.forget_class).sum())
        evidence |= {
            "points": len(points),
            "formula_mismatches": mismatched,
            "predicted_class": predicted_k,
        }
        if mismatched or not np.isfinite(got).all():
            return self.failed(
                f"{mismatched} of {len(points)} points: onnxruntime's output differs from the "
                "suppression formula (or is not finite)",
                **evidence,
            )
        if predicted_k:
            return self.failed(
                f"{predicted_k} points still get class {claim.forget_class}", **evidence
            )
        return self.passed(
            f"canonical suppression of class {claim.forget_class} (margin {claim.margin}); "
            f"verified |logits| <= {bound:.4g} on the box; {len(points)} points replayed exactly",
            **evidence,
        )


class ClassReference(Check[VerifyContext]):
    name = "class.reference"
    summary = "no reference sample of the deleted class gets that class from model.onnx"
    requires = frozenset({"reference"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        predicate = ctx.predicate
        expected = ctx.policy.expected_class
        if expected is not None and (
            predicate.mode != "class" or predicate.forget_class != expected
        ):
            stated = (
                f"class {predicate.forget_class}"
                if predicate.mode == "class"
                else "sample deletion"
            )
            return self.failed(
                f"the auditor checks the deletion of class {expected}; the certificate states a "
                f"{stated}",
                expected_class=expected,
                mode=predicate.mode,
            )
        if predicate.mode != "class" or predicate.forget_class is None:
            return self.not_applicable("not a class deletion")
        if ctx.reference is None:
            raise CheckUnavailable("no --reference given")
        x, y = ctx.reference
        k = predicate.forget_class
        mine = np.flatnonzero(np.asarray(y) == k)
        evidence: dict[str, Any] = {"class": k, "reference_of_class": len(mine)}
        if len(mine) == 0:
            return self.failed(
                f"the reference data holds no sample of class {k}: its removal cannot be shown",
                **evidence,
            )
        logits = ctx.patched_logits(x, key="reference")[mine]  # NaN/inf: NonFiniteOutput
        still = int((logits.argmax(axis=1) == k).sum())
        evidence["still_predicted"] = still
        if still:
            return self.failed(
                f"{still} of {len(mine)} reference samples of class {k} still get class {k}: "
                "the class is not forgotten",
                **evidence,
            )
        return self.passed(
            f"none of {len(mine)} reference samples of class {k} gets class {k}", **evidence
        )
