"""The auditor's own signed statement about an audit: an in-toto Statement v1 in a DSSE envelope,
signed with the *auditor's* key, so that a third party can check who audited what and with which
verdicts without trusting the file it was handed.

Subject: the patched model (``model.onnx``, SHA-256). Predicate type
``https://prune-audit.dev/audit/v1``, predicate version 1:
``verdict`` (``verified`` / ``failed``), ``checks`` (name, status, detail), digests of the owner's
certificate and of the report JSON, the owner key id, the tool version, ``created`` (RFC 3339 UTC)
and a fresh ``nonce``. Readers reject unknown versions and fields."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.errors import InputError, VerificationError
from audit.proof import Limits, read_bounded
from audit.proof import load_public_key as _load_public_key
from prune.formats import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    Envelope,
    FormatError,
    PublishError,
    canonical_json,
    parse_canonical_json,
    public_key_id,
    publish_exclusive,
    sign_envelope,
    verify_envelope,
)

__all__ = [
    "ATTESTATION_PREDICATE_TYPE",
    "Attestation",
    "CheckVerdict",
    "generate_auditor_key",
    "load_auditor_private_key",
    "load_public_key",
    "sign_attestation",
    "verify_attestation",
]

ATTESTATION_PREDICATE_TYPE = "https://prune-audit.dev/audit/v1"
_VERSION = 1
_PREDICATE_KEYS = {
    "version",
    "verdict",
    "checks",
    "certificate",
    "report",
    "owner_key",
    "tool",
    "created",
    "nonce",
}


@dataclass(frozen=True)
class CheckVerdict:
    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class Attestation:
    """The verified content of an attestation (returned only after the signature checked)."""

    model_sha256: str
    verdict: str
    checks: tuple[CheckVerdict, ...]
    certificate_sha256: str
    report_sha256: str
    owner_key_id: str
    auditor_key_id: str
    tool_version: str
    created: str
    nonce: str


def _tool_version() -> str:
    try:
        return version("prune-audit")
    except PackageNotFoundError:  # running from a source tree without installation
        return "unknown"


def generate_auditor_key(out: Path, *, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write ``auditor.key`` (PKCS#8 PEM, mode 0600, encrypted when a passphrase is given) and
    ``auditor.pub``. Refuses to overwrite an existing key."""
    key_path, pub_path = out / "auditor.key", out / "auditor.pub"
    if os.path.lexists(key_path) or os.path.lexists(pub_path):
        raise InputError(f"{out} already holds an auditor key; refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        publish_exclusive(out, [("auditor.key", pem, 0o600), ("auditor.pub", public, 0o644)])
    except PublishError as exc:
        raise InputError(str(exc)) from None
    except OSError as exc:
        raise InputError(f"cannot write keys to {out}: {exc.strerror or exc}") from None
    return key_path, pub_path


def load_auditor_private_key(
    path: Path, *, passphrase: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Load the auditor's ECDSA P-256 private key; the passphrase defaults to the environment
    variable ``AUDIT_KEY_PASSPHRASE``."""
    if passphrase is None and os.environ.get("AUDIT_KEY_PASSPHRASE"):
        passphrase = os.environ["AUDIT_KEY_PASSPHRASE"].encode()
    data = read_bounded(path, Limits().key_bytes, what="auditor key", owner=False)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        raise InputError(f"auditor key {path} is encrypted; set AUDIT_KEY_PASSPHRASE") from exc
    except ValueError as exc:
        raise InputError(
            f"cannot load auditor key {path}: corrupt PEM or wrong passphrase"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InputError(f"auditor key {path} is not an ECDSA P-256 key")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load an ECDSA P-256 public key (PEM SubjectPublicKeyInfo), size-bounded like every key the
    verifier reads (:func:`audit.proof.load_public_key`)."""
    return _load_public_key(path, limits=Limits())


def sign_attestation(
    *,
    model_sha256: str,
    verdict: str,
    checks: Sequence[CheckVerdict],
    certificate_sha256: str,
    report_sha256: str,
    owner_key_id: str,
    private_key: ec.EllipticCurvePrivateKey,
    now: datetime | None = None,
    nonce: str | None = None,
) -> bytes:
    """Return the DSSE envelope bytes (canonical JSON) of a fresh attestation."""
    if verdict not in {"verified", "failed"}:
        raise ValueError("verdict must be 'verified' or 'failed'")
    if not checks:
        raise ValueError("an attestation must list the checks it attests")
    created = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": "model.onnx", "digest": {"sha256": model_sha256}}],
        "predicateType": ATTESTATION_PREDICATE_TYPE,
        "predicate": {
            "version": _VERSION,
            "verdict": verdict,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in checks],
            "certificate": {"sha256": certificate_sha256},
            "report": {"sha256": report_sha256},
            "owner_key": {"keyid": owner_key_id},
            "tool": {"name": "prune-audit", "version": _tool_version()},
            "created": created,
            "nonce": nonce or secrets.token_hex(16),
        },
    }
    return sign_envelope(canonical_json(statement), PAYLOAD_TYPE, private_key).to_json()


