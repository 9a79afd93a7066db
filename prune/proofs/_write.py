"""``write_signed_proof``: everything ``prune unlearn --key`` adds to the proof folder, in one
call, all or nothing.

Order matters and is fixed: commit the forget set (fresh salts), build and sign the certificate
over the patched model already in the folder, sign that model file with model_signing, write the
openings and one receipt per leaf (each receipt names the certificate's digest), then move every
file into place. Everything is written into a hidden temporary folder inside PROOF first, so a
failure leaves no partial proof behind; the owner's commitment log is only updated after all
files are in place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives import serialization
from numpy.typing import NDArray

from prune.claims import CalibratedClaim, Claim
from prune.errors import ProofError
from prune.formats import (
    DUAL_FILE,
    DualCertificate,
    FormatError,
    Openings,
    Receipt,
    Statement,
    dual_bytes,
    patch_parameter_digest,
    sha256_hex,
)
from prune.proofs._certificate import build_statement, issue_certificate
from prune.proofs._commitment import Commitment, CommitmentLog, commit_batch
from prune.proofs._keys import open_private_key
from prune.proofs._model_signature import sign_model, verify_model_signature

__all__ = [
    "CERTIFICATE",
    "FORGET",
    "MODEL",
    "RECEIPTS",
    "SIGNATURE",
    "ProofFiles",
    "UnlearnOutcome",
    "write_signed_proof",
]

MODEL = "model.onnx"
SIGNATURE = "model.sig"
CERTIFICATE = "certificate.json"
FORGET = "forget.npz"
RECEIPTS = "receipts"


class UnlearnOutcome(Protocol):
    """What the patch engine hands over (``prune.unlearn.UnlearnResult`` satisfies it).
    ``claims[i]`` is about ``forget_x[i]``; ``method`` (or else ``summary``) says ``mode``
    (``samples``/``class``, default ``samples``) and, for a class, ``forget_class``."""

    @property
    def patched_model(self) -> bytes: ...
    @property
    def claims(self) -> Sequence[Claim | CalibratedClaim]: ...
    @property
    def method(self) -> Mapping[str, Any]: ...
    @property
    def summary(self) -> Mapping[str, Any]: ...
    @property
    def forget_x(self) -> NDArray[np.float32]: ...
    @property
    def forget_y(self) -> NDArray[np.int64]: ...


@dataclass(frozen=True)
class ProofFiles:
    """The files written and the commitment they carry."""

    folder: Path
    certificate: Path
    signature: Path
    forget: Path
    receipts: tuple[Path, ...]
    statement: Statement
    certificate_sha256: str

    @property
    def root(self) -> str:
        return self.statement.predicate.forget_set.root

    @property
    def size(self) -> int:
        return self.statement.predicate.forget_set.size


def _mode(result: UnlearnOutcome) -> tuple[str, int | None]:
    for source in (result.method, result.summary):
        if "mode" in source:
            forget_class = source.get("forget_class")
            return str(source["mode"]), None if forget_class is None else int(forget_class)
    return "samples", None


def _receipts(commitment: Commitment, certificate_sha256: str) -> list[tuple[int, bytes]]:
    tree = commitment.tree
    out = []
    for row, index in enumerate(range(commitment.first_leaf, tree.size)):
        receipt = Receipt(
            leaf_index=index,
            tree_size=tree.size,
            salt=commitment.salts[row].tobytes(),
            inclusion_proof=tree.inclusion_proof(index),
            root=tree.root,
            certificate_sha256=certificate_sha256,
        )
        out.append((index, receipt.to_json()))
    return out


def _check_inputs(folder: Path, result: UnlearnOutcome) -> bytes:
    model_path = folder / MODEL
    try:
        on_disk = model_path.read_bytes()
    except OSError as exc:
        raise ProofError(
            f"cannot read the patched model {model_path}: {exc.strerror or exc}"
        ) from exc
    if on_disk != result.patched_model:
        raise ProofError(f"{model_path} is not the patched model of this run")
    for name in (SIGNATURE, CERTIFICATE, FORGET, RECEIPTS):
        if (folder / name).exists():
            raise ProofError(f"{folder / name} already exists; write proofs into a fresh folder")
    if len(result.claims) != len(result.forget_y) or len(result.forget_x) != len(result.forget_y):
        raise ProofError(
            f"{len(result.claims)} claims for {len(result.forget_y)} forget samples; "
            "the engine must produce one claim per sample"
        )
    return on_disk


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only (0600, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_signed_proof(
    folder: Path,
    *,
    result: UnlearnOutcome,
    original_model: bytes,
    key_path: Path,
    passphrase: bytes | None = None,
    commitment_log: Path | None = None,
    rng: np.random.Generator | None = None,
    now: datetime | None = None,
) -> ProofFiles:
    """Write model.sig, certificate.json, forget.npz and receipts/ into ``folder`` (which already
    holds the patched model.onnx). ``commitment_log``: the owner's append-only state file (kept
    outside the proof folder); when it exists, this batch extends its tree and the certificate
    carries a consistency proof. ``rng`` seeds salts and nonce for tests only (default: OS
    CSPRNG)."""
    folder = Path(folder)
    patched = _check_inputs(folder, result)
    key = open_private_key(key_path, passphrase)
    previous = CommitmentLog.load(commitment_log) if commitment_log is not None else None
    commitment = commit_batch(
        np.asarray(result.forget_x),  # not cast: a lossy float32 conversion is refused
        np.asarray(result.forget_y),
        previous=previous,
        rng=rng,
    )
    mode, forget_class = _mode(result)
    try:
        patch_sha256 = patch_parameter_digest(patched)
    except FormatError as exc:
        raise ProofError(f"cannot digest the patch parameters: {exc}") from exc
    duals = getattr(result, "duals", None)
    certified = sum(c.region == "certified" for c in result.claims)
    dual_data: bytes | None = None
    descriptor: DualCertificate | None = None
    if certified and duals is not None:
        dual_data = dual_bytes(np.asarray(duals))
        descriptor = DualCertificate(
            sha256=sha256_hex(dual_data), rows=int(duals.shape[0]), hidden=int(duals.shape[1])
        )
    statement = build_statement(
        patched_sha256=sha256_hex(patched),
        original_sha256=sha256_hex(original_model),
        patch_sha256=patch_sha256,
        commitment=commitment,
        mode=mode,
        forget_class=forget_class,
        method=result.method,
        claims=result.claims,
        summary=result.summary,
        class_claim=getattr(result, "class_claim", None),  # class suppression only
        now=now,
        rng=rng,
        region_certificate=descriptor,
    )
    if certified and descriptor is None:
        raise ProofError(
            f"{certified} claims certify a region but the outcome carries no region "
            "certificate (dual multipliers)"
        )
    certificate = issue_certificate(statement, key.key)
    certificate_sha256 = sha256_hex(certificate)
    openings = Openings(
        x=np.ascontiguousarray(result.forget_x, dtype=np.float32),
        y=np.asarray(result.forget_y, dtype=np.int64),
        salt=commitment.salts,
        leaf_index=commitment.leaf_index,
    )
    staging = Path(tempfile.mkdtemp(prefix=".proof-", dir=folder))
    try:
        public_pem = key.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (staging / "owner.pub").write_bytes(public_pem)
        sign_model(folder / MODEL, staging / SIGNATURE, key=key)
        verify_model_signature(
            folder / MODEL, staging / SIGNATURE, public_key=staging / "owner.pub"
        )
        (staging / CERTIFICATE).write_bytes(certificate)
        if dual_data is not None:
            (staging / DUAL_FILE).write_bytes(dual_data)
        # the openings and receipts hold the forgotten samples and their secret salts
        _write_secret(staging / FORGET, openings.to_bytes())
        (staging / RECEIPTS).mkdir(mode=0o700)
        for index, receipt in _receipts(commitment, certificate_sha256):
            _write_secret(staging / RECEIPTS / f"receipt-{index}.json", receipt)
        for name in (SIGNATURE, CERTIFICATE, FORGET, RECEIPTS):
            os.replace(staging / name, folder / name)
        if dual_data is not None:
            os.replace(staging / DUAL_FILE, folder / DUAL_FILE)
    except OSError as exc:
        for name in (SIGNATURE, CERTIFICATE, FORGET, DUAL_FILE):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / RECEIPTS, ignore_errors=True)
        raise ProofError(f"cannot write the proof into {folder}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if commitment_log is not None:
        (previous or CommitmentLog.empty()).extended(commitment, certificate_sha256).save(
            commitment_log
        )
    receipts = tuple(
        folder / RECEIPTS / f"receipt-{i}.json"
        for i in range(commitment.first_leaf, commitment.tree.size)
    )
    return ProofFiles(
        folder=folder,
        certificate=folder / CERTIFICATE,
        signature=folder / SIGNATURE,
        forget=folder / FORGET,
        receipts=receipts,
        statement=statement,
        certificate_sha256=certificate_sha256,
    )
