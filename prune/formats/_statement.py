"""The signed certificate's content: an in-toto Statement v1 whose predicate is the versioned
PRUNE unlearning predicate (docs/FORMATS.md, "Certificate").

Threat assumption: the owner may be dishonest, so the reader is strict. Unknown statement or
predicate types, an unknown predicate ``version``, unknown or missing fields, floats, and claims
that do not cover exactly this batch's leaves are rejected here, before any semantic check.
``train_index`` never appears: the certificate names samples only by leaf index."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, get_args

from prune.formats._canonical import canonical_json, parse_canonical_json, parse_decimal_string
from prune.formats._claims import ClaimKind, ClaimRecord, Region, parse_claim
from prune.formats._class_claim import ClassClaim
from prune.formats._fields import (
    expect_hex_digest,
    expect_int,
    expect_keys,
    expect_object,
    expect_str,
)
from prune.formats._sample import SAMPLE_ENCODING
from prune.formats.errors import MalformedError

__all__ = [
    "DUAL_FILE",
    "DUAL_FORMAT",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "PREDICATE_VERSION",
    "STATEMENT_TYPE",
    "SUBJECT_NAME",
    "ClaimKind",
    "ClaimRecord",
    "DualCertificate",
    "ForgetSet",
    "Mode",
    "PreviousBatch",
    "Region",
    "Statement",
    "UnlearningPredicate",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://prune-audit.dev/unlearning/v2"
PREDICATE_VERSION = 2
DUAL_FORMAT = "prune/dual/v1"
DUAL_FILE = "certificate.dual"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
SUBJECT_NAME = "model.onnx"

Mode = Literal["samples", "class"]
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_NONCE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class ForgetSet:
    """The commitment: Merkle root (hex) and leaf count of the whole append-only tree."""

    root: str
    size: int
    encoding: str = SAMPLE_ENCODING

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "size": self.size, "encoding": self.encoding}

    @classmethod
    def from_dict(cls, doc: Any) -> ForgetSet:
        doc = expect_object(doc, "forget_set")
        expect_keys(doc, "forget_set", required={"root", "size", "encoding"})
        if doc["encoding"] != SAMPLE_ENCODING:
            raise MalformedError(f"forget_set.encoding: unknown {str(doc['encoding'])[:40]!r}")
        return cls(
            root=expect_hex_digest(doc["root"], "forget_set.root"),
            size=expect_int(doc["size"], "forget_set.size", minimum=1),
        )


@dataclass(frozen=True)
class PreviousBatch:
    """The tree this batch extends: its root and size, and the RFC 9162 consistency proof from
    it to this certificate's ``forget_set`` (hex hashes)."""

    root: str
    size: int
    consistency_proof: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "size": self.size,
            "consistency_proof": list(self.consistency_proof),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> PreviousBatch:
        doc = expect_object(doc, "previous_root")
        expect_keys(doc, "previous_root", required={"root", "size", "consistency_proof"})
        proof = doc["consistency_proof"]
        if not isinstance(proof, list):
            raise MalformedError("previous_root.consistency_proof: expected a list")
        return cls(
            root=expect_hex_digest(doc["root"], "previous_root.root"),
            size=expect_int(doc["size"], "previous_root.size", minimum=1),
            consistency_proof=tuple(
                expect_hex_digest(h, f"previous_root.consistency_proof[{i}]")
                for i, h in enumerate(proof)
            ),
        )


@dataclass(frozen=True)
class DualCertificate:
    """The region certificate file (``PROOF/certificate.dual``, format ``prune/dual/v1``):
    ``rows x hidden`` little-endian float32 dual multipliers, one row per obligation row of every
    ``certified`` claim, claims in leaf order, each claim's rows in its obligation order. Bound to
    the signature by ``sha256``; any values are admissible (negative ones count as 0), so the
    file can only make a bound looser, never unsound."""

    sha256: str
    rows: int
    hidden: int
    format: str = DUAL_FORMAT
    path: str = DUAL_FILE

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "path": self.path,
            "sha256": self.sha256,
            "rows": self.rows,
            "hidden": self.hidden,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> DualCertificate:
        where = "region_certificate"
        doc = expect_object(doc, where)
        expect_keys(doc, where, required={"format", "path", "sha256", "rows", "hidden"})
        if doc["format"] != DUAL_FORMAT:
            raise MalformedError(f"{where}.format: unknown {str(doc['format'])[:40]!r}")
        if doc["path"] != DUAL_FILE:
            raise MalformedError(f"{where}.path: expected {DUAL_FILE!r}")
        return cls(
            sha256=expect_hex_digest(doc["sha256"], f"{where}.sha256"),
            rows=expect_int(doc["rows"], f"{where}.rows", minimum=0),
            hidden=expect_int(doc["hidden"], f"{where}.hidden", minimum=0),
        )


