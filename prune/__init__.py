"""PRUNE owner side: certified unlearning by neural-network repair, signed proofs."""

from __future__ import annotations

__all__: list[str] = []
