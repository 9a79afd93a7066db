"""Exceptions of the shared format kernel.

:mod:`prune.formats` is imported by both the owner side and the verifier, so it has its own small
root instead of :class:`prune.errors.PruneError`; each side converts it to its own root
(owner: ``ProofError``; verifier: ``InputError`` or ``VerificationError``)."""

from __future__ import annotations

__all__ = ["FormatError", "MalformedError", "ProofCheckError"]


class FormatError(Exception):
    """Root of every failure raised by :mod:`prune.formats`; the message is one actionable line."""


class MalformedError(FormatError):
    """Bytes that do not parse as the documented format: non-canonical JSON, a missing or extra
    field, a wrong type, an unknown version or type URI, a bad encoding."""


class ProofCheckError(FormatError):
    """A well-formed proof that does not verify: Merkle inclusion or consistency, DSSE
    signature, receipt opening. Deliberately says *that* it failed, not which byte was wrong."""
