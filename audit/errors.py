"""The one exception root of the verifier. :class:`VerificationError` means the evidence was
checked and found wrong (exit 1); :class:`InputError` means the auditor's input is unusable
(exit 2). Messages are shown to the user as is, on one line."""

from __future__ import annotations

__all__ = ["AuditError", "InputError", "VerificationError"]


class AuditError(Exception):
    """Root of every expected verifier-side failure."""


class VerificationError(AuditError):
    """A check ran and the evidence does not hold (signature, digest, claim, ...)."""


class InputError(AuditError):
    """Missing, unreadable, oversized or malformed input; usage errors."""
