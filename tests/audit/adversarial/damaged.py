"""Adversaries that damage or edit what the owner signed, or what the auditor is handed:
flipped bits, truncated and malformed files, oversized inputs, certificate edits (unsigned, or
re-signed by a stranger), stale or replayed certificates, tampered openings."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from audit.proof import Limits
from prune.formats import Envelope, Openings
from tests.audit.adversarial.kit import ProofKit
from tests.audit.adversarial.registry import (
    Tampered,
    adversary,
    copied,
    edit_certificate,
    flip_byte,
    reissued,
    rewrite_forget,
)

# -- damaged files (unsigned changes) ----------------------------------------------------------


@adversary("model_byte_flipped", "digest.model", "model.onnx digest mismatch")
def model_byte_flipped(kit: ProofKit, dest: Path) -> Tampered:
    """One bit of the patched model flipped after signing."""
    proof, inputs = copied(kit, dest)
    flip_byte(proof / "model.onnx", at=0.6)
    return Tampered(inputs)


@adversary("model_byte_flipped_sig", "signature.model", "model.sig does not verify")
def model_byte_flipped_sig(kit: ProofKit, dest: Path) -> Tampered:
    """The same flip, seen by the model signature."""
    return model_byte_flipped(kit, dest)


@adversary("certificate_byte_flipped", "signature.certificate", "does not verify")
def certificate_byte_flipped(kit: ProofKit, dest: Path) -> Tampered:
    """One base64 character of the signed payload changed (still valid base64)."""
    proof, inputs = copied(kit, dest)
    path = proof / "certificate.json"
    text = bytearray(path.read_bytes())
    start = text.index(b'"payload":"') + len('"payload":"') + 40
    text[start] = ord("B") if text[start] != ord("B") else ord("C")
    path.write_bytes(bytes(text))
    return Tampered(inputs)


@adversary("signature_byte_flipped", "signature.model", "model.sig does not verify")
def signature_byte_flipped(kit: ProofKit, dest: Path) -> Tampered:
    """One byte of model.sig flipped."""
    proof, inputs = copied(kit, dest)
    flip_byte(proof / "model.sig", at=0.5, mask=0x02)
    return Tampered(inputs)


@adversary("model_original_swapped_in", "digest.model", "model.onnx digest mismatch")
def model_original_swapped_in(kit: ProofKit, dest: Path) -> Tampered:
    """The original model handed over as if it were the patched one."""
    proof, inputs = copied(kit, dest)
    (proof / "model.onnx").write_bytes(kit.work.model.read_bytes())
    return Tampered(inputs)


@adversary("model_truncated", "structure.original", "model.onnx: not an ONNX model")
def model_truncated(kit: ProofKit, dest: Path) -> Tampered:
    """model.onnx cut in the middle of its protobuf."""
    proof, inputs = copied(kit, dest)
    data = (proof / "model.onnx").read_bytes()
    (proof / "model.onnx").write_bytes(data[: len(data) // 2 + 3])
    return Tampered(inputs)


@adversary("certificate_truncated", "signature.certificate", "certificate unreadable")
def certificate_truncated(kit: ProofKit, dest: Path) -> Tampered:
    """certificate.json cut short."""
    proof, inputs = copied(kit, dest)
    data = (proof / "certificate.json").read_bytes()
    (proof / "certificate.json").write_bytes(data[: len(data) // 2])
    return Tampered(inputs)


@adversary("certificate_malformed", "signature.certificate", "certificate unreadable")
def certificate_malformed(kit: ProofKit, dest: Path) -> Tampered:
    """certificate.json replaced by JSON of the wrong shape."""
    proof, inputs = copied(kit, dest)
    (proof / "certificate.json").write_bytes(b'{"payload":[]}')
    return Tampered(inputs)


@adversary("certificate_missing", "signature.certificate", "does not exist")
def certificate_missing(kit: ProofKit, dest: Path) -> Tampered:
    """No certificate.json in the proof."""
    proof, inputs = copied(kit, dest)
    (proof / "certificate.json").unlink()
    return Tampered(inputs)


@adversary("forget_truncated", "commitment.openings", "forget set: not a readable .npz")
def forget_truncated(kit: ProofKit, dest: Path) -> Tampered:
    """forget.npz cut short."""
    proof, inputs = copied(kit, dest)
    data = (proof / "forget.npz").read_bytes()
    (proof / "forget.npz").write_bytes(data[: len(data) // 3])
    return Tampered(inputs)


@adversary("forget_pickled", "commitment.openings", "has dtype object")
def forget_pickled(kit: ProofKit, dest: Path) -> Tampered:
    """forget.npz whose x is an object array (a pickle: never loaded)."""
    proof, inputs = copied(kit, dest)

    def change(arrays: dict[str, Any]) -> None:
        arrays["x"] = np.array([object()] * len(arrays["y"]), dtype=object)

    path = proof / "forget.npz"
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # savez pickles object arrays
    path.write_bytes(buffer.getvalue())
    return Tampered(inputs)


@adversary("forget_oversized_shape", "commitment.openings", "over the size limits")
def forget_oversized_shape(kit: ProofKit, dest: Path) -> Tampered:
    """forget.npz whose x header claims 10^9 rows (a zip bomb's first step)."""
    proof, inputs = copied(kit, dest)
    path = proof / "forget.npz"
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 64)}
    )
    members["x.npy"] = header.getvalue() + b"\x00" * 64
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return Tampered(inputs)


