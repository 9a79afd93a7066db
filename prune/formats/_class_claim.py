"""The class claim (docs/FORMATS.md, "Class claim"): what a class-suppression patch removes.

Kind ``class-suppression``: the patched model replaces the logit of class ``K`` by
``min(z_K, max_{j != K} z_j - m)`` and leaves every other logit unchanged, so that class ``K`` is
never the top class on the declared input box of the cut tensor, and its logit stays at least
``m`` (exact arithmetic) below the best other class. ``logit_bound`` is the owner's bound on
``|z_j|`` over the box (interval propagation from the original weights); the verifier recomputes
its own and never relies on this value.

Float32 argument (why the claim holds for onnxruntime's evaluation, not only on paper): ``Min``,
``ReduceMax`` and the masking ``Add`` are exact; the only rounding is ``t = fl(M - m)`` with
``M = max_{j != K} z_j``. If ``|M| <= B`` and ``m`` is at least the float32 spacing at ``2B``, the
exact ``M - m`` lies at or below the float just under ``M``, so ``t < M`` and the patched
``z_K <= t < M``: ``K`` is strictly below another class and ArgMax never returns it.
:func:`float32_margin_holds` is that condition.

Form v2 (``prune/class-suppress/v2``, the claim's ``form``) first *remaps* the rows the original
gives ``K`` (``z_K > max_{j != K} z_j``): there ``L = z A + beta`` (a ``[C, C]`` map and a ``[C]``
shift, learnt by the owner to approximate a model retrained without ``K``), elsewhere ``L = z``;
then it applies the v1 suppression to ``L``. The argument above holds for ``L`` with the bound
``max(B, B_L)``, ``B_L`` a rigorous bound on every computed ``|(z A + beta)_j|``
(:func:`remap_bound`, :func:`remap_problems`), whatever ``A`` and ``beta`` hold."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prune.formats._canonical import parse_decimal_string
from prune.formats._fields import expect_int, expect_keys, expect_object, expect_str
from prune.formats.errors import MalformedError

__all__ = [
    "CLASS_CLAIM_KINDS",
    "CLASS_FORMS",
    "CLASS_REMAP_FORMAT",
    "CLASS_SUPPRESS_FORMAT",
    "ClassClaim",
    "float32_margin_holds",
    "remap_bound",
    "remap_problems",
    "removed_text",
]

CLASS_SUPPRESS_FORMAT = "prune/class-suppress/v1"
CLASS_REMAP_FORMAT = "prune/class-suppress/v2"
CLASS_FORMS = (CLASS_SUPPRESS_FORMAT, CLASS_REMAP_FORMAT)
CLASS_CLAIM_KINDS = ("class-suppression",)
_U32: float = 2.0**-24


def removed_text(forget_class: int, low: float, high: float) -> str:
    """The sentence a class claim certifies, word for word (reports quote it)."""
    return (
        f"class {forget_class} is never predicted on the declared input box "
        f"[{low!r}, {high!r}] of the cut tensor"
    )


def float32_margin_holds(margin: float, bound: float) -> bool:
    """Whether float32 ``fl(M - margin) < M`` for every finite float32 ``M`` with ``|M| <= bound``:
    ``margin`` (as float32) is at least the float32 spacing at ``2 * bound`` and ``2 * bound`` is
    finite in float32."""
    m32 = float(np.float32(margin))
    if not (math.isfinite(bound) and bound >= 0 and m32 > 0):
        return False
    top = np.float32(2.0 * bound + 1.0)
    if not np.isfinite(top):
        return False
    return m32 >= float(np.spacing(top))


def remap_bound(bound: float, matrix: NDArray[Any], shift: NDArray[Any]) -> float:
    """A bound on every computed ``|(z A + beta)_j|`` for float32 logits with
    ``|z_i| <= 2 * bound + 1`` (the same allowance for the logits' float32 error as
    :func:`float32_margin_holds`): ``max_j (B_z sum_i |A_ij| + |beta_j|)(1 + 2 gamma_{C+1})`` with
    the float32 dot-product constant ``gamma_n = n u / (1 - n u)``, ``u = 2^-24`` (any summation
    order of the Gemm), widened by ``2^-30`` for this float64 evaluation."""
    a = np.abs(np.asarray(matrix, dtype=np.float64))
    b = np.abs(np.asarray(shift, dtype=np.float64))
    n = int(a.shape[0]) + 1
    gamma = n * _U32 / (1.0 - n * _U32)
    b_z = 2.0 * float(bound) + 1.0
    top: float = float((b_z * a.sum(axis=0) + b).max())
    widen: float = 1.0 + 2.0**-30
    return top * (1.0 + 2.0 * gamma) * widen


def remap_problems(
    matrix: NDArray[Any], shift: NDArray[Any], *, margin: float, bound: float
) -> str | None:
    """Why the v2 remap ``(A, beta)`` breaks the float32 argument for logits bounded by
    ``bound`` (None when it does not): float32 ``[C, C]`` and ``[C]`` with every entry finite, and
    ``margin`` at least the float32 spacing at ``2 max(bound, remap_bound) + 1``."""
    a, b = np.asarray(matrix), np.asarray(shift)
    if a.dtype != np.float32 or b.dtype != np.float32:
        return "the remap is not float32"
    classes = b.shape[0] if b.ndim == 1 else -1
    if classes < 2 or a.shape != (classes, classes):
        return f"the remap has shapes {a.shape} and {b.shape}, not [C, C] and [C]"
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return "the remap holds a non-finite value"
    limit = remap_bound(bound, a, b)
    if not float32_margin_holds(margin, max(bound, limit)):
        return (
            f"margin {margin} is below the float32 spacing at the remapped logits' bound "
            f"{limit:.6g}"
        )
    return None


@dataclass(frozen=True)
class ClassClaim:
    """Kind ``class-suppression`` over the box ``[low, high]`` (every coordinate of the cut
    tensor; ``source`` as in ``method.input_box``). Decimal strings throughout; ``removed`` is
    :func:`removed_text` and is checked to be exactly that."""

    forget_class: int
    margin: str
    low: str
    high: str
    source: str
    logit_bound: str
    kind: str = "class-suppression"
    form: str = CLASS_SUPPRESS_FORMAT

    @property
    def removed(self) -> str:
        return removed_text(
            self.forget_class,
            parse_decimal_string(self.low, field="class_claim.box.low"),
            parse_decimal_string(self.high, field="class_claim.box.high"),
        )

    def to_dict(self) -> dict[str, Any]:
        """``form`` is written only for v2 (a v1 claim reads as before)."""
        extra = {} if self.form == CLASS_SUPPRESS_FORMAT else {"form": self.form}
        return {
            **extra,
            "kind": self.kind,
            "class": self.forget_class,
            "margin": self.margin,
            "box": {"low": self.low, "high": self.high, "source": self.source},
            "logit_bound": self.logit_bound,
            "removed": self.removed,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> ClassClaim:
        doc = expect_object(doc, "class_claim")
        expect_keys(
            doc,
            "class_claim",
            required={"kind", "class", "margin", "box", "logit_bound", "removed"},
            optional={"form"},
        )
        form = expect_str(doc.get("form", CLASS_SUPPRESS_FORMAT), "class_claim.form")
        if form not in CLASS_FORMS:
            raise MalformedError(f"class_claim.form: unknown form {form[:40]!r}")
        kind = expect_str(doc["kind"], "class_claim.kind")
        if kind not in CLASS_CLAIM_KINDS:
            raise MalformedError(f"class_claim.kind: unknown kind {kind[:40]!r}")
        box = expect_object(doc["box"], "class_claim.box")
        expect_keys(box, "class_claim.box", required={"low", "high", "source"})
        low = parse_decimal_string(box["low"], field="class_claim.box.low")
        high = parse_decimal_string(box["high"], field="class_claim.box.high")
        if not low < high:
            raise MalformedError("class_claim.box: low must be below high")
        margin = parse_decimal_string(doc["margin"], field="class_claim.margin")
        if not margin > 0:
            raise MalformedError("class_claim.margin: must be positive")
        bound = parse_decimal_string(doc["logit_bound"], field="class_claim.logit_bound")
        if not bound >= 0:
            raise MalformedError("class_claim.logit_bound: must be non-negative")
        claim = cls(
            forget_class=expect_int(doc["class"], "class_claim.class", minimum=0),
            margin=doc["margin"],
            low=box["low"],
            high=box["high"],
            source=expect_str(box["source"], "class_claim.box.source"),
            logit_bound=doc["logit_bound"],
            kind=kind,
            form=form,
        )
        if doc["removed"] != claim.removed:
            raise MalformedError("class_claim.removed: not the canonical sentence for this claim")
        return claim
