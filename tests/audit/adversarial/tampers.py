"""Named adversarial fixtures: each turns a copy of the honest proof (or the auditor's view of
it) into something the verifier must reject, and names the check that must fail and the words
its message must contain. "Unsigned" adversaries damage files the owner signed; "signed" ones
are built by a dishonest owner with the real key (the owner can sign anything), so only the
verifier's own measurements can catch them.

The threat-model engineer maps threats onto these names; keep them stable."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from audit.proof import Limits
from audit.verify import VerifyInputs
from prune.formats import (
    PAYLOAD_TYPE,
    Envelope,
    Openings,
    canonical_json,
    patch_parameter_digest,
    sha256_hex,
    sign_envelope,
)
from prune.proofs import load_private_key, open_private_key, sign_model
from tests.audit.adversarial.kit import ProofKit, build_work, honest_patch, pick_forget

__all__ = [
    "ADVERSARIES",
    "Adversary",
    "Tampered",
    "edit_certificate",
    "flip_byte",
    "payload_of",
    "resign_model",
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


def _rewrite_forget(proof: Path, change: Callable[[dict[str, np.ndarray[Any, Any]]], None]) -> None:
    path = proof / "forget.npz"
    with np.load(path) as data:
        arrays = {k: data[k].copy() for k in data.files}
    change(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


def _copy(kit: ProofKit, dest: Path) -> tuple[Path, VerifyInputs]:
    proof = kit.copy_proof(dest / "proof")
    return proof, kit.inputs(proof)


def _reissued(kit: ProofKit, dest: Path, **kwargs: Any) -> Tampered:
    proof = kit.reissue(dest / "proof", **kwargs)
    return Tampered(kit.inputs(proof))


# -- damaged files (unsigned changes) ----------------------------------------------------------


@adversary("model_byte_flipped", "digest.model", "model.onnx digest mismatch")
def model_byte_flipped(kit: ProofKit, dest: Path) -> Tampered:
    """One bit of the patched model flipped after signing."""
    proof, inputs = _copy(kit, dest)
    flip_byte(proof / "model.onnx", at=0.6)
    return Tampered(inputs)


@adversary("model_byte_flipped_sig", "signature.model", "model.sig does not verify")
def model_byte_flipped_sig(kit: ProofKit, dest: Path) -> Tampered:
    """The same flip, seen by the model signature."""
    return model_byte_flipped(kit, dest)


@adversary("certificate_byte_flipped", "signature.certificate", "does not verify")
def certificate_byte_flipped(kit: ProofKit, dest: Path) -> Tampered:
    """One base64 character of the signed payload changed (still valid base64)."""
    proof, inputs = _copy(kit, dest)
    path = proof / "certificate.json"
    text = bytearray(path.read_bytes())
    start = text.index(b'"payload":"') + len('"payload":"') + 40
    text[start] = ord("B") if text[start] != ord("B") else ord("C")
    path.write_bytes(bytes(text))
    return Tampered(inputs)


@adversary("signature_byte_flipped", "signature.model", "model.sig does not verify")
def signature_byte_flipped(kit: ProofKit, dest: Path) -> Tampered:
    """One byte of model.sig flipped."""
    proof, inputs = _copy(kit, dest)
    flip_byte(proof / "model.sig", at=0.5, mask=0x02)
    return Tampered(inputs)


@adversary("model_original_swapped_in", "digest.model", "model.onnx digest mismatch")
def model_original_swapped_in(kit: ProofKit, dest: Path) -> Tampered:
    """The original model handed over as if it were the patched one."""
    proof, inputs = _copy(kit, dest)
    (proof / "model.onnx").write_bytes(kit.work.model.read_bytes())
    return Tampered(inputs)


@adversary("model_truncated", "structure.original", "model.onnx: not an ONNX model")
def model_truncated(kit: ProofKit, dest: Path) -> Tampered:
    """model.onnx cut in the middle of its protobuf."""
    proof, inputs = _copy(kit, dest)
    data = (proof / "model.onnx").read_bytes()
    (proof / "model.onnx").write_bytes(data[: len(data) // 2 + 3])
    return Tampered(inputs)


@adversary("certificate_truncated", "signature.certificate", "certificate unreadable")
def certificate_truncated(kit: ProofKit, dest: Path) -> Tampered:
    """certificate.json cut short."""
    proof, inputs = _copy(kit, dest)
    data = (proof / "certificate.json").read_bytes()
    (proof / "certificate.json").write_bytes(data[: len(data) // 2])
    return Tampered(inputs)


@adversary("certificate_malformed", "signature.certificate", "certificate unreadable")
def certificate_malformed(kit: ProofKit, dest: Path) -> Tampered:
    """certificate.json replaced by JSON of the wrong shape."""
    proof, inputs = _copy(kit, dest)
    (proof / "certificate.json").write_bytes(b'{"payload":[]}')
    return Tampered(inputs)


@adversary("certificate_missing", "signature.certificate", "does not exist")
def certificate_missing(kit: ProofKit, dest: Path) -> Tampered:
    """No certificate.json in the proof."""
    proof, inputs = _copy(kit, dest)
    (proof / "certificate.json").unlink()
    return Tampered(inputs)


@adversary("forget_truncated", "commitment.openings", "forget set: not a readable .npz")
def forget_truncated(kit: ProofKit, dest: Path) -> Tampered:
    """forget.npz cut short."""
    proof, inputs = _copy(kit, dest)
    data = (proof / "forget.npz").read_bytes()
    (proof / "forget.npz").write_bytes(data[: len(data) // 3])
    return Tampered(inputs)


@adversary("forget_pickled", "commitment.openings", "has dtype object")
def forget_pickled(kit: ProofKit, dest: Path) -> Tampered:
    """forget.npz whose x is an object array (a pickle: never loaded)."""
    proof, inputs = _copy(kit, dest)

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
    proof, inputs = _copy(kit, dest)
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
    _, inputs = _copy(kit, dest)
    return Tampered(inputs, limits=Limits(model_bytes=kit.work.model.stat().st_size + 16))


@adversary("certificate_oversized", "signature.certificate", "over the 256-byte limit")
def certificate_oversized(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate over the configured size limit (256 B here, 64 MiB by default)."""
    _, inputs = _copy(kit, dest)
    return Tampered(inputs, limits=Limits(certificate_bytes=256))


