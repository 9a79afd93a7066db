"""``python -m threat_models``: run the dishonest-owner adversaries, print spot-check tables."""

from __future__ import annotations

from threat_models.cli import main

main()
