"""The attack registry: name -> estimator class. New attacks register here, nowhere else."""

from __future__ import annotations

from typing import Any

from audit.errors import InputError
from audit.mia._base import Attack
from audit.mia._cmia import CmiaAttack
from audit.mia._label_only import BoundaryAttack, GapAttack
from audit.mia._lira import LiraAttack
from audit.mia._rmia import RmiaAttack
from audit.mia._shadow import ShadowAttack
from audit.mia._threshold import ConfidenceAttack, EntropyAttack, LossAttack

__all__ = ["ATTACKS", "make_attack"]

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        LossAttack,
        ConfidenceAttack,
        EntropyAttack,
        ShadowAttack,
        LiraAttack,
        RmiaAttack,
        GapAttack,
        BoundaryAttack,
        CmiaAttack,
    )
}


def make_attack(name: str, **params: Any) -> Attack:
    """``ATTACKS[name](**params)`` with a one-line error for unknown names or parameters."""
    if name not in ATTACKS:
        raise InputError(f"unknown attack {name!r} (choose {', '.join(ATTACKS)})")
    try:
        return ATTACKS[name](**params)
    except TypeError as exc:
        raise InputError(f"bad parameters for the {name} attack: {exc}") from exc
