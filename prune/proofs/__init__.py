"""Signed unlearning proofs, owner side: keys, forget-set commitments, the signed certificate,
the OpenSSF model signature, receipts and openings (docs/FORMATS.md). The byte formats live in
:mod:`prune.formats`, which the verifier shares; this package only produces them."""

from __future__ import annotations

from prune.proofs._certificate import build_statement, issue_certificate, signable
from prune.proofs._commitment import Commitment, CommitmentLog, commit_batch
from prune.proofs._duals import region_duals
from prune.proofs._keys import (
    PASSPHRASE_ENV,
    KeyPair,
    OwnerKey,
    generate_keys,
    load_private_key,
    load_public_key,
    open_private_key,
)
from prune.proofs._model_signature import sign_model, verify_model_signature
from prune.proofs._write import ProofFiles, UnlearnOutcome, write_signed_proof

__all__ = [
    "PASSPHRASE_ENV",
    "Commitment",
    "CommitmentLog",
    "KeyPair",
    "OwnerKey",
    "ProofFiles",
    "UnlearnOutcome",
    "build_statement",
    "commit_batch",
    "generate_keys",
    "issue_certificate",
    "load_private_key",
    "load_public_key",
    "open_private_key",
    "region_duals",
    "sign_model",
    "signable",
    "verify_model_signature",
    "write_signed_proof",
]
