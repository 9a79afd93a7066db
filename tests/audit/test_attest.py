from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from audit.attest import (
    CheckVerdict,
    generate_auditor_key,
    load_auditor_private_key,
    load_public_key,
    sign_attestation,
    verify_attestation,
)
from audit.errors import InputError, VerificationError
from prune.formats import PAYLOAD_TYPE, canonical_json, sign_envelope

MODEL = "a" * 64
REPORT = "b" * 64


def _sign(key: ec.EllipticCurvePrivateKey) -> bytes:
    return sign_attestation(
        model_sha256=MODEL,
        verdict="verified",
        checks=[CheckVerdict("replay.claims", "pass", "10/10 claims hold")],
        certificate_sha256="c" * 64,
        report_sha256=REPORT,
        owner_key_id="d" * 64,
        private_key=key,
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        nonce="0" * 32,
    )


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_round_trip(key: ec.EllipticCurvePrivateKey) -> None:
    att = verify_attestation(_sign(key), key.public_key(), model_sha256=MODEL, report_sha256=REPORT)
    assert att.verdict == "verified"
    assert att.checks[0].name == "replay.claims"
    assert att.created == "2026-01-02T03:04:05Z"


def test_wrong_key_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(VerificationError, match="no signature by the given public key"):
        verify_attestation(_sign(key), other.public_key())


def test_model_and_report_digest_mismatch(key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(VerificationError, match="model digest"):
        verify_attestation(_sign(key), key.public_key(), model_sha256="e" * 64)
    with pytest.raises(VerificationError, match="report digest"):
        verify_attestation(_sign(key), key.public_key(), report_sha256="e" * 64)


def test_verdict_edited_after_signing(key: ec.EllipticCurvePrivateKey) -> None:
    env = json.loads(_sign(key))
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["verdict"] = "failed"
    env["payload"] = base64.b64encode(canonical_json(statement)).decode()
    with pytest.raises(VerificationError, match="does not verify"):
        verify_attestation(canonical_json(env), key.public_key())


def test_byte_flip_and_truncation(key: ec.EllipticCurvePrivateKey) -> None:
    data = bytearray(_sign(key))
    data[len(data) // 2] ^= 0x01
    with pytest.raises(VerificationError):
        verify_attestation(bytes(data), key.public_key())
    with pytest.raises(VerificationError):
        verify_attestation(_sign(key)[:-10], key.public_key())


def test_unknown_version_rejected(key: ec.EllipticCurvePrivateKey) -> None:
    env = json.loads(_sign(key))
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["version"] = 2
    forged = sign_envelope(canonical_json(statement), PAYLOAD_TYPE, key).to_json()
    with pytest.raises(VerificationError, match="unsupported predicate version"):
        verify_attestation(forged, key.public_key())


def test_keygen_files(tmp_path: Path) -> None:
    key_path, pub_path = generate_auditor_key(tmp_path / "k", passphrase=b"pw")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    with pytest.raises(InputError, match="wrong passphrase"):
        load_auditor_private_key(key_path, passphrase=b"nope")
    with pytest.raises(InputError, match="encrypted"):
        load_auditor_private_key(key_path)
    key = load_auditor_private_key(key_path, passphrase=b"pw")
    assert load_public_key(pub_path).public_numbers() == key.public_key().public_numbers()
    with pytest.raises(InputError, match="refusing to overwrite"):
        generate_auditor_key(tmp_path / "k")
    (tmp_path / "bad.pub").write_text("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n")
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(tmp_path / "bad.pub")
