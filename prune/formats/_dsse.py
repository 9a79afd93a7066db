"""DSSE v1 envelopes (https://github.com/secure-systems-lab/dsse) signed with ECDSA P-256.

The signature covers ``PAE(payloadType, payload)``, never the JSON around it, so the envelope's
own encoding does not matter for security; we still write it as canonical JSON and read it
strictly (exact keys, strict base64) so that an altered file is rejected rather than repaired.
``keyid`` is the SHA-256 (hex) of the signer's DER SubjectPublicKeyInfo. Verification is
fail-closed and opaque: one :class:`ProofCheckError` for every bad signature."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from prune.formats._canonical import canonical_json, parse_canonical_json
from prune.formats.errors import MalformedError, ProofCheckError

__all__ = [
    "DsseSignature",
    "Envelope",
    "dsse_pae",
    "public_key_id",
    "sign_envelope",
    "verify_envelope",
]

_CURVE = "secp256r1"


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` with decimal ASCII lengths."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def public_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 hex of the DER SubjectPublicKeyInfo: the ``keyid`` of our signatures."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _b64decode(text: Any, field: str) -> bytes:
    if not isinstance(text, str):
        raise MalformedError(f"DSSE envelope: {field} must be a base64 string")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedError(f"DSSE envelope: {field} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        # non-zero unused low bits or odd padding: another spelling of the same bytes would
        # change the file's digest without changing what verifies (a malleable certificate)
        raise MalformedError(f"DSSE envelope: {field} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class DsseSignature:
    """One signature: ``sig`` is a DER-encoded ECDSA signature over the PAE."""

    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope. Round trip: ``Envelope.from_json(e.to_json()) == e``."""

    payload: bytes
    payload_type: str
    signatures: tuple[DsseSignature, ...]

    def to_json(self) -> bytes:
        return canonical_json(
            {
                "payload": _b64encode(self.payload),
                "payloadType": self.payload_type,
                "signatures": [
                    {"keyid": s.keyid, "sig": _b64encode(s.sig)} for s in self.signatures
                ],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        """Strict reader: canonical JSON with exactly the DSSE keys, at least one signature."""
        doc = parse_canonical_json(data)
        if not isinstance(doc, dict) or set(doc) != {"payload", "payloadType", "signatures"}:
            raise MalformedError(
                "DSSE envelope: expected exactly payload, payloadType and signatures"
            )
        if not isinstance(doc["payloadType"], str):
            raise MalformedError("DSSE envelope: payloadType must be a string")
        raw_sigs = doc["signatures"]
        if not isinstance(raw_sigs, list) or not raw_sigs:
            raise MalformedError("DSSE envelope: signatures must be a non-empty list")
        signatures = []
        for item in raw_sigs:
            if not isinstance(item, dict) or set(item) != {"keyid", "sig"}:
                raise MalformedError("DSSE envelope: each signature needs exactly keyid and sig")
            if not isinstance(item["keyid"], str):
                raise MalformedError("DSSE envelope: keyid must be a string")
            signatures.append(DsseSignature(item["keyid"], _b64decode(item["sig"], "sig")))
        return cls(
            payload=_b64decode(doc["payload"], "payload"),
            payload_type=doc["payloadType"],
            signatures=tuple(signatures),
        )


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        raise MalformedError("DSSE: only ECDSA P-256 keys are supported")
    if key.curve.name != _CURVE:
        raise MalformedError(f"DSSE: key is on {key.curve.name}; ECDSA P-256 is required")


def sign_envelope(
    payload: bytes, payload_type: str, private_key: ec.EllipticCurvePrivateKey
) -> Envelope:
    """Sign ``payload`` with ECDSA P-256 / SHA-256 over its PAE; one signature."""
    _check_curve(private_key)
    sig = private_key.sign(dsse_pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
    keyid = public_key_id(private_key.public_key())
    return Envelope(payload, payload_type, (DsseSignature(keyid, sig),))


def verify_envelope(
    envelope: Envelope, public_key: ec.EllipticCurvePublicKey, *, payload_type: str
) -> bytes:
    """Return the payload if a signature with ``public_key``'s keyid verifies over the PAE and
    the payload type is ``payload_type``; raise :class:`ProofCheckError` otherwise."""
    _check_curve(public_key)
    if envelope.payload_type != payload_type:
        raise ProofCheckError(
            f"DSSE envelope: payloadType {envelope.payload_type[:60]!r}, expected {payload_type!r}"
        )
    keyid = public_key_id(public_key)
    candidates = [s for s in envelope.signatures if s.keyid == keyid]
    if not candidates:
        raise ProofCheckError("DSSE envelope: no signature by the given public key")
    pae = dsse_pae(envelope.payload_type, envelope.payload)
    for signature in candidates:
        try:
            public_key.verify(signature.sig, pae, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return envelope.payload
    raise ProofCheckError("DSSE envelope: signature does not verify with the given public key")
