"""What a patch guarantees for one forgotten sample. A :class:`Claim` is produced by the patch
engine, written into the signed certificate, and re-checked by the auditor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CalibratedClaim", "Claim", "RegionStatus"]

RegionStatus = Literal["certified", "point-only"]


@dataclass(frozen=True)
class Claim:
    """For the forgotten sample at ``leaf_index`` (its position in the committed forget set;
    ``train_index`` is its row in the owner's training file and is *not* published):
    the patched model predicts ``target`` (never ``label``) with logit margin at least
    ``certified_margin`` over the sample's whole linear region when ``region == "certified"``,
    or at the sample itself only when ``region == "point-only"``. ``patch`` is the index of the
    patch (row of the gate) whose region is the sample's region."""

    leaf_index: int
    train_index: int
    label: int
    original_prediction: int
    target: int
    patch: int
    certified_margin: float
    region: RegionStatus


@dataclass(frozen=True)
class CalibratedClaim:
    """Claim kind ``calibrated`` (``--target-policy calibrated``): for the forgotten sample at
    ``leaf_index``, the patched model's logits at the sample are ``output`` (float32 execution
    within the documented tolerance) and, over the sample's whole linear region (that patch
    alone), ``logit[label] - logit[rival] <= upper_margin``: the model is nowhere in the region
    more confident in the true class than a model that never saw the sample is at it.
    As an obligation: ``max_{x in S} (e_label - e_rival) . patched(x) <= upper_margin``.
    ``source`` says where the target came from (``cross-fitted`` | ``class-conditional``)."""

    leaf_index: int
    train_index: int
    label: int
    original_prediction: int
    rival: int
    patch: int
    upper_margin: float
    output: tuple[float, ...]
    source: str
    region: RegionStatus = "certified"
