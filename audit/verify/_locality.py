"""Locality and utility on the auditor's reference data.

``locality``: every reference point whose gates are all zero — computed by the verifier from the
original model's pre-activations (or cut) and the patch matrices — must get exactly the original
model's logits from the patched model (``|diff| <= Policy.locality_atol``). Points within a hair
of a support boundary (``n*V`` within 1e-3 of 1) are counted apart rather than judged, since
float32 may round them either way. Fail-closed: if no reference point lies outside every
support, locality cannot be shown and the check fails.

``utility``: accuracy of the original and the patched model on the reference data; the measured
drop may exceed the drop the certificate states (``test_accuracy_before - test_accuracy_after``)
by at most ``Policy.utility_tolerance``. An owner who understates the damage fails here."""

from __future__ import annotations

from typing import Any

import numpy as np

from audit.errors import InputError
from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome, CheckUnavailable
from prune.formats import FormatError, parse_decimal_string

__all__ = ["Locality", "Utility"]

_BAND = 1e-3  # relative slack around the support boundary g = 0


def _reference(ctx: VerifyContext) -> tuple[Any, Any]:
    if ctx.reference is None:
        raise CheckUnavailable("no --reference given")
    return ctx.reference


class Locality(Check[VerifyContext]):
    name = "locality"
    summary = "outside every patch support, the patched model's logits equal the original's"
    requires = frozenset({"original", "reference"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        if ctx.predicate.class_claim is not None:  # no supports: every point is replayed exactly
            return self.not_applicable(
                "class suppression: other logits are unchanged by construction (class.suppression)"
            )
        x, _ = _reference(ctx)
        ev = ctx.evaluate(x, key="reference")
        params = ctx.patch()
        if params.gate == "activation" or params.routed:  # routed: g_u <= activation gate
            if params.pos is None or ev.z.shape[1] != params.pos.shape[0]:
                raise CheckUnavailable("patch gate does not fit the original model's hidden size")
            # float32 is enough here: points within the 1e-3 band are not judged
            nv = params.n * params.violation(ev.z)  # g = relu(1 - nV): off when nV >= 1
            off = nv >= 1.0 + _BAND
            on = nv < 1.0 - _BAND
        else:
            g = params.gates(z=ev.z.astype(np.float64), x=ev.x.astype(np.float64))
            off, on = g <= 0.0, g > _BAND
        outside = off.all(axis=1)
        band = ~outside & ~on.any(axis=1)
        patched = ctx.patched_logits(x, key="reference").astype(np.float64)
        diff = np.abs(patched - ev.logits.astype(np.float64)).max(axis=1)
        broken = outside & (diff > ctx.policy.locality_atol)
        evidence = {
            "reference_points": len(x),
            "outside_supports": int(outside.sum()),
            "inside_supports": int(on.any(axis=1).sum()),
            "near_boundary": int(band.sum()),
            "changed_outside": int(broken.sum()),
            "max_abs_diff_outside": float(diff[outside].max(initial=0.0)),
            "changed_predictions": int((patched.argmax(1) != ev.logits.argmax(1)).sum()),
        }
        if not outside.any():
            return self.failed(
                "not run: no reference point lies outside every patch support", **evidence
            )
        if broken.any():
            return self.failed(
                f"{int(broken.sum())} of {int(outside.sum())} reference points outside every "
                f"patch support get different logits (max |diff| "
                f"{evidence['max_abs_diff_outside']:.3g} > {ctx.policy.locality_atol:g})",
                **evidence,
            )
        return self.passed(
            f"{int(outside.sum())} of {len(x)} reference points outside the supports are "
            f"unchanged (max |diff| {evidence['max_abs_diff_outside']:.2g})",
            **evidence,
        )


def _utility_number(utility: Any, key: str) -> float | None:
    if key not in utility:
        return None
    try:
        return parse_decimal_string(utility[key], field=f"utility.{key}")
    except FormatError as exc:
        raise CheckUnavailable(str(exc)) from exc


class Utility(Check[VerifyContext]):
    name = "utility"
    summary = (
        "the accuracy drop measured on the reference data is at most the certified drop "
        "plus the tolerance"
    )
    requires = frozenset({"original", "reference"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        x, y = _reference(ctx)
        original = ctx.evaluate(x, key="reference").logits
        classes = original.shape[1]
        if y.size and int(y.max()) >= classes:
            raise InputError(
                f"reference data: label {int(y.max())} is not one of the model's {classes} classes"
            )
        patched = ctx.patched_logits(x, key="reference")
        if patched.shape != original.shape:
            return self.failed(
                f"patched logits {patched.shape} and original logits {original.shape} differ"
            )
        before = float((original.argmax(1) == y).mean())
        after = float((patched.argmax(1) == y).mean())
        utility = ctx.predicate.utility
        claimed_before = _utility_number(utility, "test_accuracy_before")
        claimed_after = _utility_number(utility, "test_accuracy_after")
        evidence = {
            "reference_points": len(x),
            "accuracy_before": before,
            "accuracy_after": after,
            "measured_drop": before - after,
            "certified_before": claimed_before,
            "certified_after": claimed_after,
            "tolerance": ctx.policy.utility_tolerance,
        }
        if claimed_before is None or claimed_after is None:
            return self.failed(
                "the certificate states no test_accuracy_before/after to compare with", **evidence
            )
        claimed_drop = claimed_before - claimed_after
        evidence["certified_drop"] = claimed_drop
        if before - after > claimed_drop + ctx.policy.utility_tolerance:
            return self.failed(
                f"accuracy drops {before - after:.4f} on the reference data "
                f"({before:.4f} -> {after:.4f}), the certificate states {claimed_drop:.4f}",
                **evidence,
            )
        return self.passed(
            f"accuracy {before:.4f} -> {after:.4f} (certified {claimed_before:.4f} -> "
            f"{claimed_after:.4f})",
            **evidence,
        )
