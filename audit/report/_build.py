"""``audit report``: run the verification (and membership inference), measure what a compliance
officer needs, and write ``report.json`` (schema ``https://prune-audit.dev/report/v1``),
``report.html`` and, with an auditor key, ``attestation.json`` into one folder, atomically.

The report states only what this audit measured: every number comes from the verifier's own
outcomes, its own onnxruntime queries or its own attacks, never from the owner's summary."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from audit.attest import CheckVerdict, load_auditor_private_key, load_public_key, sign_attestation
from audit.errors import AuditError, InputError
from audit.proof import Limits, load_forget, load_reference, read_bounded
from audit.report._html import render_html
from audit.report._patch_stats import patch_statistics
from audit.report._removed import removed_statement, requested_what
from audit.runtime import OnnxModel
from audit.verify import (
    CheckOutcome,
    MembershipPolicy,
    Policy,
    VerificationReport,
    VerifyInputs,
    verify_proof,
)
from prune.formats import (
    PAYLOAD_TYPE,
    Envelope,
    FormatError,
    Statement,
    public_key_id,
    sha256_hex,
    verify_envelope,
)
from threat_models.model import THREATS

__all__ = ["REPORT_TYPE", "ReportOptions", "ReportResult", "build_report"]

REPORT_TYPE = "https://prune-audit.dev/report/v1"
_PACKAGES = ("prune-audit", "numpy", "onnx", "onnxruntime", "torch", "scikit-learn", "cryptography")


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """What the auditor chooses. ``mia_attacks`` empty disables membership inference (the report
    then says so, and threats 9 and 23 are listed as not covered)."""

    name: str
    mia_attacks: tuple[str, ...] = ("rmia", "loss")
    mia_reference_models: int = 4
    mia_sides: Literal["one", "two"] = "one"
    mia_arch: str | None = None
    mia_backend: str = "local"  # where reference models train (audit.mia._execution)
    mia_address: str | None = None
    mia_jobs: int = 1
    seed: int = 0
    policy: Policy = field(default_factory=Policy)
    device: str = "auto"
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportResult:
    folder: Path
    verification: VerificationReport
    document: Mapping[str, Any]

    @property
    def verified(self) -> bool:
        return self.verification.verified


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _statement(certificate: bytes | None) -> Statement | None:
    """The certificate's statement, parsed strictly; ``None`` when it cannot be read (the
    verification outcomes already say why)."""
    if certificate is None:
        return None
    try:
        return Statement.from_json(Envelope.from_json(certificate).payload)
    except FormatError:
        return None


def _read(path: Path | None, limit: int, what: str) -> bytes | None:
    """``path``'s bytes through the bounded, no-follow loader; ``None`` when there is no path or
    the file is unusable (the verification outcomes already say why)."""
    if path is None:
        return None
    try:
        return read_bounded(path, limit, what=what)
    except AuditError:
        return None


def _authentic(
    certificate: bytes | None,
    model: bytes | None,
    original: bytes | None,
    owner_key: Any,
) -> bool:
    """Whether the bytes the report would run are the ones the owner signed: the envelope
    verifies with the owner's key and both models are the statement's digests. The report's
    own model runs (per-class accuracy, membership inference) happen only then: fail-closed,
    and on the very bytes that were checked (the files are not read again)."""
    if certificate is None or model is None or original is None:
        return False
    try:
        envelope = Envelope.from_json(certificate)
        verify_envelope(envelope, owner_key, payload_type=PAYLOAD_TYPE)
        statement = Statement.from_json(envelope.payload)
    except FormatError:
        return False
    return (
        sha256_hex(model) == statement.subject_sha256
        and sha256_hex(original) == statement.predicate.original_model_sha256
    )


def _per_class(
    original: bytes, patched: bytes, x: NDArray[np.float32], y: NDArray[np.int64], device: str
) -> dict[str, Any]:
    before_logits = OnnxModel.for_logits(original, device=device).logits(x)
    after_logits = OnnxModel.for_logits(patched, device=device).logits(x)
    before = before_logits.argmax(axis=1)
    after = after_logits.argmax(axis=1)
    # a non-finite logit is never a correct prediction (argmax of NaN is meaningless)
    before = np.where(np.isfinite(before_logits).all(axis=1), before, -1)
    after = np.where(np.isfinite(after_logits).all(axis=1), after, -1)
    classes = sorted({int(c) for c in np.unique(y)})
    counts = [int((y == c).sum()) for c in classes]

    def acc(pred: NDArray[np.int64], c: int) -> float:
        return float((pred[y == c] == c).mean())

    return {
        "classes": classes,
        "counts": counts,
        "original": [acc(before, c) for c in classes],
        "patched": [acc(after, c) for c in classes],
        "overall_original": float((before == y).mean()),
        "overall_patched": float((after == y).mean()),
    }


def _mia(
    options: ReportOptions,
    original: bytes,
    patched: bytes,
    forget: tuple[NDArray[np.float32], NDArray[np.int64]],
    reference: tuple[NDArray[np.float32], NDArray[np.int64]],
    progress: bool,
) -> dict[str, Any]:
    """U-MIA on the auditor's own split of the reference data: half trains the reference models,
    the other half are the held-out non-members the forget set is compared with."""
    from audit.mia import LabelledData, MiaConfig, resolve_architecture, unlearning_audit

    x, y = reference
    order = np.random.default_rng(options.seed).permutation(len(y))
    half = len(y) // 2
    ref_idx, non_idx = order[:half], order[half:]
    patched_model = OnnxModel.for_logits(patched, device=options.device)
    original_model = OnnxModel.for_logits(original, device=options.device)
    architecture = resolve_architecture(
        onnx_model=original,
        declared=options.mia_arch,
        input_shape=tuple(int(d) for d in x.shape[1:]),
        classes=int(max(y.max(), forget[1].max())) + 1,
    )
    config = MiaConfig(
        attacks=options.mia_attacks,
        reference_models=options.mia_reference_models,
        seed=options.seed,
        fprs=(0.01, 0.001),
        jobs=options.mia_jobs,
        backend=options.mia_backend,
        address=options.mia_address,
    )
    game = unlearning_audit(
        original=original_model.logits,
        patched=patched_model.logits,
        forget=LabelledData(*forget),
        non_members=LabelledData(x[non_idx], y[non_idx]),
        reference=LabelledData(x[ref_idx], y[ref_idx]),
        architecture=architecture,
        config=config,
        progress=progress,
    )
    results = []
    for model in game.models:
        for attack in model.attacks:
            m = attack.metrics
            t1, t01 = m.tpr(0.01), m.tpr(0.001)
            results.append(
                {
                    "label": f"{attack.attack} on {model.label}: forget vs non-members",
                    "model": model.label,
                    "attack": attack.attack,
                    "auc": m.auc.value,
                    "auc_ci": [m.auc.low, m.auc.high],
                    "distinguishability": m.distinguishability.value,
                    "tpr_at_1pct_fpr": t1.value,
                    "tpr_at_1pct_fpr_ci": [t1.low, t1.high],
                    "tpr_at_01pct_fpr": t01.value,
                    "tpr_at_01pct_fpr_ci": [t01.low, t01.high],
                    "reverse_tpr_at_1pct_fpr": m.tpr(0.01, reverse=True).value,
                    "advantage": m.advantage.value,
                    "roc": {
                        "fpr": list(m.roc_fpr),
                        "tpr": list(m.roc_tpr),
                        "points": [
                            [0.01, t1.value, t1.low, t1.high],
                            [0.001, t01.value, t01.low, t01.high],
                        ],
                    },
                }
            )
    return {
        "game": "forget-vs-non-members",
        "results": results,
        "settings": {
            "attacks": ",".join(options.mia_attacks),
            "reference_models": options.mia_reference_models,
            "architecture": architecture.describe(),
            "forget": len(forget[1]),
            "non_members": len(non_idx),
            "reference_points": len(ref_idx),
            "seed": options.seed,
            "bootstrap": game.bootstrap,
        },
    }


def _coverage(
    statement: Statement | None, verification: VerificationReport, opened: int | None
) -> dict[str, Any]:
    def evidence(name: str, key: str) -> Any:
        try:
            outcome = verification.outcome(name)
        except KeyError:
            return "n/a"
        return outcome.evidence.get(key, "not run") if outcome.status != "not-run" else "not run"

    return {
        "committed": statement.predicate.forget_set.size if statement else "unreadable",
        "opened": opened if opened is not None else "not given",
        "replayed": (
            evidence("replay.claims", "claims")
            if evidence("replay.claims", "claims") != "not run"
            else evidence("replay.calibrated", "claims")
        ),
        "probed": evidence("region.probes", "claims_probed"),
    }


def _deletion_words(verification: VerificationReport) -> str | None:
    """The membership check's plain-words answer to "is deletion detectable?" (None: not run)."""
    try:
        outcome = verification.outcome("membership.inference")
    except KeyError:
        return None
    return None if outcome.status == "not-run" else outcome.detail


