"""Digest checks: the files the auditor holds are the files the certificate names.

Each digest is recomputed by the verifier from the bytes it read; the certificate only supplies
the expected value. (Whether the certificate itself is authentic is ``signature.certificate``.)"""

from __future__ import annotations

from audit.verify._context import VerifyContext
from audit.verify._framework import Check, CheckOutcome
from prune.formats import SUBJECT_NAME, FormatError, patch_parameter_digest, sha256_hex

__all__ = ["ModelDigest", "OriginalDigest", "PatchDigest"]


class ModelDigest(Check[VerifyContext]):
    name = "digest.model"
    summary = "sha256(model.onnx) is the certificate's subject digest"

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        statement = ctx.statement()
        actual = sha256_hex(ctx.proof_file("model"))
        evidence = {"expected": statement.subject_sha256, "actual": actual}
        if statement.subject_name != SUBJECT_NAME:
            return self.failed(
                f"certificate subject is {statement.subject_name[:60]!r}, not {SUBJECT_NAME}",
                **evidence,
            )
        if actual != statement.subject_sha256:
            return self.failed(
                f"model.onnx digest mismatch: sha256 {actual[:16]}…, certificate names "
                f"{statement.subject_sha256[:16]}…",
                **evidence,
            )
        return self.passed(f"sha256 {actual[:16]}…", **evidence)


class OriginalDigest(Check[VerifyContext]):
    name = "digest.original"
    summary = "sha256(--original) is the certificate's original_model digest"
    requires = frozenset({"original"})

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        expected = ctx.predicate.original_model_sha256
        actual = sha256_hex(ctx.original_bytes())
        evidence = {"expected": expected, "actual": actual}
        if actual != expected:
            return self.failed(
                f"original model digest mismatch: sha256 {actual[:16]}…, certificate names "
                f"{expected[:16]}…",
                **evidence,
            )
        if actual == ctx.statement().subject_sha256:
            return self.failed("the 'patched' model is the original model itself", **evidence)
        return self.passed(f"sha256 {actual[:16]}…", **evidence)


class PatchDigest(Check[VerifyContext]):
    name = "digest.patch"
    summary = "the prune/patch/* initializers of model.onnx digest to the certificate's value"

    def run(self, ctx: VerifyContext) -> CheckOutcome:
        expected = ctx.predicate.patch_parameters_sha256
        try:
            actual = patch_parameter_digest(ctx.patched_proto())
        except FormatError as exc:
            return self.failed(f"patch parameters unreadable: {exc}", expected=expected)
        evidence = {"expected": expected, "actual": actual}
        count = sum(
            t.name.startswith("prune/patch/") for t in ctx.patched_proto().graph.initializer
        )
        if count == 0:
            return self.failed("model.onnx has no prune/patch/ parameters", **evidence)
        if actual != expected:
            return self.failed(
                f"patch parameter digest mismatch: {actual[:16]}…, certificate names "
                f"{expected[:16]}…",
                **evidence,
            )
        return self.passed(f"{count} patch tensors, digest {actual[:16]}…", **evidence)