# -- the certificate -----------------------------------------------------------------------------


@adversary("cert_field_edited_after_signing", "signature.certificate", "signature does not verify")
def cert_field_edited_after_signing(kit: ProofKit, dest: Path) -> Tampered:
    """A claim's certified margin raised in the payload, the old signature kept."""
    proof, inputs = _copy(kit, dest)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["claims"][0]["certified_margin"] = "50.0"

    edit_certificate(proof, edit, key=None)
    return Tampered(inputs)


@adversary(
    "cert_signed_by_other_key", "signature.certificate", "no signature by the given public key"
)
def cert_signed_by_other_key(kit: ProofKit, dest: Path) -> Tampered:
    """The statement re-signed with a key that is not the owner's."""
    proof, inputs = _copy(kit, dest)
    edit_certificate(proof, lambda doc: None, key=kit.other_keys / "owner.key")
    return Tampered(inputs)


@adversary("cert_unknown_version", "signature.certificate", "unknown version")
def cert_unknown_version(kit: ProofKit, dest: Path) -> Tampered:
    """A correctly signed statement with predicate version 2 (unknown to this reader)."""
    proof, inputs = _copy(kit, dest)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["version"] = 2

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(inputs)


@adversary("cert_stale", "freshness", "stale certificate")
def cert_stale(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate issued 400 days before the verification."""
    return _reissued(kit, dest, created=kit.created - timedelta(days=400))


@adversary("cert_from_future", "freshness", "in the future")
def cert_from_future(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate dated two days after the verification."""
    return _reissued(kit, dest, created=kit.created + timedelta(days=2))


@adversary("cert_replayed", "freshness", "replayed certificate")
def cert_replayed(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate whose nonce the auditor has already accepted."""
    proof, inputs = _copy(kit, dest)
    doc = json.loads(Envelope.from_json((proof / "certificate.json").read_bytes()).payload)
    store = dest / "nonces.txt"
    store.write_text(doc["predicate"]["nonce"] + "\n")
    return Tampered(replace(inputs, nonce_store=store))


@adversary("patch_digest_mismatch", "digest.patch", "patch parameter digest mismatch")
def patch_digest_mismatch(kit: ProofKit, dest: Path) -> Tampered:
    """A signed certificate naming other patch parameters than the model's."""
    proof, inputs = _copy(kit, dest)

    def edit(doc: dict[str, Any]) -> None:
        doc["predicate"]["patch_parameters"]["sha256"] = "0" * 64

    edit_certificate(proof, edit, key=kit.keys / "owner.key")
    return Tampered(inputs)


# -- the forget set ------------------------------------------------------------------------------


@adversary("leaves_reordered", "commitment.openings", "differs from the committed")
def leaves_reordered(kit: ProofKit, dest: Path) -> Tampered:
    """Openings of leaves 0 and 1 swapped (leaf indices kept)."""
    proof, inputs = _copy(kit, dest)

    def change(arrays: dict[str, Any]) -> None:
        for key in ("x", "y", "salt"):
            arrays[key][[0, 1]] = arrays[key][[1, 0]]

    _rewrite_forget(proof, change)
    return Tampered(inputs)


@adversary("leaves_missing", "commitment.openings", "opens 5 rows for the 6 leaves")
def leaves_missing(kit: ProofKit, dest: Path) -> Tampered:
    """The last opening withheld."""
    proof, inputs = _copy(kit, dest)
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
    proof, inputs = _copy(kit, dest)

    def change(arrays: dict[str, Any]) -> None:
        arrays["y"][0] = (arrays["y"][0] + 1) % 10

    _rewrite_forget(proof, change)
    return Tampered(inputs)


# -- the patched model, signed by a dishonest owner ------------------------------------------------


@adversary("model_original_swapped_in_signed", "digest.original", "is the original model itself")
def model_original_swapped_in_signed(kit: ProofKit, dest: Path) -> Tampered:
    """The owner signs the unpatched original as the 'patched' model."""
    return _reissued(kit, dest, model_bytes=kit.work.model.read_bytes())


@adversary(
    "model_for_other_forget_set", "structure.patch", "not the region of its claimed forget sample"
)
def model_for_other_forget_set(kit: ProofKit, dest: Path) -> Tampered:
    """The patched model of a different forget set, certified with this forget set's claims."""
    other_rows = pick_forget(kit.work, count=len(kit.rows), seed=99)
    other_spec, _ = honest_patch(kit.work, other_rows)
    return _reissued(kit, dest, spec=other_spec)


@adversary("onnx_extra_output", "structure.patch", "graph outputs are")
def onnx_extra_output(kit: ProofKit, dest: Path) -> Tampered:
    """A patched model that also exposes a hidden tensor as a second output."""
    spec = replace(kit.spec, extra_outputs=("/0/Gemm_output_0",))
    return _reissued(kit, dest, spec=spec)


@adversary("onnx_original_weights_changed", "structure.original", "original weights changed")
def onnx_original_weights_changed(kit: ProofKit, dest: Path) -> Tampered:
    """The original's first-layer weights nudged inside the 'patched' model."""

    def edit(model: onnx.ModelProto) -> None:
        for i, tensor in enumerate(model.graph.initializer):
            if tensor.name == "0.weight":
                value = numpy_helper.to_array(tensor) * np.float32(1.01)
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, tensor.name))

    return _reissued(kit, dest, model_edit=edit)


