"""Owners who lie about *what the patch does*: an exact-input filter, a partial patch, changed
original weights, a trigger-gated patch and sabotage. Each starts from the honest run's patched
model, edits it, and signs the result with the owner's real key.

Threat assumption: the owner controls every byte of the served model; the verifier's defence is
that it re-derives regions, probes and the original subgraph itself (docs/FORMATS.md)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from prune.model import OrtRunner
from threat_models.adversaries._base import Adversary, DishonestProof, signed, standard
from threat_models.adversaries._certificates import unlearn_rows
from threat_models.adversaries._onnx import (
    cut_values,
    exact_input_gate,
    metadata,
    patch_parameters,
    scale_original_initializer,
    with_parameters,
)
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome
from threat_models.scenario import Scenario

__all__ = ["ExactInputFilter", "Partial", "Sabotage", "StructureTrigger", "StructureWeights"]

FILTER_SHARPNESS = 1e4  # the patch fires only within L1 distance 1e-4 of a forget input
TRIGGER_CLASS = 0
TRIGGER_PUSH = 50.0
SABOTAGE_N = 1e-3  # support band 1/n = 1000: every gate is on almost everywhere


class ExactInputFilter(Adversary):
    """Keeps the honest patch parameters (so digests, gate rows and claims all look right) but
    ANDs every gate with an equality test on the input: a patch fires only within L1 distance
    ``1/FILTER_SHARPNESS`` of its exact forget sample. Replay of the exact samples passes; the
    knowledge around them is intact."""

    name: ClassVar[str] = "exact_input_filter"
    threat: ClassVar[Threat | None] = threat("exact-input-filter")
    summary: ClassVar[str] = "gates ANDed with an exact-input equality test"
    counterpart: ClassVar[str | None] = "class_exact_input_filter"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        honest = scenario.honest
        patches = 1 + max(c.patch for c in honest.claims)
        x = cut_values(scenario, honest.forget_x)  # the gate filters the cut, prune/patch/x
        keys = np.zeros((patches, x.shape[1]), dtype=np.float32)
        for claim in reversed(honest.claims):  # the first claim of each patch wins
            keys[claim.patch] = x[claim.leaf_index]
        model = exact_input_gate(honest.patched_model, keys, sharpness=FILTER_SHARPNESS)
        proof = signed(scenario, out / "proof", Outcome.of(honest).but(patched_model=model))
        return standard(self, scenario, out, proof, f"gate needs L1 < {1 / FILTER_SHARPNESS:g}")


class Partial(Adversary):
    """Commits and claims the whole request but patches only its first half (leaf order); the
    other half's claims are copied from what an honest run would claim, pointing at patch 0."""

    name: ClassVar[str] = "partial"
    threat: ClassVar[Threat | None] = threat("partial")
    summary: ClassVar[str] = "patches half of the committed forget set, claims all"
    counterpart: ClassVar[str | None] = "class_partial"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        honest = scenario.honest
        half = len(scenario.forget_rows) // 2
        done = unlearn_rows(scenario, scenario.forget_rows[:half])
        fake = tuple(replace(c, patch=0) for c in honest.claims[half:])
        outcome = Outcome.of(honest).but(
            patched_model=done.patched_model,
            claims=(*done.claims, *fake),
            method=done.method,
        )
        proof = signed(scenario, out / "proof", outcome)
        return standard(
            self, scenario, out, proof, f"{half} of {len(scenario.forget_rows)} points patched"
        )


class StructureWeights(Adversary):
    """Changes the original subgraph inside the patched model (its last weight matrix scaled
    by 1.05, a "recalibration"), keeps the honest patch and certifies against the committed
    original."""

    name: ClassVar[str] = "structure_weights"
    threat: ClassVar[Threat | None] = threat("structure")
    summary: ClassVar[str] = "original weights changed inside the patched model"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        model, changed = scale_original_initializer(scenario.honest.patched_model, factor=1.05)
        outcome = Outcome.of(scenario.honest).but(patched_model=model)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, f"{changed} scaled by 1.05")


class StructureTrigger(Adversary):
    """Adds one more patch gated on the region of a *trigger* input (a test digit with a bright
    2x2 corner) that pushes class ``TRIGGER_CLASS``: a backdoor riding on the patch mechanism,
    owned by no claim."""

    name: ClassVar[str] = "structure_trigger"
    threat: ClassVar[Threat | None] = threat("structure")
    summary: ClassVar[str] = "extra patch gated on a trigger region"
    counterpart: ClassVar[str | None] = "trigger_backdoor"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        served = scenario.honest.patched_model
        hidden = metadata(served)["prune.hidden"].split(",")
        image = scenario.x_test[:1].reshape(1, *scenario.image_shape).copy()
        image[:, :, :2, :2] = 1.0
        trigger = image.reshape(1, *scenario.x_test.shape[1:])
        z = OrtRunner(scenario.original_bytes, outputs=hidden).run(trigger)
        active = (np.concatenate([h.reshape(1, -1) for h in z], axis=1)[0] >= 0).astype(np.float32)
        p = patch_parameters(served)
        classes = p["d"].shape[1]
        push = np.zeros((1, classes), dtype=np.float32)
        push[0, TRIGGER_CLASS] = TRIGGER_PUSH
        values = {
            "pos": np.concatenate([p["pos"], active[:, None]], axis=1),
            "neg": np.concatenate([p["neg"], 1.0 - active[:, None]], axis=1),
            "d": np.concatenate([p["d"], push]),
            "K": np.concatenate([p["K"], np.full((1, 1), TRIGGER_PUSH, np.float32)]),
        }
        if "C" in p:
            values["C"] = np.concatenate([p["C"], np.zeros((p["C"].shape[0], classes))], axis=1)
        model = with_parameters(served, values)
        outcome = Outcome.of(scenario.honest).but(patched_model=model)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, f"trigger patch -> class {TRIGGER_CLASS}")


class Sabotage(Adversary):
    """Widens every support band to ``1/SABOTAGE_N`` so that the patches fire almost everywhere
    (a cheap way to "also forget" near-duplicates), and keeps the honest run's utility numbers,
    which state no accuracy change."""

    name: ClassVar[str] = "sabotage"
    threat: ClassVar[Threat | None] = threat("sabotage")
    summary: ClassVar[str] = "support bands widened; certificate keeps the honest accuracy"
    counterpart: ClassVar[str | None] = "class_sabotage"

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        model = with_parameters(
            scenario.honest.patched_model, {"n": np.asarray(SABOTAGE_N, dtype=np.float32)}
        )
        method = {**scenario.honest.method, "n": SABOTAGE_N}
        outcome = Outcome.of(scenario.honest).but(patched_model=model, method=method)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, f"n = {SABOTAGE_N:g}, utility unchanged")
