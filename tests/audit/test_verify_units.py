"""The verifier's building blocks against slow or independent references."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.errors import InputError
from audit.proof import Limits, ProofFileError, read_bounded, read_npz
from audit.runtime import OnnxModel
from audit.verify import CheckUnavailable
from audit.verify._affine import parse_head
from audit.verify._commitment import batch_root
from audit.verify._framework import plain
from audit.verify._freshness import read_nonce_store, record_nonce
from audit.verify._graph import find_head, sub_model
from audit.verify._patch import read_patch
from prune.formats import MerkleTree
from prune.train import build_model, export_onnx


@given(st.integers(min_value=2, max_value=70), st.data())
@settings(max_examples=60, deadline=None)
def test_batch_root_equals_full_tree(n: int, data: st.DataObject) -> None:
    m = data.draw(st.integers(min_value=1, max_value=n - 1))
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]
    tree = MerkleTree(leaves)
    proof = list(tree.consistency_proof(m))
    assert batch_root(m, tree.root_at(m), proof, leaves[m:]) == tree.root
    changed = [*leaves[m:]]
    changed[-1] = hashlib.sha256(b"other").digest()
    assert batch_root(m, tree.root_at(m), proof, changed) != tree.root
    with pytest.raises(CheckUnavailable, match="too long"):
        batch_root(m, tree.root_at(m), [*proof, leaves[0]], leaves[m:])


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_read_npz_refuses_before_decompressing() -> None:
    limits = Limits()
    good = _npz(x=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int64))
    out = read_npz(good, what="t", kinds={"x": "f", "y": "i"}, limits=limits, max_bytes=1000)
    assert out["x"].shape == (2, 3)
    with pytest.raises(ProofFileError, match="over the size limits"):
        read_npz(good, what="t", kinds={"x": "f", "y": "i"}, limits=limits, max_bytes=16)
    with pytest.raises(ProofFileError, match="unexpected array z"):
        read_npz(
            _npz(x=np.zeros(1), y=np.zeros(1), z=np.zeros(1)),
            what="t",
            kinds={"x": "f", "y": "f"},
            limits=limits,
            max_bytes=1000,
        )
    with pytest.raises(ProofFileError, match="dtype"):
        read_npz(good, what="t", kinds={"x": "i", "y": "i"}, limits=limits, max_bytes=1000)
    with pytest.raises(InputError, match="missing array w"):
        read_npz(good, what="t", kinds={"w": "f"}, limits=limits, max_bytes=1000, owner=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("x.npy", b"")
        archive.writestr("x.npy", b"")
    with pytest.raises(ProofFileError, match="duplicate"):
        read_npz(buffer.getvalue(), what="t", kinds={"x": "f"}, limits=limits, max_bytes=1000)
    fortran = _npz(x=np.asfortranarray(np.zeros((2, 3), np.float32)))
    with pytest.raises(ProofFileError, match="Fortran"):
        read_npz(fortran, what="t", kinds={"x": "f"}, limits=limits, max_bytes=1000)


def test_read_bounded(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_bounded(path, 10, what="f") == b"x" * 10
    with pytest.raises(ProofFileError, match="over the 9-byte limit"):
        read_bounded(path, 9, what="f")
    with pytest.raises(InputError, match="does not exist"):
        read_bounded(tmp_path / "nope", 9, what="f", owner=False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ProofFileError, match="not a regular file"):
        read_bounded(fifo, 9, what="f")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ProofFileError, match="empty"):
        read_bounded(tmp_path / "empty", 9, what="f")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = build_model("cnn", input_shape=(1, 8, 8), classes=10, hidden=[12])
    path = tmp_path_factory.mktemp("cnn") / "model.onnx"
    export_onnx(model, path, input_shape=(1, 8, 8))
    return onnx.load(str(path))


def test_head_after_feature_cut(cnn: onnx.ModelProto) -> None:
    head = find_head(cnn, "features")
    assert head.input == "input" and head.output == "logits"
    assert len(head.hidden) == 1  # only the head's Relu, not the conv prefix's
    whole = find_head(cnn, "input")
    assert len(whole.hidden) == 3
    with pytest.raises(CheckUnavailable, match="not a tensor of the original model"):
        find_head(cnn, "nonexistent")


def test_cut_must_separate(cnn: onnx.ModelProto) -> None:
    """A skip connection around the cut: the head would not be a function of the cut alone."""
    model = onnx.ModelProto()
    model.CopyFrom(cnn)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    model.graph.node.append(onnx.helper.make_node("Add", [relu.output[0], "input"], ["skip"]))
    with pytest.raises(CheckUnavailable, match="does not separate"):
        find_head(model, relu.output[0])


def test_affine_parse_and_head_model_agree_with_onnxruntime(cnn: onnx.ModelProto) -> None:
    head = find_head(cnn, "features")
    full = OnnxModel(cnn.SerializeToString(), extra_outputs=["features", *head.hidden])
    x = np.random.default_rng(0).uniform(0, 1, size=(32, 1, 8, 8)).astype(np.float32)
    outs = dict(zip(full.output_names, full.run(x), strict=True))
    features, z, logits = outs["features"], outs[head.hidden[0]], outs["logits"]
    affine = parse_head(cnn, head)
    assert affine.max_error(features.astype(np.float64), z, logits) < 1e-5
    sub = OnnxModel(
        sub_model(cnn, cut="features", cut_shape=features.shape[1:], outputs=["logits"])
    )
    np.testing.assert_allclose(sub.run(features)[0], logits, rtol=1e-5, atol=1e-5)
    rows, offs, lin, off = affine.local_affine(features[0].astype(np.float64))
    np.testing.assert_allclose(rows @ features[0] + offs, z[0], atol=1e-4)
    np.testing.assert_allclose(lin @ features[0] + off, logits[0], atol=1e-4)


def test_affine_parse_refuses_unknown_ops(cnn: onnx.ModelProto) -> None:
    with pytest.raises(CheckUnavailable, match=r"MaxPool .*not an affine op"):
        parse_head(cnn, find_head(cnn, "input"))


def test_read_patch_needs_exactly_the_gate_parameters(cnn: onnx.ModelProto) -> None:
    with pytest.raises(CheckUnavailable, match="missing"):
        read_patch(cnn, gate="activation")
    with pytest.raises(CheckUnavailable, match="unknown gate"):
        read_patch(cnn, gate="sometimes")


def test_nonce_store_round_trip(tmp_path: Path) -> None:
    store = tmp_path / "nonces"
    assert read_nonce_store(store) == frozenset()
    record_nonce(store, "a" * 32)
    record_nonce(store, "b" * 32)
    record_nonce(store, "a" * 32)
    assert read_nonce_store(store) == {"a" * 32, "b" * 32}
    store.write_text("nonsense\n")
    with pytest.raises(InputError, match="not a 32-hex-character nonce"):
        read_nonce_store(store)


def test_plain_evidence() -> None:
    value = {"a": np.float32(0.5), "b": (np.int64(3), np.inf), "c": np.bool_(True), "d": None}
    assert plain(value) == {"a": 0.5, "b": [3, "inf"], "c": True, "d": None}


def test_created_is_utc() -> None:
    from audit.verify._freshness import _created

    assert _created("2026-01-01T00:00:00Z") == datetime(2026, 1, 1, tzinfo=UTC)


def test_residual_head_layers_and_parse_agree_with_onnxruntime() -> None:
    """A residual join in the head: the verifier's own layering lists the carried tensor (-1)
    after the breakpoints it precedes in file order, and its parse equals onnxruntime on the
    logits and on every unit tensor."""
    from tests.prune._engine_models import graph_model

    rng = np.random.default_rng(3)
    weights = {
        name: rng.normal(size=shape).astype(np.float32)
        for name, shape in (("w0", (5, 4)), ("w1", (6, 5)), ("w2", (5, 6)), ("w3", (3, 5)))
    }
    nodes = [
        onnx.helper.make_node("Gemm", ["input", "w0"], ["a"], name="g0", transB=1),
        onnx.helper.make_node("Relu", ["a"], ["x"], name="r0"),
        onnx.helper.make_node("Gemm", ["x", "w1"], ["h"], name="g1", transB=1),
        onnx.helper.make_node("Relu", ["h"], ["r"], name="r1"),
        onnx.helper.make_node("Gemm", ["r", "w2"], ["f"], name="g2", transB=1),
        onnx.helper.make_node("Add", ["f", "x"], ["s"], name="join"),
        onnx.helper.make_node("Relu", ["s"], ["t"], name="r2"),
        onnx.helper.make_node("Gemm", ["t", "w3"], ["logits"], name="g3", transB=1),
    ]
    proto = onnx.load_from_string(graph_model(nodes, weights))
    head = find_head(proto, "input")
    assert [[(name, act >= 0) for name, act in layer] for layer in head.layers] == [
        [("a", True)],
        [("x", False), ("h", True)],
        [("s", True)],
    ]
    assert head.hidden == ("a", "x", "h", "s")
    affine = parse_head(proto, head)
    assert [w.shape for w in affine.weights] == [(5, 4), (11, 5), (5, 11), (3, 5)]
    np.testing.assert_array_equal(affine.slopes[1], np.r_[np.ones(5), np.zeros(6)])
    model = OnnxModel(proto.SerializeToString(), extra_outputs=["a", "x", "h", "s"])
    x = rng.uniform(-1, 1, size=(64, 4)).astype(np.float32)
    outs = dict(zip(model.output_names, model.run(x), strict=True))
    z = np.concatenate([outs[name] for name in head.hidden], axis=1)
    assert affine.max_error(x.astype(np.float64), z, outs["logits"]) < 1e-5
    # a skip connection that does not feed the join is not a unit: tampering the layering
    # (the carried x dropped) breaks the parse instead of passing silently
    dropped = type(head)(
        head.input, head.cut, ("a", "h", "s"), head.output, head.nodes, head.tail,
        (head.layers[0], (head.layers[1][1],), head.layers[2]),
    )  # fmt: skip
    with pytest.raises(CheckUnavailable, match="'x' is not a unit of the layer before"):
        parse_head(proto, dropped)