@adversary("patch_data_dependent_op", "structure.patch", "is not allowed in a patch")
def patch_data_dependent_op(kit: ProofKit, dest: Path) -> Tampered:
    """A patch subgraph with a comparison op (the raw material of an input trigger)."""
    node = helper.make_node(
        "Equal", ["prune/patch/z", "prune/patch/z"], ["prune/patch/eq"], name="prune/patch/eq"
    )
    return _reissued(kit, dest, spec=replace(kit.spec, extra_nodes=(node,)))


@adversary("metadata_hidden_lies", "structure.patch", "metadata prune.hidden")
def metadata_hidden_lies(kit: ProofKit, dest: Path) -> Tampered:
    """Metadata naming other hidden tensors than the original graph's Relu inputs."""
    spec = replace(kit.spec, metadata={"prune.hidden": "/0/Gemm_output_0"})
    return _reissued(kit, dest, spec=spec)


@adversary("patch_trigger_gate", "structure.patch", "does not fix the sign of every hidden neuron")
def patch_trigger_gate(kit: ProofKit, dest: Path) -> Tampered:
    """Gates that also demand z_k = 0 on some neurons: only a thin sliver around each point."""
    pos = kit.spec.pos.copy()
    neg = kit.spec.neg.copy()
    neg[:4] = 1.0
    pos[:4] = 1.0
    return _reissued(kit, dest, spec=replace(kit.spec, pos=pos, neg=neg))


