"""Executable dishonest owners, one per behaviour of :data:`threat_models.model.THREATS` (and
per variant where a threat has several), plus the honest owner as the control.

``ADVERSARIES[name]`` is a class with ``threat`` (a :class:`~threat_models.model.Threat`, or
``None`` for the honest owner) and ``build(scenario, out) -> DishonestProof``: a complete proof
folder signed with the owner's real key, plus what the auditor and one data subject are given.
"""

from __future__ import annotations

from threat_models.adversaries._band import WideBand
from threat_models.adversaries._base import (
    Adversary,
    AuditorInputs,
    DishonestProof,
    SubjectInputs,
)
from threat_models.adversaries._certificates import (
    Equivocation,
    ForgedOtherForgetSet,
    ForgedOtherModel,
    ForgedSignature,
    ReplayedCertificate,
)
from threat_models.adversaries._class import (
    ClassAsSamples,
    ClassExactInputFilter,
    ClassHairMargin,
    ClassNanTarget,
    ClassPartial,
    ClassRegionCap,
    ClassRegionOnly,
    ClassResidual,
    ClassSabotage,
    NarrowBox,
)
from threat_models.adversaries._patches import (
    ExactInputFilter,
    Partial,
    Sabotage,
    StructureTrigger,
    StructureWeights,
)
from threat_models.adversaries._residual import CalibratedZeroPush, ResidualMemorisation
from threat_models.adversaries._serving import HonestOwner, NoOp, Rollback, Substitution
from threat_models.adversaries._shared import SharedRegion
from threat_models.adversaries._soundness import (
    BatchCoupledGate,
    BatchCoupledOriginal,
    BatchSizeSwitch,
    ConcatOriginal,
    HairMarginPointOnly,
    NanTarget,
    NanTopClass,
    RegionCap,
    TriggerBackdoor,
)
from threat_models.adversaries._tail import BatchSizeTail, DuplicateLabelTail, SecondBestTail

__all__ = [
    "ADVERSARIES",
    "HONEST",
    "Adversary",
    "AuditorInputs",
    "DishonestProof",
    "SubjectInputs",
    "make_adversary",
]

HONEST = HonestOwner.name

ADVERSARIES: dict[str, type[Adversary]] = {
    cls.name: cls
    for cls in (
        HonestOwner,
        NoOp,
        Substitution,
        ExactInputFilter,
        Partial,
        ForgedSignature,
        ForgedOtherModel,
        ForgedOtherForgetSet,
        ReplayedCertificate,
        Equivocation,
        StructureWeights,
        StructureTrigger,
        Sabotage,
        ResidualMemorisation,
        CalibratedZeroPush,
        Rollback,
        BatchCoupledGate,
        BatchSizeSwitch,
        BatchCoupledOriginal,
        NanTarget,
        NanTopClass,
        RegionCap,
        TriggerBackdoor,
        HairMarginPointOnly,
        ConcatOriginal,
        NarrowBox,
        ClassExactInputFilter,
        ClassPartial,
        ClassSabotage,
        ClassResidual,
        ClassNanTarget,
        ClassRegionCap,
        ClassHairMargin,
        ClassRegionOnly,
        ClassAsSamples,
        DuplicateLabelTail,
        SecondBestTail,
        BatchSizeTail,
        SharedRegion,
        WideBand,
    )
}


def make_adversary(name: str) -> Adversary:
    """The adversary registered under ``name``; ``KeyError`` names the known ones."""
    try:
        return ADVERSARIES[name]()
    except KeyError:
        raise KeyError(f"unknown adversary {name!r}; known: {', '.join(ADVERSARIES)}") from None
