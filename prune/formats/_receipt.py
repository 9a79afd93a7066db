"""Per-subject deletion receipts (docs/FORMATS.md, "Receipt").

A receipt lets one data subject check their own deletion with nothing but their sample: rebuild
the leaf from (sample, label, salt), check the inclusion proof against the root, and check that
the root and ``certificate_sha256`` match the signed certificate. The salt is secret to that
subject: a receipt must only ever be handed to the person it belongs to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from prune.formats._canonical import canonical_json, parse_canonical_json, parse_hex
from prune.formats._fields import expect_hex_digest, expect_int, expect_keys, expect_object
from prune.formats._merkle import HASH_SIZE, verify_inclusion
from prune.formats._sample import MIN_SALT_BYTES, leaf_hash
from prune.formats.errors import MalformedError

__all__ = ["RECEIPT_TYPE", "RECEIPT_VERSION", "Receipt"]

RECEIPT_TYPE = "https://prune-audit.dev/receipt/v1"
RECEIPT_VERSION = 1
_KEYS = {
    "version",
    "type",
    "leaf_index",
    "tree_size",
    "salt",
    "inclusion_proof",
    "root",
    "certificate_sha256",
}


@dataclass(frozen=True)
class Receipt:
    """Leaf ``leaf_index`` of the tree of ``tree_size`` leaves with hash ``root`` was committed by
    the certificate whose file digest is ``certificate_sha256``. Round trip:
    ``Receipt.from_json(r.to_json()) == r``."""

    leaf_index: int
    tree_size: int
    salt: bytes
    inclusion_proof: tuple[bytes, ...]
    root: bytes
    certificate_sha256: str

    def to_json(self) -> bytes:
        return canonical_json(
            {
                "version": RECEIPT_VERSION,
                "type": RECEIPT_TYPE,
                "leaf_index": self.leaf_index,
                "tree_size": self.tree_size,
                "salt": self.salt.hex(),
                "inclusion_proof": [h.hex() for h in self.inclusion_proof],
                "root": self.root.hex(),
                "certificate_sha256": self.certificate_sha256,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Receipt:
        doc = expect_object(parse_canonical_json(data), "receipt")
        if doc.get("type") != RECEIPT_TYPE:
            raise MalformedError(f"receipt: unknown type {str(doc.get('type'))[:60]!r}")
        if doc.get("version") != RECEIPT_VERSION:
            raise MalformedError(f"receipt: unknown version {str(doc.get('version'))[:20]}")
        expect_keys(doc, "receipt", required=_KEYS)
        salt = parse_hex(doc["salt"], field="receipt.salt")
        if len(salt) < MIN_SALT_BYTES:
            raise MalformedError(f"receipt.salt: at least {MIN_SALT_BYTES} bytes are required")
        proof = doc["inclusion_proof"]
        if not isinstance(proof, list):
            raise MalformedError("receipt.inclusion_proof: expected a list")
        tree_size = expect_int(doc["tree_size"], "receipt.tree_size", minimum=1)
        leaf_index = expect_int(doc["leaf_index"], "receipt.leaf_index", minimum=0)
        if leaf_index >= tree_size:
            raise MalformedError("receipt: leaf_index is not below tree_size")
        return cls(
            leaf_index=leaf_index,
            tree_size=tree_size,
            salt=salt,
            inclusion_proof=tuple(
                parse_hex(h, field=f"receipt.inclusion_proof[{i}]", length=HASH_SIZE)
                for i, h in enumerate(proof)
            ),
            root=parse_hex(doc["root"], field="receipt.root", length=HASH_SIZE),
            certificate_sha256=expect_hex_digest(
                doc["certificate_sha256"], "receipt.certificate_sha256"
            ),
        )

    def verify(self, x: ArrayLike, y: int | np.integer) -> None:
        """Raise :class:`ProofCheckError` unless (``x``, ``y``) with this receipt's salt is leaf
        ``leaf_index`` under ``root``. Comparing ``root`` and ``certificate_sha256`` with the
        signed certificate is the caller's job (it needs the owner's public key)."""
        verify_inclusion(
            leaf_hash(x, y, self.salt),
            self.leaf_index,
            self.tree_size,
            self.inclusion_proof,
            self.root,
        )
