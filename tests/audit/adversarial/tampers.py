"""Named adversarial fixtures: each turns a copy of the honest proof (or the auditor's view of
it) into something the verifier must reject, and names the check that must fail and the words
its message must contain. "Damaged" adversaries change files after signing; "dishonest" ones
are built by an owner with the real key (the owner can sign anything), so only the verifier's
own measurements can catch them.

The threat-model engineer maps threats onto these names; keep them stable."""

from __future__ import annotations

from tests.audit.adversarial import damaged, dishonest
from tests.audit.adversarial.registry import (
    ADVERSARIES,
    Adversary,
    Tampered,
    edit_certificate,
    flip_byte,
    payload_of,
    resign_model,
)

__all__ = [
    "ADVERSARIES",
    "Adversary",
    "Tampered",
    "damaged",
    "dishonest",
    "edit_certificate",
    "flip_byte",
    "payload_of",
    "resign_model",
]