_NOT_COVERED_HINT = {
    "equivocation": " (needs a data subject's receipt: audit receipt)",
    "residual-memorisation": (
        " (needs planted canaries: comparing the forget set with ordinary non-members cannot "
        "see it, docs/THREAT_MODEL.md)"
    ),
    "zero-push": (
        " (needs planted canaries: the forget-set comparison catches it on some settings only, "
        "docs/THREAT_MODEL.md)"
    ),
}


_PARTIAL = {
    "residual-memorisation": frozenset({"claims.policy"}),
    "zero-push": frozenset({"membership.inference"}),
}
"""Checks that catch one form of a threat only, so running them does not cover it:
``claims.policy``'s class-margin minimum catches a near-tie class suppression (``class_residual``),
not memorisation in general, which only planted canaries measure; ``membership.inference``
(forget set against non-members) fails a zero push on the Fashion-MNIST models but not on digits
(docs/THREAT_MODEL.md, threat 23)."""


def _threats(outcomes: Sequence[CheckOutcome], mia_ran: bool) -> list[dict[str, Any]]:
    ran = {o.name for o in outcomes if o.status != "not-run"}
    if mia_ran:
        ran.add("membership.inference")
    rows = []
    for t in THREATS:
        partial = _PARTIAL.get(t.key, frozenset())
        covering = [c for c in t.caught_by if c in ran and c not in partial]
        rows.append(
            {
                "number": t.number,
                "title": t.title,
                "checks": list(t.caught_by),
                "covered": bool(covering),
                "why": (
                    f"ran: {', '.join(covering)}"
                    if covering
                    else "none of its checks ran in this audit" + _NOT_COVERED_HINT.get(t.key, "")
                )
                + "".join(
                    f"; {c} ran, which catches only one form of it" for c in sorted(partial & ran)
                ),
            }
        )
    return rows


