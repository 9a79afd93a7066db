"""The check registry and :func:`verify_proof`, the one concrete entry point.

The registry is an ordered mapping from the stable check names (docs/VERIFY.md; the threat
model maps each dishonest-owner behaviour to these names) to their classes. Cheap cryptographic
checks come first, so a forged proof is reported before any model runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from audit.errors import InputError
from audit.proof import Limits
from audit.verify._calibrated import ReplayCalibrated
from audit.verify._certificate import RegionCertificate
from audit.verify._claims import ClaimsPolicy
from audit.verify._class import ClassReference, ClassSuppression
from audit.verify._commitment import CommitmentConsistency, CommitmentOpenings
from audit.verify._context import VerifyContext, VerifyInputs
from audit.verify._digest import ModelDigest, OriginalDigest, PatchDigest
from audit.verify._framework import Check, CheckOutcome, Policy, run_checks
from audit.verify._freshness import Freshness, record_nonce
from audit.verify._locality import Locality, Utility
from audit.verify._membership import MembershipInference
from audit.verify._probes import RegionProbes
from audit.verify._replay import ReplayBatch, ReplayClaims
from audit.verify._report import VerificationReport
from audit.verify._rows import StructureRows
from audit.verify._signature import CertificateSignature, ModelSignature
from audit.verify._structure import StructureOriginal, StructurePatch
from audit.verify._tail import StructureTail
from prune.formats import sha256_hex

__all__ = ["CHECKS", "verify_proof"]

CHECKS: Mapping[str, type[Check[VerifyContext]]] = {
    cls.name: cls
    for cls in (
        CertificateSignature,
        ModelSignature,
        ModelDigest,
        OriginalDigest,
        PatchDigest,
        Freshness,
        ClaimsPolicy,
        CommitmentOpenings,
        CommitmentConsistency,
        StructureOriginal,
        StructureRows,
        StructureTail,
        StructurePatch,
        ClassSuppression,
        ReplayClaims,
        ReplayBatch,
        RegionCertificate,
        ReplayCalibrated,
        RegionProbes,
        Locality,
        Utility,
        ClassReference,
        MembershipInference,
    )
}


def _tool_version() -> str:
    try:
        return version("prune-audit")
    except PackageNotFoundError:
        return "unknown"


def verify_proof(
    inputs: VerifyInputs,
    *,
    now: datetime,
    rng: np.random.Generator,
    policy: Policy | None = None,
    limits: Limits | None = None,
    device: str = "auto",
    threads: int | None = None,
    checks: Sequence[str] | None = None,
    on_done: Callable[[CheckOutcome], None] | None = None,
    fail_fast: bool = False,
) -> VerificationReport:
    """Run the registry (or the named ``checks``, in registry order) against one proof folder.

    Returns the report; never raises for a proof that fails (see
    :meth:`VerificationReport.raise_for_failure`). Raises :class:`InputError` for unusable
    auditor input (bad paths, unreadable key or reference data, unknown check names). With a
    nonce store, the nonce of a *verified* certificate is recorded after the run. ``fail_fast``
    stops at the first failed check (the others are reported not-run)."""
    policy = policy or Policy()
    limits = limits or Limits()
    names = list(CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise InputError(f"unknown check {unknown[0]!r}; known: {', '.join(CHECKS)}")
    if not names:
        raise InputError("no checks selected: an empty list of checks is never a pass")
    selected = [CHECKS[n]() for n in CHECKS if n in names]
    ctx = VerifyContext(
        inputs, policy=policy, limits=limits, now=now, rng=rng, device=device, threads=threads
    )
    outcomes = run_checks(
        selected, ctx, given=inputs.given, policy=policy, on_done=on_done, fail_fast=fail_fast
    )
    subject: dict[str, object] = {"proof": str(inputs.proof)}
    for kind in ("model", "certificate"):
        try:
            subject[f"{kind}_sha256"] = sha256_hex(ctx.proof_file(kind))
        except Exception:  # already reported by the checks; the subject is informative only
            subject[f"{kind}_sha256"] = None
    report = VerificationReport(
        kind="proof",
        outcomes=outcomes,
        subject=subject,
        settings={
            "policy": {
                "required_inputs": sorted(policy.required_inputs),
                "max_age_days": policy.max_age.total_seconds() / 86400,
                "margin_tolerance": policy.margin_tolerance,
                "locality_atol": policy.locality_atol,
                "utility_tolerance": policy.utility_tolerance,
                "probe_directions": policy.probe_directions,
                "probe_points": policy.probe_points,
                "lp_claims": policy.lp_claims,
                "lp_classes": policy.lp_classes,
                "min_certified_margin": policy.min_certified_margin,
                "accept_point_only": policy.accept_point_only,
                "expected_class": policy.expected_class,
                "min_gate_sharpness": policy.min_gate_sharpness,
                "min_class_margin": policy.min_class_margin,
            },
            "inputs": sorted(inputs.given),
            "device": device,
            "providers": ctx.providers(),
            "tool_version": _tool_version(),
        },
        created=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    if report.verified and inputs.nonce_store is not None and "freshness" in names:
        record_nonce(inputs.nonce_store, ctx.predicate.nonce)
    return report