def _expect(doc: Any, key: str, kind: type) -> Any:
    value = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(value, kind):
        raise VerificationError(f"attestation: field {key!r} is missing or not a {kind.__name__}")
    return value


def verify_attestation(
    data: bytes,
    auditor_key: ec.EllipticCurvePublicKey,
    *,
    model_sha256: str | None = None,
    report_sha256: str | None = None,
) -> Attestation:
    """Check the signature with the auditor's public key, the schema and version, and the optional
    model / report digests. Fail-closed: returns the content or raises :class:`VerificationError`."""
    try:
        payload = verify_envelope(Envelope.from_json(data), auditor_key, payload_type=PAYLOAD_TYPE)
        doc = parse_canonical_json(payload)
    except FormatError as exc:
        raise VerificationError(f"attestation: {exc}") from exc
    if _expect(doc, "_type", str) != STATEMENT_TYPE:
        raise VerificationError("attestation: not an in-toto Statement v1")
    if _expect(doc, "predicateType", str) != ATTESTATION_PREDICATE_TYPE:
        raise VerificationError("attestation: unknown predicate type")
    predicate = _expect(doc, "predicate", dict)
    if predicate.get("version") != _VERSION:
        raise VerificationError(
            f"attestation: unsupported predicate version {predicate.get('version')!r}"
        )
    if set(predicate) != _PREDICATE_KEYS:
        raise VerificationError("attestation: unexpected or missing predicate fields")
    subjects = _expect(doc, "subject", list)
    if len(subjects) != 1 or not isinstance(subjects[0], dict):
        raise VerificationError("attestation: exactly one subject expected")
    subject_digest = _expect(_expect(subjects[0], "digest", dict), "sha256", str)
    if model_sha256 is not None and subject_digest != model_sha256:
        raise VerificationError("attestation: model digest does not match the attested model")
    report_digest = _expect(_expect(predicate, "report", dict), "sha256", str)
    if report_sha256 is not None and report_digest != report_sha256:
        raise VerificationError("attestation: report digest does not match the attested report")
    checks = tuple(
        CheckVerdict(_expect(c, "name", str), _expect(c, "status", str), _expect(c, "detail", str))
        for c in _expect(predicate, "checks", list)
    )
    verdict = _expect(predicate, "verdict", str)
    if verdict not in {"verified", "failed"} or not checks:
        raise VerificationError("attestation: verdict or checks malformed")
    return Attestation(
        model_sha256=subject_digest,
        verdict=verdict,
        checks=checks,
        certificate_sha256=_expect(_expect(predicate, "certificate", dict), "sha256", str),
        report_sha256=report_digest,
        owner_key_id=_expect(_expect(predicate, "owner_key", dict), "keyid", str),
        auditor_key_id=public_key_id(auditor_key),
        tool_version=_expect(_expect(predicate, "tool", dict), "version", str),
        created=_expect(predicate, "created", str),
        nonce=_expect(predicate, "nonce", str),
    )
