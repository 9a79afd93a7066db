"""The dishonest-owner threat model: formal definitions and executable adversaries."""

from __future__ import annotations

__all__: list[str] = []
