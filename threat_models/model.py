"""The dishonest-owner threat model as typed definitions.

Actors, what each controls and sees, the security goals, the assumptions, and one :class:`Threat`
per dishonest behaviour, each naming the audit checks that must catch it. ``docs/THREAT_MODEL.md``
is the readable version of the same content; a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "ACTORS",
    "ASSUMPTIONS",
    "GOALS",
    "PRIVACY_RISKS",
    "THREATS",
    "Actor",
    "ActorRole",
    "PrivacyRisk",
    "Threat",
    "threat",
]


class ActorRole(Enum):
    OWNER = "owner"
    DATA_SUBJECT = "data-subject"
    AUDITOR = "auditor"
    THIRD_PARTY = "third-party"


@dataclass(frozen=True)
class Actor:
    """An actor, what it controls (can choose arbitrarily) and what it sees."""

    role: ActorRole
    controls: tuple[str, ...]
    sees: tuple[str, ...]
    trusted_for: tuple[str, ...]


ACTORS: tuple[Actor, ...] = (
    Actor(
        role=ActorRole.OWNER,
        controls=(
            "the training data, the original and the served model",
            "every artifact it hands out: patched model, certificate, signature, openings, receipts",
            "the owner signing key (a genuine key: forging without it is out of scope)",
            "what it shows to each other party, separately (may equivocate)",
        ),
        sees=("everything it produced", "the auditor's verdicts when published"),
        trusted_for=("nothing: every claim is checked",),
    ),
    Actor(
        role=ActorRole.DATA_SUBJECT,
        controls=("their own deletion request", "their receipt and their own sample"),
        sees=("their receipt", "the published certificate", "black-box access to the served model"),
        trusted_for=("reporting the receipt they were given, unchanged",),
    ),
    Actor(
        role=ActorRole.AUDITOR,
        controls=(
            "its own queries to the model (onnxruntime)",
            "its reference data, reference/shadow models and attacks",
            "its random seeds (which claims and probes are sampled)",
        ),
        sees=(
            "the proof folder, the owner's public key, the committed original model",
            "the forget-set openings (forget.npz) under confidentiality",
        ),
        trusted_for=("running the published verifier honestly (its report is signed)",),
    ),
    Actor(
        role=ActorRole.THIRD_PARTY,
        controls=("black-box queries to the served model", "a pool of candidate records"),
        sees=("the served (patched) model, possibly with white-box access", "public certificates"),
        trusted_for=("nothing: a curious party that may try to learn who asked for deletion",),
    ),
)

GOALS: tuple[str, ...] = (
    "completeness: an honest owner's proof is accepted",
    "soundness: a proof whose claims do not hold for the served model is rejected",
    "binding: the forget set, the original model and the patched model are fixed by the "
    "certificate and cannot be changed or shown differently later",
    "locality: outside the patched regions the served model equals the committed original",
    "privacy of requesters: the certificate and the patched model reveal as little as possible "
    "about who asked for deletion",
)

ASSUMPTIONS: tuple[str, ...] = (
    "ECDSA P-256 and SHA-256 are secure; the owner's public key is authentic (obtained out of band)",
    "the auditor holds reference data from the same distribution as the training data",
    "the auditor receives the openings of the forget set it must check (forget.npz) and the "
    "committed original model",
    "the auditor's sampling seed is not known to the owner before the commitment",
    "to measure memorisation, the auditor plants canary records (through cooperating data "
    "subjects) in the training data and requests their deletion; it keeps matching canaries that "
    "were never submitted as non-members (the membership of ordinary, typical records is not "
    "measurable: a model that never saw them predicts them just as well)",
    "data subjects compare their receipt with the published certificate (or the auditor's view)",
    "the served model is the file the auditor verifies (deployment attestation is out of scope; "
    "black-box spot checks of the live endpoint bridge the gap)",
)


@dataclass(frozen=True)
class Threat:
    """One dishonest behaviour: ``adversaries`` names the executable adversaries in
    :data:`threat_models.adversaries.ADVERSARIES` (one per variant of the behaviour);
    ``caught_by`` lists the audit checks of which at least one must fail on each of their
    proofs. Check names are those of ``audit verify`` (:data:`audit.verify.CHECKS`), of
    ``audit receipt`` (:data:`audit.receipt.RECEIPT_CHECKS`) and the canary membership check of
    :mod:`threat_models.auditor`."""

    number: int
    key: str
    title: str
    behaviour: str
    adversaries: tuple[str, ...]
    caught_by: tuple[str, ...]


@dataclass(frozen=True)
class PrivacyRisk:
    """A risk of the *honest* method (no check can fail on it): how it is measured and what
    mitigates it, with the measurement and the mitigation named by module."""

    number: int
    key: str
    title: str
    behaviour: str
    measured_by: str
    mitigation: str


THREATS: tuple[Threat, ...] = (
    Threat(
        1,
        "no-op",
        "No-op",
        "the certificate claims unlearning, the served model is the original",
        ("noop",),
        (
            "replay.claims",
            "structure.patch",
            "class.suppression",
            "digest.original",
            "digest.patch",
        ),
    ),
    Threat(
        2,
        "substitution",
        "Substitution",
        "the certified model is not the served model",
        ("substitution",),
        ("digest.model", "signature.model"),
    ),
    Threat(
        3,
        "exact-input-filter",
        "Exact-input filter",
        "the patch fires only on the exact forget inputs, knowledge intact around them",
        ("exact_input_filter", "class_exact_input_filter"),
        ("region.probes", "structure.patch", "class.suppression", "class.reference"),
    ),
    Threat(
        4,
        "partial",
        "Partial unlearning",
        "only part of the committed forget set is patched",
        ("partial", "class_partial"),
        ("replay.claims", "commitment.openings", "class.reference"),
    ),
    Threat(
        5,
        "forged-certificate",
        "Forged or replayed certificate",
        "a certificate signed by another key, for another model or forget set, or with an old "
        "nonce, is presented",
        (
            "forged_signature",
            "forged_other_model",
            "forged_other_forget_set",
            "replayed_certificate",
        ),
        (
            "digest.model",
            "digest.original",
            "commitment.openings",
            "freshness",
            "signature.certificate",
        ),
    ),
    Threat(
        6,
        "equivocation",
        "Equivocation",
        "different forget-set roots are shown to different parties",
        ("equivocation",),
        ("receipt.binding", "receipt.claim"),
    ),
    Threat(
        7,
        "structure",
        "Structure cheating",
        "weights of the original subgraph changed, or a patch gated on something other than the "
        "claimed regions (a trigger)",
        ("structure_weights", "structure_trigger"),
        ("structure.original", "structure.patch", "digest.original"),
    ),
    Threat(
        8,
        "sabotage",
        "Sabotage",
        "utility destroyed while the certificate claims it preserved",
        ("sabotage", "class_sabotage"),
        ("utility", "locality", "class.suppression"),
    ),
    Threat(
        9,
        "residual-memorisation",
        "Residual memorisation",
        "membership still detectable behind true claims: predictions changed by certified tie "
        "patches that leave the true label a near-tie runner-up",
        ("residual_memorisation", "class_residual"),
        ("membership.canaries", "claims.policy"),
    ),
    Threat(
        10,
        "rollback",
        "Rollback",
        "the patch is removed after certification",
        ("rollback",),
        ("digest.model", "signature.model", "replay.claims"),
    ),
    Threat(
        12,
        "batch-coupling",
        "Batch-dependent serving",
        "the patch depends on the other rows of the batch: on when the auditor queries in "
        "batches, off for a single row or for a serving batch of one size",
        ("batch_coupled_gate", "batch_size_switch", "batch_coupled_original"),
        (
            "structure.rows",
            "structure.patch",
            "class.suppression",
            "replay.batch",
            "receipt.replay",
        ),
    ),
    Threat(
        13,
        "non-finite",
        "Non-finite outputs",
        "NaN or infinity in the served logits, which numpy and onnxruntime read differently",
        ("nan_target", "nan_top_class", "class_nan_target"),
        (
            "structure.patch",
            "class.suppression",
            "replay.claims",
            "replay.batch",
            "locality",
            "class.reference",
        ),
    ),
    Threat(
        14,
        "region-cap",
        "Region cap beyond probe reach",
        "the gates are cut by an extra half-space far from each sample: certified regions are "
        "mostly unpatched where sampled probes rarely go",
        ("region_cap", "class_region_cap"),
        ("structure.patch", "class.suppression"),
    ),
    Threat(
        15,
        "additive-trigger",
        "Additive trigger",
        "a backdoor built from allowed piecewise-linear ops, added to the patched output",
        ("trigger_backdoor",),
        ("structure.patch", "class.suppression"),
    ),
    Threat(
        16,
        "point-only",
        "Hair-margin point-only claims",
        "claims that hold only at the samples, with a margin float32 rounding can erase",
        ("hair_margin_point_only", "class_hair_margin"),
        ("claims.policy", "class.suppression"),
    ),
    Threat(
        17,
        "output-concat",
        "Second answer in the output",
        "the served output carries the original logits next to the patched ones",
        ("concat_original",),
        ("structure.patch", "class.suppression"),
    ),
    Threat(
        18,
        "narrow-box",
        "Box narrower than the data",
        "the declared input box, over which every region and class guarantee is stated, leaves "
        "out the data the model serves",
        ("narrow_box",),
        ("region.certificate", "class.suppression"),
    ),
    Threat(
        19,
        "region-only-class",
        "Regions passed off as a class",
        "a class deletion that patches only the regions of the class's training samples (every "
        "claim true), certified as a class or as a sample deletion: the class stays predicted "
        "on its other inputs",
        ("class_region_only", "class_as_samples"),
        ("class.reference",),
    ),
    Threat(
        20,
        "unfaithful-tail",
        "Unfaithful output tail",
        "the original's output tail (replayed on the patched logits) serves a label the logits do "
        "not give: a lookup with duplicate labels, the second-best class, or another label at one "
        "batch size",
        ("duplicate_label_tail", "second_best_tail", "batch_size_tail"),
        ("structure.tail",),
    ),
    Threat(
        21,
        "shared-region",
        "Two patches on one region",
        "a second patch gated on a requester's own linear region (a fabricated decoy sample in "
        "it, claimed with another target): each claim is certified for its patch alone, but both "
        "gates are on over the whole region, where the two pushes cancel and the original label "
        "is served",
        ("shared_region",),
        ("structure.patch",),
    ),
    Threat(
        22,
        "wide-band",
        "Decoy patch across a near-flat neuron",
        "the committed original carries a planted near-flat neuron (|z| < 1/n on the box, no "
        "outgoing weight) and a decoy patch sits on the region next door to a requester's, "
        "across that neuron only: each claim is certified for its patch alone, but the decoy's "
        "gate is on over the whole of the requester's region, where the two pushes cancel and "
        "the original label is served",
        ("wide_band",),
        ("structure.patch",),
    ),
    Threat(
        23,
        "zero-push",
        "Calibrated zero push",
        "calibrated claims whose targets are the original's own outputs at the forget samples: "
        "every patch pushes by zero, every obligation holds for the original itself, and the "
        "model keeps everything it memorised",
        ("calibrated_zero_push",),
        ("membership.canaries", "membership.inference"),
    ),
)

PRIVACY_RISKS: tuple[PrivacyRisk, ...] = (
    PrivacyRisk(
        11,
        "patch-leakage",
        "Patch leakage",
        "the patched model stores each forgotten point's activation pattern, so a curious party "
        "holding a pool of candidate records can single out which of them were deleted",
        "threat_models.leakage (white-box region matching, black-box prediction disagreement)",
        "prune.privacy decoy deletions (prune unlearn --decoys K)",
    ),
)


def threat(key: str) -> Threat:
    """Look a threat up by its key; ``KeyError`` names the known keys."""
    for t in THREATS:
        if t.key == key:
            return t
    raise KeyError(f"unknown threat {key!r}; known: {', '.join(t.key for t in THREATS)}")
