"""DSSE envelopes: PAE bytes, round trips, wrong key / tampering / strict reading."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from prune.formats import (
    PAYLOAD_TYPE,
    DsseSignature,
    Envelope,
    MalformedError,
    ProofCheckError,
    dsse_pae,
    public_key_id,
    sign_envelope,
    verify_envelope,
)


def test_pae_matches_the_dsse_spec_example() -> None:
    # the worked example of the DSSE v1 protocol document
    assert dsse_pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert dsse_pae("", b"") == b"DSSEv1 0  0 "


def test_sign_verify_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    envelope = sign_envelope(b'{"a":1}', PAYLOAD_TYPE, key)
    assert envelope.signatures[0].keyid == public_key_id(key.public_key())
    again = Envelope.from_json(envelope.to_json())
    assert again == envelope
    assert verify_envelope(again, key.public_key(), payload_type=PAYLOAD_TYPE) == b'{"a":1}'


def test_wrong_key_and_tampering_fail() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    envelope = sign_envelope(b"payload", PAYLOAD_TYPE, key)
    with pytest.raises(ProofCheckError, match="no signature by the given public key"):
        verify_envelope(envelope, other.public_key(), payload_type=PAYLOAD_TYPE)
    forged_keyid = Envelope(
        envelope.payload,
        envelope.payload_type,
        (DsseSignature(public_key_id(other.public_key()), envelope.signatures[0].sig),),
    )
    with pytest.raises(ProofCheckError, match="does not verify"):
        verify_envelope(forged_keyid, other.public_key(), payload_type=PAYLOAD_TYPE)
    tampered = Envelope(b"payloae", envelope.payload_type, envelope.signatures)
    with pytest.raises(ProofCheckError, match="does not verify"):
        verify_envelope(tampered, key.public_key(), payload_type=PAYLOAD_TYPE)
    retyped = Envelope(envelope.payload, "text/plain", envelope.signatures)
    with pytest.raises(ProofCheckError, match="payloadType"):
        verify_envelope(retyped, key.public_key(), payload_type=PAYLOAD_TYPE)


def test_other_curves_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(MalformedError, match="P-256"):
        sign_envelope(b"x", PAYLOAD_TYPE, key)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("signatures"),
        lambda d: d.update(extra=1),
        lambda d: d.update(signatures=[]),
        lambda d: d.update(payload="not base64!"),
        lambda d: d["signatures"][0].update(sig="@@"),
        lambda d: d["signatures"][0].pop("keyid"),
        lambda d: d.update(payloadType=3),
    ],
)
def test_strict_reader(mutate: object) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    doc = json.loads(sign_envelope(b"p", PAYLOAD_TYPE, key).to_json())
    mutate(doc)  # type: ignore[operator]
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(MalformedError):
        Envelope.from_json(data)


def test_truncated_envelope_is_malformed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    data = sign_envelope(b"p", PAYLOAD_TYPE, key).to_json()
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(MalformedError):
            Envelope.from_json(data[:cut])


def test_payload_is_standard_base64() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    doc = json.loads(sign_envelope(b"\xff\xfe", PAYLOAD_TYPE, key).to_json())
    assert base64.b64decode(doc["payload"]) == b"\xff\xfe"
