"""Receipts, forget.npz openings and the patch parameter digest."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from prune.formats import (
    FormatError,
    MalformedError,
    MerkleTree,
    Openings,
    ProofCheckError,
    Receipt,
    canonical_json,
    leaf_hash,
    patch_parameter_digest,
    sha256_hex,
)


def make_openings(n: int = 5, seed: int = 0) -> Openings:
    rng = np.random.default_rng(seed)
    return Openings(
        x=rng.random((n, 2, 3), dtype=np.float32),
        y=rng.integers(0, 10, n).astype(np.int64),
        salt=rng.integers(0, 256, (n, 16), dtype=np.uint8),
        leaf_index=np.arange(n, dtype=np.int64),
    )


def test_receipt_verifies_its_own_sample_only() -> None:
    openings = make_openings()
    tree = MerkleTree(openings.leaf_hashes())
    for i in range(len(openings)):
        receipt = Receipt(
            leaf_index=i,
            tree_size=tree.size,
            salt=openings.salt[i].tobytes(),
            inclusion_proof=tree.inclusion_proof(i),
            root=tree.root,
            certificate_sha256="00" * 32,
        )
        receipt = Receipt.from_json(receipt.to_json())
        receipt.verify(openings.x[i], int(openings.y[i]))
        with pytest.raises(ProofCheckError):
            receipt.verify(openings.x[(i + 1) % 5], int(openings.y[(i + 1) % 5]))
        with pytest.raises(ProofCheckError):
            receipt.verify(openings.x[i], int(openings.y[i]) + 1)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(type="https://prune-audit.dev/receipt/v2"),
        lambda d: d.update(salt="00" * 8),
        lambda d: d.update(leaf_index=9),
        lambda d: d.update(root="00"),
        lambda d: d.update(extra=True),
        lambda d: d.pop("certificate_sha256"),
    ],
)
def test_receipt_reader_is_strict(mutate: object) -> None:
    receipt = Receipt(1, 3, bytes(16), (b"\x01" * 32,), b"\x02" * 32, "03" * 32)
    doc = json.loads(receipt.to_json())
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(MalformedError):
        Receipt.from_json(canonical_json(doc))


def test_openings_round_trip_and_leaves() -> None:
    openings = make_openings()
    again = Openings.from_bytes(openings.to_bytes())
    for name in ("x", "y", "salt", "leaf_index"):
        np.testing.assert_array_equal(getattr(again, name), getattr(openings, name))
    assert again.leaf_hashes()[3] == leaf_hash(
        openings.x[3], int(openings.y[3]), openings.salt[3].tobytes()
    )


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_openings_reader_is_strict() -> None:
    good = make_openings()
    base = {"x": good.x, "y": good.y, "salt": good.salt, "leaf_index": good.leaf_index}
    bad_cases = [
        {**base, "extra": good.y},
        {k: v for k, v in base.items() if k != "salt"},
        {**base, "y": good.y.astype(np.int32)},
        {**base, "salt": good.salt[:, :8]},
        {**base, "leaf_index": good.leaf_index[::-1].copy()},
        {
            **base,
            "x": good.x[:0],
            "y": good.y[:0],
            "salt": good.salt[:0],
            "leaf_index": good.leaf_index[:0],
        },
        {**base, "y": np.array(["a"] * 5, dtype=object)},
    ]
    for arrays in bad_cases:
        with pytest.raises(MalformedError):
            Openings.from_bytes(_npz(**arrays))
    with pytest.raises(MalformedError):
        Openings.from_bytes(b"PK\x03\x04 truncated")


def test_openings_load_missing_file(tmp_path: object) -> None:
    with pytest.raises(FormatError, match="cannot read"):
        Openings.load(tmp_path / "nope.npz")  # type: ignore[operator]


def _model(initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=initializers,
    )
    return helper.make_model(graph)


def test_patch_digest_definition_and_encodings() -> None:
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    n = np.array(1000.0, dtype=np.float32)
    raw = [
        numpy_helper.from_array(c, "prune/patch/C"),
        numpy_helper.from_array(n, "prune/patch/n"),
        numpy_helper.from_array(np.ones(2, np.float32), "W"),
    ]
    expected = sha256_hex(
        canonical_json(
            {
                "prune/patch/C": sha256_hex(c.astype("<f4").tobytes()),
                "prune/patch/n": sha256_hex(n.astype("<f4").tobytes()),
            }
        )
    )
    model = _model(raw)
    assert patch_parameter_digest(model) == expected
    assert patch_parameter_digest(model.SerializeToString()) == expected
    as_float_data = helper.make_tensor(
        "prune/patch/C", TensorProto.FLOAT, [2, 3], c.ravel().tolist()
    )
    assert patch_parameter_digest(_model([as_float_data, raw[1], raw[2]])) == expected
    changed = c.copy()
    changed[1, 2] = np.nextafter(changed[1, 2], np.float32(np.inf))
    other = _model([numpy_helper.from_array(changed, "prune/patch/C"), raw[1], raw[2]])
    assert patch_parameter_digest(other) != expected
    assert patch_parameter_digest(_model([raw[2]])) == sha256_hex(b"{}")


def test_patch_digest_rejects_bad_models() -> None:
    double = numpy_helper.from_array(np.ones(2, np.float64), "prune/patch/d")
    with pytest.raises(MalformedError, match="float32"):
        patch_parameter_digest(_model([double]))
    one = numpy_helper.from_array(np.ones(2, np.float32), "prune/patch/d")
    with pytest.raises(MalformedError, match="twice"):
        patch_parameter_digest(_model([one, one]))
    external = numpy_helper.from_array(np.ones(2, np.float32), "prune/patch/K")
    external.data_location = TensorProto.EXTERNAL
    with pytest.raises(MalformedError, match="external"):
        patch_parameter_digest(_model([external]))
    with pytest.raises(MalformedError, match="not an ONNX model"):
        patch_parameter_digest(b"\xff\x00garbage")