def _check_utility(doc: Any) -> dict[str, str]:
    doc = expect_object(doc, "utility")
    for key, value in doc.items():
        parse_decimal_string(value, field=f"utility.{key}")
    return dict(doc)


def _check_method(doc: Any) -> dict[str, Any]:
    doc = expect_object(doc, "method")
    expect_str(doc.get("name"), "method.name")
    return dict(doc)


@dataclass(frozen=True)
class UnlearningPredicate:
    """Predicate ``https://prune-audit.dev/unlearning/v2``, version 2.

    Version 2 (docs/FORMATS.md): every claim has a ``kind`` (:data:`prune.formats.CLAIM_KINDS`)
    and ``region_certificate`` names the dual-multiplier file that proves every certified claim
    over its region (``null`` when no claim is certified). Version 1 is no longer read: it
    carried region claims without any certificate.

    Invariant (checked by the reader): ``claims[i].leaf_index == first_leaf + i`` and the claims
    end at ``forget_set.size``, where ``first_leaf`` is ``previous_root.size`` for an
    append-only batch and 0 otherwise; ``forget_class`` is present iff ``mode == "class"``."""

    original_model_sha256: str
    patch_parameters_sha256: str
    forget_set: ForgetSet
    mode: Mode
    method: Mapping[str, Any]
    claims: tuple[ClaimKind, ...]
    utility: Mapping[str, str]
    created: str
    nonce: str
    previous_root: PreviousBatch | None = None
    forget_class: int | None = field(default=None)
    region_certificate: DualCertificate | None = None
    class_claim: ClassClaim | None = field(default=None)
    """Optional (class mode only): the class-level claim over the declared input box
    (:class:`prune.formats.ClassClaim`); absent for region-only class deletions."""

    @property
    def first_leaf(self) -> int:
        return self.previous_root.size if self.previous_root is not None else 0

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": PREDICATE_VERSION,
            "original_model": {"sha256": self.original_model_sha256},
            "patch_parameters": {"sha256": self.patch_parameters_sha256},
            "forget_set": self.forget_set.to_dict(),
            "mode": self.mode,
            "method": dict(self.method),
            "claims": [claim.to_dict() for claim in self.claims],
            "utility": dict(self.utility),
            "created": self.created,
            "nonce": self.nonce,
            "previous_root": None if self.previous_root is None else self.previous_root.to_dict(),
            "region_certificate": (
                None if self.region_certificate is None else self.region_certificate.to_dict()
            ),
        }
        if self.forget_class is not None:
            doc["forget_class"] = self.forget_class
        if self.class_claim is not None:
            doc["class_claim"] = self.class_claim.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> UnlearningPredicate:
        doc = expect_object(doc, "predicate")
        if doc.get("version") == 1:
            raise MalformedError(
                "predicate: version 1 is no longer accepted (its region claims carry no "
                "certificate); reissue the proof with this release"
            )
        if doc.get("version") != PREDICATE_VERSION:
            raise MalformedError(
                f"predicate: unknown version {str(doc.get('version'))[:20]}; "
                f"this reader knows version {PREDICATE_VERSION}"
            )
        required = {
            "version",
            "original_model",
            "patch_parameters",
            "forget_set",
            "mode",
            "method",
            "claims",
            "utility",
            "created",
            "nonce",
            "previous_root",
            "region_certificate",
        }
        expect_keys(doc, "predicate", required=required, optional={"forget_class", "class_claim"})
        predicate = cls(
            original_model_sha256=_digest_object(doc["original_model"], "original_model"),
            patch_parameters_sha256=_digest_object(doc["patch_parameters"], "patch_parameters"),
            forget_set=ForgetSet.from_dict(doc["forget_set"]),
            mode=_mode(doc["mode"]),
            method=_check_method(doc["method"]),
            claims=_claims(doc["claims"]),
            utility=_check_utility(doc["utility"]),
            created=_created(doc["created"]),
            nonce=_nonce(doc["nonce"]),
            previous_root=(
                None
                if doc["previous_root"] is None
                else PreviousBatch.from_dict(doc["previous_root"])
            ),
            forget_class=(
                None
                if "forget_class" not in doc
                else expect_int(doc["forget_class"], "forget_class", minimum=0)
            ),
            region_certificate=(
                None
                if doc["region_certificate"] is None
                else DualCertificate.from_dict(doc["region_certificate"])
            ),
            class_claim=(
                None if "class_claim" not in doc else ClassClaim.from_dict(doc["class_claim"])
            ),
        )
        predicate._check_consistent()
        return predicate

    def _check_consistent(self) -> None:
        if (self.mode == "class") != (self.forget_class is not None):
            raise MalformedError("predicate: forget_class must be given exactly when mode is class")
        if self.class_claim is not None and self.class_claim.forget_class != self.forget_class:
            raise MalformedError("predicate: class_claim.class is not the forget_class")
        first, size = self.first_leaf, self.forget_set.size
        if self.previous_root is not None and self.previous_root.size >= size:
            raise MalformedError("predicate: previous_root.size must be below forget_set.size")
        if len(self.claims) != size - first:
            raise MalformedError(
                f"predicate: {len(self.claims)} claims for leaves [{first}, {size})"
            )
        for i, claim in enumerate(self.claims):
            if claim.leaf_index != first + i:
                raise MalformedError(
                    f"predicate: claims[{i}].leaf_index is {claim.leaf_index}, expected {first + i}"
                )


