"""The dishonest-owner threat model: formal definitions and executable adversaries.

Modules: :mod:`threat_models.model` (actors, goals, assumptions, the threats and the checks that
must catch them), :mod:`threat_models.adversaries` (one executable dishonest owner per behaviour,
and the honest owner), :mod:`threat_models.scenario` (the seeded world they start from),
:mod:`threat_models.auditor` (what the auditor and a data subject run), :mod:`threat_models.matrix`
and :mod:`threat_models.render` (every adversary against the auditor), :mod:`threat_models.leakage`
(threat 11: linkability of requesters) and :mod:`threat_models.sampling` (spot-check miss
probability). Command line: ``python -m threat_models {matrix,sampling}``. Nothing is imported
here, so that ``sampling`` stays light."""

from __future__ import annotations

__all__: list[str] = []
