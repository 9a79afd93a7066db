"""Owners who lie about *which model* is served: the honest owner (the control), no-op,
substitution and rollback.

Threat assumption (DESIGN.md §1): the served model is the file the auditor verifies, obtained
from the deployment, not from the owner's proof-writing step; the owner may re-sign whatever it
serves with its real key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from prune.proofs import open_private_key, sign_model
from threat_models.adversaries._base import (
    Adversary,
    DishonestProof,
    copy_proof,
    signed,
    standard,
)
from threat_models.adversaries._onnx import patch_parameters, with_parameters
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome
from threat_models.scenario import Scenario

__all__ = ["HonestOwner", "NoOp", "Rollback", "Substitution"]


class HonestOwner(Adversary):
    """The control row: ``prune unlearn`` with the engine's defaults, signed. Every check must
    pass on it (no false alarms)."""

    name: ClassVar[str] = "honest"
    threat: ClassVar[Threat | None] = None
    summary: ClassVar[str] = "honest PRUNE run, engine defaults"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        proof = copy_proof(scenario, out / "proof")
        return standard(self, scenario, out, proof, "the honest proof, unchanged")


class NoOp(Adversary):
    """Certifies the honest run's claims, but the "patched" model it signs and serves is the
    original, byte for byte: nothing was unlearned."""

    name: ClassVar[str] = "noop"
    threat: ClassVar[Threat | None] = threat("no-op")
    summary: ClassVar[str] = "signs the original model as the patched one"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        outcome = Outcome.of(scenario.honest).but(patched_model=scenario.original_bytes)
        proof = signed(scenario, out / "proof", outcome)
        return standard(self, scenario, out, proof, "certificate subject = the original model")


class Substitution(Adversary):
    """A genuine honest proof, but the model served (and handed to the auditor) is another one:
    the owner keeps serving the original model behind the patched model's certificate and
    signature."""

    name: ClassVar[str] = "substitution"
    threat: ClassVar[Threat | None] = threat("substitution")
    summary: ClassVar[str] = "serves the original model behind the honest certificate"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        proof = copy_proof(scenario, out / "proof")
        (proof / "model.onnx").write_bytes(scenario.original_bytes)
        return standard(
            self,
            scenario,
            out,
            proof,
            "served model.onnx = original; certificate and model.sig are the honest ones",
        )


class Rollback(Adversary):
    """Certified honestly, then the patch is switched off in deployment (every patch's ``d``
    zeroed, or for a class suppression the class's ceiling lifted to +inf, so ``prune/output``
    equals the original logits), and the rolled-back file is
    re-signed with model_signing using the owner's real key, as a redeploy would."""

    name: ClassVar[str] = "rollback"
    threat: ClassVar[Threat | None] = threat("rollback")
    summary: ClassVar[str] = "zeroes the patch after certification, re-signs the served file"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        proof = copy_proof(scenario, out / "proof")
        served = scenario.honest.patched_model
        params = patch_parameters(served)
        off: dict[str, NDArray[np.float32]]
        if scenario.forget_class is None:
            off = {name: np.zeros_like(params[name]) for name in ("d", "C") if name in params}
            what = "patch d zeroed"
        else:  # the class's ceiling lifted to +inf: min(z_K, +inf) = z_K
            off = {"class/cap": np.full_like(params["class/cap"], np.inf)}
            what = "class ceiling set to +inf"
        (proof / "model.onnx").write_bytes(with_parameters(served, off))
        key = open_private_key(scenario.private_key, None)
        staging = out / "model.sig.new"
        sign_model(proof / "model.onnx", staging, key=key)
        shutil.move(staging, proof / "model.sig")
        return standard(
            self, scenario, out, proof, f"{what} after certification; model.sig re-signed"
        )
