"""``write_signed_proof`` end to end on a tiny model: every artifact is re-checked with the shared
primitives only (as an independent verifier would), and the model signature with the real
``model_signing`` command-line tool."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from onnx import TensorProto, helper, numpy_helper

from prune.claims import Claim
from prune.errors import ProofError
from prune.formats import (
    PAYLOAD_TYPE,
    Envelope,
    MalformedError,
    MerkleTree,
    Openings,
    Receipt,
    Statement,
    file_sha256,
    patch_parameter_digest,
    sha256_hex,
    verify_consistency,
    verify_envelope,
    verify_inclusion,
)
from prune.proofs import KeyPair, generate_keys, load_public_key, write_signed_proof

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def onnx_model(extra: list[Any]) -> bytes:
    weights = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        initializer=[weights, *extra],
    )
    return helper.make_model(graph).SerializeToString()


ORIGINAL = onnx_model([])
PATCHED = onnx_model([numpy_helper.from_array(np.full((2, 3), 0.5, np.float32), "prune/patch/d")])


@dataclass(frozen=True)
class FakeResult:
    patched_model: bytes
    claims: tuple[Claim, ...]
    method: dict[str, Any]
    summary: dict[str, Any]
    forget_x: np.ndarray
    forget_y: np.ndarray = field(repr=False)
    duals: np.ndarray | None = field(default=None, repr=False)


def make_result(n: int = 6, seed: int = 0, **method: Any) -> FakeResult:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3).astype(np.int64)
    claims = tuple(
        Claim(
            leaf_index=i,
            train_index=1000 + 17 * i,
            label=int(y[i]),
            original_prediction=int(y[i]),
            target=int((y[i] + 1) % 3),
            patch=i // 2,
            certified_margin=0.125 * (i + 1),
            region="certified" if i % 2 else "point-only",
        )
        for i in range(n)
    )
    return FakeResult(
        patched_model=PATCHED,
        claims=claims,
        method={"name": "prune", "n": 1000.0, "margin": 0.125, "gate": "activation", **method},
        summary={"forget_accuracy_before": 1.0, "forget_accuracy_after": 0.0, "seconds": 2.5},
        forget_x=rng.random((n, 4), dtype=np.float32),
        forget_y=y,
        duals=rng.random((2 * sum(c.region == "certified" for c in claims), 5), dtype=np.float32),
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return generate_keys(tmp_path_factory.mktemp("keys"), passphrase=b"owner-pass")


def proof_folder(root: Path, name: str = "PROOF") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(PATCHED)
    return folder


def write(folder: Path, keys: KeyPair, result: FakeResult | None = None, **kw: Any) -> Any:
    return write_signed_proof(
        folder,
        result=result or make_result(),
        original_model=ORIGINAL,
        key_path=keys.private_key,
        passphrase=b"owner-pass",
        now=NOW,
        **kw,
    )


def test_every_artifact_verifies_independently(tmp_path: Path, keys: KeyPair) -> None:
    folder = proof_folder(tmp_path)
    files = write(folder, keys)
    public = load_public_key(keys.public_key)
    certificate = (folder / "certificate.json").read_bytes()
    statement = Statement.from_json(
        verify_envelope(Envelope.from_json(certificate), public, payload_type=PAYLOAD_TYPE)
    )
    predicate = statement.predicate
    assert statement.subject_sha256 == file_sha256(folder / "model.onnx")
    assert predicate.original_model_sha256 == sha256_hex(ORIGINAL)
    assert predicate.patch_parameters_sha256 == patch_parameter_digest(PATCHED)
    assert predicate.created == "2026-03-01T12:00:00Z"
    assert predicate.mode == "samples" and predicate.previous_root is None
    assert predicate.method["n"] == "1000.0"
    assert predicate.utility == {"forget_accuracy_before": "1.0", "forget_accuracy_after": "0.0"}
    assert [c.certified_margin for c in predicate.claims[:2]] == ["0.125", "0.25"]

    openings = Openings.load(folder / "forget.npz")
    tree = MerkleTree(openings.leaf_hashes())
    assert tree.root.hex() == predicate.forget_set.root == files.root
    assert predicate.forget_set.size == len(openings) == 6
    assert [c.label for c in predicate.claims] == openings.y.tolist()
    assert len({bytes(s) for s in openings.salt}) == 6

    receipts = sorted((folder / "receipts").iterdir())
    assert len(receipts) == 6
    for path in receipts:
        receipt = Receipt.from_json(path.read_bytes())
        i = receipt.leaf_index
        assert path.name == f"receipt-{i}.json"
        assert receipt.certificate_sha256 == sha256_hex(certificate)
        assert receipt.root.hex() == predicate.forget_set.root
        assert receipt.salt == openings.salt[i].tobytes()
        receipt.verify(openings.x[i], int(openings.y[i]))
    assert sorted(p.name for p in folder.iterdir()) == [
        "certificate.dual",
        "certificate.json",
        "forget.npz",
        "model.onnx",
        "model.sig",
        "receipts",
    ]


def test_training_rows_are_never_published(tmp_path: Path, keys: KeyPair) -> None:
    folder = proof_folder(tmp_path)
    write(folder, keys)
    envelope = Envelope.from_json((folder / "certificate.json").read_bytes())
    text = envelope.payload.decode()
    assert "train_index" not in text and "original_prediction" not in text
    for row in (1000, 1017, 1034):
        assert f":{row}," not in text and f":{row}}}" not in text


def test_model_signing_tool_verifies_and_rejects_a_byte_flip(tmp_path: Path, keys: KeyPair) -> None:
    folder = proof_folder(tmp_path)
    write(folder, keys)
    command = [
        sys.executable, "-m", "model_signing", "verify", "key", str(folder / "model.onnx"),
        "--signature", str(folder / "model.sig"), "--public_key", str(keys.public_key),
    ]  # fmt: skip
    ok = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = bytearray(PATCHED)
    data[-5] ^= 0x01
    (folder / "model.onnx").write_bytes(bytes(data))
    bad = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode != 0
    other = generate_keys(tmp_path / "other")
    (folder / "model.onnx").write_bytes(PATCHED)
    command[-1] = str(other.public_key)
    wrong_key = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert wrong_key.returncode != 0


def test_salts_and_nonce_are_fresh_unless_seeded(tmp_path: Path, keys: KeyPair) -> None:
    statements = []
    for name, seed in [("a", None), ("b", None), ("c", 7), ("d", 7)]:
        rng = None if seed is None else np.random.default_rng(seed)
        statements.append(write(proof_folder(tmp_path, name), keys, rng=rng).statement)
    a, b, c, d = statements
    assert a.predicate.nonce != b.predicate.nonce
    assert a.predicate.forget_set.root != b.predicate.forget_set.root
    assert c.to_json() == d.to_json()


def test_append_only_batches(tmp_path: Path, keys: KeyPair) -> None:
    log = tmp_path / "owner-state" / "commitment-log.json"
    log.parent.mkdir()
    first = write(proof_folder(tmp_path, "B1"), keys, make_result(5, seed=1), commitment_log=log)
    second = write(proof_folder(tmp_path, "B2"), keys, make_result(3, seed=2), commitment_log=log)
    p1, p2 = first.statement.predicate, second.statement.predicate
    assert p2.previous_root is not None
    assert (p2.previous_root.root, p2.previous_root.size) == (p1.forget_set.root, 5)
    assert p2.forget_set.size == 8
    assert [c.leaf_index for c in p2.claims] == [5, 6, 7]
    verify_consistency(
        5,
        8,
        bytes.fromhex(p1.forget_set.root),
        bytes.fromhex(p2.forget_set.root),
        [bytes.fromhex(h) for h in p2.previous_root.consistency_proof],
    )
    openings = Openings.load(tmp_path / "B2" / "forget.npz")
    assert openings.leaf_index.tolist() == [5, 6, 7]
    for i, leaf in zip(openings.leaf_index.tolist(), openings.leaf_hashes(), strict=True):
        receipt = Receipt.from_json(
            (tmp_path / "B2" / "receipts" / f"receipt-{i}.json").read_bytes()
        )
        verify_inclusion(leaf, i, 8, receipt.inclusion_proof, bytes.fromhex(p2.forget_set.root))
    state = log.read_text()
    assert "salt" not in state and openings.salt[0].tobytes().hex() not in state
    doc = json.loads(state)
    doc["leaves"][0] = "00" * 32
    log.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    with pytest.raises(ProofError, match="commitment log"):
        write(proof_folder(tmp_path, "B3"), keys, commitment_log=log)
    assert sorted(p.name for p in (tmp_path / "B3").iterdir()) == ["model.onnx"]


def test_class_mode(tmp_path: Path, keys: KeyPair) -> None:
    result = make_result(4, mode="class", forget_class=2)
    files = write(proof_folder(tmp_path), keys, result)
    assert files.statement.predicate.mode == "class"
    assert files.statement.predicate.forget_class == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"passphrase": b"wrong"}, "wrong passphrase"),
        ({"result": replace(make_result(), patched_model=ORIGINAL)}, "not the patched model"),
        ({"result": replace(make_result(), claims=make_result().claims[:-1])}, "one claim per"),
        ({"result": replace(make_result(), claims=make_result().claims[::-1])}, "forget set order"),
        ({"result": replace(make_result(), method={"mode": "everything"})}, "deletion mode"),
        (
            {
                "result": replace(
                    make_result(), forget_x=make_result().forget_x.astype(np.float64) + 1e-9
                )
            },
            "float32",
        ),
    ],
)
def test_failures_leave_nothing_behind(
    tmp_path: Path, keys: KeyPair, change: dict[str, Any], message: str
) -> None:
    folder = proof_folder(tmp_path)
    arguments: dict[str, Any] = {
        "result": make_result(),
        "original_model": ORIGINAL,
        "key_path": keys.private_key,
        "passphrase": b"owner-pass",
        **change,
    }
    with pytest.raises(ProofError, match=message) as info:
        write_signed_proof(folder, **arguments)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]


def test_refuses_to_overwrite_an_existing_proof(tmp_path: Path, keys: KeyPair) -> None:
    folder = proof_folder(tmp_path)
    write(folder, keys)
    before = (folder / "certificate.json").read_bytes()
    with pytest.raises(ProofError, match="already exists"):
        write(folder, keys)
    assert (folder / "certificate.json").read_bytes() == before


def test_truncated_or_resigned_certificate_is_rejected(tmp_path: Path, keys: KeyPair) -> None:
    folder = proof_folder(tmp_path)
    write(folder, keys)
    data = (folder / "certificate.json").read_bytes()
    with pytest.raises(MalformedError) as info:
        Envelope.from_json(data[: len(data) // 2])
    assert "\n" not in str(info.value)
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(Exception, match="no signature by the given public key"):
        verify_envelope(Envelope.from_json(data), stranger, payload_type=PAYLOAD_TYPE)


def test_region_certificate_is_written_and_bound(tmp_path: Path, keys: KeyPair) -> None:
    proof = proof_folder(tmp_path)
    files = write(proof, keys)
    descriptor = files.statement.predicate.region_certificate
    assert descriptor is not None and descriptor.rows == 6 and descriptor.hidden == 5
    data = (proof / "certificate.dual").read_bytes()
    assert len(data) == 6 * 5 * 4 and sha256_hex(data) == descriptor.sha256


def test_certified_claims_without_duals_are_refused(tmp_path: Path, keys: KeyPair) -> None:
    result = replace(make_result(), duals=None)
    with pytest.raises(ProofError, match="no region certificate"):
        write(proof_folder(tmp_path), keys, result=result)
    assert not (tmp_path / "PROOF" / "certificate.json").exists()
