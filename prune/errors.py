"""The one exception root of the owner side. The CLI turns any :class:`PruneError` into one line on
stderr and exit status 2 (bad input or usage)."""

from __future__ import annotations

__all__ = ["DataError", "ModelImportError", "PatchError", "ProofError", "PruneError"]


class PruneError(Exception):
    """Root of every expected owner-side failure; the message is shown to the user as is."""


class DataError(PruneError):
    """A data file or a forget request is malformed."""


class ModelImportError(PruneError):
    """An ONNX model cannot be read or cannot be patched at the requested cut."""


class PatchError(PruneError):
    """A patch could not be computed or certified."""


class ProofError(PruneError):
    """Keys, certificates, commitments or signatures cannot be produced or read."""
