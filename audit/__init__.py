"""Independent verifier for PRUNE unlearning proofs. Never imports owner-side internals to
decide a verdict; only the tiny shared :mod:`prune.formats` (hashing, canonical JSON, Merkle)."""

from __future__ import annotations

__all__: list[str] = []
