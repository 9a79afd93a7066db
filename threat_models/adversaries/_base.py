"""What every adversary produces and how: :class:`Adversary` builds a :class:`DishonestProof`,
a complete proof folder signed with the owner's real key plus exactly what each other party is
shown (the auditor's inputs, one data subject's receipt and the certificate it is compared
with).

Invariants: ``build`` writes only under ``out``; it never modifies the scenario's files (it
copies what it changes); the proof folder it returns is complete (model.onnx, summary.json,
certificate.json, model.sig, forget.npz, receipts/)."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from threat_models.errors import ScenarioError
from threat_models.model import Threat
from threat_models.proofs import Outcome, write_proof
from threat_models.scenario import Scenario

__all__ = [
    "Adversary",
    "AuditorInputs",
    "DishonestProof",
    "SubjectInputs",
    "auditor_inputs",
    "copy_proof",
    "first_requester",
    "signed",
    "standard",
    "subject_inputs",
]


_Pick = TypeVar("_Pick")

REQUESTERS_TRIED = 16
"""How many requesters an adversary that needs a suitable region tries before giving up."""


def first_requester(
    candidates: Sequence[_Pick], attempt: Callable[[_Pick], DishonestProof], what: str
) -> DishonestProof:
    """The proof of the first of ``candidates`` (at most :data:`REQUESTERS_TRIED`) on which
    ``attempt`` succeeds. A dishonest owner picks whichever requester its cheat fits, so one
    unsuitable region (too narrow, a decoy that leaves it) moves on to the next one; the
    :class:`ScenarioError` names the last reason when none fits."""
    last: ScenarioError | None = None
    for pick in candidates[:REQUESTERS_TRIED]:
        try:
            return attempt(pick)
        except ScenarioError as error:
            last = error
    tried = min(len(candidates), REQUESTERS_TRIED)
    if last is None:
        raise ScenarioError(f"{what}: no requester to build on")
    raise ScenarioError(f"{what}: none of {tried} requesters fits (last: {last})")


@dataclass(frozen=True, kw_only=True)
class AuditorInputs:
    """What the auditor is given (``audit verify`` arguments) and when it audits. The membership
    check's data (canaries, held-out canaries, reference data) is the scenario's."""

    proof: Path
    public_key: Path
    original: Path
    forget: Path
    reference: Path
    nonce_store: Path
    now: datetime


@dataclass(frozen=True, kw_only=True)
class SubjectInputs:
    """One data subject's check (``audit receipt``): the receipt the owner gave them, the
    certificate the auditor verified (what subjects compare with, by assumption), their own
    sample (``.npy``) and label, and the served model."""

    receipt: Path
    certificate: Path
    sample: Path
    label: int
    model: Path


@dataclass(frozen=True, kw_only=True)
class DishonestProof:
    """One adversary's artifacts. ``served_model`` is the file the owner deploys (the auditor
    verifies that file, by assumption); ``notes`` says what was done, for the matrix."""

    adversary: str
    proof: Path
    auditor: AuditorInputs
    subject: SubjectInputs
    notes: str

    @property
    def served_model(self) -> Path:
        return self.proof / "model.onnx"


class Adversary(ABC):
    """A dishonest owner (or, for :class:`~threat_models.adversaries.HonestOwner`, an honest
    one). ``threat`` is the behaviour it performs; the auditor must fail at least one check of
    ``threat.caught_by`` on its proof."""

    name: ClassVar[str]
    threat: ClassVar[Threat | None]
    summary: ClassVar[str]
    modes: ClassVar[frozenset[str]] = frozenset({"sample"})
    """The deletion modes (``sample``, ``class``) whose honest proof this adversary can start
    from; the matrix records the others as not applicable, naming :attr:`counterpart`."""
    counterpart: ClassVar[str | None] = None
    """The adversary that attacks the same root cause in the other mode."""
    architectures: ClassVar[frozenset[str]] = frozenset({"mlp", "cnn"})
    """The scenario architectures it can build on (an adversary that fabricates a point of a
    region in input space needs the head to start at the input: an MLP); the matrix records the
    others as not applicable."""

    @property
    def caught_by(self) -> tuple[str, ...]:
        return () if self.threat is None else self.threat.caught_by

    @abstractmethod
    def build(self, scenario: Scenario, out: Path) -> DishonestProof:
        """Write the proof and the parties' inputs under ``out`` (which must not exist)."""


def copy_proof(scenario: Scenario, dest: Path) -> Path:
    """A copy of the honest, signed proof folder."""
    shutil.copytree(scenario.honest_proof, dest)
    return dest


def signed(
    scenario: Scenario,
    folder: Path,
    outcome: Outcome,
    *,
    original: bytes | None = None,
    created: datetime | None = None,
) -> Path:
    """A complete proof of ``outcome`` signed with the owner's real key (the committed original
    model unless ``original`` says otherwise; issued at the scenario's time unless
    ``created``)."""
    write_proof(
        folder,
        result=outcome,
        original=scenario.original_bytes if original is None else original,
        key=scenario.private_key,
        created=scenario.issued if created is None else created,
    )
    return folder


def auditor_inputs(
    scenario: Scenario, proof: Path, out: Path, *, accepted_nonces: tuple[str, ...] = ()
) -> AuditorInputs:
    """The auditor's inputs for ``proof``. Its nonce store holds the nonces of certificates it
    accepted in earlier audits: ``accepted_nonces`` plus one unrelated earlier nonce, so that the
    replay check always runs against a real store."""
    store = out / "auditor-nonces.txt"
    earlier = scenario.rng("earlier-audit").bytes(16).hex()
    store.write_text("".join(f"{n}\n" for n in sorted({earlier, *accepted_nonces})))
    return AuditorInputs(
        proof=proof,
        public_key=scenario.public_key,
        original=scenario.original,
        forget=proof / "forget.npz",
        reference=scenario.reference,
        nonce_store=store,
        now=scenario.now,
    )


def subject_inputs(
    scenario: Scenario,
    out: Path,
    *,
    receipt: Path,
    certificate: Path,
    leaf: int,
    model: Path,
) -> SubjectInputs:
    """The data subject of scenario leaf ``leaf`` (their own sample and label, as committed)."""
    sample = out / f"subject-{leaf}.npy"
    np.save(sample, np.ascontiguousarray(scenario.honest.forget_x[leaf], dtype=np.float32))
    return SubjectInputs(
        receipt=receipt,
        certificate=certificate,
        sample=sample,
        label=int(scenario.honest.forget_y[leaf]),
        model=model,
    )


def standard(
    adversary: Adversary, scenario: Scenario, out: Path, proof: Path, notes: str
) -> DishonestProof:
    """The usual views: the auditor gets ``proof``; the subject is the first ordinary data
    subject, holding the receipt of ``proof`` for their leaf."""
    leaf = int(scenario.ordinary_leaves()[0])
    return DishonestProof(
        adversary=adversary.name,
        proof=proof,
        auditor=auditor_inputs(scenario, proof, out),
        subject=subject_inputs(
            scenario,
            out,
            receipt=proof / "receipts" / f"receipt-{leaf}.json",
            certificate=proof / "certificate.json",
            leaf=leaf,
            model=proof / "model.onnx",
        ),
        notes=notes,
    )