@adversary("model_oversized", "digest.model", "-byte limit")
def model_oversized(kit: ProofKit, dest: Path) -> Tampered:
    """A patched model over the configured size limit (just above the original's size here,
    512 MiB by default)."""
    _, inputs = copied(kit, dest)
    return Tampered(inputs, limits=Limits(model_bytes=kit.work.model.stat().st_size + 16))


@adversary("certificate_oversized", "signature.certificate", "over the 256-byte limit")
def certificate_oversized(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate over the configured size limit (256 B here, 64 MiB by default)."""
    _, inputs = copied(kit, dest)
    return Tampered(inputs, limits=Limits(certificate_bytes=256))


# -- the certificate -----------------------------------------------------------------------------


@adversary("cert_field_edited_after_signing", "signature.certificate", "signature does not verify")
def cert_field_edited_after_signing(kit: ProofKit, dest: Path) -> Tampered:
    """A claim's certified margin raised in the payload, the old signature kept."""
    proof, inputs = copied(kit, dest)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["claims"][0]["certified_margin"] = "50.0"

    edit_certificate(proof, edit, key=None)
    return Tampered(inputs)


@adversary(
    "cert_signed_by_other_key", "signature.certificate", "no signature by the given public key"
)
def cert_signed_by_other_key(kit: ProofKit, dest: Path) -> Tampered:
    """The statement re-signed with a key that is not the owner's."""
    proof, inputs = copied(kit, dest)
    edit_certificate(proof, lambda doc: None, key=kit.other_keys / "owner.key")
    return Tampered(inputs)


@adversary("duals_flipped_byte", "region.certificate", "SHA-256 differs")
def duals_flipped_byte(kit: ProofKit, dest: Path) -> Tampered:
    """One bit of the region certificate flipped after signing."""
    proof, inputs = copied(kit, dest)
    flip_byte(proof / "certificate.dual")
    return Tampered(inputs)


@adversary("cert_unknown_version", "signature.certificate", "unknown version")
def cert_unknown_version(kit: ProofKit, dest: Path) -> Tampered:
    """A correctly signed statement with predicate version 3 (unknown to this reader)."""
    proof, inputs = copied(kit, dest)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["version"] = 3

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(inputs)


@adversary("cert_stale", "freshness", "stale certificate")
def cert_stale(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate issued 400 days before the verification."""
    return reissued(kit, dest, created=kit.created - timedelta(days=400))


@adversary("cert_from_future", "freshness", "in the future")
def cert_from_future(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate dated two days after the verification."""
    return reissued(kit, dest, created=kit.created + timedelta(days=2))


@adversary("cert_replayed", "freshness", "replayed certificate")
def cert_replayed(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate whose nonce the auditor has already accepted."""
    proof, inputs = copied(kit, dest)
    doc = json.loads(Envelope.from_json((proof / "certificate.json").read_bytes()).payload)
    store = dest / "nonces.txt"
    store.write_text(doc["predicate"]["nonce"] + "\n")
    return Tampered(replace(inputs, nonce_store=store))


@adversary("patch_digest_mismatch", "digest.patch", "patch parameter digest mismatch")
def patch_digest_mismatch(kit: ProofKit, dest: Path) -> Tampered:
    """A signed certificate naming other patch parameters than the model's."""
    proof, inputs = copied(kit, dest)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["patch_parameters"]["sha256"] = "0" * 64

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(inputs)


# -- the forget set ------------------------------------------------------------------------------


@adversary("leaves_reordered", "commitment.openings", "differs from the committed")
def leaves_reordered(kit: ProofKit, dest: Path) -> Tampered:
    """Openings of leaves 0 and 1 swapped (leaf indices kept)."""
    proof, inputs = copied(kit, dest)

    def change(arrays: dict[str, Any]) -> None:
        for key in ("x", "y", "salt"):
            arrays[key][[0, 1]] = arrays[key][[1, 0]]

    rewrite_forget(proof, change)
    return Tampered(inputs)


@adversary("leaves_missing", "commitment.openings", "opens 5 rows for the 6 leaves")
def leaves_missing(kit: ProofKit, dest: Path) -> Tampered:
    """The last opening withheld."""
    proof, inputs = copied(kit, dest)
    openings = Openings.load(proof / "forget.npz")
    kept = Openings(
        x=openings.x[:-1],
        y=openings.y[:-1],
        salt=openings.salt[:-1],
        leaf_index=openings.leaf_index[:-1],
    )
    (proof / "forget.npz").write_bytes(kept.to_bytes())
    return Tampered(inputs)


@adversary("leaves_relabelled", "commitment.openings", "differs from the committed")
def leaves_relabelled(kit: ProofKit, dest: Path) -> Tampered:
    """An opening's label changed."""
    proof, inputs = copied(kit, dest)

    def change(arrays: dict[str, Any]) -> None:
        arrays["y"][0] = (arrays["y"][0] + 1) % 10

    rewrite_forget(proof, change)
    return Tampered(inputs)
