"""Claim kind ``calibrated`` (version 1; docs/FORMATS.md, "Calibrated claims").

A calibrated claim says, for the forgotten sample at ``leaf_index``:

1. the patched model's logits at the sample are ``output`` (decimal strings), elementwise within
   ``output_tolerance(output) = 1e-3 * (1 + max_j |output_j|)`` (float32 execution);
2. over the sample's whole linear region, considering its patch ``patch`` alone,
   ``logit[label] - logit[rival] <= upper_margin``. As an obligation row:
   ``max_{x in S} (e_label - e_rival) . patched_logits(x) <= upper_margin``
   (:meth:`CalibratedClaimRecord.obligations`, scope ``patch``), the row the predicate-v2
   region certificate proves like any other kind's.

``source`` says where the output came from: ``cross-fitted`` (a prepared reference model that
never saw the sample) or ``class-conditional`` (held-out statistics of the sample's class).

Threat assumption: the owner may lie; the reader only checks the shape (kinds, integers, decimal
strings, ``rival != label``, both inside ``output``); the auditor replays and bounds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from prune.formats._canonical import parse_decimal_string
from prune.formats._claims import Obligations, Region, register_claim_kind
from prune.formats._fields import expect_int, expect_keys, expect_object, expect_str
from prune.formats.errors import MalformedError

__all__ = [
    "CALIBRATED_KIND",
    "CALIBRATED_KIND_VERSION",
    "CALIBRATED_SOURCES",
    "OUTPUT_TOLERANCE",
    "CalibratedClaimRecord",
    "output_tolerance",
]

CALIBRATED_KIND = "calibrated"
CALIBRATED_KIND_VERSION = 1
CALIBRATED_SOURCES = ("cross-fitted", "class-conditional")
OUTPUT_TOLERANCE = 1e-3
"""Relative float32 tolerance of the declared output (same as the engine's float32 slack)."""


def output_tolerance(output: tuple[float, ...]) -> float:
    """Allowed elementwise gap between the replayed and the declared output of one claim."""
    return OUTPUT_TOLERANCE * (1.0 + max(abs(v) for v in output))


@dataclass(frozen=True)
class CalibratedClaimRecord:
    """One published calibrated claim (see the module docstring). Decimal strings, like every
    number in the certificate; :meth:`margin_bound` and :meth:`output_values` parse them."""

    kind: ClassVar[str] = CALIBRATED_KIND
    leaf_index: int
    label: int
    rival: int
    patch: int
    upper_margin: str
    output: tuple[str, ...]
    source: str
    region: Region = "certified"

    def margin_bound(self) -> float:
        return parse_decimal_string(self.upper_margin, field="upper_margin")

    def output_values(self) -> tuple[float, ...]:
        return tuple(parse_decimal_string(v, field="output") for v in self.output)

    def obligations(self, classes: int) -> Obligations:
        """One row: ``max_S (e_label - e_rival) . patched_logits <= upper_margin``."""
        if len(self.output) != classes or max(self.label, self.rival) >= classes:
            raise MalformedError(f"claim for leaf {self.leaf_index}: class outside [0, {classes})")
        coeffs = np.zeros((1, classes))
        coeffs[0, self.label], coeffs[0, self.rival] = 1.0, -1.0
        return Obligations(
            coeffs=coeffs,
            bound=np.array([self.margin_bound()]),
            scope="patch",
            patch=self.patch,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": CALIBRATED_KIND,
            "kind_version": CALIBRATED_KIND_VERSION,
            "leaf_index": self.leaf_index,
            "label": self.label,
            "rival": self.rival,
            "patch": self.patch,
            "upper_margin": self.upper_margin,
            "output": list(self.output),
            "source": self.source,
            "region": self.region,
        }

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> CalibratedClaimRecord:
        doc = expect_object(doc, where)
        required = {
            "kind",
            "kind_version",
            "leaf_index",
            "label",
            "rival",
            "patch",
            "upper_margin",
            "output",
            "source",
            "region",
        }
        expect_keys(doc, where, required=required)
        if doc["kind"] != CALIBRATED_KIND:
            raise MalformedError(f"{where}.kind: expected {CALIBRATED_KIND!r}")
        if doc["kind_version"] != CALIBRATED_KIND_VERSION:
            raise MalformedError(
                f"{where}.kind_version: unknown {str(doc['kind_version'])[:20]}; this reader "
                f"knows version {CALIBRATED_KIND_VERSION}"
            )
        if doc["region"] != "certified":
            raise MalformedError(f"{where}.region: a calibrated claim is a region claim")
        source = expect_str(doc["source"], f"{where}.source")
        if source not in CALIBRATED_SOURCES:
            raise MalformedError(f"{where}.source: unknown value {source[:30]!r}")
        output = doc["output"]
        if not isinstance(output, list) or len(output) < 2:
            raise MalformedError(f"{where}.output: expected a list of at least two logits")
        values = tuple(expect_str(v, f"{where}.output[{i}]") for i, v in enumerate(output))
        for i, v in enumerate(values):
            parse_decimal_string(v, field=f"{where}.output[{i}]")
        margin = expect_str(doc["upper_margin"], f"{where}.upper_margin")
        parse_decimal_string(margin, field=f"{where}.upper_margin")
        label = expect_int(doc["label"], f"{where}.label", minimum=0)
        rival = expect_int(doc["rival"], f"{where}.rival", minimum=0)
        if rival == label or max(label, rival) >= len(values):
            raise MalformedError(
                f"{where}: label and rival must be two different classes of the output"
            )
        return cls(
            leaf_index=expect_int(doc["leaf_index"], f"{where}.leaf_index", minimum=0),
            label=label,
            rival=rival,
            patch=expect_int(doc["patch"], f"{where}.patch", minimum=0),
            upper_margin=margin,
            output=values,
            source=source,
        )


register_claim_kind(CALIBRATED_KIND, CalibratedClaimRecord.from_dict)
