"""``audit receipt``: a data subject checks their own deletion receipt against the signed
certificate, with nothing but their sample, its label and the owner's public key.

Checks (same framework and verdict rules as ``audit verify``):

* ``receipt.certificate`` — the certificate is signed by the owner's key and well formed;
* ``receipt.binding`` — the receipt names this certificate (its SHA-256), its root and tree
  size, and a leaf of this certificate's batch;
* ``receipt.claim`` — the certificate makes a claim for that leaf, for the subject's label;
* ``receipt.inclusion`` — the subject's sample, label and the receipt's salt hash to a leaf that
  the inclusion proof places under the committed root (needs ``--sample`` and ``--label``);
* ``receipt.replay`` — with ``--model``, the subject's own sample replayed through the deployed
  model (whose digest the certificate names) gets the claimed target (a calibrated claim: the
  declared output, and a margin over the rival at most the claimed bound).

Threat assumption: the owner issued the receipt and the certificate and may lie in either; only
the public key and the subject's own sample are trusted."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec
from numpy.typing import NDArray

from audit.errors import AuditError, InputError
from audit.proof import (
    Limits,
    ProofFileError,
    check_input_file,
    load_public_key,
    read_bounded,
    read_npy,
)
from audit.runtime import OnnxModel, available_providers
from audit.verify import (
    Check,
    CheckOutcome,
    CheckUnavailable,
    Policy,
    VerificationReport,
    run_checks,
)
from audit.verify._context import require_finite
from audit.verify._replay import BATCH_SIZES, BATCH_TOLERANCE, margins
from prune.formats import (
    PAYLOAD_TYPE,
    CalibratedClaimRecord,
    Envelope,
    FormatError,
    Receipt,
    Statement,
    leaf_hash,
    output_tolerance,
    parse_decimal_string,
    public_key_id,
    sha256_hex,
    verify_envelope,
    verify_inclusion,
)

__all__ = ["RECEIPT_CHECKS", "ReceiptInputs", "verify_receipt"]


@dataclass(frozen=True, kw_only=True)
class ReceiptInputs:
    """What the data subject holds. ``sample`` is a ``.npy`` with the sample exactly as it was
    committed (no batch axis); ``model`` is the deployed patched model, optional."""

    receipt: Path
    certificate: Path
    public_key: Path
    sample: Path | None = None
    label: int | None = None
    model: Path | None = None

    @property
    def given(self) -> frozenset[str]:
        names = {"sample"} if self.sample is not None and self.label is not None else set()
        return frozenset(names | ({"model"} if self.model is not None else set()))


def _load_sample(path: Path, limits: Limits) -> NDArray[np.float32]:
    data = read_bounded(path, limits.sample_bytes, what="sample", owner=False)
    array = read_npy(
        data,
        what=f"sample {path}",
        kinds="f",
        limits=limits,
        max_bytes=4 * limits.max_sample_elements,
        owner=False,
    )
    if array.dtype != np.float32:
        raise InputError(f"sample {path}: dtype {array.dtype}, the commitment encodes float32")
    if array.size == 0 or not np.isfinite(array).all():
        raise InputError(f"sample {path}: empty, or contains NaN or infinity")
    return np.ascontiguousarray(array, dtype=np.float32)


class ReceiptContext:
    """The subject's inputs (read eagerly: a bad path is exit 2) and the owner's files."""

    def __init__(self, inputs: ReceiptInputs, *, limits: Limits, device: str = "auto") -> None:
        self.inputs = inputs
        self.device = device
        available_providers(device)  # --device cuda without CUDA is a usage error (exit 2)
        self.public_key: ec.EllipticCurvePublicKey = load_public_key(
            inputs.public_key, limits=limits
        )
        for path, what in ((inputs.receipt, "receipt"), (inputs.certificate, "certificate")):
            check_input_file(path, what=what)
        if inputs.model is not None:
            check_input_file(inputs.model, what="model")
        if (inputs.sample is None) != (inputs.label is None):
            raise InputError("--sample and --label go together")
        self.sample = None if inputs.sample is None else _load_sample(inputs.sample, limits)
        self.certificate_bytes = read_bounded(
            inputs.certificate, limits.certificate_bytes, what="certificate"
        )
        self.receipt_bytes = read_bounded(inputs.receipt, limits.receipt_bytes, what="receipt")
        self.model_bytes = (
            None
            if inputs.model is None
            else read_bounded(inputs.model, limits.model_bytes, what="model")
        )

    def statement(self) -> Statement:
        try:
            return Statement.from_json(Envelope.from_json(self.certificate_bytes).payload)
        except FormatError as exc:
            raise CheckUnavailable(f"certificate unreadable: {exc}") from exc

    def receipt(self) -> Receipt:
        try:
            return Receipt.from_json(self.receipt_bytes)
        except FormatError as exc:
            raise ProofFileError(f"receipt unreadable: {exc}") from exc


class ReceiptCertificate(Check[ReceiptContext]):
    name = "receipt.certificate"
    summary = "the certificate is signed by the owner's key and holds a v1 statement"

    def run(self, ctx: ReceiptContext) -> CheckOutcome:
        try:
            envelope = Envelope.from_json(ctx.certificate_bytes)
            verify_envelope(envelope, ctx.public_key, payload_type=PAYLOAD_TYPE)
        except FormatError as exc:
            return self.failed(f"certificate: {exc}")
        ctx.statement()
        return self.passed("signed by the owner's key", keyid=public_key_id(ctx.public_key))


class ReceiptBinding(Check[ReceiptContext]):
    name = "receipt.binding"
    summary = "the receipt names this certificate, its root, its size and a leaf of its batch"

    def run(self, ctx: ReceiptContext) -> CheckOutcome:
        receipt, predicate = ctx.receipt(), ctx.statement().predicate
        problems = []
        if receipt.certificate_sha256 != sha256_hex(ctx.certificate_bytes):
            problems.append("the receipt names another certificate (certificate_sha256)")
        if receipt.root.hex() != predicate.forget_set.root:
            problems.append("the receipt's root is not the certificate's forget-set root")
        if receipt.tree_size != predicate.forget_set.size:
            problems.append(
                f"tree size {receipt.tree_size} differs from the certificate's "
                f"{predicate.forget_set.size}"
            )
        if not predicate.first_leaf <= receipt.leaf_index < predicate.forget_set.size:
            problems.append(f"leaf {receipt.leaf_index} is not in this certificate's batch")
        if problems:
            return self.failed("; ".join(problems), leaf_index=receipt.leaf_index)
        return self.passed(
            f"leaf {receipt.leaf_index} of {receipt.tree_size}", leaf_index=receipt.leaf_index
        )


def _claim(ctx: ReceiptContext) -> Any:
    receipt, predicate = ctx.receipt(), ctx.statement().predicate
    for claim in predicate.claims:
        if claim.leaf_index == receipt.leaf_index:
            return claim
    raise CheckUnavailable(f"the certificate makes no claim for leaf {receipt.leaf_index}")


class ReceiptClaim(Check[ReceiptContext]):
    name = "receipt.claim"
    summary = (
        "the certificate makes a claim for this leaf (for the subject's label): a changed "
        "prediction, or a calibrated output"
    )

    def run(self, ctx: ReceiptContext) -> CheckOutcome:
        claim = _claim(ctx)
        if isinstance(claim, CalibratedClaimRecord):
            evidence: dict[str, Any] = {
                "kind": claim.kind,
                "label": claim.label,
                "rival": claim.rival,
                "region": claim.region,
                "upper_margin": claim.upper_margin,
                "source": claim.source,
            }
            said = (
                f"label {claim.label}: calibrated output ({claim.region}, margin over class "
                f"{claim.rival} at most {claim.upper_margin}, targets {claim.source})"
            )
        else:
            evidence = {
                "label": claim.label,
                "target": claim.target,
                "region": claim.region,
                "certified_margin": claim.certified_margin,
            }
            said = (
                f"label {claim.label} -> target {claim.target} ({claim.region}, margin "
                f"{claim.certified_margin})"
            )
        if ctx.inputs.label is not None and claim.label != ctx.inputs.label:
            return self.failed(
                f"the claim is for label {claim.label}, the subject's label is {ctx.inputs.label}",
                **evidence,
            )
        return self.passed(said, **evidence)


class ReceiptInclusion(Check[ReceiptContext]):
    name = "receipt.inclusion"
    summary = "the subject's sample, label and salt hash to a leaf under the committed root"
    requires = frozenset({"sample"})

    def run(self, ctx: ReceiptContext) -> CheckOutcome:
        receipt = ctx.receipt()
        assert ctx.sample is not None and ctx.inputs.label is not None
        try:
            leaf = leaf_hash(ctx.sample, ctx.inputs.label, receipt.salt)
            verify_inclusion(
                leaf, receipt.leaf_index, receipt.tree_size, receipt.inclusion_proof, receipt.root
            )
        except FormatError as exc:
            return self.failed(
                f"the sample is not committed at leaf {receipt.leaf_index}: {exc} (the sample "
                f"must be exactly as submitted, shape {tuple(ctx.sample.shape)} float32)"
            )
        return self.passed(
            f"sample committed at leaf {receipt.leaf_index} under root {receipt.root.hex()[:16]}…"
        )


class ReceiptReplay(Check[ReceiptContext]):
    name = "receipt.replay"
    summary = (
        "the deployed model (the certificate's subject) predicts the claimed target (a calibrated "
        "claim: gives the declared output)"
    )
    requires = frozenset({"sample", "model"})

    def run(self, ctx: ReceiptContext) -> CheckOutcome:
        assert ctx.model_bytes is not None and ctx.sample is not None
        statement, claim = ctx.statement(), _claim(ctx)
        if sha256_hex(ctx.model_bytes) != statement.subject_sha256:
            return self.failed("the model is not the one the certificate names (digest mismatch)")
        try:  # fail-closed: only a model the owner's signature covers is ever run
            verify_envelope(
                Envelope.from_json(ctx.certificate_bytes), ctx.public_key, payload_type=PAYLOAD_TYPE
            )
        except FormatError:
            return self.failed("not run: the certificate's signature does not verify")
        try:
            model = OnnxModel.for_logits(ctx.model_bytes, device=ctx.device)
            logits = model.logits(ctx.sample[None, ...])
            require_finite(logits, "model output")
            for size in BATCH_SIZES[1:]:  # the sample inside serving batches of other sizes
                batch = np.repeat(ctx.sample[None, ...], size, axis=0)
                got = model.logits(batch, batch_size=size)
                require_finite(got, f"model output in a batch of {size}")
                if not np.allclose(got, logits, rtol=BATCH_TOLERANCE, atol=BATCH_TOLERANCE):
                    return self.failed(
                        f"the model answers the sample differently in a batch of {size} rows"
                    )
        except AuditError as exc:
            return self.failed(f"the model cannot run the sample: {exc}")
        if not np.isfinite(logits).all():
            return self.failed("the model's output on the sample is not finite")
        if isinstance(claim, CalibratedClaimRecord):
            return self._calibrated(claim, logits[0].astype(np.float64))
        target = np.array([claim.target], dtype=np.int64)
        margin = float(margins(logits, target)[0])
        need = parse_decimal_string(claim.certified_margin, field="certified_margin")
        predicted = int(logits.argmax(axis=1)[0])
        evidence = {"predicted": predicted, "margin": margin, "certified_margin": need}
        if predicted != claim.target or margin < need - Policy().margin_tolerance:
            return self.failed(
                f"the model predicts {predicted} with margin {margin:.4g}; the claim is "
                f"{claim.target} with margin {need:.4g}",
                **evidence,
            )
        return self.passed(f"predicts {predicted} with margin {margin:.4g}", **evidence)

    def _calibrated(
        self, claim: CalibratedClaimRecord, logits: NDArray[np.float64]
    ) -> CheckOutcome:
        """``replay.calibrated``'s test at the subject's sample: the declared output (within
        :func:`prune.formats.output_tolerance`) and a margin over the rival at most the bound."""
        output = np.asarray(claim.output_values())
        if output.shape != logits.shape:
            return self.failed(f"the claim's output does not have {len(logits)} classes")
        gap = float(np.abs(logits - output).max())
        tol = float(output_tolerance(tuple(output)))
        margin = float(logits[claim.label] - logits[claim.rival])
        bound = claim.margin_bound()
        evidence = {"output_gap": gap, "tolerance": tol, "margin": margin, "upper_margin": bound}
        if gap > tol:
            return self.failed(
                f"the model's output is {gap:.4g} from the declared one (tolerance {tol:.3g})",
                **evidence,
            )
        if margin > bound + Policy().margin_tolerance:
            return self.failed(
                f"the model is more confident than claimed: margin {margin:.4g} over class "
                f"{claim.rival} > {bound:.4g}",
                **evidence,
            )
        return self.passed(
            f"the declared output (gap {gap:.3g}), margin {margin:.4g} <= {bound:.4g}", **evidence
        )


RECEIPT_CHECKS: dict[str, type[Check[ReceiptContext]]] = {
    cls.name: cls
    for cls in (ReceiptCertificate, ReceiptBinding, ReceiptClaim, ReceiptInclusion, ReceiptReplay)
}


def verify_receipt(
    inputs: ReceiptInputs,
    *,
    now: datetime,
    partial: bool = False,
    limits: Limits | None = None,
    device: str = "auto",
) -> VerificationReport:
    """Run the receipt checks. By default the subject's sample is required (fail-closed);
    ``partial`` accepts a check of the receipt alone. ``--model`` is optional."""
    policy = Policy(required_inputs=frozenset() if partial else frozenset({"sample"}))
    ctx = ReceiptContext(inputs, limits=limits or Limits(), device=device)
    outcomes = run_checks(
        [cls() for cls in RECEIPT_CHECKS.values()], ctx, given=inputs.given, policy=policy
    )
    return VerificationReport(
        kind="receipt",
        outcomes=outcomes,
        subject={
            "receipt": str(inputs.receipt),
            "certificate_sha256": sha256_hex(ctx.certificate_bytes),
        },
        settings={"required_inputs": sorted(policy.required_inputs), "device": device},
        created=now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
