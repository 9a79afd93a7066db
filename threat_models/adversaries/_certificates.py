"""Owners who lie with *genuinely signed certificates*: a certificate for another original
model, for another forget set, a replay of one the auditor already accepted, and equivocation
(one forget-set root for the auditor, another for a data subject).

Threat assumption: signatures are unforgeable, but the owner signs whatever it likes; what binds
it is the digests, the Merkle root, the nonce and the fact that data subjects compare receipts
with the certificate the auditor verified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from prune.errors import PruneError
from prune.formats import Envelope, Statement
from prune.proofs import generate_keys
from prune.unlearn import UnlearnResult, unlearn
from threat_models.adversaries._base import (
    Adversary,
    DishonestProof,
    auditor_inputs,
    copy_proof,
    signed,
    standard,
    subject_inputs,
)
from threat_models.adversaries._onnx import scale_original_initializer
from threat_models.errors import ScenarioError
from threat_models.model import Threat, threat
from threat_models.proofs import Outcome, write_proof
from threat_models.scenario import Scenario

__all__ = [
    "Equivocation",
    "ForgedOtherForgetSet",
    "ForgedOtherModel",
    "ForgedSignature",
    "ReplayedCertificate",
]


def unlearn_rows(scenario: Scenario, rows: NDArray[np.int64]) -> UnlearnResult:
    """The owner's genuine engine on another set of training rows, same options as honest."""
    try:
        result = unlearn(
            scenario.original_bytes,
            scenario.x_train,
            scenario.y_train,
            forget_indices=rows,
            x_test=scenario.x_test,
            y_test=scenario.y_test,
            margin=scenario.config.margin,
            seed=scenario.seed,
        )
    except PruneError as exc:
        raise ScenarioError(f"the engine failed on the adversary's forget set: {exc}") from exc
    if not result.complete:
        raise ScenarioError("the engine left points of the adversary's forget set uncertified")
    return result


def unlearn_class(
    scenario: Scenario, forget_class: int, *, drop_row: int | None = None
) -> UnlearnResult:
    """The owner's genuine engine deleting ``forget_class`` (suppression, the honest options),
    on the training data without row ``drop_row`` when given (as if that record had never been
    in the training set)."""
    x, y = scenario.x_train, scenario.y_train
    if drop_row is not None:
        x, y = np.delete(x, drop_row, axis=0), np.delete(y, drop_row)
    try:
        result = unlearn(
            scenario.original_bytes,
            x,
            y,
            forget_class=forget_class,
            x_test=scenario.x_test,
            y_test=scenario.y_test,
            margin=scenario.config.margin,
            seed=scenario.seed,
        )
    except PruneError as exc:
        raise ScenarioError(f"the engine failed on class {forget_class}: {exc}") from exc
    if not result.complete:
        raise ScenarioError(f"the engine left samples of class {forget_class} uncertified")
    return result


def certificate_nonce(proof: Path) -> str:
    envelope = Envelope.from_json((proof / "certificate.json").read_bytes())
    return Statement.from_json(envelope.payload).predicate.nonce


class ForgedSignature(Adversary):
    """A proof made without the owner's key (by someone impersonating the owner, or by the
    owner with a key it can later disown): the honest artifacts, with certificate and model
    signature made by another ECDSA P-256 key through the same tooling."""

    name: ClassVar[str] = "forged_signature"
    threat: ClassVar[Threat | None] = threat("forged-certificate")
    summary: ClassVar[str] = "certificate and model.sig signed by another key"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        keys = generate_keys(out / "other-keys")
        proof = out / "proof"
        write_proof(
            proof,
            result=Outcome.of(scenario.honest),
            original=scenario.original_bytes,
            key=keys.private_key,
            created=scenario.issued,
        )
        return standard(self, scenario, out, proof, "signed with a key that is not the owner's")


class ForgedOtherModel(Adversary):
    """Presents a genuine certificate from another deployment: the same patch, but certified
    as a patch of another original model (a recalibrated version of it), so the certificate
    does not bind the model the auditor holds as the committed original."""

    name: ClassVar[str] = "forged_other_model"
    threat: ClassVar[Threat | None] = threat("forged-certificate")
    summary: ClassVar[str] = "certificate names another original model"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        other, _ = scale_original_initializer(scenario.original_bytes, factor=1.01)
        proof = signed(scenario, out / "proof", Outcome.of(scenario.honest), original=other)
        return standard(self, scenario, out, proof, "original_model digest of another model")