def _compliance(
    statement: Statement | None,
    verification: VerificationReport,
    coverage: Mapping[str, Any],
    mia: Mapping[str, Any] | None,
) -> dict[str, Any]:
    if statement is None:
        requested = "The certificate could not be read, so the request itself is unknown."
    else:
        p = statement.predicate
        what = requested_what(statement)
        requested = (
            f"The model owner certified the erasure of {what} (GDPR Art. 17), committed under the "
            f"forget-set root {p.forget_set.root[:16]}..., on {p.created}."
        )
    failed = [o.name for o in verification.failures]
    suppressed = statement is not None and statement.predicate.class_claim is not None
    if verification.verified and suppressed:
        verified = (
            f"All {len(verification.outcomes)} checks passed: the signatures and digests bind the "
            "served model to the certificate; the served model is exactly the committed original "
            "followed by the canonical class-suppression step (rebuilt by the auditor); the "
            "auditor's own bound over the declared input box shows the class can never be the "
            f"top class; {coverage['replayed']} forget samples were replayed and the auditor's "
            "held-out samples of the class do not get it; every other class's logits are the "
            "original's."
        )
    elif verification.verified:
        verified = (
            f"All {len(verification.outcomes)} checks passed: the signatures and digests bind the "
            f"served model to the certificate; {coverage['replayed']} forget samples were replayed "
            f"through the served model and none is predicted as before; {coverage['probed']} "
            "claimed regions were probed; outside the patched regions the model equals the "
            "committed original."
        )
    elif verification.verdict == "point-only" and not failed:
        accepted = verification.accepted
        verified = (
            f"POINT-ONLY: every check passed, but {verification.point_only_claims} claims hold "
            "only at their forget sample, not over its linear region (no region certificate). "
            + (
                "The auditor accepted point-only claims explicitly (--accept-point-only)."
                if accepted
                else "That is not a VERIFIED erasure: the auditor did not accept point-only "
                "claims (--accept-point-only)."
            )
        )
    else:
        verified = (
            "The proof was NOT verified. Failed checks: " + ", ".join(failed) + ". The erasure "
            "claim must not be relied on until the owner supplies a proof that passes."
        )
    risks = [
        "PRUNE changes the model's outputs on the forgotten samples' linear regions; it does not "
        "remove their influence from the original weights, which the patched model still contains.",
        "Inside a 1/n band around each patched region (a band of the gate) the patch is partly on; "
        "points there may be changed without being claimed.",
        "The served endpoint is assumed to run the verified file; this audit checked the file.",
        "The patched model reveals which linear regions were patched: a party with white-box access "
        "and a candidate pool may single out deleted records (threat 11, docs/THREAT_MODEL.md).",
    ]
    if suppressed:  # no regions, no gates: the first two items describe the region patch
        risks = risks[2:3]
        risks.append(
            "Class suppression caps the class's output; the original weights, which the served "
            "file still contains, encode the class: whoever holds the file can compute the "
            "uncapped logit. The guarantee is about the served model's predictions."
        )
    if mia:
        worst = max(mia["results"], key=lambda r: abs(float(r["auc"]) - 0.5), default=None)
        if worst is not None:
            risks.append(
                f"Membership inference: the strongest distinguishability measured was "
                f"{worst['label']} with AUC {float(worst['auc']):.3f} (0.5 = indistinguishable)."
            )
    else:
        risks.append("Membership inference was not run: residual memorisation was not measured.")
    return {
        "requested": requested,
        "verified": verified,
        "removed": removed_statement(statement, verification),
        "residual_risks": risks,
    }


