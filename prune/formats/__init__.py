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
from prune.formats._claims import (
    CLAIM_KINDS,
    ClaimKind,
    Obligations,
    Scope,
    parse_claim,
    register_claim_kind,
)
from prune.formats._class_claim import (
    CLASS_CLAIM_KINDS,
    CLASS_SUPPRESS_FORMAT,
    ClassClaim,
    float32_margin_holds,
    removed_text,
)
from prune.formats._dsse import (
    DsseSignature,
    Envelope,
    dsse_pae,
    public_key_id,
    sign_envelope,
    verify_envelope,
)
from prune.formats._dual import dual_bytes, read_duals
from prune.formats._files import (
    PublishError,
    UnreadableFile,
    output_problem,
    publish_exclusive,
    read_regular,
    write_atomic,
)
from prune.formats._merkle import (
    HASH_SIZE,
    MerkleTree,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from prune.formats._npz import ArrayLimits, NpzError, parse_npy, parse_npz
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
    DUAL_FILE,
    DUAL_FORMAT,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    PREDICATE_VERSION,
    STATEMENT_TYPE,
    SUBJECT_NAME,
    ClaimRecord,
    DualCertificate,
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
    "CLAIM_KINDS",
    "CLASS_CLAIM_KINDS",
    "CLASS_SUPPRESS_FORMAT",
    "DUAL_FILE",
    "DUAL_FORMAT",
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
    "ArrayLimits",
    "CalibratedClaimRecord",
    "ClaimKind",
    "ClaimRecord",
    "ClassClaim",
    "DsseSignature",
    "DualCertificate",
    "Envelope",
    "ForgetSet",
    "FormatError",
    "MalformedError",
    "MerkleTree",
    "Mode",
    "NpzError",
    "Obligations",
    "Openings",
    "PreviousBatch",
    "ProofCheckError",
    "PublishError",
    "Receipt",
    "Region",
    "Scope",
    "Statement",
    "UnlearningPredicate",
    "UnreadableFile",
    "canonical_json",
    "canonical_sample",
    "decimal_string",
    "dsse_pae",
    "dual_bytes",
    "file_sha256",
    "float32_margin_holds",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "output_problem",
    "output_tolerance",
    "parse_canonical_json",
    "parse_claim",
    "parse_decimal_string",
    "parse_hex",
    "parse_npy",
    "parse_npz",
    "patch_parameter_digest",
    "public_key_id",
    "publish_exclusive",
    "read_duals",
    "read_regular",
    "register_claim_kind",
    "removed_text",
    "sha256_hex",
    "sign_envelope",
    "verify_consistency",
    "verify_envelope",
    "verify_inclusion",
    "write_atomic",
]
