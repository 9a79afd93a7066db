"""The certificate's Statement and predicate: golden bytes, round trip, strict reader.

Golden files (tests/prune/golden/) pin the v2 encoding; regenerate with
``python -m pytest tests/prune --update-golden`` and review the diff. ``certificate-v1.json`` is
a signed v1 envelope made by an earlier release: its signature must keep verifying, and the v2
reader must refuse its predicate by name (v1 region claims carry no certificate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from prune.formats import (
    CLAIM_KINDS,
    PAYLOAD_TYPE,
    ClaimRecord,
    DualCertificate,
    Envelope,
    ForgetSet,
    MalformedError,
    PreviousBatch,
    Receipt,
    Statement,
    UnlearningPredicate,
    canonical_json,
    sign_envelope,
    verify_envelope,
)

GOLDEN = Path(__file__).parent / "golden"
D = "ab" * 32


def make_predicate(**overrides: Any) -> UnlearningPredicate:
    fields: dict[str, Any] = {
        "original_model_sha256": "01" * 32,
        "patch_parameters_sha256": "02" * 32,
        "forget_set": ForgetSet(root="03" * 32, size=3),
        "mode": "samples",
        "method": {
            "name": "prune",
            "solver": "lp",
            "gate": "activation",
            "n": 1000,
            "margin": "0.5",
        },
        "claims": tuple(
            ClaimRecord(
                leaf_index=i,
                label=i,
                target=i + 1,
                patch=0,
                certified_margin="0.5",
                region="certified",
            )
            for i in range(1, 3)
        ),
        "utility": {"test_accuracy_before": "0.97", "test_accuracy_after": "0.965"},
        "created": "2026-01-02T03:04:05Z",
        "nonce": "0f" * 16,
        "previous_root": PreviousBatch(root="04" * 32, size=1, consistency_proof=("05" * 32,)),
        "region_certificate": DualCertificate(sha256="07" * 32, rows=18, hidden=32),
    }
    fields.update(overrides)
    return UnlearningPredicate(**fields)


def make_statement(**overrides: Any) -> Statement:
    return Statement(subject_sha256="06" * 32, predicate=make_predicate(**overrides))


def check_golden(name: str, data: bytes, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.write_bytes(data)
    assert path.read_bytes() == data, f"{name} changed; rerun with --update-golden if intended"


def test_statement_golden(update_golden: bool) -> None:
    data = make_statement().to_json()
    check_golden("statement-v2.json", data, update_golden)
    assert Statement.from_json(data) == make_statement()


def test_receipt_golden(update_golden: bool) -> None:
    receipt = Receipt(
        leaf_index=2,
        tree_size=3,
        salt=bytes(range(16)),
        inclusion_proof=(b"\x07" * 32,),
        root=b"\x03" * 32,
        certificate_sha256="08" * 32,
    )
    check_golden("receipt-v1.json", receipt.to_json(), update_golden)
    assert Receipt.from_json(receipt.to_json()) == receipt


def test_v1_certificate_signature_verifies_and_its_predicate_is_refused() -> None:
    public = serialization.load_pem_public_key((GOLDEN / "certificate-v1.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    envelope = Envelope.from_json((GOLDEN / "certificate-v1.json").read_bytes())
    payload = verify_envelope(envelope, public, payload_type=PAYLOAD_TYPE)
    doc = json.loads(payload)
    doc["predicateType"] = "https://prune-audit.dev/unlearning/v2"  # only the version is left
    with pytest.raises(MalformedError, match="version 1 is no longer accepted"):
        Statement.from_json(canonical_json(doc))
    with pytest.raises(MalformedError, match="predicateType"):
        Statement.from_json(payload)


def test_signed_v2_certificate_from_an_earlier_run_still_verifies(update_golden: bool) -> None:
    # kept across --update-golden: an old signature that new code must still verify is the point;
    # delete both files by hand to mint new ones after an intended format change
    if update_golden and not (GOLDEN / "certificate-v2.json").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        envelope = sign_envelope(make_statement().to_json(), PAYLOAD_TYPE, key)
        (GOLDEN / "certificate-v2.json").write_bytes(envelope.to_json())
        (GOLDEN / "certificate-v2.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    public = serialization.load_pem_public_key((GOLDEN / "certificate-v2.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    envelope = Envelope.from_json((GOLDEN / "certificate-v2.json").read_bytes())
    payload = verify_envelope(envelope, public, payload_type=PAYLOAD_TYPE)
    assert Statement.from_json(payload) == make_statement()


def test_flip_claim_obligations() -> None:
    claim = ClaimRecord(
        leaf_index=0, label=1, target=2, patch=4, certified_margin="0.5", region="certified"
    )
    ob = claim.obligations(4)
    assert ob.patch == 4 and ob.scope == "patch"
    assert ob.coeffs.tolist() == [[1, 0, -1, 0], [0, 1, -1, 0], [0, 0, -1, 1]]
    assert ob.bound.tolist() == [-0.5, -0.5, -0.5]
    assert set(CLAIM_KINDS) >= {"flip"}


def test_class_mode_and_first_batch() -> None:
    claims = tuple(ClaimRecord(i, 5, 3, i, "0.25", "point-only") for i in range(2))
    statement = make_statement(
        mode="class",
        forget_class=5,
        previous_root=None,
        forget_set=ForgetSet(root=D, size=2),
        claims=claims,
    )
    assert Statement.from_json(statement.to_json()) == statement


def _doc() -> dict[str, Any]:
    return json.loads(make_statement().to_json())


def _encode(doc: dict[str, Any]) -> bytes:
    return canonical_json(doc)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(_type="https://in-toto.io/Statement/v0.1"), "_type"),
        (
            lambda d: d.update(predicateType="https://prune-audit.dev/unlearning/v1"),
            "predicateType",
        ),
        (lambda d: d["predicate"].update(version=3), "unknown version"),
        (lambda d: d["predicate"].update(version=1), "version 1 is no longer accepted"),
        (lambda d: d["predicate"]["claims"][0].update(kind="oracle"), "unknown claim kind"),
        (lambda d: d["predicate"]["claims"][0].pop("kind"), "unknown claim kind"),
        (lambda d: d["predicate"].pop("region_certificate"), "missing region_certificate"),
        (lambda d: d["predicate"]["region_certificate"].update(path="../x"), "path"),
        (lambda d: d["predicate"]["region_certificate"].update(format="npy"), "format"),
        (lambda d: d["predicate"].pop("version"), "unknown version"),
        (lambda d: d["predicate"].update(surprise=1), "unknown field"),
        (lambda d: d["predicate"].pop("nonce"), "missing nonce"),
        (lambda d: d["predicate"].update(nonce="00"), "nonce"),
        (lambda d: d["predicate"].update(created="2026-01-02 03:04:05"), "created"),
        (lambda d: d["predicate"].update(mode="everything"), "mode"),
        (lambda d: d["predicate"].update(mode="class"), "forget_class"),
        (lambda d: d["predicate"]["claims"].pop(), "claims for leaves"),
        (lambda d: d["predicate"]["claims"][0].update(leaf_index=0), "leaf_index"),
        (lambda d: d["predicate"]["claims"][0].update(train_index=7), "unknown field"),
        (lambda d: d["predicate"]["claims"][0].update(target=1), "target equals label"),
        (
            lambda d: d["predicate"]["claims"][0].update(certified_margin="0.50"),
            "canonical decimal",
        ),
        (lambda d: d["predicate"]["claims"][0].update(region="somewhere"), "region"),
        (lambda d: d["predicate"]["utility"].update(x="high"), "decimal"),
        (lambda d: d["predicate"]["forget_set"].update(encoding="raw"), "encoding"),
        (lambda d: d["predicate"]["forget_set"].update(root="AB" * 32), "digest"),
        (lambda d: d["predicate"]["previous_root"].update(size=3), "previous_root.size"),
        (lambda d: d["predicate"]["method"].pop("name"), "method.name"),
        (lambda d: d["subject"].append(d["subject"][0]), "one subject"),
    ],
)
def test_strict_reader_rejects(mutate: Any, message: str) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(MalformedError, match=message):
        Statement.from_json(_encode(doc))


def test_non_canonical_payload_is_rejected() -> None:
    data = make_statement().to_json()
    pretty = json.dumps(json.loads(data), indent=1, sort_keys=True).encode()
    with pytest.raises(MalformedError, match="canonical"):
        Statement.from_json(pretty)
    for cut in (1, len(data) // 3, len(data) - 1):
        with pytest.raises(MalformedError):
            Statement.from_json(data[:cut])
