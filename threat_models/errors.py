"""The one exception root of the threat model package. The CLI turns any
:class:`ThreatModelError` into one line on stderr and exit status 2 (bad input or usage); a matrix
in which an adversary goes uncaught is exit status 1, not an error."""

from __future__ import annotations

__all__ = ["ScenarioError", "ThreatModelError"]


class ThreatModelError(Exception):
    """Root of every expected failure of :mod:`threat_models`; the message is shown as is."""


class ScenarioError(ThreatModelError):
    """A scenario or an adversary's proof could not be built (bad options, an engine failure)."""