@adversary(
    "patch_gated_elsewhere", "structure.patch", "not the region of its claimed forget sample"
)
def patch_gated_elsewhere(kit: ProofKit, dest: Path) -> Tampered:
    """Patch 0 gated on the region of some other training point."""
    z, _ = kit.work.mlp.forward(kit.work.x_train)
    own = (z[kit.rows[0]] >= 0).astype(np.float64)
    other = next(r for r in range(len(z)) if not np.array_equal((z[r] >= 0), own.astype(bool)))
    pos = kit.spec.pos.copy()
    pos[:, 0] = (z[other] >= 0).astype(np.float64)
    return _reissued(kit, dest, spec=replace(kit.spec, pos=pos, neg=1.0 - pos))


@adversary("patch_unowned", "structure.patch", "belong to no claimed forget sample")
def patch_unowned(kit: ProofKit, dest: Path) -> Tampered:
    """An extra patch, on a region no claim explains (a hidden backdoor region)."""
    z, _ = kit.work.mlp.forward(kit.work.x_test[:1])
    extra = (z[0] >= 0).astype(np.float64)[:, None]
    spec = replace(
        kit.spec,
        pos=np.concatenate([kit.spec.pos, extra], axis=1),
        neg=np.concatenate([kit.spec.neg, 1.0 - extra], axis=1),
        d=np.concatenate([kit.spec.d, kit.spec.d[:1]]),
        K=np.concatenate([kit.spec.K, kit.spec.K[:1]]),
    )
    return _reissued(kit, dest, spec=spec)


@adversary("point_only_special_case", "region.probes", "break their claim")
def point_only_special_case(kit: ProofKit, dest: Path) -> Tampered:
    """Patches just big enough at the forget points, claimed to certify their whole regions."""
    _, logits = kit.work.mlp.forward(kit.work.x_train[kit.rows])
    d = np.zeros_like(kit.spec.d)
    claims = []
    for u, claim in enumerate(kit.claims):
        others = np.delete(logits[u], claim.target)
        d[u, claim.target] = others.max() - logits[u, claim.target] + 0.05
        claims.append(replace(claim, certified_margin=0.04))
    spec = replace(kit.spec, d=d, K=np.abs(d).max(axis=1))
    return _reissued(kit, dest, spec=spec, claims=claims)


@adversary("claim_margin_inflated", "replay.claims", "fall short of their certified margin")
def claim_margin_inflated(kit: ProofKit, dest: Path) -> Tampered:
    """Claims certifying a margin far above what the patch gives."""
    claims = [replace(c, certified_margin=1e4) for c in kit.claims]
    return _reissued(kit, dest, claims=claims)


@adversary("claim_wrong_target", "replay.claims", "not predicted as claimed")
def claim_wrong_target(kit: ProofKit, dest: Path) -> Tampered:
    """Claims naming a target the patched model does not predict."""
    claims = [
        replace(c, target=next(t for t in range(10) if t not in (c.label, c.target)))
        for c in kit.claims
    ]
    return _reissued(kit, dest, claims=claims)


@adversary("locality_leak", "locality", "get different logits")
def locality_leak(kit: ProofKit, dest: Path) -> Tampered:
    """K below the patch size: the patch leaks onto every input, not only its regions."""
    return _reissued(kit, dest, spec=replace(kit.spec, K=kit.spec.K / 2))


@adversary("utility_understated", "utility", "the certificate states 0.0000")
def utility_understated(kit: ProofKit, dest: Path) -> Tampered:
    """A certificate that claims no accuracy loss for a patch that costs accuracy."""

    def edit(summary: dict[str, Any]) -> None:
        summary["test_accuracy_after"] = summary["test_accuracy_before"]

    return _reissued(kit, dest, spec=replace(kit.spec, K=kit.spec.K / 2), summary_edit=edit)


# -- the auditor's other inputs --------------------------------------------------------------------


@adversary("original_mismatch", "digest.original", "original model digest mismatch")
def original_mismatch(kit: ProofKit, dest: Path) -> Tampered:
    """The auditor is handed a different 'original' model than the one committed."""
    other = build_work(dest / "other-work", seed=1)
    return Tampered(kit.inputs(original=other.model))


def payload_of(proof: Path) -> dict[str, Any]:
    """The decoded statement of a proof's certificate (test helper)."""
    envelope = Envelope.from_json((proof / "certificate.json").read_bytes())
    return dict(json.loads(envelope.payload))
