"""Signature checks: the certificate's DSSE envelope and the OpenSSF model-signing bundle, both
against the public key the auditor was given (never a key found in the proof).

Threat assumption: the owner controls every byte of the proof; only the auditor's copy of the
public key is trusted. Both checks read the in-memory bytes the other checks use, so what is
signed is exactly what is replayed and diffed."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome
from prune.formats import PAYLOAD_TYPE, FormatError, public_key_id, verify_envelope

__all__ = ["CertificateSignature", "ModelSignature"]


class CertificateSignature(Check[VerifyContext]):
    name = "signature.certificate"
    summary = (
        "certificate.json is a DSSE envelope signed with the owner's key (ECDSA P-256 over PAE) "
        "around a well-formed v1 unlearning statement"
    )

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        envelope = ctx.envelope()
        keyid = public_key_id(ctx.public_key)
        try:
            verify_envelope(envelope, ctx.public_key, payload_type=PAYLOAD_TYPE)
        except FormatError as exc:
            return self.failed(str(exc), keyid=keyid, signatures=len(envelope.signatures))
        statement = ctx.statement()  # a signed but malformed statement fails here
        return self.passed(
            f"signed by key {keyid[:16]}…, {len(statement.predicate.claims)} claims",
            keyid=keyid,
            signatures=len(envelope.signatures),
        )


class ModelSignature(Check[VerifyContext]):
    name = "signature.model"
    summary = "model.sig is an OpenSSF model-signing bundle over model.onnx, by the owner's key"

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        from cryptography.hazmat.primitives import serialization
        from model_signing import verifying

        model = ctx.proof_file("model")
        signature = ctx.proof_file("signature")
        pem = ctx.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        chatter = io.StringIO()
        with tempfile.TemporaryDirectory(prefix="audit-sig-") as tmp:
            folder = Path(tmp)
            (folder / "model.onnx").write_bytes(model)
            (folder / "model.sig").write_bytes(signature)
            (folder / "owner.pub").write_bytes(pem)
            config = verifying.Config().use_elliptic_key_verifier(  # type: ignore[no-untyped-call]
                public_key=folder / "owner.pub"
            )
            try:
                with contextlib.redirect_stdout(chatter):
                    config.verify(folder / "model.onnx", folder / "model.sig")
            except Exception as exc:  # model_signing raises ValueError, protobuf and crypto errors
                reason = str(exc).splitlines()[0][:160] if str(exc) else exc.__class__.__name__
                return self.failed(f"model.sig does not verify over model.onnx: {reason}")
        warnings = chatter.getvalue().strip()
        return self.passed(
            "model.sig verifies over model.onnx with the owner's key",
            library_warnings=warnings[:200],
        )
