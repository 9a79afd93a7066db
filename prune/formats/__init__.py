"""The shared format kernel: the byte-level encodings that the owner side writes and the
verifier reads (docs/FORMATS.md). Both ``prune`` and ``audit`` import it, so it stays small,
imports nothing else from ``prune`` and nothing heavier than numpy, onnx and cryptography.

Every reader is strict and every verifier is fail-closed: they return a value or raise a
:class:`FormatError` subclass (:class:`MalformedError` for bytes that do not follow the format,
:class:`ProofCheckError` for a well-formed proof that does not verify)."""

from __future__ import annotations

from prune.formats._calibrated import (
    CALIBRATED_KIND,
    CALIBRATED_KIND_VERSION,
    CALIBRATED_SOURCES,
    CalibratedClaimRecord,
    output_tolerance,
)
from prune.formats._canonical import (
    canonical_json,
    decimal_string,
    file_sha256,
    parse_canonical_json,
    parse_decimal_string,
    parse_hex,
    sha256_hex,
)
from prune.formats._dsse import (
    DsseSignature,
    Envelope,
    dsse_pae,
    public_key_id,
    sign_envelope,
    verify_envelope,
)
from prune.formats._merkle import (
    HASH_SIZE,
    MerkleTree,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from prune.formats._openings import OPENING_KEYS, Openings
from prune.formats._patch_digest import PATCH_PREFIX, patch_parameter_digest
from prune.formats._receipt import RECEIPT_TYPE, RECEIPT_VERSION, Receipt
from prune.formats._sample import (
    MIN_SALT_BYTES,
    SAMPLE_ENCODING,
    canonical_sample,
    leaf_hash,
    leaf_hashes,
)
from prune.formats._statement import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    PREDICATE_VERSION,
    STATEMENT_TYPE,
    SUBJECT_NAME,
    AnyClaimRecord,
    ClaimRecord,
    ForgetSet,
    Mode,
    PreviousBatch,
    Region,
    Statement,
    UnlearningPredicate,
)
from prune.formats.errors import FormatError, MalformedError, ProofCheckError

__all__ = [
    "CALIBRATED_KIND",
    "CALIBRATED_KIND_VERSION",
    "CALIBRATED_SOURCES",
    "HASH_SIZE",
    "MIN_SALT_BYTES",
    "OPENING_KEYS",
    "PATCH_PREFIX",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "PREDICATE_VERSION",
    "RECEIPT_TYPE",
    "RECEIPT_VERSION",
    "SAMPLE_ENCODING",
    "STATEMENT_TYPE",
    "SUBJECT_NAME",
    "AnyClaimRecord",
    "CalibratedClaimRecord",
    "ClaimRecord",
    "DsseSignature",
    "Envelope",
    "ForgetSet",
    "FormatError",
    "MalformedError",
    "MerkleTree",
    "Mode",
    "Openings",
    "PreviousBatch",
    "ProofCheckError",
    "Receipt",
    "Region",
    "Statement",
    "UnlearningPredicate",
    "canonical_json",
    "canonical_sample",
    "decimal_string",
    "dsse_pae",
    "file_sha256",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "output_tolerance",
    "parse_canonical_json",
    "parse_decimal_string",
    "parse_hex",
    "patch_parameter_digest",
    "public_key_id",
    "sha256_hex",
    "sign_envelope",
    "verify_consistency",
    "verify_envelope",
    "verify_inclusion",
]