def _digest_object(doc: Any, where: str) -> str:
    doc = expect_object(doc, where)
    expect_keys(doc, where, required={"sha256"})
    return expect_hex_digest(doc["sha256"], f"{where}.sha256")


def _mode(value: Any) -> Mode:
    if value not in get_args(Mode):
        raise MalformedError(f"mode: unknown value {str(value)[:30]!r}")
    return value  # type: ignore[no-any-return]  # checked against Mode above


def _claims(value: Any) -> tuple[ClaimKind, ...]:
    if not isinstance(value, list) or not value:
        raise MalformedError("claims: expected a non-empty list")
    return tuple(parse_claim(item, f"claims[{i}]") for i, item in enumerate(value))


def _created(value: Any) -> str:
    text = expect_str(value, "created")
    if not _RFC3339_UTC.fullmatch(text):
        raise MalformedError("created: expected RFC 3339 UTC time YYYY-MM-DDTHH:MM:SSZ")
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as exc:
        raise MalformedError(f"created: {text} is not a valid time") from exc
    return text


def _nonce(value: Any) -> str:
    if not isinstance(value, str) or not _NONCE.fullmatch(value):
        raise MalformedError("nonce: expected 32 lowercase hex characters")
    return value


@dataclass(frozen=True)
class Statement:
    """in-toto Statement v1 with one subject (the patched model file) and the PRUNE predicate.
    Round trip: ``Statement.from_json(s.to_json()) == s`` (as canonical bytes)."""

    subject_sha256: str
    predicate: UnlearningPredicate
    subject_name: str = SUBJECT_NAME

    def to_json(self) -> bytes:
        return canonical_json(
            {
                "_type": STATEMENT_TYPE,
                "subject": [{"name": self.subject_name, "digest": {"sha256": self.subject_sha256}}],
                "predicateType": PREDICATE_TYPE,
                "predicate": self.predicate.to_dict(),
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Statement:
        doc = expect_object(parse_canonical_json(data), "statement")
        if doc.get("_type") != STATEMENT_TYPE:
            raise MalformedError(f"statement: unknown _type {str(doc.get('_type'))[:60]!r}")
        if doc.get("predicateType") != PREDICATE_TYPE:
            raise MalformedError(
                f"statement: unknown predicateType {str(doc.get('predicateType'))[:60]!r}"
            )
        expect_keys(doc, "statement", required={"_type", "subject", "predicateType", "predicate"})
        subjects = doc["subject"]
        if not isinstance(subjects, list) or len(subjects) != 1:
            raise MalformedError("statement: expected exactly one subject")
        subject = expect_object(subjects[0], "subject[0]")
        expect_keys(subject, "subject[0]", required={"name", "digest"})
        return cls(
            subject_sha256=_digest_object(subject["digest"], "subject[0].digest"),
            predicate=UnlearningPredicate.from_dict(doc["predicate"]),
            subject_name=expect_str(subject["name"], "subject[0].name"),
        )