def build_report(
    *,
    proof: Path,
    public_key: Path,
    out: Path,
    options: ReportOptions,
    original: Path | None = None,
    forget: Path | None = None,
    reference: Path | None = None,
    auditor_key: Path | None = None,
    now: datetime | None = None,
    progress: bool = False,
    on_check: Callable[[CheckOutcome], None] | None = None,
) -> ReportResult:
    """Verify ``proof`` and write the report folder ``out`` (refused if it exists and is not
    empty; written to a temporary sibling and renamed, so a failure leaves nothing behind)."""
    parent = _prepare_out(out)
    now = now or datetime.now(UTC)
    owner_key = load_public_key(public_key)
    signing_key = load_auditor_private_key(auditor_key) if auditor_key is not None else None
    policy = options.policy
    if options.mia_attacks and policy.membership is None:
        # the verdict includes the (one-sided) membership check; the section below adds the
        # full unlearning game with ROC curves for every attack
        policy = replace(
            policy,
            membership=MembershipPolicy(
                attack=options.mia_attacks[0],
                reference_models=options.mia_reference_models,
                sides=options.mia_sides,
                arch=options.mia_arch,
                seed=options.seed,
                backend=options.mia_backend,
                address=options.mia_address,
                jobs=options.mia_jobs,
            ),
        )
    verification = verify_proof(
        VerifyInputs(
            proof=proof,
            public_key=public_key,
            original=original,
            forget=forget,
            reference=reference,
        ),
        now=now,
        rng=np.random.default_rng(options.seed),
        policy=policy,
        device=options.device,
        on_done=on_check,
    )
    limits = Limits()
    certificate = _read(proof / "certificate.json", limits.certificate_bytes, "certificate")
    model = _read(proof / "model.onnx", limits.model_bytes, "model.onnx")
    original_bytes = _read(original, limits.model_bytes, "original model")
    statement = _statement(certificate)
    forget_data = None
    if forget is not None:
        try:
            openings = load_forget(forget, limits=limits)
            forget_data = (openings.x, openings.y)
        except AuditError:
            pass  # the owner's openings are broken: the failed checks already say why
    reference_data = load_reference(reference, limits=limits) if reference is not None else None
    per_class = None
    mia = None
    runnable = _authentic(certificate, model, original_bytes, owner_key)
    if runnable and model is not None and original_bytes is not None:
        if reference_data is not None:
            try:
                per_class = _per_class(original_bytes, model, *reference_data, options.device)
            except AuditError:
                per_class = None  # the model did not run: the failed checks already say why
        if options.mia_attacks and forget_data is not None and reference_data is not None:
            try:
                mia = _mia(options, original_bytes, model, forget_data, reference_data, progress)
            except AuditError:
                mia = None  # the models did not run or gave unusable outputs
    coverage = _coverage(
        statement, verification, None if forget_data is None else len(forget_data[1])
    )
    digests = {
        "model.onnx": _sha(model),
        "certificate.json": _sha(certificate),
        "original": _sha(original_bytes),
        "forget.npz": _sha(_read(forget, limits.forget_bytes, "forget set")),
        "reference": _sha(_read(reference, limits.reference_bytes, "reference data")),
    }
    if signing_key is not None and (model is None or certificate is None):
        signing_key = None  # nothing to attest to: the proof's own files are unreadable
        unsigned = "unsigned: model.onnx or certificate.json is unreadable"
    else:
        unsigned = "unsigned"
    doc: dict[str, Any] = {
        "type": REPORT_TYPE,
        "version": 1,
        "name": options.name,
        "created": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "verdict": verification.verdict,
        "verification": verification.to_json(),
        "certificate": _certificate_fields(statement, owner_key_id=public_key_id(owner_key)),
        "coverage": coverage,
        "per_class": per_class,
        "mia": mia,
        "deletion_detectable": _deletion_words(verification),
        "patch": patch_statistics(model, None if original_bytes is None else len(original_bytes)),
        "threats": _threats(verification.outcomes, mia is not None),
        "compliance": _compliance(statement, verification, coverage, mia),
        "reproducibility": {
            "versions": _versions(),
            "seed": options.seed,
            "digests": json.dumps(digests, sort_keys=True),
            "command": " ".join(options.command) if options.command else " ".join(sys.argv),
            "auditor_key": public_key_id(signing_key.public_key()) if signing_key else unsigned,
        },
    }
    report_json = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write the report folder {out}: {exc.strerror}") from None
    try:
        (tmp / "report.json").write_text(report_json, encoding="utf-8")
        (tmp / "report.html").write_text(render_html(doc), encoding="utf-8")
        if signing_key is not None:
            attestation = sign_attestation(
                model_sha256=str(digests["model.onnx"]),
                verdict=verification.verdict,
                checks=[CheckVerdict(o.name, o.status, o.detail) for o in verification.outcomes],
                certificate_sha256=str(digests["certificate.json"]),
                report_sha256=sha256_hex(report_json.encode("utf-8")),
                owner_key_id=public_key_id(owner_key),
                private_key=signing_key,
                now=now,
            )
            (tmp / "attestation.json").write_bytes(attestation)
        os.chmod(tmp, 0o755)
        if out.is_dir() and not out.is_symlink():
            out.rmdir()  # empty (checked above); a folder filled meanwhile makes this fail
        os.rename(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"cannot write the report folder {out}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReportResult(out, verification, doc)


def _prepare_out(out: Path) -> Path:
    """Refuse an unusable report folder *before* the verification runs (exit 2): it must not
    exist or be an empty folder (never a link or a file: an output never replaces an input),
    and its parent must be a writable folder (created if missing)."""
    if out.is_symlink():
        raise InputError(f"report folder {out} is a symbolic link")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"report folder {out} exists and is not empty")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the report folder's parent {parent}: {exc.strerror}"
        ) from None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"report folder: {parent} is not a writable folder")
    return parent


def _sha(data: bytes | None) -> str | None:
    return None if data is None else sha256_hex(data)


def _certificate_fields(statement: Statement | None, *, owner_key_id: str) -> dict[str, Any]:
    if statement is None:
        return {"status": "unreadable", "owner_key_id": owner_key_id}
    p = statement.predicate
    return {
        "owner_key_id": owner_key_id,
        "patched_model_sha256": statement.subject_sha256,
        "original_model_sha256": p.original_model_sha256,
        "patch_parameters_sha256": p.patch_parameters_sha256,
        "forget_set_root": p.forget_set.root,
        "forget_set_size": p.forget_set.size,
        "mode": p.mode if p.forget_class is None else f"{p.mode} (class {p.forget_class})",
        "method": json.dumps(p.method, sort_keys=True),
        "claims": len(p.claims),
        "utility": json.dumps(p.utility, sort_keys=True),
        "created": p.created,
        "nonce": p.nonce,
    }
