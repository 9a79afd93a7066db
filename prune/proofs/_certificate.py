"""The signed certificate: the in-toto Statement over the patched model, wrapped in a DSSE
envelope signed with the owner's key (docs/FORMATS.md, "Certificate").

What is published: digests of the patched and original models and of the patch parameters, the
forget-set root and size, the method and its parameters, one claim per committed leaf (by leaf
index, never by training-set row), utility numbers, the creation time and a fresh nonce. Floats
become decimal strings so that the signed bytes are the same on every platform."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, get_args

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from prune.claims import CalibratedClaim, Claim
from prune.errors import ProofError
from prune.formats import (
    PAYLOAD_TYPE,
    CalibratedClaimRecord,
    ClaimKind,
    ClaimRecord,
    ClassClaim,
    DualCertificate,
    ForgetSet,
    FormatError,
    Mode,
    Statement,
    UnlearningPredicate,
    decimal_string,
    sign_envelope,
    verify_envelope,
)
from prune.proofs._commitment import Commitment, random_bytes

__all__ = ["build_statement", "claim_records", "issue_certificate", "signable", "utility_numbers"]

NONCE_BYTES = 16


def signable(value: Any) -> Any:
    """``value`` with floats (Python or numpy) turned into decimal strings and numpy integers,
    tuples and arrays into plain ints and lists: ready for canonical JSON."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return decimal_string(float(value))
    if isinstance(value, np.ndarray):
        return [signable(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): signable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [signable(v) for v in value]
    if value is None or isinstance(value, str):
        return value
    raise ProofError(f"cannot put a {type(value).__name__} into the certificate")


def utility_numbers(summary: Mapping[str, Any]) -> dict[str, str]:
    """The accuracy figures of the run summary, as decimal strings."""
    return {
        key: decimal_string(float(value))
        for key, value in summary.items()
        if "accuracy" in key
        and isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
    }


def claim_records(
    claims: Sequence[Claim | CalibratedClaim], *, first_leaf: int
) -> tuple[ClaimKind, ...]:
    """Published claims: ``claims[i]`` (the engine numbers its samples 0..N-1 in commitment
    order) becomes leaf ``first_leaf + i``. ``train_index`` and ``original_prediction`` stay
    private."""
    records: list[ClaimKind] = []
    for i, claim in enumerate(claims):
        if claim.leaf_index != i:
            raise ProofError(
                f"claim {i} is for sample {claim.leaf_index}; claims must follow the forget set order"
            )
        if isinstance(claim, CalibratedClaim):
            records.append(
                CalibratedClaimRecord(
                    leaf_index=first_leaf + i,
                    label=int(claim.label),
                    rival=int(claim.rival),
                    patch=int(claim.patch),
                    upper_margin=decimal_string(claim.upper_margin),
                    output=tuple(decimal_string(v) for v in claim.output),
                    source=claim.source,
                )
            )
            continue
        records.append(
            ClaimRecord(
                leaf_index=first_leaf + i,
                label=int(claim.label),
                target=int(claim.target),
                patch=int(claim.patch),
                certified_margin=decimal_string(claim.certified_margin),
                region=claim.region,
            )
        )
    return tuple(records)


def _rfc3339(now: datetime) -> str:
    if now.tzinfo is None:
        raise ProofError("the certificate time must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_statement(
    *,
    patched_sha256: str,
    original_sha256: str,
    patch_sha256: str,
    commitment: Commitment,
    mode: str,
    forget_class: int | None,
    method: Mapping[str, Any],
    claims: Sequence[Claim | CalibratedClaim],
    summary: Mapping[str, Any],
    class_claim: ClassClaim | None = None,
    now: datetime | None = None,
    rng: np.random.Generator | None = None,
    region_certificate: DualCertificate | None = None,
) -> Statement:
    """The Statement for one batch (with ``class_claim`` for a class suppression); validated
    by re-reading it with the strict v2 reader. ``region_certificate`` describes the dual file
    of the certified claims (None when no claim is certified)."""
    if mode not in get_args(Mode):
        raise ProofError(f"unknown deletion mode {mode!r}; expected samples or class")
    method_doc = signable(method)
    method_doc.setdefault("name", "prune")
    predicate = UnlearningPredicate(
        original_model_sha256=original_sha256,
        patch_parameters_sha256=patch_sha256,
        forget_set=ForgetSet(root=commitment.root_hex, size=commitment.tree.size),
        mode=mode,  # type: ignore[arg-type]  # checked against Mode above
        method=method_doc,
        claims=claim_records(claims, first_leaf=commitment.first_leaf),
        utility=utility_numbers(summary),
        created=_rfc3339(now if now is not None else datetime.now(UTC)),
        nonce=random_bytes(NONCE_BYTES, rng).hex(),
        previous_root=commitment.previous,
        forget_class=None if forget_class is None else int(forget_class),
        region_certificate=region_certificate,
        class_claim=class_claim,
    )
    statement = Statement(subject_sha256=patched_sha256, predicate=predicate)
    try:
        Statement.from_json(statement.to_json())
    except FormatError as exc:
        raise ProofError(f"refusing to sign an invalid certificate: {exc}") from exc
    return statement


def issue_certificate(statement: Statement, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DSSE envelope bytes (canonical JSON) of ``statement`` signed with ``private_key``,
    checked against the key's public half before it is returned."""
    try:
        envelope = sign_envelope(statement.to_json(), PAYLOAD_TYPE, private_key)
        verify_envelope(envelope, private_key.public_key(), payload_type=PAYLOAD_TYPE)
    except FormatError as exc:
        raise ProofError(f"cannot sign the certificate: {exc}") from exc
    return envelope.to_json()