class ForgedOtherForgetSet(Adversary):
    """Patches and certifies a forget set of its own choosing (as many ordinary training
    records, none of the requested ones), then hands the auditor the openings of the real
    request."""

    name: ClassVar[str] = "forged_other_forget_set"
    threat: ClassVar[Threat | None] = threat("forged-certificate")
    summary: ClassVar[str] = "certifies another forget set, opens the requested one"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        if scenario.forget_class is not None:  # another class deleted, the requested opened
            classes = int(scenario.y_train.max()) + 1
            other = (scenario.forget_class + 1) % classes
            result = unlearn_class(scenario, other)
            notes = f"certificate deletes class {other}, openings of class {scenario.forget_class}"
        else:
            rng = scenario.rng(self.name)
            spare = np.setdiff1d(np.arange(len(scenario.y_train)), scenario.forget_rows)
            rows = rng.choice(spare, len(scenario.forget_rows), replace=False).astype(np.int64)
            result = unlearn_rows(scenario, rows)
            notes = f"certificate commits {len(rows)} other training rows"
        proof = signed(scenario, out / "proof", Outcome.of(result))
        shutil.copyfile(scenario.honest_proof / "forget.npz", proof / "forget.npz")
        return standard(self, scenario, out, proof, notes)


class ReplayedCertificate(Adversary):
    """Re-presents a proof the auditor already accepted in an earlier audit (its nonce is in the
    auditor's store) as the proof of a new deletion request."""

    name: ClassVar[str] = "replayed_certificate"
    threat: ClassVar[Threat | None] = threat("forged-certificate")
    summary: ClassVar[str] = "re-presents an already accepted certificate"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        proof = copy_proof(scenario, out / "proof")
        view = standard(self, scenario, out, proof, "nonce already in the auditor's store")
        accepted = auditor_inputs(scenario, proof, out, accepted_nonces=(certificate_nonce(proof),))
        return DishonestProof(
            adversary=view.adversary,
            proof=view.proof,
            auditor=accepted,
            subject=view.subject,
            notes=view.notes,
        )


class Equivocation(Adversary):
    """Two signed certificates over two roots. The data subjects receive receipts under the
    full request's root (the honest proof); the auditor is shown a complete, consistent proof
    of the request *minus one subject*, whose record the owner keeps using. Every check of
    ``audit verify`` passes on what the auditor sees; the omitted subject's receipt does not
    match the certificate the auditor verified."""

    name: ClassVar[str] = "equivocation"
    threat: ClassVar[Threat | None] = threat("equivocation")
    summary: ClassVar[str] = "auditor sees a root without one subject; the subject another"
    modes: ClassVar[frozenset[str]] = frozenset({"sample", "class"})

    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        out.mkdir(parents=True)
        leaf = int(scenario.ordinary_leaves()[0])
        if scenario.forget_class is not None:  # the class, as if the subject had never been in it
            result = unlearn_class(
                scenario, scenario.forget_class, drop_row=int(scenario.forget_rows[leaf])
            )
        else:
            result = unlearn_rows(scenario, np.delete(scenario.forget_rows, leaf))
        proof = signed(scenario, out / "proof", Outcome.of(result))
        subject = subject_inputs(
            scenario,
            out,
            receipt=scenario.honest_proof / "receipts" / f"receipt-{leaf}.json",
            certificate=proof / "certificate.json",
            leaf=leaf,
            model=proof / "model.onnx",
        )
        root = json.loads((scenario.honest_proof / "receipts" / f"receipt-{leaf}.json").read_text())
        return DishonestProof(
            adversary=self.name,
            proof=proof,
            auditor=auditor_inputs(scenario, proof, out),
            subject=subject,
            notes=f"auditor's root omits leaf {leaf}; subject's receipt is under root "
            f"{str(root['root'])[:12]}…",
        )
