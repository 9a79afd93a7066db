"""Claim kinds of the v2 certificate and their *obligations* (docs/FORMATS.md, "Claims").

Every claim in a v2 predicate carries ``"kind"``; :data:`CLAIM_KINDS` maps a kind to the class
that reads it. A reader rejects a kind it does not know (fail-closed: an unknown kind could carry
a weaker promise than the verifier assumes).

A claim kind states what it promises as **obligations**: rows ``(coeffs, bound)`` meaning

    max over the claim's region of  coeffs . patched_logits(x)  <=  bound

(:class:`Obligations`). The verifier's region certificate check is generic over them: it proves
every row with the owner's dual multipliers, so a new kind only supplies its rows and never
writes duality code. ``scope`` names the region: ``"patch"`` is the linear region of the claim's
patch (the activation pattern the patch's gate stores).

Adding a kind: a frozen dataclass with ``kind: ClassVar[str]``, ``leaf_index``, ``region``,
``to_dict``, ``from_dict`` and ``obligations``; register it with :func:`register_claim_kind`; a
FORMATS.md section; golden and tampered-claim tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, get_args

import numpy as np
from numpy.typing import NDArray

from prune.formats._canonical import parse_decimal_string
from prune.formats._fields import expect_int, expect_keys, expect_object, expect_str
from prune.formats.errors import MalformedError

__all__ = [
    "CLAIM_KINDS",
    "ClaimKind",
    "ClaimRecord",
    "Obligations",
    "Region",
    "Scope",
    "parse_claim",
    "register_claim_kind",
]

Region = Literal["certified", "point-only"]
Scope = Literal["patch"]


@dataclass(frozen=True, eq=False)
class Obligations:
    """``coeffs [R, O]`` and ``bound [R]`` (float64): for every row ``r`` and every ``x`` in the
    claim's region (``scope``), ``coeffs[r] . patched_logits(x) <= bound[r]``. ``patch`` is the
    patch whose region is meant (``scope == "patch"``)."""

    coeffs: NDArray[np.float64]
    bound: NDArray[np.float64]
    scope: Scope
    patch: int

    def __post_init__(self) -> None:
        if self.coeffs.ndim != 2 or self.bound.shape != (self.coeffs.shape[0],):
            raise MalformedError("obligations: coeffs must be [R, O] and bound [R]")
        if not (np.isfinite(self.coeffs).all() and np.isfinite(self.bound).all()):
            raise MalformedError("obligations: coefficients and bounds must be finite")


class ClaimKind(Protocol):
    """What the certificate reader and the verifier need from a claim of any kind."""

    kind: ClassVar[str]

    @property
    def leaf_index(self) -> int: ...

    @property
    def region(self) -> Region: ...

    def to_dict(self) -> dict[str, Any]: ...

    def obligations(self, classes: int) -> Obligations: ...


@dataclass(frozen=True)
class ClaimRecord:
    """Kind ``flip``: the patched model predicts ``target`` (never ``label``) with logit margin
    at least ``certified_margin`` (decimal string) on the linear region of patch ``patch``
    (``region == "certified"``) or only at the sample (``"point-only"``).

    Obligations: for every class ``j != target``, ``(e_j - e_target) . logits <= -margin``."""

    leaf_index: int
    label: int
    target: int
    patch: int
    certified_margin: str
    region: Region
    kind: ClassVar[str] = "flip"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "leaf_index": self.leaf_index,
            "label": self.label,
            "target": self.target,
            "patch": self.patch,
            "certified_margin": self.certified_margin,
            "region": self.region,
        }

    @property
    def margin(self) -> float:
        return parse_decimal_string(self.certified_margin, field="certified_margin")

    def obligations(self, classes: int) -> Obligations:
        if not (0 <= self.target < classes and 0 <= self.label < classes):
            raise MalformedError(f"claim for leaf {self.leaf_index}: class outside [0, {classes})")
        others = np.asarray([j for j in range(classes) if j != self.target], dtype=np.int64)
        coeffs = np.zeros((len(others), classes))
        coeffs[np.arange(len(others)), others] = 1.0
        coeffs[:, self.target] = -1.0
        bound = np.full(len(others), -self.margin)
        return Obligations(coeffs=coeffs, bound=bound, scope="patch", patch=self.patch)

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> ClaimRecord:
        doc = expect_object(doc, where)
        expect_keys(
            doc,
            where,
            required={
                "kind",
                "leaf_index",
                "label",
                "target",
                "patch",
                "certified_margin",
                "region",
            },
        )
        region = _region(doc["region"], where)
        margin = expect_str(doc["certified_margin"], f"{where}.certified_margin")
        parse_decimal_string(margin, field=f"{where}.certified_margin")
        label = expect_int(doc["label"], f"{where}.label", minimum=0)
        target = expect_int(doc["target"], f"{where}.target", minimum=0)
        if target == label:
            raise MalformedError(f"{where}: target equals label {label}")
        return cls(
            leaf_index=expect_int(doc["leaf_index"], f"{where}.leaf_index", minimum=0),
            label=label,
            target=target,
            patch=expect_int(doc["patch"], f"{where}.patch", minimum=0),
            certified_margin=margin,
            region=region,
        )


def _region(value: Any, where: str) -> Region:
    region = expect_str(value, f"{where}.region")
    if region not in get_args(Region):
        raise MalformedError(f"{where}.region: unknown value {region[:30]!r}")
    return region  # type: ignore[return-value]  # checked against Region above


Reader = Callable[[Any, str], ClaimKind]
CLAIM_KINDS: dict[str, Reader] = {ClaimRecord.kind: ClaimRecord.from_dict}
"""Claim kind -> reader ``(doc, where) -> claim``. Extend with :func:`register_claim_kind`."""


def register_claim_kind(kind: str, reader: Reader) -> None:
    """Add a claim kind (at import time of the module that defines it, inside prune.formats)."""
    if kind in CLAIM_KINDS:
        raise ValueError(f"claim kind {kind!r} is already registered")
    CLAIM_KINDS[kind] = reader


def parse_claim(doc: Any, where: str, kinds: Mapping[str, Reader] = CLAIM_KINDS) -> ClaimKind:
    """Read one claim by its ``kind``; an unknown or missing kind is malformed."""
    doc = expect_object(doc, where)
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise MalformedError(f"{where}.kind: unknown claim kind {str(kind)[:30]!r}")
    return kinds[kind](doc, where)
