"""The adversary registry and the tools adversaries use (bit flips, certificate edits with or
without re-signing, model swaps re-signed by the owner). The adversaries themselves live in
:mod:`.damaged` (files changed after signing) and :mod:`.dishonest` (artifacts a dishonest owner
builds and signs with the real key); :mod:`.tampers` collects them."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from audit.proof import Limits
from audit.verify import VerifyInputs
from prune.formats import (
    PAYLOAD_TYPE,
    Envelope,
    canonical_json,
    patch_parameter_digest,
    sha256_hex,
    sign_envelope,
)
from prune.proofs import load_private_key, open_private_key, sign_model
from tests.audit.adversarial.kit import ProofKit

__all__ = [
    "ADVERSARIES",
    "Adversary",
    "Tampered",
    "adversary",
    "copied",
    "edit_certificate",
    "flip_byte",
    "payload_of",
    "reissued",
    "resign_model",
    "rewrite_forget",
]


@dataclass(frozen=True)
class Tampered:
    """What the verifier is run on: inputs, and optionally another clock or other limits."""

    inputs: VerifyInputs
    now: datetime | None = None
    limits: Limits | None = None


@dataclass(frozen=True)
class Adversary:
    name: str
    check: str
    message: str
    build: Callable[[ProofKit, Path], Tampered]
    doc: str


ADVERSARIES: dict[str, Adversary] = {}


def adversary(
    name: str, check: str, message: str
) -> Callable[[Callable[[ProofKit, Path], Tampered]], Callable[[ProofKit, Path], Tampered]]:
    def register(fn: Callable[[ProofKit, Path], Tampered]) -> Callable[[ProofKit, Path], Tampered]:
        ADVERSARIES[name] = Adversary(name, check, message, fn, (fn.__doc__ or "").strip())
        return fn

    return register


def flip_byte(path: Path, *, at: float = 0.5, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    i = min(int(len(data) * at), len(data) - 1)
    data[i] ^= mask
    path.write_bytes(bytes(data))


def edit_certificate(
    proof: Path, edit: Callable[[dict[str, Any]], None], *, key: Path | None
) -> None:
    """Decode the statement, edit it, re-encode canonically; re-sign with ``key`` or keep the
    old signature (``key=None``: an edit after signing)."""
    path = proof / "certificate.json"
    envelope = Envelope.from_json(path.read_bytes())
    doc = json.loads(envelope.payload)
    edit(doc)
    payload = canonical_json(doc)
    if key is None:
        new = Envelope(payload, envelope.payload_type, envelope.signatures)
    else:
        new = sign_envelope(payload, PAYLOAD_TYPE, load_private_key(key))
    path.write_bytes(new.to_json())


def resign_model(proof: Path, model: bytes, *, key: Path) -> None:
    """A dishonest owner swaps in another model and re-signs everything that names it: the
    statement's subject and patch digests and the model signature."""
    (proof / "model.onnx").write_bytes(model)

    def edit(doc: dict[str, Any]) -> None:
        doc["subject"][0]["digest"]["sha256"] = sha256_hex(model)
        doc["predicate"]["patch_parameters"]["sha256"] = patch_parameter_digest(model)

    edit_certificate(proof, edit, key=key)
    (proof / "model.sig").unlink()
    sign_model(proof / "model.onnx", proof / "model.sig", key=open_private_key(key))


def rewrite_forget(proof: Path, change: Callable[[dict[str, np.ndarray[Any, Any]]], None]) -> None:
    path = proof / "forget.npz"
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def copied(kit: ProofKit, dest: Path) -> tuple[Path, VerifyInputs]:
    proof = kit.copy_proof(dest / "proof")
    return proof, kit.inputs(proof)


def reissued(kit: ProofKit, dest: Path, **kwargs: Any) -> Tampered:
    proof = kit.reissue(dest / "proof", **kwargs)
    return Tampered(kit.inputs(proof))


def payload_of(proof: Path) -> dict[str, Any]:
    """The decoded statement of a proof's certificate (test helper)."""
    envelope = Envelope.from_json((proof / "certificate.json").read_bytes())
    return dict(json.loads(envelope.payload))
